"""A node stopped while it streams (SIGTERM, as Ctrl-C): its open streams end with an explicit
`shutting_down` error event, which the openai SDK raises as an `APIError` and the swarm's
client resumes elsewhere, rather than a connection cut by uvicorn's shutdown timeout (before,
each client got `RemoteProtocolError: peer closed connection`, a silent truncation)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import openai
import pytest

from llamanet.cli.launcher import NodeProcess

pytestmark = pytest.mark.model

# SmolLM2's end-of-generation tokens (<|endoftext|>, <|im_end|>) banned, and far more tokens
# than a node makes in the drain grace (4 s): both streams are still running when it ends
NO_END = {"0": -100, "2": -100}


async def _stream_until_error(
    sdk: openai.AsyncOpenAI, model: str, received: list[str]
) -> openai.APIError:
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


def _stop_mid_stream(entry: NodeProcess, stopped: NodeProcess, streams: int) -> None:
    """`streams` streams through `entry`; SIGTERM to `stopped` once each has 3 pieces; each
    must end with a `shutting_down` error, not a cut connection."""
    model = entry.get("/v1/models").json()["data"][0]["id"]
    sdk = openai.AsyncOpenAI(base_url=entry.url + "/v1", api_key="none", max_retries=0)

    async def main() -> list[openai.APIError]:
        received: list[list[str]] = [[] for _ in range(streams)]
        tasks = [asyncio.create_task(_stream_until_error(sdk, model, r)) for r in received]
        while not all(len(r) >= 3 for r in received):
            assert not any(t.done() for t in tasks), [t.result() for t in tasks if t.done()]
            await asyncio.sleep(0.05)
        stopped.proc.send_signal(signal.SIGTERM)
        return await asyncio.gather(*tasks)

    errors = asyncio.run(main())
    for error in errors:
        assert not isinstance(error, openai.APIConnectionError), error
        assert error.code == "shutting_down", error
    stopped.proc.wait(30)


def test_sigterm_ends_open_streams_with_a_shutting_down_error(
    start_node: Callable[..., NodeProcess],
) -> None:
    node = start_node("--parallel", "2")
    _stop_mid_stream(node, node, streams=2)
    log = node.log()
    assert "shutting down: ending 2 unfinished request(s)" in log
    assert "Traceback" not in log


def test_a_stopping_gateway_ends_the_streams_it_relays_the_same_way(
    start_node: Callable[..., NodeProcess],
) -> None:
    """A `--no-model` gateway relaying a stream from its peer: before, uvicorn cut the
    connection 5 s into the shutdown; now the stream ends with `shutting_down` and the peer,
    whose consumer left, frees its slot and keeps serving."""
    peer = start_node("--model-id", "smol", "--parallel", "1")
    gateway = start_node("--no-model", "--bootstrap", peer.bootstrap)
    deadline = time.monotonic() + 30
    while "smol" not in {m["id"] for m in gateway.get("/v1/models").json()["data"]}:
        assert time.monotonic() < deadline, "the gateway never learned that its peer serves smol"
        time.sleep(0.2)
    _stop_mid_stream(gateway, gateway, streams=1)
    log = gateway.log()
    assert "shutting down: ending 1 relayed stream(s)" in log
    assert "Traceback" not in log
    deadline = time.monotonic() + 30
    while (status := peer.get("/status").json())["active"]:
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert peer.get("/health").status_code == 200
