"""NodeSelector: strategies, filters, cooldowns and tie-breaking on plain records (no network)."""

from __future__ import annotations

import random
from collections import Counter
from contextlib import ExitStack

import pytest

from llamanet.protocol import ModelInfo, NodeRecord
from llamanet.swarm.selector import NodeSelector

MODEL = "tiny-model"


def make_record(
    node_id: str,
    *,
    tps: float = 10.0,
    load: float = 0.0,
    active: int = 0,
    queued: int = 0,
    models: list[tuple[str, int]] | None = None,
    seq: int = 1,
    withdrawn: bool = False,
    slots: int = 0,
) -> NodeRecord:
    model_list = models if models is not None else [(MODEL, 2048)]
    return NodeRecord(
        node_id=node_id,
        public_key="00" * 32,
        url=f"http://127.0.0.1/{node_id}",
        models=[ModelInfo(id=m, n_ctx=n) for m, n in model_list],
        load=load,
        active=active,
        queued=queued,
        slots=slots,
        tokens_per_second=tps,
        version="test",
        started_at=0.0,
        seq=seq,
        issued_at=0.0,
        ttl=30.0,
        withdrawn=withdrawn,
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ids(records: list[NodeRecord]) -> list[str]:
    return [r.node_id for r in records]


def selector(strategy: str = "load_balanced", **kwargs: object) -> NodeSelector:
    return NodeSelector(strategy, rng=random.Random(1234), **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- strategies


def test_unknown_strategy_rejected() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        NodeSelector("fastest-ever")


def test_load_balanced_prefers_lowest_expected_wait() -> None:
    busy_fast = make_record("a", tps=50.0, active=1, queued=4)  # 5 / 50 = 0.1
    idle_slow = make_record("b", tps=5.0, active=0)  # 0
    busy_slow = make_record("c", tps=5.0, active=1, queued=1)  # 2 / 5 = 0.4
    ranked = selector().rank([busy_slow, busy_fast, idle_slow])
    assert ids(ranked) == ["b", "a", "c"]


def test_load_balanced_counts_rtt() -> None:
    sel = selector()
    sel.record_rtt("a", 0.5)
    sel.record_rtt("b", 0.01)
    ranked = sel.rank([make_record("a"), make_record("b")])
    assert ids(ranked) == ["b", "a"]


def test_load_balanced_tps_floor_for_slow_node() -> None:
    sel = selector(tps_floor=2.0)
    # 1 / max(0.5, 2.0) = 0.5  vs  3 / 10 = 0.3
    ranked = sel.rank([make_record("slow", tps=0.5, active=1), make_record("ok", active=3)])
    assert ids(ranked) == ["ok", "slow"]


def test_unmeasured_node_is_not_starved() -> None:
    """A node with tps 0 (not measured yet) gets the median speed of its peers, not the floor."""
    sel = selector()
    fresh = make_record("fresh", tps=0.0, active=1)
    measured = make_record("measured", tps=20.0, active=3)
    assert ids(sel.rank([measured, fresh])) == ["fresh", "measured"]
    # with nobody measured, the floor applies to all and load decides
    ranked = sel.rank([make_record("x", tps=0.0, active=2), make_record("y", tps=0.0, active=1)])
    assert ids(ranked) == ["y", "x"]


def test_in_flight_requests_spread_over_nodes() -> None:
    sel = selector()
    records = [make_record("a"), make_record("b")]
    chosen: list[str] = []
    with ExitStack() as stack:
        for _ in range(8):
            node = sel.select(records)
            assert node is not None
            chosen.append(node.node_id)
            stack.enter_context(sel.track(node.node_id))
        assert sel.in_flight("a") + sel.in_flight("b") == 8
    counts = Counter(chosen)
    assert counts["a"] == counts["b"] == 4
    assert sel.in_flight("a") == sel.in_flight("b") == 0


def test_in_flight_spreads_proportionally_to_speed() -> None:
    sel = selector()
    records = [make_record("fast", tps=30.0), make_record("slow", tps=10.0)]
    chosen = Counter()
    with ExitStack() as stack:
        for _ in range(8):
            node = sel.select(records)
            assert node is not None
            chosen[node.node_id] += 1
            stack.enter_context(sel.track(node.node_id))
    assert chosen["fast"] == 6 and chosen["slow"] == 2


def test_track_counts_until_exit_even_on_error() -> None:
    sel = selector()
    with pytest.raises(RuntimeError), sel.track("a"):
        assert sel.in_flight("a") == 1
        raise RuntimeError("boom")
    assert sel.in_flight("a") == 0


def test_round_robin_rotates() -> None:
    sel = selector("round_robin")
    records = [make_record("c"), make_record("a"), make_record("b")]
    firsts = [sel.select(records).node_id for _ in range(6)]  # type: ignore[union-attr]
    assert firsts == ["a", "b", "c", "a", "b", "c"]


def test_round_robin_skips_ineligible() -> None:
    sel = selector("round_robin")
    records = [make_record("a"), make_record("b"), make_record("c", models=[("other", 2048)])]
    firsts = [sel.select(records, model=MODEL).node_id for _ in range(4)]  # type: ignore[union-attr]
    assert firsts == ["a", "b", "a", "b"]


def test_random_strategy_uses_every_node() -> None:
    sel = selector("random")
    records = [make_record(n, tps=t) for n, t in (("a", 1.0), ("b", 100.0), ("c", 50.0))]
    counts = Counter(sel.select(records).node_id for _ in range(300))  # type: ignore[union-attr]
    assert set(counts) == {"a", "b", "c"}
    assert min(counts.values()) > 60


def test_fastest_orders_by_tokens_per_second() -> None:
    records = [make_record("a", tps=5.0), make_record("b", tps=40.0), make_record("c", tps=20.0)]
    assert ids(selector("fastest").rank(records)) == ["b", "c", "a"]


def test_latency_known_before_unknown() -> None:
    sel = selector("latency")
    sel.record_rtt("c", 0.2)
    sel.record_rtt("a", 0.05)
    records = [make_record(n) for n in ("a", "b", "c", "d")]
    ranked = ids(sel.rank(records))
    assert ranked[:2] == ["a", "c"]
    assert set(ranked[2:]) == {"b", "d"}


def test_rtt_is_an_moving_average() -> None:
    sel = selector()
    assert sel.rtt("a") is None
    sel.record_rtt("a", 1.0)
    assert sel.rtt("a") == 1.0
    sel.record_rtt("a", 0.0)
    assert 0.0 < sel.rtt("a") < 1.0  # type: ignore[operator]


# --------------------------------------------------------------------------- tie-breaking


@pytest.mark.parametrize("strategy", ["load_balanced", "fastest", "latency"])
def test_ties_are_broken_at_random(strategy: str) -> None:
    """Identical nodes share the traffic; never always the first listed (LiteLLM's bug)."""
    sel = selector(strategy)
    records = [make_record(n) for n in ("a", "b", "c", "d")]
    if strategy == "latency":
        for name in ("a", "b", "c", "d"):
            sel.record_rtt(name, 0.01)
    counts = Counter(sel.select(records).node_id for _ in range(400))  # type: ignore[union-attr]
    assert set(counts) == {"a", "b", "c", "d"}
    assert min(counts.values()) > 50


def test_ties_broken_at_random_with_default_rng() -> None:
    records = [make_record("a"), make_record("b")]
    counts = Counter(NodeSelector().select(records).node_id for _ in range(200))  # type: ignore[union-attr]
    assert set(counts) == {"a", "b"}


def test_near_equal_rtt_is_a_tie() -> None:
    sel = selector(tie_tolerance=1e-3)
    sel.record_rtt("a", 0.0010)
    sel.record_rtt("b", 0.0012)
    records = [make_record("a"), make_record("b")]
    counts = Counter(sel.select(records).node_id for _ in range(200))  # type: ignore[union-attr]
    assert set(counts) == {"a", "b"}


# --------------------------------------------------------------------------- filters


def test_filter_by_model() -> None:
    records = [
        make_record("a", models=[("m1", 2048)]),
        make_record("b", models=[("m2", 2048), ("m1", 4096)]),
        make_record("c", models=[("m2", 2048)]),
    ]
    sel = selector()
    assert set(ids(sel.rank(records, model="m1"))) == {"a", "b"}
    assert set(ids(sel.rank(records, model="m2"))) == {"b", "c"}
    assert sel.rank(records, model="m3") == []
    assert set(ids(sel.rank(records))) == {"a", "b", "c"}


def test_node_without_models_is_never_chosen() -> None:
    assert selector().rank([make_record("empty", models=[])]) == []


def test_filter_min_tps() -> None:
    records = [make_record("a", tps=5.0), make_record("b", tps=15.0), make_record("c", tps=0.0)]
    assert ids(selector(min_tps=10.0).rank(records)) == ["b"]


def test_filter_max_load() -> None:
    records = [make_record("a", load=0.9), make_record("b", load=0.5), make_record("c", load=0.2)]
    assert set(ids(selector(max_load=0.5).rank(records))) == {"b", "c"}


def test_filter_context_length() -> None:
    records = [
        make_record("small", models=[(MODEL, 512)]),
        make_record("big", models=[(MODEL, 4096)]),
    ]
    sel = selector()
    assert set(ids(sel.rank(records, model=MODEL, prompt_tokens=256, max_tokens=256))) == {
        "small",
        "big",
    }
    assert ids(sel.rank(records, model=MODEL, prompt_tokens=257, max_tokens=256)) == ["big"]
    assert sel.rank(records, model=MODEL, prompt_tokens=4000, max_tokens=100) == []


def test_context_uses_the_requested_models_n_ctx() -> None:
    record = make_record("a", models=[("short", 512), ("long", 8192)])
    sel = selector()
    assert sel.rank([record], model="long", prompt_tokens=1000) == [record]
    assert sel.rank([record], model="short", prompt_tokens=1000) == []


def test_filter_withdrawn_and_older_records() -> None:
    live = make_record("a", seq=3)
    tombstone = make_record("b", seq=5, withdrawn=True)
    stale = make_record("b", seq=4)
    assert ids(selector().rank([live, stale, tombstone])) == ["a"]
    # several records of one node: only its newest counts
    assert len(selector().rank([make_record("a", seq=1), make_record("a", seq=2)])) == 1


def test_filter_exclude() -> None:
    records = [make_record("a"), make_record("b")]
    assert ids(selector().rank(records, exclude={"a"})) == ["b"]
    assert selector().select(records, exclude=["a", "b"]) is None


# --------------------------------------------------------------------------- cooldowns


def test_cooldown_doubles_and_expires() -> None:
    clock = FakeClock()
    sel = selector(cooldown_base=2.0, cooldown_max=10.0, clock=clock)
    records = [make_record("a"), make_record("b")]

    assert sel.mark_failed("a") == 2.0
    assert sel.in_cooldown("a")
    assert ids(sel.rank(records)) == ["b"]
    clock.now += 2.01
    assert not sel.in_cooldown("a")
    assert set(ids(sel.rank(records))) == {"a", "b"}

    assert sel.mark_failed("a") == 4.0  # the streak continues: doubled
    clock.now += 3.9
    assert sel.in_cooldown("a")
    clock.now += 0.2
    assert not sel.in_cooldown("a")
    assert sel.mark_failed("a") == 8.0
    assert sel.mark_failed("a") == 10.0  # capped
    assert sel.mark_failed("a") == 10.0


def test_mark_ok_resets_streak_and_cooldown() -> None:
    clock = FakeClock()
    sel = selector(cooldown_base=1.0, clock=clock)
    sel.mark_failed("a")
    sel.mark_failed("a")
    sel.mark_ok("a")
    assert not sel.in_cooldown("a")
    assert sel.mark_failed("a") == 1.0


def test_retry_after_lengthens_cooldown_within_cap() -> None:
    clock = FakeClock()
    sel = selector(cooldown_base=1.0, cooldown_max=30.0, clock=clock)
    assert sel.mark_failed("a", retry_after=5.0) == 5.0
    assert sel.cooldown_remaining("a") == pytest.approx(5.0)
    assert sel.mark_failed("b", retry_after=500.0) == 30.0


def test_all_in_cooldown_means_no_node() -> None:
    sel = selector(clock=FakeClock())
    records = [make_record("a"), make_record("b")]
    sel.mark_failed("a")
    sel.mark_failed("b")
    assert sel.select(records) is None


def test_a_batching_node_with_a_free_slot_beats_a_busier_serial_one() -> None:
    """A node batching 4 sequences with 2 busy starts a request at once; a one-at-a-time node
    with 1 request running makes it wait for the whole answer."""
    selector = NodeSelector(rng=random.Random(0))
    batching = make_record("batching", active=2, slots=4, tps=20.0)
    serial = make_record("serial", active=1, slots=1, tps=20.0)
    assert selector.expected_wait(batching) < selector.expected_wait(serial)
    assert selector.rank([serial, batching], model=MODEL)[0].node_id == batching.node_id
    full = make_record("full", active=4, queued=2, slots=4, tps=20.0)
    assert selector.expected_wait(full) > selector.expected_wait(batching)
