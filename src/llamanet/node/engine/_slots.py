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
Slots free up in any order, though, and the gaps they leave stay when no request comes to fill
them (the end of a burst). Then the generating sequences move together: `compaction` picks the
run of consecutive slots that already holds most of them and moves each of the others into a
free slot of that run (a copy of its KV stream). Whether a move pays is the caller's to weigh:
one graph fewer per step for the rest of the answer against one stream copy.
Pure logic: the KV operations are the caller's.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

__all__ = [
    "MIN_COPY",
    "Placement",
    "Slot",
    "common_prefix",
    "compaction",
    "pending_share",
    "place",
]


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


def compaction(slots: Sequence[Slot], movable: Collection[int]) -> list[tuple[Slot, Slot]]:
    """Moves `(from, to)` that put the busy slots on consecutive seq_ids, as few as possible;
    only slots in `movable` (seq_ids) may move. Empty when they already are, or when no run of
    consecutive slots can take the busy ones without moving one that may not move.

    The run chosen is the one already holding the most busy slots (the first such); each busy
    slot outside it goes to one of its free slots, both in seq_id order."""
    busy = [s for s in slots if s.busy]
    ids = sorted(s.seq_id for s in busy)
    if len(ids) < 2 or ids[-1] - ids[0] + 1 == len(ids):
        return []
    by_id = {s.seq_id: s for s in slots}
    width, fixed = len(ids), [i for i in ids if i not in movable]
    best: tuple[int, int] | None = None  # (busy inside, start)
    for start in range(len(slots) - width + 1):
        end = start + width
        if all(start <= i < end for i in fixed):
            inside = sum(1 for i in ids if start <= i < end)
            if best is None or inside > best[0]:
                best = (inside, start)
    if best is None:
        return []
    start, end = best[1], best[1] + width
    leaving = [by_id[i] for i in ids if not start <= i < end]
    free = [by_id[i] for i in range(start, end) if not by_id[i].busy]
    return list(zip(leaving, free, strict=True))
