"""Drives llama.cpp's grammar sampler over the real default model's vocabulary (vocab only, no
weights): random tokens among those the grammar allows, so tests can check that what a grammar
lets through parses and validates. Shared by the `test_api_*_model.py` files."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np


class VocabWalker:
    """Random walks through a grammar with a real vocabulary."""

    def __init__(self, model_path: Path) -> None:
        import llama_cpp
        from llama_cpp import Llama

        self._llama_cpp = llama_cpp
        self.llm = Llama(str(model_path), vocab_only=True, verbose=False)
        self.vocab = self.llm._model.vocab
        self.n_vocab = self.llm.n_vocab()
        self.eos = self.llm.token_eos()
        self.pieces = [
            self.llm.detokenize([t], special=False).decode("utf-8", "replace")
            for t in range(self.n_vocab)
        ]
        # tokens that end strings and structures: a walk that favours them stays short
        closers = set('"]},:0123456789')
        self.short = np.array(
            [bool(p) and len(p) <= 2 and any(c in closers for c in p) for p in self.pieces]
        )

    def walk(self, grammar: str, *, seed: int, max_tokens: int = 400, prefix: str = "") -> str:
        """One random completion the grammar accepts; raises if it does not finish."""
        from llama_cpp._internals import LlamaTokenDataArray

        lc = self._llama_cpp
        rng = random.Random(seed)
        sampler = lc.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        assert sampler, "llama.cpp refused the grammar"
        try:
            for token in self.llm.tokenize(prefix.encode(), add_bos=False, special=False):
                lc.llama_sampler_accept(sampler, token)
            candidates = LlamaTokenDataArray(n_vocab=self.n_vocab)
            out: list[int] = []
            for step in range(max_tokens):
                logits = np.zeros(self.n_vocab, dtype=np.single)
                candidates.copy_logits(logits)
                lc.llama_sampler_apply(sampler, candidates.candidates)
                allowed = np.flatnonzero(np.isfinite(candidates.candidates_data.logit))
                allowed_ids = candidates.candidates_data.id[allowed]
                assert len(allowed_ids), "the grammar allows no token"
                if self.eos in allowed_ids and (step > 0 or rng.random() < 0.5):
                    return self.llm.detokenize(out).decode("utf-8")
                short = allowed_ids[self.short[allowed_ids]]
                pool = short if len(short) and rng.random() < 0.6 else allowed_ids
                pool = pool[pool != self.eos] if len(pool) > 1 else pool
                token = int(rng.choice(list(pool)))
                lc.llama_sampler_accept(sampler, token)
                out.append(token)
            raise AssertionError(f"no end after {max_tokens} tokens: {self.llm.detokenize(out)!r}")
        finally:
            lc.llama_sampler_free(sampler)


def walks(walker: VocabWalker, grammar: str, n: int, **kwargs: Any) -> list[str]:
    return [walker.walk(grammar, seed=seed, **kwargs) for seed in range(n)]
