"""A generation request becomes engine work: prompt tokens, sampling parameters, `n`, and what
the answer's text must be parsed into.

Every field that shapes the answer is turned into something the engine enforces or the node
does, never dropped: `response_format` becomes a grammar (`llamanet.node.structured`, compiled
off the event loop and cached by schema), `tools` / `tool_choice` / `parallel_tool_calls` a
tool plan (`llamanet.node.tools`: the prompt, a grammar when a call is forced or the template
has no tool syntax of its own, and the syntax the answer is parsed in), `logit_bias` token ids
checked against the model's vocabulary, `logprobs` the engine's top-k, `n` forked sequences.

`submit()` admits the work at once (before any response starts): `n` > 1 goes to
`engine.submit_n`, n sequences of one prompt evaluated once (fork i samples with `seed + i`, so
the choices differ yet repeat with the same seed).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from llamanet.node.engine import Job, SamplingParams
from llamanet.node.engine_api import Engine
from llamanet.node.errors import APIError
from llamanet.node.structured import json_object_grammar, schema_grammar
from llamanet.node.tools import ToolPlan, plan_tools, render_prompt, tool_specs
from llamanet.protocol import (
    ChatMessage,
    ChoiceFields,
    CompletionRequest,
    ResponseFormat,
    SamplingFields,
)

__all__ = ["Work", "chat_work", "completion_work", "prompt_work", "submit"]

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


@dataclass(frozen=True)
class Work:
    """One request, ready for the engine."""

    prompt_tokens: list[int]
    params: SamplingParams
    n: int = 1
    tools: ToolPlan | None = None  # parse the answer into tool calls when `parses_calls`
    schema: dict[str, Any] | None = None  # the answer's JSON schema (response_format)
    json_object: bool = False  # the answer is a JSON object (json_object / json_schema)

    @property
    def parses_calls(self) -> bool:
        return self.tools is not None and self.tools.parses_calls


# --------------------------------------------------------------------------- fields


def logit_bias(bias: dict[str, float] | None, n_vocab: int) -> tuple[tuple[int, float], ...]:
    """`logit_bias` as (token id, bias) pairs; an id outside the vocabulary is a 400."""
    pairs = []
    for key, value in (bias or {}).items():
        token = int(key)
        if token >= n_vocab:
            raise APIError(
                400,
                f"logit_bias names token id {token}, which is not in this model's vocabulary "
                f"(token ids 0 to {n_vocab - 1}).",
                param="logit_bias",
                code="invalid_token",
            )
        pairs.append((token, value))
    return tuple(sorted(pairs))


@lru_cache(maxsize=128)
def _cached_schema_grammar(schema_json: str, param: str) -> str:
    return schema_grammar(json.loads(schema_json), param=param)


async def format_grammar(fmt: ResponseFormat | None) -> str | None:
    """The grammar of `response_format` (None for text), compiled on a thread; the same schema
    again is served from a cache."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json_object_grammar()
    assert fmt.json_schema is not None  # the protocol requires it for json_schema
    schema_json = json.dumps(fmt.json_schema.schema_, sort_keys=True)
    param = "response_format.json_schema.schema"
    return await asyncio.to_thread(_cached_schema_grammar, schema_json, param)


def _schema(fmt: ResponseFormat | None) -> dict[str, Any] | None:
    if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is not None:
        return fmt.json_schema.schema_
    return None


def sampling_params(
    req: SamplingFields,
    max_tokens: int | None,
    *,
    grammar: str | None = None,
    bias: tuple[tuple[int, float], ...] = (),
    logprobs: int | None = None,
) -> SamplingParams:
    """The engine's sampling parameters from a request's fields."""
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        repeat_penalty=req.repeat_penalty,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        seed=req.seed,
        stop=tuple(req.stop_list()),
        grammar=grammar,
        logit_bias=bias,
        logprobs=logprobs,
    )


# --------------------------------------------------------------------------- requests


