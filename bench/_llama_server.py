"""llama-server built from the llama.cpp vendored in the pinned llama-cpp-python sdist.

    python bench/_llama_server.py [--check] [--jobs 2]

The concurrency bench compares the node with llama.cpp's own server, and the comparison is only
fair if both run the same llama.cpp: so the server is built from the sources inside the very
llama-cpp-python sdist the node uses (`pip download --no-binary :all: --no-deps
llama-cpp-python==<installed version>`), never fetched from elsewhere. Source and build live in
a cache outside the repository (`$LLAMANET_BENCH_CACHE`, default `~/.cache/llamanet-bench`):

    src/llama_cpp_python-<v>.tar.gz   the sdist, from PyPI
    src/llama_cpp_python-<v>/         unpacked
    build-<v>/bin/llama-server        the binary (its presence means the build finished)
    build-<v>.log                     configure + build output

Idempotent: a finished binary is found and reused; a missing one is built (about 13 minutes
on 2 cores, at `nice -n 10`), with a file lock so two callers never build at once. When a step
cannot run (no cmake or compiler, pip download fails, the build fails) `LlamaServerUnavailable`
says which and where the log is; the bench then compares the rest.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["LlamaServerUnavailable", "binary_path", "cache_dir", "ensure_llama_server"]

PACKAGE = "llama-cpp-python"

# Only the server target; no web UI (LLAMA_USE_PREBUILT_UI would download it from a Hugging Face
# bucket at build time), no TLS (loopback only), static so the binary stands alone. LLAMA_CURL
# is deprecated and ignored by this llama.cpp, so it is not passed.
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)

# The node's install builds llama.cpp with this header force-included (GCC 12 miscompiles the
# AMX tile setup without it: scripts/amx-tilecfg-fix.h); llama-server gets the same, so on a CPU
# with AMX both run the same kernels. The build directory's name says so (an older build, made
# without it, crashed there and is not reused).
AMX_FIX = Path(__file__).resolve().parent.parent / "scripts" / "amx-tilecfg-fix.h"
BUILD_TAG = "-amxfix"

NINJA_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]")
MAKE_PROGRESS = re.compile(r"^\[\s*(\d+)%\]")


class LlamaServerUnavailable(RuntimeError):
    """llama-server is not built and cannot be built here (the message says why)."""


def pinned_version() -> str:
    """The llama-cpp-python the node runs on (pinned exactly in pyproject.toml)."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise LlamaServerUnavailable(f"{PACKAGE} is not installed in {sys.executable}") from exc


def cache_dir() -> Path:
    return Path(os.environ.get("LLAMANET_BENCH_CACHE", Path.home() / ".cache" / "llamanet-bench"))


def binary_path(version: str | None = None) -> Path:
    return cache_dir() / f"build-{version or pinned_version()}{BUILD_TAG}" / "bin" / "llama-server"


def _stem(version: str) -> str:
    return f"{PACKAGE.replace('-', '_')}-{version}"


def _download_sdist(version: str, dest: Path, say: Callable[[str], None]) -> Path:
    archive = dest / f"{_stem(version)}.tar.gz"
    if archive.exists():
        return archive
    say(f"downloading the {PACKAGE}=={version} sdist from PyPI into {dest}")
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
    done = subprocess.run(
        [*cmd, f"{PACKAGE}=={version}", "-d", str(dest)], capture_output=True, text=True
    )
    if done.returncode != 0 or not archive.exists():
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise LlamaServerUnavailable("pip download of the sdist failed:\n  " + "\n  ".join(tail))
    return archive


def _unpack(archive: Path, say: Callable[[str], None]) -> Path:
    tree = archive.parent / archive.name.removesuffix(".tar.gz")
    source = tree / "vendor" / "llama.cpp"
    if (source / "CMakeLists.txt").exists():
        return source
    say(f"unpacking {archive.name}")
    partial = tree.with_name(tree.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(partial, filter="data")
    shutil.rmtree(tree, ignore_errors=True)
    (partial / tree.name).rename(tree)
    partial.rmdir()
    if not (source / "CMakeLists.txt").exists():
        raise LlamaServerUnavailable(f"{archive.name} holds no vendor/llama.cpp")
    return source


def _run_logged(cmd: list[str], log: Path, say: Callable[[str], None]) -> None:
    """Runs a build step at low priority, its output appended to `log`, progress every ~10%."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(
            ["nice", "-n", "10", *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        started, shown = time.monotonic(), -10
        for line in proc.stdout:
            out.write(line)
            ninja, make = NINJA_PROGRESS.match(line), MAKE_PROGRESS.match(line)
            if ninja:
                pct = 100 * int(ninja.group(1)) // int(ninja.group(2))
            elif make:
                pct = int(make.group(1))
            else:
                continue
            if pct >= shown + 10:
                shown = pct - pct % 10
                say(f"  build {pct:3d}%  ({time.monotonic() - started:.0f} s)")
        code = proc.wait()
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-8:]
        raise LlamaServerUnavailable(
            f"`{' '.join(cmd[:3])} ...` failed ({code}); log {log}:\n  " + "\n  ".join(tail)
        )


def _build(source: Path, build: Path, log: Path, jobs: int, say: Callable[[str], None]) -> None:
    missing = [tool for tool in ("cmake", "c++", "cc", "nice") if shutil.which(tool) is None]
    if missing:
        raise LlamaServerUnavailable(f"cannot build llama-server: {', '.join(missing)} not found")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    log.write_text("")
    say(f"configuring llama.cpp ({source}) into {build}; log {log}")
    fix = [f"-DCMAKE_{lang}_FLAGS=-include {AMX_FIX}" for lang in ("C", "CXX")]
    configure = ["cmake", "-S", str(source), "-B", str(build), *generator, *CMAKE_OPTIONS, *fix]
    _run_logged(configure, log, say)
    say(f"building llama-server with {jobs} jobs at nice 10 (about 13 min on 2 cores)")
    _run_logged(
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)], log, say
    )


def ensure_llama_server(
    *, build: bool = True, jobs: int = 2, say: Callable[[str], None] | None = None
) -> Path:
    """The path of a built llama-server, building it first if needed (and allowed)."""
    say = say or (lambda msg: print(f"[llama-server] {msg}", file=sys.stderr, flush=True))
    version = pinned_version()
    binary = binary_path(version)
    if os.access(binary, os.X_OK):
        return binary
    if not build:
        raise LlamaServerUnavailable(f"llama-server is not built yet ({binary} is missing)")
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"build-{version}.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another process is building llama-server; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if os.access(binary, os.X_OK):  # built by whoever held the lock
            return binary
        source = _unpack(_download_sdist(version, root / "src", say), say)
        _build(source, binary.parent.parent, root / f"build-{version}{BUILD_TAG}.log", jobs, say)
    if not os.access(binary, os.X_OK):
        raise LlamaServerUnavailable(f"the build finished but {binary} is not there")
    say(f"built {binary}")
    return binary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only say whether it is built")
    ap.add_argument("--jobs", type=int, default=2, help="parallel compile jobs")
    args = ap.parse_args()
    try:
        print(ensure_llama_server(build=not args.check, jobs=args.jobs))
    except LlamaServerUnavailable as exc:
        print(f"llama-server unavailable: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
