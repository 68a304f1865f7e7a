"""The inference engine: continuous batching over one llama.cpp context.

`LlamaEngine` (admission, the async API, counters) hands jobs to the `Scheduler` (the worker
thread's step loop), which places them in slots (`_slots`: prefix reuse), samples each sequence
with its own chain (`_sampler`) and holds back possible stop sequences (`_stops`). `_model`
loads the weights with the parameters that are safe on this CPU.
"""

from llamanet.node.engine._engine import LlamaEngine, default_gpu_layers, default_parallel
from llamanet.node.engine._job import Job
from llamanet.node.engine._model import (
    call_in_passing_thread,
    extra_buffers_safe,
    load_model,
)
from llamanet.node.engine._stops import StopMatcher
from llamanet.node.engine._types import (
    ContextLengthExceeded,
    EngineClosed,
    EngineError,
    EngineStats,
    GenerationFailed,
    GenerationResult,
    Piece,
    QueueFull,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
)

__all__ = [
    "ContextLengthExceeded",
    "EngineClosed",
    "EngineError",
    "EngineStats",
    "GenerationFailed",
    "GenerationResult",
    "Job",
    "LlamaEngine",
    "Piece",
    "QueueFull",
    "SamplingParams",
    "StopMatcher",
    "TokenLogprob",
    "TopLogprob",
    "call_in_passing_thread",
    "default_gpu_layers",
    "default_parallel",
    "extra_buffers_safe",
    "load_model",
]
