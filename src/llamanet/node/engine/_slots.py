"""Slots and the prefix cache: which slot a new prompt goes to and how much of it is already
evaluated somewhere.

Each slot is one llama.cpp sequence id. A slot remembers the tokens whose KV it holds, also after
its request ended, so the next turn of a chat finds its history there. A new prompt goes to the
free slot holding its longest common prefix; on ties, one next to a busy slot, then the least
recently used (the slot whose cache is least likely to be wanted again). Next to a busy slot:
llama.cpp evaluates a batch over per-slot KV streams as one graph per run of consecutive
seq_ids, and each graph has a fixed cost (a decode step of 4 sequences took 56 ms on slots 0-3,
75 ms on slots 0, 2, 4, 6 on this 2-core machine), so busy slots are best kept side by side.
When *another* slot, busy or idle, holds a longer prefix by at least `MIN_COPY` tokens, that
prefix is copied into the chosen slot (`llama_memory_seq_cp`), so a system prompt many users
share, or the same prompt sent by many clients, is evaluated once. The threshold is there
because the KV is one stream per slot: a copy moves the donor's whole stream (all n_ctx cells,
~47 MB for the default model at n_ctx 2048, a memory copy of a few ms), about what evaluating a
couple of prompt tokens costs here. Pure logic: the KV operations are the caller's.
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
    """Where `prompt` goes; None when no slot is free. At least one prompt token is always left
    to evaluate: its logits give the first generated token."""
    free = [s for s in slots if not s.busy]
    if not free:
        return None
    busy = {s.seq_id for s in slots if s.busy}

    def next_to_busy(slot: Slot) -> bool:
        return slot.seq_id - 1 in busy or slot.seq_id + 1 in busy

    limit = max(len(prompt) - 1, 0)
    best = max(
        free,
        key=lambda s: (min(common_prefix(s.tokens, prompt), limit), next_to_busy(s), -s.last_used),
    )
    own = min(common_prefix(best.tokens, prompt), limit)
    donor, shared = None, own
    for slot in slots:
        if slot is best:
            continue
        n = min(common_prefix(slot.tokens, prompt), limit)
        if n >= own + min_copy and n > shared:
            donor, shared = slot, n
    if donor is not None:  # a busy slot holds more (a free one cannot: `best` has the most)
        # its own cache is dropped: the oldest (next to a busy slot first, as above)
        target = min(free, key=lambda s: (not next_to_busy(s), s.last_used))
        return Placement(slot=target, reuse=shared, donor=donor)
    return Placement(slot=best, reuse=own, donor=None)


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
