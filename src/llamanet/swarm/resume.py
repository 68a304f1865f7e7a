"""The bookkeeping of a resumable stream: what was delivered, and how to ask for the rest.

A node asked for it (`"llamanet": {"token_ids": true}` in the request) puts the ids of the
tokens generated since the previous chunk in each streamed chunk (`llamanet_token_ids`);
concatenated, they are exactly what another node needs to continue the generation where the
user's text stops (the engine replays them through its UTF-8 decoder, stop matcher and grammar,
so even held-back text comes out right). `StreamTranscript` reads the events of such a stream
as they are relayed: it collects the ids, strips the internal field the user did not ask for,
remembers the stream's `id`/`created` (OpenAI) or next `index` (native) and whether the answer
is whole; `resume_body` is the request that continues it on another node: the original body
plus `"llamanet": {"resume": ...}`. The node answering it sends no second role chunk, keeps
the stream id, and counts every token in its usage; the transcript names every node that
served the stream in the finish chunk (`"llamanet": {"nodes": [...]}`) once it took more than
one.

The ids alone do not say what the client has. The text of one token can become several chunks (a
tool call's start, then its first argument fragment) and the stream can break between them; and
the last text chunk can bring text that a replay of the ids holds back again (text a stop
matcher held back, or a UTF-8 character cut by the budget, released when the generation ends,
often with no new id at all). So the transcript also counts the chunks that carried
`llamanet_token_ids`, an empty list included (the text and tool-call chunks, and only those:
`deltas`); the resuming node makes the same chunks of the delivered tokens again (through a
fresh tool parser for a tool-call stream) and sends none of the first `deltas`: the junction is
exact after any chunk. `LlamaNetClient` counts the same way. A call's id (`call_...`) travels
only in its first chunk: a call the client saw begin keeps the id it saw (the resuming node
never announces it again), one begun after the junction gets its id from that node.

Pure logic (no I/O): the gateway relays through it, `LlamaNetClient` uses `resume_body`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "CONTROL_FIELD",
    "TOKEN_IDS_FIELD",
    "StreamTranscript",
    "UpstreamError",
    "asking_token_ids",
    "can_resume",
    "resume_body",
]

CONTROL_FIELD: Final = "llamanet"  # the request's internal field (protocol.StreamControl)
TOKEN_IDS_FIELD: Final = "llamanet_token_ids"  # a chunk's ids since the previous chunk
_CALLER_ERRORS: Final = frozenset(
    {"invalid_request_error", "authentication_error", "permission_error", "not_found_error"}
)


def can_resume(path: str, body: Mapping[str, Any]) -> bool:
    """Whether a request to `path` is a stream this module can resume: one choice of a chat,
    completion or native stream (tool calls included), not itself a resumption."""
    if path.endswith("/generate/stream") or path.endswith("/chat/completions/stream"):
        streaming = True
    elif path.endswith("/chat/completions") or path.endswith("/completions"):
        streaming = body.get("stream") is True
    else:
        return False
    control = body.get(CONTROL_FIELD)
    if isinstance(control, Mapping) and control.get("resume") is not None:
        return False
    if body.get("n") not in (None, 1) or body.get("best_of") not in (None, 1):
        return False
    return streaming


def asking_token_ids(body: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the body with `token_ids` asked for, whether the caller had asked for them itself)."""
    out = dict(body)
    control = out.get(CONTROL_FIELD)
    control = dict(control) if isinstance(control, Mapping) else {}
    asked = control.get("token_ids") is True
    control["token_ids"] = True
    out[CONTROL_FIELD] = control
    return out, asked


