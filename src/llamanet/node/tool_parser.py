"""Tool calls, the output side: generated text -> content and OpenAI `tool_calls`, incrementally.

`ToolCallParser` is fed the pieces of text as the engine produces them and returns events:
`ContentDelta` (text for `delta.content`) and `protocol.ToolCallDelta` (`delta.tool_calls[i]`:
first index, id, type and name with empty arguments, then fragments of the arguments). The
concatenated fragments of a call are exactly the JSON text the model wrote for its arguments.
A non-streamed answer is the same parser run over the whole text (`parse_tool_output`), so
streamed and whole answers cannot disagree.

It recognises the syntax of the plan's `ToolFormat` (see `llamanet.node.tools`): calls inside
`<tool_call>...</tool_call>` (hermes), a leading JSON call object (llama3), `[TOOL_CALLS][...]`
(mistral), or the generic JSON envelope (`{"tool_calls": [...]}` / `{"response": "..."}`,
whose response string is decoded as it streams). Text that looks like a call but names no
declared function stays content. Text is held back only while it may still be the start of a
call (a partial `<tool_call>`, an unfinished leading object).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum, auto

from llamanet.node.tools import ToolFormat
from llamanet.protocol import (
    ToolCall,
    ToolCallDelta,
    ToolCallDeltaFunction,
    ToolCallFunction,
    new_item_id,
)

__all__ = ["ContentDelta", "ToolCallParser", "ToolEvent", "parse_tool_output"]


@dataclass(frozen=True)
class ContentDelta:
    text: str


ToolEvent = ContentDelta | ToolCallDelta

_HEADER = re.compile(
    r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"\s*:'
)
_ENVELOPE = re.compile(r'\s*\{\s*"(tool_calls|response)"\s*:\s*')
_FIRST_KEY = re.compile(r'\s*\{\s*"((?:[^"\\]|\\.)*)"')
_OPENERS = {ToolFormat.HERMES: "<tool_call>", ToolFormat.MISTRAL: "[TOOL_CALLS]"}
_HERMES_CLOSE = "</tool_call>"
_PYTHON_TAG = "<|python_tag|>"
_WS = " \t\r\n"


def _other_key(text: str) -> bool:
    """The object in `text` starts with a key other than the envelope's."""
    match = _FIRST_KEY.match(text)
    return match is not None and match.group(1) not in ("tool_calls", "response")


def json_value_end(text: str, start: int) -> int | None:
    """The index just past the JSON value at `text[start:]` (after whitespace), or None while
    the value is incomplete. Only the structure is scanned; validity is json.loads' job."""
    i, n = start, len(text)
    while i < n and text[i] in _WS:
        i += 1
    if i >= n:
        return None
    if text[i] == '"':
        return _string_end(text, i)
    if text[i] in "{[":
        depth = 0
        while i < n:
            char = text[i]
            if char == '"':
                end = _string_end(text, i)
                if end is None:
                    return None
                i = end
                continue
            if char in "{[":
                depth += 1
            elif char in "}]":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return None
    while i < n and text[i] not in ",]}" + _WS:  # number, true, false, null
        i += 1
    return i if i < n else None


def _string_end(text: str, i: int) -> int | None:
    """Past the closing quote of the string opening at `text[i]`, or None."""
    i += 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i + 1
        i += 1
    return None


def _decodable(body: str) -> int:
    """How much of a JSON string's body (no quotes) can be decoded now: not a partial escape,
    nor the high half of a surrogate pair whose low half is still to come."""
    i = 0
    safe = 0
    while i < len(body):
        if body[i] == "\\":
            if i + 1 >= len(body):
                break
            if body[i + 1] == "u":
                if i + 6 > len(body):
                    break
                code = int(body[i + 2 : i + 6], 16) if _is_hex(body[i + 2 : i + 6]) else 0
                if 0xD800 <= code <= 0xDBFF:
                    if i + 12 > len(body):
                        break
                    i += 12
                else:
                    i += 6
            else:
                i += 2
        else:
            i += 1
        safe = i
    return safe


def _is_hex(text: str) -> bool:
    return len(text) == 4 and all(c in "0123456789abcdefABCDEF" for c in text)


class _State(Enum):
    START = auto()  # nothing decided yet (llama3 leading call, generic envelope)
    TEXT = auto()
    OBJECT = auto()  # a call object is starting: waiting for its name
    ARGS = auto()  # streaming a call's arguments
    OBJECT_TAIL = auto()  # after the arguments, up to the object's closing brace
    AFTER_CALL = auto()  # what follows a call in this syntax
    ARRAY = auto()  # inside [...] of calls (mistral, generic)
    RESPONSE = auto()  # the generic envelope's response string
    DONE = auto()  # swallow the rest (end of the envelope)


