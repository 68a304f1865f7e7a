"""A node stopped while it streams (SIGTERM, as Ctrl-C): its open streams end with an explicit
`shutting_down` error event, which the openai SDK raises as an `APIError` and the swarm's
client resumes elsewhere, rather than a connection cut by uvicorn's shutdown timeout (before,
each client got `RemoteProtocolError: peer closed connection`, a silent truncation)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import openai
import pytest

from llamanet.cli.launcher import NodeProcess

pytestmark = pytest.mark.model

# SmolLM2's end-of-generation tokens (<|endoftext|>, <|im_end|>) banned, and far more tokens
# than a node makes in the drain grace (4 s): both streams are still running when it ends
NO_END = {"0": -100, "2": -100}


def test_sigterm_ends_open_streams_with_a_shutting_down_error(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node("--parallel", "2")
    model = node.get("/v1/models").json()["data"][0]["id"]
    sdk = openai.AsyncOpenAI(base_url=node.url + "/v1", api_key="none", max_retries=0)

    async def stream(received: list[str]) -> openai.APIError:
        chunks = await sdk.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Tell me a long story about the sea."}],
            max_tokens=1800,
            logit_bias=NO_END,  # type: ignore[arg-type]  # token id strings, as on the wire
            stream=True,
        )
        with pytest.raises(openai.APIError) as info:
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
        return info.value

    async def main() -> list[openai.APIError]:
        received: list[list[str]] = [[], []]
        tasks = [asyncio.create_task(stream(r)) for r in received]
        while not all(len(r) >= 3 for r in received):
            assert not any(t.done() for t in tasks), [t.result() for t in tasks if t.done()]
            await asyncio.sleep(0.05)
        node.proc.send_signal(signal.SIGTERM)
        return await asyncio.gather(*tasks)

    errors = asyncio.run(main())
    for error in errors:
        assert not isinstance(error, openai.APIConnectionError), error
        assert error.code == "shutting_down", error
    node.proc.wait(30)
    log = node.log()
    assert "shutting down: ending 2 unfinished request(s)" in log
    assert "Traceback" not in log
