"""Slots and the prefix cache: which slot a new prompt goes to and how much of it is already
evaluated somewhere.

Each slot is one llama.cpp sequence id. A slot remembers the tokens whose KV it holds, also after
its request ended, so the next turn of a chat finds its history there.

A new prompt goes first to a free slot next to the busy ones: llama.cpp evaluates a batch over
per-slot KV streams as one graph per run of consecutive seq_ids, and each graph has a fixed cost
(on this 2-core machine a decode step of 2 sequences took 31-34 ms on slots 0-1 and 35-49 ms on
slots 0 and 5; of 8 sequences, 77-93 ms on slots 0-7 against 99-105 ms for 7 with a gap), paid
on every step of the answer. Among those, the slot holding the prompt's longest common prefix,
then the least recently used (the slot whose cache is least likely to be wanted again). When
*another* slot, busy or idle, holds a longer prefix by at least `MIN_COPY` tokens, that prefix is
copied into the chosen slot (`llama_memory_seq_cp`): so the next turn of a chat whose history
sits in a slot away from the busy ones is copied next to them, and a system prompt many users
share, or the same prompt sent by many clients, is evaluated once. The threshold is there
because the KV is one stream per slot: a copy moves the donor's whole stream (all n_ctx cells,
~47 MB for the default model at n_ctx 2048, a memory copy of a few ms), about what evaluating a
couple of prompt tokens costs here, and far less than a graph more on every step of an answer.
Pure logic: the KV operations are the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["MIN_COPY", "Placement", "Slot", "common_prefix", "pending_share", "place"]


MIN_COPY = 8  # prompt tokens a copy from another slot must save


@dataclass(eq=False)
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # evaluated: KV positions 0..len-1
    planned: list[int] = field(default_factory=list)  # still to evaluate (a prompt in prefill)
    busy: bool = False
    last_used: float = 0.0


@dataclass(frozen=True)
class Placement:
    slot: Slot
    reuse: int  # prompt tokens whose KV is already there (after the copy, if any)
    donor: Slot | None  # copy tokens[:reuse] from this slot first


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def place(
    slots: Sequence[Slot], prompt: Sequence[int], *, min_copy: int = MIN_COPY
) -> Placement | None:
    """Where `prompt` goes (the module docstring says in what order); None when no slot is
    free. At least one prompt token is always left to evaluate: its logits give the first
    generated token."""
    free = [s for s in slots if not s.busy]
    if not free:
        return None
    busy = {s.seq_id for s in slots if s.busy}
    limit = max(len(prompt) - 1, 0)
    prefixes = {s.seq_id: min(common_prefix(s.tokens, prompt), limit) for s in slots}

    def held(slot: Slot) -> int:
        return prefixes[slot.seq_id]

    def new_runs(slot: Slot) -> int:  # runs of consecutive busy seq_ids it adds (-1: joins two)
        return 1 - (slot.seq_id - 1 in busy) - (slot.seq_id + 1 in busy)

    target = min(free, key=lambda s: (new_runs(s), -held(s), s.last_used))
    own = held(target)
    donor = max((s for s in slots if s is not target), key=held, default=None)
    if donor is not None and held(donor) >= own + min_copy:
        return Placement(slot=target, reuse=held(donor), donor=donor)
    return Placement(slot=target, reuse=own, donor=None)


def pending_share(
    slots: Sequence[Slot], prompt: Sequence[int], have: int, *, min_copy: int = MIN_COPY
) -> bool:
    """True when a slot still prefilling will soon hold clearly more of `prompt` than `have`
    tokens: waiting a step or two for it beats evaluating the same prefix twice."""
    for slot in slots:
        if slot.planned:
            n = common_prefix(slot.tokens + slot.planned, prompt)
            if n >= have + min_copy and n > len(slot.tokens):
                return True
    return False