def resume_body(
    body: Mapping[str, Any],
    token_ids: list[int],
    *,
    fingerprint: str | None,
    stream_id: str | None = None,
    created: int | None = None,
    index: int = 0,
    deltas: int | None = None,
) -> dict[str, Any]:
    """The request that continues a stream on another node: `body` as first sent (sampling
    parameters, seed and `max_tokens`, which counts the resumed tokens too) plus the resume
    point (the ids and `deltas`, the count of chunks that carried ids: see the module
    docstring)."""
    out = copy.deepcopy(dict(body))
    control = out.get(CONTROL_FIELD)
    control = dict(control) if isinstance(control, Mapping) else {}
    control["token_ids"] = True
    resume: dict[str, Any] = {"token_ids": list(token_ids), "index": index}
    if deltas is not None:
        resume["deltas"] = deltas
    if fingerprint is not None:
        resume["fingerprint"] = fingerprint
    if stream_id is not None:
        resume["id"] = stream_id
    if created is not None:
        resume["created"] = created
    control["resume"] = resume
    out[CONTROL_FIELD] = control
    return out


@dataclass
class StreamTranscript:
    """What one stream delivered so far, read event by event (see the module docstring).

    `strip`: remove `llamanet_token_ids` before the event goes on (the user did not ask for
    them). `native`: `/generate/stream` chunks (`index`, `finished`) rather than OpenAI ones.
    """

    strip: bool = True
    native: bool = False
    token_ids: list[int] = field(default_factory=list)
    stream_id: str | None = None
    created: int | None = None
    next_index: int = 0
    deltas: int = 0  # text and tool-call chunks relayed (those with the ids field)
    finished: bool = False  # the finish chunk went through
    done: bool = False  # `[DONE]` went through
    nodes: list[str] = field(default_factory=list)  # every node that served it, in order
    events: int = 0  # data events relayed

    def serving(self, node_id: str) -> None:
        """`node_id` serves the stream from now on."""
        self.nodes.append(node_id)

    @property
    def whole(self) -> bool:
        return self.done or self.finished

    def relay(self, event: bytes) -> bytes | None:
        """The event to pass on (stripped, annotated) for one whole SSE event, None to drop it.

        Raises `UpstreamError` for an error event that another node might not repeat (a
        server error): the caller resumes instead of relaying it."""
        data = _data_of(event)
        if data is None:
            return event  # a comment (keep-alive) or a field-only event: passed on as is
        if data == "[DONE]":
            if self.done:
                return None
            self.done = True
            return event
        try:
            payload = json.loads(data)
        except ValueError:
            return event
        if not isinstance(payload, dict):
            return event
        if "error" in payload:
            error = payload.get("error")
            kind = error.get("type") if isinstance(error, dict) else None
            if kind not in _CALLER_ERRORS and not self.whole:
                raise UpstreamError(payload)
            return event
        ids = payload.pop(TOKEN_IDS_FIELD, None) if self.strip else payload.get(TOKEN_IDS_FIELD)
        changed = self.strip and ids is not None
        if isinstance(ids, list):
            self.token_ids.extend(int(i) for i in ids)
            self.deltas += 1
        if self.native:
            index = payload.get("index")
            if isinstance(index, int):
                self.next_index = index + 1
            finishing = payload.get("finished") is True
        else:
            if self.stream_id is None and isinstance(payload.get("id"), str):
                self.stream_id = payload["id"]
            if self.created is None and isinstance(payload.get("created"), int):
                self.created = payload["created"]
            choices = payload.get("choices")
            finishing = (
                isinstance(choices, list)
                and bool(choices)
                and isinstance(choices[0], dict)
                and choices[0].get("finish_reason") is not None
            )
        if finishing:
            self.finished = True
            if len(self.nodes) > 1:
                payload[CONTROL_FIELD] = {"nodes": list(self.nodes)}
                changed = True
        self.events += 1
        if not changed:
            return event
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class UpstreamError(Exception):
    """A node ended its stream with a server-side error event before the answer was whole."""

    def __init__(self, payload: dict[str, Any]) -> None:
        error = payload.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        super().__init__(str(message or "error event"))
        self.payload = payload


def _data_of(event: bytes) -> str | None:
    """The data of one SSE event (its `data:` lines joined), None if it has none."""
    lines: list[str] = []
    for raw in event.decode("utf-8", "replace").splitlines():
        if raw.startswith("data:"):
            value = raw[5:]
            lines.append(value[1:] if value.startswith(" ") else value)
    return "\n".join(lines) if lines else None
