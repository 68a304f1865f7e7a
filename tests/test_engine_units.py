"""The engine's pure logic without a model: slot placement (prefix reuse, sharing a prefix held by
another slot, waiting for one being prefilled), held-back stop-sequence matching, the worker's
outbox to the event loop and the model parameters chosen for this CPU."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from llamanet.node.engine import StopMatcher, _amx, _engine, _model
from llamanet.node.engine._job import Outbox
from llamanet.node.engine._slots import (
    MIN_COPY,
    Slot,
    common_prefix,
    compaction,
    pending_share,
    place,
)


def _slots(*contents: list[int], busy: tuple[int, ...] = ()) -> list[Slot]:
    return [
        Slot(seq_id=i, tokens=list(c), busy=i in busy, last_used=float(i))
        for i, c in enumerate(contents)
    ]


# ---------------------------------------------------------------- common_prefix


def test_common_prefix() -> None:
    assert common_prefix([], [1, 2]) == 0
    assert common_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert common_prefix([1, 2, 3], [1, 2]) == 2
    assert common_prefix([1, 2, 3], [1, 9, 3]) == 1
    assert common_prefix([5], [1]) == 0


# ---------------------------------------------------------------- place


def test_no_free_slot_places_nothing() -> None:
    assert place(_slots([1], [2], busy=(0, 1)), [1, 2, 3]) is None


def test_longest_common_prefix_wins() -> None:
    slots = _slots([1, 2], [1, 2, 3, 4], [7, 8, 9])
    p = place(slots, [1, 2, 3, 4, 5, 6])
    assert p is not None
    assert p.slot is slots[1] and p.reuse == 4 and p.donor is None


def test_ties_go_to_the_least_recently_used_slot() -> None:
    slots = _slots([9], [8], [7])
    slots[0].last_used, slots[1].last_used, slots[2].last_used = 5.0, 1.0, 3.0
    p = place(slots, [1, 2, 3])
    assert p is not None and p.slot is slots[1] and p.reuse == 0 and p.donor is None


def test_at_least_one_prompt_token_is_left_to_evaluate() -> None:
    slots = _slots([1, 2, 3])
    p = place(slots, [1, 2, 3])
    assert p is not None and p.slot is slots[0] and p.reuse == 2
    # the slot holds more than the prompt: still one token to evaluate for the first logits
    p = place(_slots([1, 2, 3, 4, 5]), [1, 2, 3])
    assert p is not None and p.reuse == 2
    # an empty or one-token prompt reuses nothing
    p = place(_slots([1, 2]), [1])
    assert p is not None and p.reuse == 0
    p = place(_slots([1, 2]), [])
    assert p is not None and p.reuse == 0


def test_a_busy_slot_with_a_longer_prefix_donates_to_a_free_slot_next_to_it() -> None:
    slots = _slots([6], [1, 2, 3, 4, 5], [1, 2], busy=(1,))  # both free slots are next to it
    slots[0].last_used, slots[2].last_used = 10.0, 2.0
    p = place(slots, [1, 2, 3, 4, 9], min_copy=1)
    assert p is not None
    assert p.donor is slots[1] and p.reuse == 4
    assert p.slot is slots[2]  # both are next to it; slot 2 holds 2 of the tokens itself
    assert not p.slot.busy


def test_a_copy_goes_next_to_a_busy_slot_before_the_oldest() -> None:
    slots = _slots([1, 2, 3, 4, 5], [1, 2], [6], busy=(0,))
    slots[1].last_used, slots[2].last_used = 10.0, 2.0
    p = place(slots, [1, 2, 3, 4, 9], min_copy=1)
    assert p is not None and p.donor is slots[0] and p.reuse == 4
    assert p.slot is slots[1]  # slots 0 and 1 decode in one graph, 0 and 2 would take two


def test_ties_go_next_to_a_busy_slot_then_to_the_least_recently_used() -> None:
    """Busy slots side by side: llama.cpp runs one graph per run of consecutive seq_ids."""
    slots = _slots([9], [8], [7], [6], [5], busy=(2,))
    for slot, used in zip(slots, [1.0, 9.0, 0.0, 8.0, 2.0], strict=True):
        slot.last_used = used
    p = place(slots, [1, 2, 3])  # slots 1 and 3 are next to slot 2; 3 is the older of them
    assert p is not None and p.slot is slots[3] and p.reuse == 0
    slots[3].busy = True
    p = place(slots, [1, 2, 3])
    assert p is not None and p.slot is slots[4]  # next to 3, and older than slot 1
    slots[1].tokens = [1, 2, 9]
    p = place(slots, [1, 2, 3])
    assert p is not None and p.slot is slots[1] and p.reuse == 2  # next to 2: the prefix wins


def test_a_prefix_away_from_the_busy_slots_is_copied_next_to_them() -> None:
    """A slot away from the busy ones would add a graph to every decode step of the answer;
    copying its prefix next to them costs one memory copy."""
    prompt = list(range(40))
    slots = _slots([], [], [], prompt[:30], busy=(0,))
    p = place(slots, prompt)
    assert p is not None and p.slot is slots[1] and p.donor is slots[3] and p.reuse == 30
    # a prefix shorter than MIN_COPY is not worth a copy: evaluated again, next to the busy slot
    slots = _slots([], [], [], prompt[: MIN_COPY - 1], busy=(0,))
    p = place(slots, prompt)
    assert p is not None and p.slot is slots[1] and p.donor is None and p.reuse == 0
    # with nothing busy there is no graph to add: the slot holding the prefix takes it
    slots = _slots([], [], [], prompt[:30])
    p = place(slots, prompt)
    assert p is not None and p.slot is slots[3] and p.donor is None and p.reuse == 30


def test_a_slot_that_joins_two_runs_of_busy_slots_comes_first() -> None:
    slots = _slots([9], [8], [7], [6], [5], busy=(0, 2))
    slots[1].last_used, slots[3].last_used = 9.0, 0.0  # slot 3 is older but only extends a run
    p = place(slots, [1, 2, 3])
    assert p is not None and p.slot is slots[1]  # slots 0-2 become one graph


def test_a_copy_must_save_min_copy_tokens() -> None:
    """One KV stream per slot: a copy moves a whole stream, worth it only for a long prefix."""
    prompt = list(range(100))
    slots = _slots(prompt[: 10 + MIN_COPY], prompt[:10], busy=(0,))
    p = place(slots, prompt)  # the busy slot holds MIN_COPY more tokens: copied
    assert p is not None and p.donor is slots[0] and p.reuse == 10 + MIN_COPY
    slots = _slots(prompt[: 9 + MIN_COPY], [*prompt[:10], 7], busy=(0,))
    p = place(slots, prompt)  # one less is not enough: evaluated again
    assert p is not None and p.donor is None and p.slot is slots[1] and p.reuse == 10
    p = place(_slots(prompt[: MIN_COPY - 1], [], busy=(0,)), prompt)
    assert p is not None and p.donor is None and p.reuse == 0


def test_a_free_slot_with_the_prefix_does_not_copy() -> None:
    slots = _slots([1, 2, 3, 4], [1, 2, 3, 4], busy=(0,))
    p = place(slots, [1, 2, 3, 4, 5])
    assert p is not None and p.slot is slots[1] and p.reuse == 4 and p.donor is None


def test_donor_share_is_capped_at_prompt_minus_one() -> None:
    slots = _slots([1, 2, 3, 4, 5, 6], [], busy=(0,))
    p = place(slots, [1, 2, 3], min_copy=1)
    assert p is not None and p.donor is slots[0] and p.reuse == 2 and p.slot is slots[1]


def test_place_never_picks_a_busy_slot() -> None:
    slots = _slots([1, 2, 3], [1, 2, 3], [], busy=(0, 1))
    p = place(slots, [1, 2, 3, 4], min_copy=1)
    assert p is not None and p.slot is slots[2] and not p.slot.busy
    assert p.donor in (slots[0], slots[1]) and p.reuse == 3


# ---------------------------------------------------------------- compaction


def _moves(busy: tuple[int, ...], n: int = 8, fixed: tuple[int, ...] = ()) -> list[tuple[int, int]]:
    slots = _slots(*([] for _ in range(n)), busy=busy)
    movable = {i for i in busy if i not in fixed}
    return [(a.seq_id, b.seq_id) for a, b in compaction(slots, movable)]


def test_compaction_leaves_one_run_alone() -> None:
    assert _moves(()) == [] and _moves((5,)) == []
    assert _moves((0, 1, 2)) == [] and _moves((3, 4, 5, 6, 7)) == []


def test_compaction_fills_gaps_with_the_fewest_moves() -> None:
    assert _moves((0, 1, 2, 3, 4, 5, 7)) == [(7, 6)]
    assert _moves((0, 2)) == [(2, 1)]  # the first run holding the most: [0, 1]
    # moving the lone 0 next to the five beats moving the five down into 1..5
    assert _moves((0, 9, 10, 11, 12, 13), n=16) == [(0, 8)]
    assert _moves((0, 3, 5, 7)) == [(5, 1), (7, 2)]  # [0..3] holds two, as does [4..7]


def test_compaction_moves_a_busy_slot_into_a_free_one_once() -> None:
    for busy in ((0, 2, 4, 6), (1, 7), (0, 1, 5, 6, 7), (2, 3, 4, 9, 15)):
        moves = _moves(busy, n=16)
        sources, targets = [a for a, _ in moves], [b for _, b in moves]
        assert set(sources) <= set(busy) and not set(targets) & set(busy)
        assert len(set(sources)) == len(sources) and len(set(targets)) == len(targets)
        after = sorted((set(busy) - set(sources)) | set(targets))
        assert after == list(range(after[0], after[0] + len(busy)))


def test_compaction_never_moves_a_slot_that_may_not_move() -> None:
    assert _moves((0, 2), fixed=(2,)) == [(0, 1)]
    assert _moves((0, 7), fixed=(0, 7)) == []  # no run of 2 holds both
    assert _moves((0, 4, 7), fixed=(4,)) == [(0, 2), (7, 3)]


# ---------------------------------------------------------------- pending_share


def test_pending_share_waits_for_a_prefix_being_prefilled() -> None:
    prompt = list(range(100))
    slot = Slot(seq_id=0, tokens=prompt[:10], planned=prompt[10:], busy=True)
    assert pending_share([slot], prompt, have=0)
    # what we already have is close to what the prefill will give: not worth waiting
    assert not pending_share([slot], prompt, have=100 - MIN_COPY + 1)  # not worth a copy
    assert pending_share([slot], prompt, have=100 - MIN_COPY)


def test_pending_share_ignores_small_or_finished_prefixes() -> None:
    prompt = list(range(100))
    short = Slot(seq_id=0, tokens=[], planned=prompt[: MIN_COPY - 1], busy=True)
    assert not pending_share([short], prompt, have=0)
    done = Slot(seq_id=1, tokens=prompt, planned=[], busy=True)  # nothing planned: place() shares
    assert not pending_share([done], prompt, have=0)
    other = Slot(seq_id=2, tokens=[], planned=[1000 + i for i in range(50)], busy=True)
    assert not pending_share([other], prompt, have=0)
    # the planned part must add to what the slot already holds (here it diverges at once):
    # place() already shares the 40 evaluated tokens, there is nothing to wait for
    diverging = Slot(seq_id=3, tokens=prompt[:40], planned=[7] * 30, busy=True)
    assert not pending_share([diverging], prompt, have=0)


# ---------------------------------------------------------------- StopMatcher


def _run(stops: list[str], pieces: list[str]) -> tuple[str, bool, list[str]]:
    m = StopMatcher(stops)
    out: list[str] = []
    for p in pieces:
        text, hit = m.feed(p)
        out.append(text)
        if hit:
            return "".join(out), True, out
    out.append(m.flush())
    return "".join(out), False, out


def test_no_stops_passes_everything_through() -> None:
    m = StopMatcher([])
    assert m.feed("abc") == ("abc", False)
    assert m.flush() == ""
    assert StopMatcher([""]).feed("x") == ("x", False)  # an empty stop is ignored


def test_stop_inside_one_piece() -> None:
    text, hit, _ = _run(["END"], ["hello END world"])
    assert (text, hit) == ("hello ", True)


def test_stop_across_pieces_is_held_back_then_cut() -> None:
    text, hit, out = _run(["END"], ["hello E", "N", "D and more"])
    assert hit and text == "hello "
    assert out[0] == "hello " and out[1] == ""  # "E", "EN" held back, never sent


def test_held_back_text_is_released_when_it_is_not_a_stop() -> None:
    text, hit, out = _run(["END"], ["hello E", "Nx"])
    assert not hit and text == "hello ENx"
    assert out[0] == "hello " and out[1] == "ENx"


def test_held_back_text_is_flushed_at_the_end() -> None:
    _text, hit, out = _run(["END"], ["abc EN"])
    assert not hit and out == ["abc ", "EN"]


def test_the_earliest_of_several_stops_wins() -> None:
    text, hit, _ = _run(["world", "lo"], ["hello world"])
    assert (text, hit) == ("hel", True)
    text, hit, _ = _run(["\n\n", "Q:"], ["answer\n", "\nQ: next"])
    assert (text, hit) == ("answer", True)


def test_the_longest_possible_overlap_is_held() -> None:
    m = StopMatcher(["abcd", "xy"])
    assert m.feed("zzabc") == ("zz", False)
    assert m.pending == "abc"
    assert m.feed("x") == ("abc", False)  # "abcx": only "x" may still start "xy"
    assert m.feed("y") == ("", True)


def test_a_repeated_prefix_inside_the_stop() -> None:
    # "aab": after "aa" the matcher must still find "aab" starting at the second "a"
    text, hit, _ = _run(["aab"], ["a", "a", "a", "b"])
    assert (text, hit) == ("a", True)


def test_unicode_stops() -> None:
    text, hit, _ = _run(["—end"], ["café —", "en", "d!"])
    assert (text, hit) == ("café ", True)


# ---------------------------------------------------------------- Outbox


class _RecordingLoop:
    """Stands in for an event loop: records each wake-up, runs it when told."""

    def __init__(self) -> None:
        self.wakeups: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: object) -> None:
        self.wakeups.append((fn, args))

    def run(self) -> None:
        for fn, args in self.wakeups:
            fn(*args)


def test_the_outbox_holds_calls_until_flushed_then_delivers_them_in_order() -> None:
    loop, other = _RecordingLoop(), _RecordingLoop()
    got: list[int] = []
    outbox = Outbox()
    for i in range(5):
        outbox.post(loop, got.append, i)  # type: ignore[arg-type]
    outbox.post(other, got.append, 99)  # type: ignore[arg-type]
    assert loop.wakeups == [] and other.wakeups == []  # nothing leaves before the flush
    outbox.flush()
    outbox.flush()  # an empty outbox wakes nobody
    assert len(loop.wakeups) == 1 and len(other.wakeups) == 1  # one wake-up per loop
    loop.run()
    assert got == [0, 1, 2, 3, 4]
    other.run()
    assert got[-1] == 99


async def test_a_failing_call_does_not_swallow_the_calls_behind_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    got: list[str] = []

    def broken() -> None:
        raise ValueError("boom")

    outbox = Outbox()
    outbox.post(loop, broken)
    outbox.post(loop, got.append, "after")
    with caplog.at_level(logging.ERROR, logger="llamanet.node.engine"):
        thread = threading.Thread(target=outbox.flush)
        thread.start()
        thread.join()
        await asyncio.sleep(0)
    assert got == ["after"]
    assert "boom" in caplog.text


def test_a_closed_loop_is_skipped_at_shutdown() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    outbox = Outbox()
    outbox.post(loop, print, "never")
    outbox.flush()  # no RuntimeError out of the worker


# ---------------------------------------------------------------- model parameters


AMX_INFO = b"CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | OPENMP = 1 | REPACK = 1 | "
NO_AMX_INFO = b"CPU : SSE3 = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | OPENMP = 1 | REPACK = 1 | "


def test_extra_buffers_without_amx_and_with_amx_only_after_the_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    checked: list[Path] = []

    def check(path: Path) -> bool:
        checked.append(path)
        return path.name == "good.gguf"

    monkeypatch.setattr(_model, "amx_kernels_work", check)
    assert _model.extra_buffers_safe(None, NO_AMX_INFO)
    assert _model.extra_buffers_safe(tmp_path / "bad.gguf", NO_AMX_INFO)
    assert checked == []  # no AMX: nothing to check
    assert not _model.extra_buffers_safe(None, AMX_INFO)  # AMX and no model to try
    assert _model.extra_buffers_safe(tmp_path / "good.gguf", AMX_INFO)
    assert not _model.extra_buffers_safe(tmp_path / "bad.gguf", AMX_INFO)
    assert [p.name for p in checked] == ["good.gguf", "bad.gguf"]


@pytest.mark.parametrize(("info", "extra"), [(AMX_INFO, False), (NO_AMX_INFO, True)])
def test_model_params_follow_this_builds_cpu_features(
    monkeypatch: pytest.MonkeyPatch, info: bytes, extra: bool
) -> None:
    monkeypatch.setattr(_model.C, "llama_print_system_info", lambda: info)
    monkeypatch.setattr(_model, "amx_kernels_work", lambda path: False)
    params = _model.model_params()
    assert params.use_extra_bufts is extra
    assert params.n_gpu_layers == 0
    assert _model.model_params(-1).n_gpu_layers == 0x7FFFFFFF  # every layer
    assert _model.model_params(12).n_gpu_layers == 12


def test_a_context_llama_cpp_refuses_is_explained_in_the_options_terms() -> None:
    why = _engine.context_failure(64, 32768, 23040, 20 * 2**30)
    assert "64 slots x 32768 tokens need about 45.0 GiB of KV cache" in why
    assert "20.0 GiB of memory are available" in why and "--parallel or --n-ctx" in why
    assert "available" not in _engine.context_failure(1, 2048, 23040, None)


@pytest.fixture
def amx_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LLAMANET_AMX", raising=False)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    return model


@pytest.mark.parametrize(
    ("child", "verdict"),
    [((0, "ok\n", ""), True), ((-11, "", ""), False), ((1, "", "boom"), False)],
)
def test_the_amx_check_asks_a_child_once_per_build_and_model(
    monkeypatch: pytest.MonkeyPatch, amx_cache: Path, child: tuple[int, str, str], verdict: bool
) -> None:
    runs: list[list[str]] = []

    def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        runs.append(cmd)
        return subprocess.CompletedProcess(cmd, child[0], child[1], child[2])

    monkeypatch.setattr(_amx.subprocess, "run", run)
    assert _amx.amx_kernels_work(amx_cache) is verdict
    assert _amx.amx_kernels_work(amx_cache) is verdict  # from the cache
    assert len(runs) == 1 and runs[0][-2:] == ["llamanet.node.engine._amx", str(amx_cache)]
    assert json.loads(_amx.cache_file().read_text()) == {_amx._build_key(amx_cache): verdict}
    amx_cache.write_bytes(b"GGUF v2")  # another model file: asked again
    _amx.amx_kernels_work(amx_cache)
    assert len(runs) == 2


def test_a_model_the_amx_check_cannot_load_gets_no_verdict(
    monkeypatch: pytest.MonkeyPatch, amx_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A truncated or foreign file says nothing of the kernels: no AMX buffers this time, no
    'rebuild llama-cpp-python' warning, nothing cached (the node's own load reports it)."""
    runs: list[list[str]] = []

    def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        runs.append(cmd)
        return subprocess.CompletedProcess(cmd, _amx.UNLOADABLE, "", "warning\nFailed to load")

    monkeypatch.setattr(_amx.subprocess, "run", run)
    with caplog.at_level(logging.INFO, logger="llamanet.node.engine"):
        assert _amx.amx_kernels_work(amx_cache) is False
        assert _amx.amx_kernels_work(amx_cache) is False
    assert len(runs) == 2  # asked again: nothing was cached
    assert not _amx.cache_file().exists()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "could not load the model (Failed to load)" in caplog.text


