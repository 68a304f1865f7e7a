"""What the node and its HTTP routes need of an engine, as a structural type.

`LlamaEngine` (the real model), a batching engine and the tests' `FakeEngine` all fit it without
inheriting from it, so the node can be handed any of them (`LlamaNetNode(settings, engine=...)`).
The stream contract: `stream(job)` yields `Piece` objects, then exactly one `GenerationResult`
(a job submitted with `resume_tokens` first yields those tokens' pieces, `replayed=True`, with
the text the node that generated them released: never to be sent again);
`submit` raises `QueueFull` / `ContextLengthExceeded` at once, before any response starts.
Chat messages are dicts for the Jinja chat template: `role` and `content`, and (history of tool
calls) an assistant's `tool_calls` and a tool message's `tool_call_id` / `name`. `n_vocab`
bounds the token ids `SamplingParams.logit_bias` may name;
`submit_n(prompt_tokens, params, n)` admits n sequences of one prompt (the choices of `n`),
all or none; fork i samples with `seed + i`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from llamanet.node.engine import EngineStats, GenerationResult, Job, Piece, SamplingParams

__all__ = ["Engine"]


class Engine(Protocol):
    """The engine API shared by every engine (see the module docstring)."""

    @property
    def model_id(self) -> str: ...

    @property
    def model_path(self) -> Path: ...

    @property
    def n_ctx(self) -> int: ...

    @property
    def n_vocab(self) -> int: ...

    @property
    def metadata(self) -> Mapping[str, str]: ...

    @property
    def stats(self) -> EngineStats: ...

    @property
    def queue_size(self) -> int: ...

    @property
    def parallel(self) -> int: ...

    @property
    def n_gpu_layers(self) -> int: ...

    @property
    def capacity(self) -> int: ...

    @property
    def utilization(self) -> float: ...

    @property
    def quantization(self) -> str | None: ...

    def retry_after(self) -> int: ...

    def render_chat(self, messages: list[dict[str, Any]]) -> str: ...

    async def tokenize(
        self, *, prompt: str | None = None, messages: list[dict[str, Any]] | None = None
    ) -> list[int]: ...

    def submit(
        self, prompt_tokens: list[int], params: SamplingParams, *, resume_tokens: Sequence[int] = ()
    ) -> Job: ...

    def submit_n(self, prompt_tokens: list[int], params: SamplingParams, n: int) -> list[Job]: ...

    def stream(self, job: Job) -> AsyncIterator[Piece | GenerationResult]: ...

    async def run(self, job: Job) -> GenerationResult: ...

    def begin_close(self) -> None: ...

    async def close(self) -> None: ...
