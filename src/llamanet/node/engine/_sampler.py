"""One llama.cpp sampler chain per sequence, and the log-probabilities OpenAI clients ask for.

The chain order follows llama.cpp's common sampler: logit bias, penalties, grammar, then either
greedy (temperature <= 0) or top-k / top-p / min-p / temperature / a seeded distribution. The
grammar sits before the truncating samplers so the allowed tokens are never cut away. A sequence
that resumes another node's generation first *accepts* the tokens already generated, which moves
the grammar and the penalty history to exactly where the other node was.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from typing import Any

import numpy as np
from llama_cpp import llama_cpp as C

from llamanet.node.engine._types import SamplingParams, TokenLogprob, TopLogprob

__all__ = ["InvalidGrammar", "SequenceSampler", "token_logprob"]

_PENALTY_LAST_N = 64


class InvalidGrammar(ValueError):
    """llama.cpp refused the grammar."""


class SequenceSampler:
    """Owns one `llama_sampler` chain; free it with `close()`."""

    def __init__(self, vocab: Any, n_vocab: int, params: SamplingParams, seed: int) -> None:
        self.chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
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
            add(grammar)
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
            add(C.llama_sampler_init_dist(seed))

    def _add(self, sampler: Any) -> None:
        C.llama_sampler_chain_add(self.chain, sampler)

    def sample(self, ctx: Any, row: int) -> int:
        """Samples the next token from output row `row` of the last decode (and accepts it)."""
        return int(C.llama_sampler_sample(self.chain, ctx, row))

    def accept(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            C.llama_sampler_accept(self.chain, token)

    def close(self) -> None:
        if self.chain:
            C.llama_sampler_free(self.chain)
            self.chain = None


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
