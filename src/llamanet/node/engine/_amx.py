"""Whether this llama.cpp build may run its AMX kernels: asked once per build and model, in a child.

Why a child process: on CPUs with AMX (Intel Xeon since Sapphire Rapids), llama.cpp moves the
weights into an AMX buffer and multiplies with tile instructions. Built by GCC 12 (Debian 12's
compiler, which the install uses to build llama-cpp-python), that crashed every process on its
first prompt: GCC 12's `_tile_loadconfig` tells the optimizer it reads 8 bytes of the 64-byte tile
configuration, so the stores of the other 56 are dropped, `ldtilecfg` loads garbage and the CPU
faults (SIGSEGV in `ggml_backend_amx_mul_mat`; upstream llama.cpp#20824, closed without a fix).
`make install` builds with `scripts/amx-tilecfg-fix.h`, which corrects the intrinsic; a wheel
built elsewhere (or taken from pip's cache) may not have it. Nothing tells the two apart short of
running the kernel, and a wrong guess kills the node, so a child process runs it: it loads the
model with extra buffers and evaluates one prompt and one batched step. Its verdict is kept in
`~/.cache/llamanet/amx-check.json`, keyed by the llama.cpp library file and the model file, so a
node pays the ~2 s once per build and model.

Where the kernels work they are worth it: on a 2-core Xeon with AMX, prompts of the default model
(Q4_1) went through 4-5x faster and batched decode steps of 8 sequences ~1.7x.
`LLAMANET_AMX=off` keeps the weights in plain buffers anyway.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from llama_cpp import llama_cpp as C

__all__ = ["amx_kernels_work", "cpu_has_amx"]

log = logging.getLogger("llamanet.node.engine")

CHECK_TIMEOUT = 120.0  # seconds; loading a large model from a cold disk takes a while
PROMPT_TOKENS = 48  # more than one row tile (16), so the tile kernel runs, not the M=1 path
UNLOADABLE = 3  # the child's exit status when the model itself does not load: no verdict


def cpu_has_amx(system_info: bytes | None = None) -> bool:
    """This llama.cpp build runs AMX kernels on this CPU (`AMX_INT8 = 1` in its system info)."""
    info = C.llama_print_system_info() if system_info is None else system_info
    return b"AMX_INT8 = 1" in info


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llamanet" / "amx-check.json"


def _identity(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _build_key(model_path: Path) -> str:
    """The llama.cpp library that runs the kernels, and the model (which tensors go to AMX)."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    libraries = sorted(lib_dir.glob("libggml-cpu*")) or sorted(lib_dir.glob("libllama*"))
    library = _identity(libraries[0]) if libraries else llama_cpp.__file__
    return f"{library}|{_identity(model_path)}"


def _read_cache() -> dict[str, bool]:
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, bool)} if isinstance(data, dict) else {}


def _write_cache(key: str, verdict: bool) -> None:
    path = cache_file()
    data = _read_cache()
    data[key] = verdict
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)  # atomic: nodes starting together each write a whole file
    except OSError as exc:
        log.warning("could not keep the AMX check's verdict in %s: %s", path, exc)


def _run_check(model_path: Path) -> tuple[bool | None, str]:
    """The child's verdict and why; None when the model file itself does not load (a truncated
    or foreign file says nothing of the kernels, and the node's own load reports it)."""
    cmd = [sys.executable, "-m", "llamanet.node.engine._amx", str(model_path)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=CHECK_TIMEOUT)
    except subprocess.TimeoutExpired:
        return False, f"no answer in {CHECK_TIMEOUT:.0f} s"
    if done.returncode == 0 and done.stdout.strip().endswith("ok"):
        return True, "ok"
    if done.returncode < 0:
        return False, f"killed by signal {-done.returncode}"
    if done.returncode == UNLOADABLE:
        return None, (done.stderr.strip().splitlines() or ["no message"])[-1][-300:]
    return False, f"exit {done.returncode}: {done.stderr.strip()[-300:]}"


def amx_kernels_work(model_path: Path) -> bool:
    """True when the AMX kernels of this build ran `model_path` in a child process (cached)."""
    if os.environ.get("LLAMANET_AMX", "auto").lower() in ("0", "off", "no", "false"):
        log.info("LLAMANET_AMX=off: the weights stay in plain CPU buffers")
        return False
    key = _build_key(model_path)
    cached = _read_cache().get(key)
    if cached is not None:
        log.info(
            "this CPU has AMX: %s (checked before, %s)",
            "using its kernels" if cached else "its kernels fail with this build, not using them",
            cache_file(),
        )
        return cached
    log.info("this CPU has AMX: checking once that this llama.cpp build runs its AMX kernels")
    verdict, why = _run_check(model_path)
    if verdict is None:
        log.info("the AMX check could not load the model (%s): not using AMX buffers", why)
        return False
    if verdict:
        log.info("the AMX kernels work with this build: using them")
    else:
        log.warning(
            "this llama.cpp build's AMX kernels fail (%s): the weights stay in plain CPU "
            "buffers, prompts run several times slower. Rebuild llama-cpp-python with "
            "`make install` (scripts/amx-tilecfg-fix.h) to use them.",
            why,
        )
    _write_cache(key, verdict)
    return verdict


def _check(model_path: str) -> None:
    """The child: one prompt and one batched step through the AMX kernels; crashing is the
    answer no."""
    from llama_cpp import _internals

    params = C.llama_model_default_params()
    params.use_extra_bufts = True
    try:
        model = _internals.LlamaModel(path_model=model_path, params=params, verbose=False)
    except ValueError as exc:  # llama.cpp could not read the file: no kernel ran
        print(exc, file=sys.stderr)
        sys.exit(UNLOADABLE)
    ctx_params = C.llama_context_default_params()
    ctx_params.n_ctx, ctx_params.n_batch, ctx_params.n_seq_max = 256, 64, 2
    ctx_params.n_threads = ctx_params.n_threads_batch = 1
    ctx = C.llama_init_from_model(model.model, ctx_params)
    batch = C.llama_batch_init(PROMPT_TOKENS, 0, 1)
    n_vocab = C.llama_vocab_n_tokens(model.vocab)
    steps = [[(seq, i) for seq in (0, 1) for i in range(PROMPT_TOKENS // 2)], [(0, 24), (1, 24)]]
    for step in steps:
        batch.n_tokens = len(step)
        for j, (seq, pos) in enumerate(step):
            batch.token[j] = (seq * 7919 + pos * 104729) % n_vocab
            batch.pos[j], batch.n_seq_id[j], batch.seq_id[j][0] = pos, 1, seq
            batch.logits[j] = True
        if C.llama_decode(ctx, batch) != 0:
            sys.exit(2)
    C.llama_batch_free(batch)
    C.llama_free(ctx)
    print("ok")


if __name__ == "__main__":
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    _check(sys.argv[1])
