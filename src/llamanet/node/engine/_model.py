"""Loading the weights: `load_model`, with the llama.cpp model parameters LlamaNet runs with.

Why not `llama_cpp.Llama`: the engine needs the model (weights, vocabulary, metadata) and a
batched context of its own, not `Llama`'s context; and `Llama` cannot turn off llama.cpp's
*extra buffer types*, which LlamaNet must do on CPUs with AMX. There, a llama-cpp-python built
natively (the install builds it from source) moves the weights into an AMX buffer, and ggml's
AMX matmul (`ggml_backend_amx_mul_mat`) killed the process with SIGSEGV: on the first
`llama_decode` of a bare context, within seconds under load in a node, on every
`Llama.create_completion` (llama-cpp-python 0.3.36 on a 2-core Xeon with AMX_INT8;
upstream ggml-org/llama.cpp#20824, closed without a fix). Without extra buffers the weights
stay in plain CPU memory and the AVX-512 kernels run them. The price, on AMX CPUs only: no
repacked weight layouts either (they speed up Q4_0 and IQ4_NL models).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from llama_cpp import llama_cpp as C

__all__ = ["extra_buffers_safe", "load_model", "model_params"]

log = logging.getLogger("llamanet.node.engine")


def extra_buffers_safe(system_info: bytes | None = None) -> bool:
    """False when this llama.cpp build runs AMX kernels (`AMX_INT8 = 1`): the module docstring
    says why they are not used."""
    info = C.llama_print_system_info() if system_info is None else system_info
    return b"AMX_INT8 = 1" not in info


def model_params(n_gpu_layers: int = 0) -> Any:
    """`llama_model_params` for serving: `n_gpu_layers` (-1: all) and extra buffers only where
    they are safe."""
    params = C.llama_model_default_params()
    params.n_gpu_layers = 0x7FFFFFFF if n_gpu_layers == -1 else n_gpu_layers
    params.use_extra_bufts = extra_buffers_safe()
    return params


def load_model(path: Path, *, n_gpu_layers: int = 0) -> Any:
    """The model at `path` as a `llama_cpp._internals.LlamaModel` (it frees itself)."""
    from llama_cpp import _internals

    params = model_params(n_gpu_layers)
    if not params.use_extra_bufts:
        log.info(
            "this CPU has AMX: its llama.cpp kernels crash (llama.cpp#20824), so the weights "
            "stay in plain CPU buffers"
        )
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # as Llama(verbose=False)
    return _internals.LlamaModel(path_model=str(path), params=params, verbose=False)
