"""Loading the weights: `load_model`, with the llama.cpp model parameters LlamaNet runs with.

Why not `llama_cpp.Llama`: the engine needs the model (weights, vocabulary, metadata) and a
batched context of its own, not `Llama`'s context; and `Llama` cannot turn off llama.cpp's
*extra buffer types*, which LlamaNet must do where they would crash. On CPUs with AMX, the extra
buffers are the AMX kernels' weight layout, and a llama.cpp built by GCC 12 without
`scripts/amx-tilecfg-fix.h` kills the process on its first prompt (`_amx.py` says why and how a
build is checked). Where the check fails the weights stay in plain CPU memory and the AVX-512
kernels run them, also without the repacked layouts that speed up Q4_0 and IQ4_NL models.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from llama_cpp import llama_cpp as C

from llamanet.node.engine._amx import amx_kernels_work, cpu_has_amx

__all__ = [
    "call_in_passing_thread",
    "extra_buffers_safe",
    "in_passing_thread",
    "load_model",
    "model_params",
]

T = TypeVar("T")

log = logging.getLogger("llamanet.node.engine")


def extra_buffers_safe(model_path: Path | None = None, system_info: bytes | None = None) -> bool:
    """Whether `model_path` may load into llama.cpp's extra buffer types: always without AMX;
    with AMX, when this build's AMX kernels ran it (`_amx.py`; never without a model to try)."""
    if not cpu_has_amx(system_info):
        return True
    return model_path is not None and amx_kernels_work(Path(model_path))


def model_params(n_gpu_layers: int = 0, model_path: Path | None = None) -> Any:
    """`llama_model_params` for serving `model_path`: `n_gpu_layers` (-1: all) and extra
    buffers only where they are safe."""
    params = C.llama_model_default_params()
    params.n_gpu_layers = 0x7FFFFFFF if n_gpu_layers == -1 else n_gpu_layers
    params.use_extra_bufts = extra_buffers_safe(model_path)
    return params


def load_model(path: Path, *, n_gpu_layers: int = 0) -> Any:
    """The model at `path` as a `llama_cpp._internals.LlamaModel` (it frees itself)."""
    from llama_cpp import _internals

    params = model_params(n_gpu_layers, path)
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # as Llama(verbose=False)
    return _internals.LlamaModel(path_model=str(path), params=params, verbose=False)


async def in_passing_thread(fn: Callable[[], T]) -> T:
    """`fn()` on a thread of its own that ends with it: for loading a model and making its
    context, where `asyncio.to_thread(fn)` would not do.

    Why: llama.cpp's OpenMP keeps a team of threads for each thread that ran a parallel region,
    for as long as that thread lives, and loading weights into AMX buffers runs one. Left on an
    executor thread, that idle team made every decode step on the engine's worker slower (one
    sequence on a 2-core Xeon: 40-45 tokens/s instead of 52-57; libgomp stops spinning when it
    manages more threads than there are cores). A thread that ends takes its team with it; the
    executor thread only waits for it."""
    return await asyncio.to_thread(call_in_passing_thread, fn)


def call_in_passing_thread(fn: Callable[[], T]) -> T:
    """`fn()` on a thread of its own that ends with it, waited for (`in_passing_thread` says
    why): for a worker thread that must not keep an OpenMP team of its own between jobs."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((fn(), None))
        except BaseException as exc:  # re-raised in the caller's thread
            outcome.append((None, exc))

    thread = threading.Thread(target=run, name="llamanet-job", daemon=True)
    thread.start()
    thread.join()
    result, error = outcome[0]
    if error is not None:
        raise error
    return result  # type: ignore[no-any-return]