def test_the_amx_check_child_tells_an_unloadable_file_from_failing_kernels(
    amx_cache: Path,
) -> None:
    amx_cache.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(64))  # a header, then nothing
    verdict, why = _amx._run_check(amx_cache)
    assert verdict is None and "Failed to load model" in why


def test_the_amx_check_is_skipped_when_turned_off(
    monkeypatch: pytest.MonkeyPatch, amx_cache: Path
) -> None:
    monkeypatch.setenv("LLAMANET_AMX", "off")
    monkeypatch.setattr(_amx.subprocess, "run", lambda *a, **k: pytest.fail("ran the check"))
    assert _amx.amx_kernels_work(amx_cache) is False


def test_a_hanging_amx_check_is_a_no(monkeypatch: pytest.MonkeyPatch, amx_cache: Path) -> None:
    def run(cmd: list[str], **kw: object) -> None:
        raise subprocess.TimeoutExpired(cmd, _amx.CHECK_TIMEOUT)

    monkeypatch.setattr(_amx.subprocess, "run", run)
    assert _amx._run_check(amx_cache) == (False, f"no answer in {_amx.CHECK_TIMEOUT:.0f} s")


@pytest.mark.model
def test_the_amx_check_child_evaluates_the_model(model_path: Path) -> None:
    """The child really loads and runs the model: where this build's kernels are sound it
    says ok (every CPU without AMX; with AMX, a build with scripts/amx-tilecfg-fix.h)."""
    verdict, why = _amx._run_check(model_path)
    if not _amx.cpu_has_amx():
        assert (verdict, why) == (True, "ok")
    else:
        assert verdict or why.startswith("killed by signal"), why


# ---------------------------------------------------------------- default slots

MIB = 2**20


@pytest.mark.parametrize(
    ("kv_per_slot", "available", "slots"),
    [
        (47 * MIB, 22_000 * MIB, 16),  # the default model at 2048 tokens: 16 whatever the cores
        (47 * MIB, 2_000 * MIB, 10),  # ... on a small machine: what a quarter holds
        (512 * MIB, 22_000 * MIB, 10),  # a 7B at 4096 tokens on 24 GB: 10 fit
        (512 * MIB, 6_000 * MIB, 2),
        (512 * MIB, 1_000 * MIB, 1),  # never none
        (47 * MIB, None, 16),  # memory unknown: the throughput bound alone
    ],
)
def test_default_slots_are_16_unless_their_kv_cache_would_not_fit(
    monkeypatch: pytest.MonkeyPatch, kv_per_slot: int, available: int | None, slots: int
) -> None:
    from llamanet.node.engine import _engine

    monkeypatch.setattr(_engine, "available_memory", lambda: available)
    assert _engine.default_parallel(kv_per_slot) == slots


def test_available_memory_is_read_on_this_machine() -> None:
    from llamanet.node.engine import _engine

    memory = _engine.available_memory()
    assert memory is None or memory > 16 * MIB
