"""One llama.cpp sampler chain per sequence, and the log-probabilities OpenAI clients ask for.

The chain follows llama.cpp's common sampler: logit bias, penalties, then either greedy
(temperature <= 0) or top-k / top-p / min-p / temperature / a seeded distribution.

A grammar stays *outside* the chain, as in llama.cpp's `common_sampler`: masking the whole
vocabulary costs more than a model step of a small model, so the chain samples first and the
grammar only checks that one token; when it refuses it, the chain samples again from the
masked candidates. That is the constrained distribution (at temperature 0 exactly the best
allowed token). `make bench-grammar` at temperature 0.7 (2026-12-02): json_schema 0.81x and a
forced tool call 0.75x the tokens/s of free text; the grammar-first chain before it measured
0.57-0.74x. Refusals are frequent inside JSON (the model would rather write prose), and each
one costs a full-vocabulary mask.

A sequence that resumes another node's generation first replays the tokens already generated
(`resume`): the penalty history and the grammar take each one, and the random generator draws
once per token as it did when they were sampled, so the continuation is the one the first node
would have produced (with a grammar above temperature 0 a refused first draw took two draws:
such a continuation is still valid, it may differ).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from llama_cpp import llama_cpp as C

from llamanet.node.engine._types import SamplingParams, TokenLogprob, TopLogprob

__all__ = ["InvalidGrammar", "SequenceSampler", "token_logprob"]

_PENALTY_LAST_N = 64


class InvalidGrammar(ValueError):
    """llama.cpp refused the grammar, or resumed tokens do not follow it."""


class SequenceSampler:
    """Owns one `llama_sampler` chain (and the grammar beside it); free it with `close()`."""

    def __init__(self, vocab: Any, n_vocab: int, params: SamplingParams, seed: int) -> None:
        self.n_vocab = n_vocab
        self.chain: Any = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        self.grammar: Any = None
        self.dist: Any = None
        self._candidates: Any = None
        self._view: Any = None
        add = self._add
        if params.logit_bias:
            biases = (C.llama_logit_bias * len(params.logit_bias))()
            for i, (token, bias) in enumerate(params.logit_bias):
                biases[i] = C.llama_logit_bias(token, bias)
            add(C.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
        if params.repeat_penalty != 1.0 or params.frequency_penalty or params.presence_penalty:
            add(
                C.llama_sampler_init_penalties(
                    n_vocab,
                    _PENALTY_LAST_N,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                )
            )
        if params.grammar:
            grammar = C.llama_sampler_init_grammar(vocab, params.grammar.encode(), b"root")
            if not grammar:
                self.close()
                raise InvalidGrammar("the grammar could not be parsed")
            self.grammar = grammar
            self._candidates = (C.llama_token_data * n_vocab)()
            self._view = np.ctypeslib.as_array(self._candidates)
            self._view["id"] = np.arange(n_vocab, dtype=np.int32)
        if params.temperature <= 0:
            add(C.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(C.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(C.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0:
                add(C.llama_sampler_init_min_p(params.min_p, 1))
            add(C.llama_sampler_init_temp(params.temperature))
            self.dist = C.llama_sampler_init_dist(seed)
            add(self.dist)

    def _add(self, sampler: Any) -> None:
        C.llama_sampler_chain_add(self.chain, sampler)

    def sample(self, ctx: Any, row: int) -> int:
        """Samples the next token from output row `row` of the last decode (and accepts it)."""
        if self.grammar is None:
            return int(C.llama_sampler_sample(self.chain, ctx, row))
        ptr = C.llama_get_logits_ith(ctx, row)
        logits = np.ctypeslib.as_array(
            ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,)
        )
        token = self._pick(logits, masked=False)
        if not self._allowed(token):
            token = self._pick(logits, masked=True)
        C.llama_sampler_accept(self.chain, token)
        C.llama_sampler_accept(self.grammar, token)
        return token

    def _pick(self, logits: Any, *, masked: bool) -> int:
        self._view["logit"] = logits
        self._view["p"] = 0.0
        array = C.llama_token_data_array(self._candidates, self.n_vocab, -1, False)
        if masked:
            C.llama_sampler_apply(self.grammar, ctypes.byref(array))
        C.llama_sampler_apply(self.chain, ctypes.byref(array))
        return int(self._candidates[array.selected].id)

    def _allowed(self, token: int) -> bool:
        one = (C.llama_token_data * 1)(C.llama_token_data(token, 0.0, 0.0))
        array = C.llama_token_data_array(one, 1, -1, False)
        C.llama_sampler_apply(self.grammar, ctypes.byref(array))
        return not math.isinf(one[0].logit)

    def resume(self, tokens: Iterable[int]) -> None:
        """Brings the sampler to where it was after generating `tokens` (module docstring)."""
        one = (C.llama_token_data * 1)()
        array = C.llama_token_data_array(one, 1, -1, False)
        for token in tokens:
            if self.grammar is not None:
                if not self._allowed(token):  # checked first: llama.cpp aborts on it
                    raise InvalidGrammar("the resumed tokens do not follow the grammar")
                C.llama_sampler_accept(self.grammar, token)
            C.llama_sampler_accept(self.chain, token)
            if self.dist is not None:  # one draw per token, as when it was sampled
                one[0] = C.llama_token_data(token, 0.0, 0.0)
                array.size, array.selected = 1, -1
                C.llama_sampler_apply(self.dist, ctypes.byref(array))

    def close(self) -> None:
        if self.chain:
            C.llama_sampler_free(self.chain)  # frees the samplers it holds
            self.chain = self.dist = None
        if self.grammar:
            C.llama_sampler_free(self.grammar)
            self.grammar = None


def token_logprob(logits_ptr: Any, n_vocab: int, token: int, top: int, piece: Any) -> TokenLogprob:
    """The chosen token's log-probability under the model (a log-softmax of the raw logits,
    before sampling transforms, as OpenAI reports it) and the `top` most likely tokens."""
    logits = np.ctypeslib.as_array(
        ctypes.cast(logits_ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,)
    ).astype(np.float64)
    peak = logits.max()
    logsumexp = peak + np.log(np.exp(logits - peak).sum())
    alternatives: tuple[TopLogprob, ...] = ()
    if top > 0:
        best = np.argpartition(-logits, top)[:top]
        best = best[np.argsort(-logits[best])]
        alternatives = tuple(_top(piece, int(t), float(logits[t] - logsumexp)) for t in best)
    data: bytes = piece(token)
    return TokenLogprob(
        token=data.decode("utf-8", errors="replace"),
        token_id=token,
        logprob=float(logits[token] - logsumexp),
        bytes=tuple(data),
        top=alternatives,
    )


def _top(piece: Any, token: int, logprob: float) -> TopLogprob:
    data: bytes = piece(token)
    return TopLogprob(
        token=data.decode("utf-8", errors="replace"), logprob=logprob, bytes=tuple(data)
    )