class ToolCallParser:
    """Incremental parser of one choice's output (see the module docstring)."""

    def __init__(
        self,
        fmt: ToolFormat,
        names: Iterable[str],
        *,
        new_id: Callable[[], str] = lambda: new_item_id("call"),
    ) -> None:
        self.format = fmt
        self.names = frozenset(names)
        self._new_id = new_id
        self._buf = ""
        self._state = _State.START
        self._events: list[ToolEvent] = []
        self.calls: list[ToolCall] = []
        self.content = ""
        self._opener = ""  # the opener consumed before the current object, given back if bad
        self._args_start = 0
        self._emitted = 0
        self._response_sent = 0
        self._in_array = False
        self._held = ""  # whitespace after a call, sent only if real text follows

    # ------------------------------------------------------------------ public

    def feed(self, text: str) -> list[ToolEvent]:
        self._buf += text
        self._run(final=False)
        return self._take()

    def finish(self) -> list[ToolEvent]:
        self._run(final=True)
        state = self._state
        if state is _State.OBJECT:  # a call that never got its name: it was text
            self._content(self._opener + self._buf)
        elif state in (_State.START, _State.TEXT, _State.AFTER_CALL):
            self._emit_text(self._buf)
        elif state is _State.ARGS:
            self._stream_args(len(self._buf))
        elif state is _State.RESPONSE:
            self._stream_response(final=True)
        self._buf = ""
        self._state = _State.DONE
        return self._take()

    # ------------------------------------------------------------------ machinery

    def _take(self) -> list[ToolEvent]:
        events, self._events = self._events, []
        return events

    def _content(self, text: str) -> None:
        if text:
            self.content += text
            self._events.append(ContentDelta(text))

    def _run(self, *, final: bool) -> None:
        while True:
            before = (self._state, len(self._buf))
            getattr(self, f"_on_{self._state.name.lower()}")(final)
            if (self._state, len(self._buf)) == before:
                return

    def _on_start(self, final: bool) -> None:
        text = self._buf.lstrip(_WS)
        if not text and not final:
            return
        if self.format is ToolFormat.GENERIC:
            if text.startswith("{"):
                match = _ENVELOPE.match(self._buf)
                if match and match.group(1) == "tool_calls":
                    self._buf = self._buf[match.end() :]
                    self._state, self._in_array = _State.ARRAY, False
                elif match:
                    self._buf = self._buf[match.end() :]
                    self._state = _State.RESPONSE
                elif json_value_end(self._buf, 0) is not None or _other_key(self._buf):
                    self._state = _State.TEXT  # not the envelope: plain content
                return
            self._state = _State.TEXT
            return
        if self.format is ToolFormat.LLAMA3:
            if _PYTHON_TAG.startswith(text) and not final:
                return
            if text.startswith(_PYTHON_TAG):
                self._opener = self._buf[: len(self._buf) - len(text)] + _PYTHON_TAG
                self._buf = text[len(_PYTHON_TAG) :]
                self._state = _State.OBJECT
                return
            if text.startswith("{"):
                self._opener = ""
                self._state = _State.OBJECT
                return
        self._state = _State.TEXT

    def _on_text(self, final: bool) -> None:
        opener = _OPENERS.get(self.format)
        if opener is None or self._state is _State.DONE:
            cut = len(self._buf)
        else:
            found = self._buf.find(opener)
            if found >= 0:
                self._emit_text(self._buf[:found])
                self._buf = self._buf[found + len(opener) :]
                self._opener = opener
                if self.format is ToolFormat.MISTRAL:
                    self._state, self._in_array = _State.ARRAY, False
                else:
                    self._state = _State.OBJECT
                return
            cut = len(self._buf)
            for keep in range(min(len(opener) - 1, len(self._buf)), 0, -1):
                if opener.startswith(self._buf[-keep:]):
                    cut = len(self._buf) - keep
                    break
        if final:
            return  # finish() flushes the rest
        self._emit_text(self._buf[:cut])
        self._buf = self._buf[cut:]

    def _emit_text(self, text: str) -> None:
        """Content, except whitespace after calls (held until real text follows)."""
        if self.calls and not text.strip():
            self._held += text
            return
        held, self._held = self._held, ""
        self._content(held + text)

    def _on_object(self, final: bool) -> None:
        match = _HEADER.match(self._buf)
        if match:
            name = json.loads(match.group(1))
            if name in self.names:
                self._start_call(name)
                self._args_start, self._emitted = match.end(), -1
                self._state = _State.ARGS
                return
            self._not_a_call()
            return
        end = json_value_end(self._buf, 0)
        if end is None:
            if self._buf.lstrip(_WS)[:1] not in ("", "{"):
                self._not_a_call()
            elif final:
                self._not_a_call()
            return
        try:
            value = json.loads(self._buf[:end])
        except json.JSONDecodeError:
            value = None
        arguments = None
        if isinstance(value, dict):
            arguments = value.get("arguments", value.get("parameters"))
        if not (
            isinstance(value, dict) and value.get("name") in self.names and arguments is not None
        ):
            self._not_a_call()
            return
        self._start_call(value["name"])  # arguments before name: whole, in one piece
        text = (
            arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        )
        self._add_arguments(text)
        self._buf = self._buf[end:]
        self._state = _State.AFTER_CALL

    def _not_a_call(self) -> None:
        """What looked like a call is content after all."""
        self._buf = self._opener + self._buf
        self._opener = ""
        self._content(self._buf)
        self._buf = ""
        self._state = _State.TEXT

    def _start_call(self, name: str) -> None:
        call = ToolCall(id=self._new_id(), function=ToolCallFunction(name=name, arguments=""))
        self.calls.append(call)
        self._events.append(
            ToolCallDelta(
                index=len(self.calls) - 1,
                id=call.id,
                type="function",
                function=ToolCallDeltaFunction(name=name, arguments=""),
            )
        )

    def _add_arguments(self, fragment: str) -> None:
        if not fragment:
            return
        call = self.calls[-1]
        call.function.arguments += fragment
        self._events.append(
            ToolCallDelta(
                index=len(self.calls) - 1, function=ToolCallDeltaFunction(arguments=fragment)
            )
        )

    def _on_args(self, final: bool) -> None:
        if self._emitted < 0:  # skip whitespace before the value
            while self._args_start < len(self._buf) and self._buf[self._args_start] in _WS:
                self._args_start += 1
            if self._args_start >= len(self._buf):
                return
            self._emitted = self._args_start
        end = json_value_end(self._buf, self._args_start)
        self._stream_args(len(self._buf) if end is None else end)
        if end is not None:
            self._state = _State.OBJECT_TAIL

    def _stream_args(self, upto: int) -> None:
        if self._emitted >= 0 and upto > self._emitted:
            self._add_arguments(self._buf[self._emitted : upto])
            self._emitted = upto

    def _on_object_tail(self, final: bool) -> None:
        end = json_value_end(self._buf, 0)
        if end is None:
            return
        self._buf = self._buf[end:]
        self._state = _State.AFTER_CALL

    def _on_after_call(self, final: bool) -> None:
        if self._in_array or self.format in (ToolFormat.MISTRAL, ToolFormat.GENERIC):
            self._state = _State.ARRAY
            self._in_array = True
            return
        if self.format is ToolFormat.HERMES:
            text = self._buf.lstrip(_WS)
            if _HERMES_CLOSE.startswith(text) and not final and len(text) < len(_HERMES_CLOSE):
                return
            if text.startswith(_HERMES_CLOSE):
                self._buf = text[len(_HERMES_CLOSE) :]
        self._opener = ""
        self._state = _State.TEXT

    def _on_array(self, final: bool) -> None:
        text = self._buf.lstrip(_WS)
        if not text:
            return
        if not self._in_array:
            if text[0] != "[":
                self._state = _State.TEXT
                return
            self._buf, self._in_array = text[1:], True
            return
        if text[0] == ",":
            self._buf = text[1:]
        elif text[0] == "]":
            self._buf, self._in_array = text[1:], False
            self._state = _State.DONE if self.format is ToolFormat.GENERIC else _State.TEXT
        elif text[0] == "{":
            self._buf, self._opener = text, ""
            self._state = _State.OBJECT
        else:
            self._in_array = False
            self._state = _State.TEXT

    def _on_response(self, final: bool) -> None:
        self._stream_response(final=final)

    def _stream_response(self, *, final: bool) -> None:
        text = self._buf
        if not text.lstrip(_WS):
            return
        start = len(text) - len(text.lstrip(_WS))
        if text[start] != '"':
            self._state = _State.TEXT
            return
        end = _string_end(text, start)
        body = text[start + 1 : (end - 1) if end is not None else len(text)]
        upto = len(body) if end is not None else _decodable(body)
        if upto > self._response_sent:
            try:
                piece = json.loads(f'"{body[self._response_sent : upto]}"')
            except json.JSONDecodeError:
                piece = body[self._response_sent : upto]
            self._content(piece)
            self._response_sent = upto
        if end is not None:
            self._buf = ""
            self._state = _State.DONE

    def _on_done(self, final: bool) -> None:
        self._buf = ""


def parse_tool_output(
    text: str, fmt: ToolFormat, names: Iterable[str]
) -> tuple[str | None, list[ToolCall]]:
    """A whole answer -> (content or None, tool calls), the same way a stream is parsed."""
    parser = ToolCallParser(fmt, names)
    parser.feed(text)
    parser.finish()
    content = parser.content if parser.content.strip() or not parser.calls else None
    return content, parser.calls