def _parallel(mode: str, asked: bool | None) -> bool:
    """Several calls in one answer: OpenAI's default, except that a named function is called
    once unless `parallel_tool_calls: true` is explicit (a small model forced to call a
    function otherwise tends to repeat the same call until its budget runs out)."""
    if mode in ("none", "auto", "required"):
        return asked is not False
    return asked is True


def _plan(
    engine: Engine, body: ChoiceFields, messages: list[ChatMessage], grammar: str | None
) -> ToolPlan:
    mode = body.tool_choice_mode()
    return plan_tools(
        messages,
        tool_specs(body.tools),
        mode,
        parallel=_parallel(mode, body.parallel_tool_calls),
        template=engine.metadata.get(CHAT_TEMPLATE_KEY),
        json_grammar=grammar,
    )


async def _chat_tokens(engine: Engine, plan: ToolPlan) -> list[int]:
    """The prompt: through the engine's chat template, or (a template that renders tools
    itself) through the template with the tools; such a prompt is tokenized as text, the BOS
    token added by the tokenizer as for every prompt."""
    if plan.template_tools is None:
        return await engine.tokenize(messages=plan.messages)
    template = engine.metadata[CHAT_TEMPLATE_KEY]
    prompt = await asyncio.to_thread(
        render_prompt, template, plan.messages, tools=plan.template_tools
    )
    return await engine.tokenize(prompt=prompt)


async def chat_work(
    engine: Engine, body: ChoiceFields, messages: list[ChatMessage], max_tokens: int | None
) -> Work:
    """Work for a chat request (OpenAI chat, native `messages`, Responses via chat)."""
    bias = logit_bias(body.logit_bias, engine.n_vocab)
    grammar = await format_grammar(body.response_format)
    if body.tools:  # planning compiles the tools' grammars: off the event loop
        plan = await asyncio.to_thread(_plan, engine, body, messages, grammar)
    else:
        plan = _plan(engine, body, messages, grammar)
    tokens = await _chat_tokens(engine, plan)
    params = sampling_params(
        body, max_tokens, grammar=plan.grammar, bias=bias, logprobs=body.logprobs_k()
    )
    fmt = None if plan.parses_calls else body.response_format  # a call is not content
    return Work(
        tokens,
        params,
        body.n,
        plan,
        schema=_schema(fmt),
        json_object=fmt is not None and fmt.type != "text",
    )


async def prompt_work(
    engine: Engine, body: ChoiceFields, prompt: str, max_tokens: int | None
) -> Work:
    """Work for a native `prompt` request (no tools: the protocol requires messages for them)."""
    bias = logit_bias(body.logit_bias, engine.n_vocab)
    grammar = await format_grammar(body.response_format)
    tokens = await engine.tokenize(prompt=prompt)
    params = sampling_params(
        body, max_tokens, grammar=grammar, bias=bias, logprobs=body.logprobs_k()
    )
    fmt = body.response_format
    return Work(
        tokens,
        params,
        body.n,
        schema=_schema(fmt),
        json_object=fmt is not None and fmt.type != "text",
    )


async def completion_work(engine: Engine, body: CompletionRequest) -> Work:
    """Work for a legacy completion (`logprobs` is an int there: the top-k)."""
    bias = logit_bias(body.logit_bias, engine.n_vocab)
    tokens = await engine.tokenize(prompt=body.prompt_text())
    params = sampling_params(body, body.max_tokens, bias=bias, logprobs=body.logprobs)
    return Work(tokens, params, body.n)


# --------------------------------------------------------------------------- admission


def submit(engine: Engine, work: Work, *, resume_tokens: Sequence[int] = ()) -> list[Job]:
    """Admits the work's `n` sequences, all or none (raises `QueueFull`,
    `ContextLengthExceeded` before any response starts). `resume_tokens`: the continuation
    of a stream begun on another node (one sequence only)."""
    if resume_tokens:
        if work.n != 1:
            raise ValueError("a resumed generation has one sequence")
        return [engine.submit(work.prompt_tokens, work.params, resume_tokens=resume_tokens)]
    if work.n == 1:
        return [engine.submit(work.prompt_tokens, work.params)]
    return engine.submit_n(work.prompt_tokens, work.params, work.n)
