"""The internal `llamanet` field of a generation request: stream resumption between nodes.

Not part of the OpenAI API: the gateway and `LlamaNetClient` send it to have token ids streamed
back, and to resume a broken stream on another node (`llamanet.swarm.resume`). Its own module
because it belongs to the swarm's failover, not to any one API.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictBool

from llamanet.protocol._common import _Lenient

__all__ = ["MAX_RESUME_TOKENS", "ResumeFrom", "StreamControl"]


MAX_RESUME_TOKENS = 32768  # no context this engine runs is longer


class ResumeFrom(_Lenient):
    """Where a stream that broke on another node left off (`StreamControl.resume`).

    `token_ids`: every id the delivered chunks carried, in order. `deltas`: how many text and
    tool-call chunks (those that carry `llamanet_token_ids`, an empty list included) the client
    got; the resuming node makes the same chunks of the delivered tokens again and sends none
    of the first `deltas`. None (a relay that does not count them): the chunks of the delivered
    tokens' replayed text, exact but after text released at the end of the generation (sent
    again) or between the chunks of one token's text (the rest lost)."""

    token_ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_RESUME_TOKENS)]
    id: Annotated[str, Field(max_length=128)] | None = None  # the OpenAI stream's id
    created: Annotated[int, Field(ge=0)] | None = None
    index: Annotated[int, Field(ge=0)] = 0  # the native stream's next chunk index
    fingerprint: Annotated[str, Field(max_length=128)] | None = None  # ModelInfo.fingerprint
    deltas: Annotated[int, Field(ge=0)] | None = None


class StreamControl(_Lenient):
    """The internal `llamanet` field of a generation request: what the gateway and
    `LlamaNetClient` ask of a node to be able to resume a stream on another one. `token_ids`:
    every streamed chunk carries `llamanet_token_ids`, the ids generated since the previous
    chunk; `resume`: continue that stream (same id, no second role chunk, usage counting every
    token, tool calls parsed as if never interrupted) from its token ids, on a node whose model
    has the same fingerprint."""

    token_ids: StrictBool = False
    resume: ResumeFrom | None = None
