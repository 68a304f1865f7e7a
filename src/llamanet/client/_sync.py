"""`SyncLlamaNetClient`: the blocking facade over `LlamaNetClient` for scripts."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from llamanet.client._client import LlamaNetClient, MessageLike
from llamanet.client._embeddings import EmbeddingInput
from llamanet.client._errors import LlamaNetError
from llamanet.protocol import GenerateResponse, ModelCard, NodeRecord, StreamingChunk

__all__ = ["SyncLlamaNetClient"]

T = TypeVar("T")


async def _next_or_none(stream: AsyncGenerator[StreamingChunk, None]) -> StreamingChunk | None:
    return await anext(stream, None)


async def _aclose(stream: AsyncGenerator[StreamingChunk, None]) -> None:
    await stream.aclose()


class SyncLlamaNetClient:
    """Blocking facade over `LlamaNetClient` for scripts: an event loop on a daemon thread.

    Use as `with LlamaNetClient.sync(nodes=[...]) as client: print(client.generate("Hi").text)`.
    Streams are plain iterators; breaking out of one stops generation on the node.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="llamanet-client", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self._client: LlamaNetClient = self._run(self._make_client(kwargs))
            self._run(self._client.start())
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _make_client(kwargs: dict[str, Any]) -> LlamaNetClient:
        return LlamaNetClient(**kwargs)  # built on the loop thread, where it will run

    def __enter__(self) -> SyncLlamaNetClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def client(self) -> LlamaNetClient:
        """The async client underneath."""
        return self._client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise LlamaNetError("this client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. Ctrl-C: stop the work on the loop too
            raise

    def _iterate(self, stream: AsyncGenerator[StreamingChunk, None]) -> Iterator[StreamingChunk]:
        try:
            while (chunk := self._run(_next_or_none(stream))) is not None:
                yield chunk
        finally:
            if not self._closed:
                with contextlib.suppress(RuntimeError):  # still running after a Ctrl-C
                    self._run(_aclose(stream))

    def generate(self, prompt: str, **kwargs: Any) -> GenerateResponse:
        return self._run(self._client.generate(prompt, **kwargs))

    def chat(self, messages: Sequence[MessageLike], **kwargs: Any) -> GenerateResponse:
        return self._run(self._client.chat(messages, **kwargs))

    def generate_stream(self, prompt: str, **kwargs: Any) -> Iterator[StreamingChunk]:
        return self._iterate(self._client.generate_stream(prompt, **kwargs))

    def chat_stream(
        self, messages: Sequence[MessageLike], **kwargs: Any
    ) -> Iterator[StreamingChunk]:
        return self._iterate(self._client.chat_stream(messages, **kwargs))

    def models(self) -> list[ModelCard]:
        return self._run(self._client.models())

    def embed(self, inputs: EmbeddingInput, *, model: str | None = None) -> list[list[float]]:
        return self._run(self._client.embed(inputs, model=model))

    def nodes(self) -> list[NodeRecord]:
        return self._run(self._client.nodes())

    def refresh(self) -> None:
        self._run(self._client.refresh())

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()
