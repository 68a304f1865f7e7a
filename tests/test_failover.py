"""The one failover policy (`llamanet.swarm.failover`), in process: outcomes -> cooldown or skip,
attempt bounds, the prompt estimate, the model list, the first-byte deadline. No network."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from llamanet.protocol import ChatMessage, ModelInfo, NodeRecord
from llamanet.swarm.failover import (
    Failover,
    Verdict,
    estimate_prompt_tokens,
    estimate_request_tokens,
    judge_status,
    judge_stream_error,
    swarm_models,
    wait_for_answer,
)
from llamanet.swarm.selector import NodeSelector

MODEL = "tiny"


def rec(
    node_id: str,
    *,
    models: list[tuple[str, int]] | None = None,
    started_at: float = 100.0,
    seq: int = 1,
    active: int = 0,
    withdrawn: bool = False,
) -> NodeRecord:
    return NodeRecord(
        node_id=node_id,
        public_key="00" * 32,
        url=f"http://{node_id}.test",
        models=[
            ModelInfo(id=m, n_ctx=n) for m, n in (models if models is not None else [(MODEL, 2048)])
        ],
        active=active,
        tokens_per_second=10.0,
        version="test",
        started_at=started_at,
        seq=seq,
        issued_at=0.0,
        ttl=30.0,
        withdrawn=withdrawn,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def selector(clock: Clock | None = None) -> NodeSelector:
    return NodeSelector(rng=random.Random(7), clock=clock or Clock())


# --------------------------------------------------------------------------- verdicts

STATUS_TABLE: list[tuple[int, str | None, str | None, float | None, Verdict]] = [
    # a full queue / loading model / shutting down: busy, skip without cooldown
    (503, "server_overloaded", "queue_full", 2.0, Verdict.SKIP),
    (503, "server_overloaded", "model_loading", 2.0, Verdict.SKIP),
    (503, "server_overloaded", "shutting_down", 1.0, Verdict.SKIP),
    # rate and concurrency limits: busy for this caller
    (429, "rate_limit_error", "rate_limit_exceeded", 30.0, Verdict.SKIP),
    (429, "rate_limit_error", "concurrency_limit_exceeded", None, Verdict.SKIP),
    # a stale record: the node no longer serves the model
    (404, "not_found_error", "model_not_found", None, Verdict.SKIP),
    # broken: every other 5xx, a 503 that asks for no wait (a model that failed to load)
    (500, "server_error", "generation_failed", None, Verdict.COOL_DOWN),
    (502, "upstream_error", "peer_unreachable", 1.0, Verdict.COOL_DOWN),
    (503, "server_overloaded", "model_load_failed", None, Verdict.COOL_DOWN),
    (504, "timeout_error", "timeout", None, Verdict.COOL_DOWN),
    # the caller's own error: same answer everywhere
    (400, "invalid_request_error", "context_length_exceeded", None, Verdict.RAISE),
    (401, "authentication_error", "invalid_api_key", None, Verdict.RAISE),
    (403, "permission_error", "swarm_auth_failed", None, Verdict.RAISE),
    (404, "not_found_error", "not_found", None, Verdict.RAISE),
    (413, "invalid_request_error", "request_too_large", None, Verdict.RAISE),
]


@pytest.mark.parametrize(("status", "type_", "code", "retry_after", "verdict"), STATUS_TABLE)
def test_status_verdicts(
    status: int, type_: str | None, code: str | None, retry_after: float | None, verdict: Verdict
) -> None:
    assert (
        judge_status(status, error_type=type_, error_code=code, retry_after=retry_after) is verdict
    )


@pytest.mark.parametrize(
    ("type_", "code", "verdict"),
    [
        ("server_error", "generation_failed", Verdict.COOL_DOWN),
        ("server_error", "internal_error", Verdict.COOL_DOWN),
        ("timeout_error", "timeout", Verdict.COOL_DOWN),
        ("server_overloaded", "queue_full", Verdict.SKIP),
        ("not_found_error", "model_not_found", Verdict.SKIP),
        ("invalid_request_error", "invalid_value", Verdict.RAISE),
        (None, None, Verdict.COOL_DOWN),
    ],
)
def test_stream_error_verdicts(type_: str | None, code: str | None, verdict: Verdict) -> None:
    assert judge_stream_error(type_, code) is verdict


# --------------------------------------------------------------------------- one request


def failover(sel: NodeSelector, records: list[NodeRecord], **kwargs: Any) -> Failover[str]:
    return Failover(sel, records=lambda: records, model=MODEL, **kwargs)


# one row per scenario: the verdicts of successive attempts -> cooling nodes, attempts used
SCENARIOS = [
    ([Verdict.COOL_DOWN], {"a"}),
    ([Verdict.SKIP], set()),
    ([Verdict.SKIP, Verdict.COOL_DOWN], {"b"}),
    ([Verdict.COOL_DOWN, Verdict.COOL_DOWN, Verdict.COOL_DOWN], {"a", "b", "c"}),
    ([Verdict.SKIP, Verdict.SKIP, Verdict.SKIP], set()),
]


@pytest.mark.parametrize(("verdicts", "cooling"), SCENARIOS)
async def test_outcomes_cool_down_or_skip(verdicts: list[Verdict], cooling: set[str]) -> None:
    sel = selector()
    # a is the best node, then b, then c (fewer requests ahead)
    records = [rec("a"), rec("b", active=1), rec("c", active=2)]
    attempt = failover(sel, records)
    for verdict in verdicts:
        node = await attempt.next_node()
        assert node is not None
        seconds = attempt.failed(node, verdict, f"{node.node_id} failed")
        assert (seconds > 0) is (verdict is Verdict.COOL_DOWN)
    assert [n.node_id for n in attempt.tried] == ["a", "b", "c"][: len(verdicts)]
    assert {r.node_id for r in records if sel.in_cooldown(r.node_id)} == cooling
    assert attempt.all_busy is all(v is Verdict.SKIP for v in verdicts)


async def test_cooldown_doubles_across_requests_and_success_resets_it() -> None:
    clock = Clock()
    sel = selector(clock)
    records = [rec("a")]
    for expected in (2.0, 4.0, 8.0):
        attempt = failover(sel, records)
        node = await attempt.next_node()
        assert node is not None
        assert attempt.failed(node, Verdict.COOL_DOWN, "boom") == expected
        clock.now += expected + 0.01
    attempt = failover(sel, records)
    node = await attempt.next_node()
    assert node is not None
    attempt.succeeded(node)
    assert attempt.failed(node, Verdict.COOL_DOWN, "boom") == 2.0


async def test_a_restarted_node_leaves_its_cooldown_behind() -> None:
    """The streak of a dead incarnation must not delay its successor (issue 13)."""
    clock = Clock()
    sel = selector(clock)
    old = rec("a", started_at=100.0, seq=5)
    for _ in range(4):  # four failures: the next cooldown would be 16 s
        attempt = failover(sel, [old])
        node = await attempt.next_node()
        assert node is not None
        attempt.failed(node, Verdict.COOL_DOWN, "dead")
        clock.now += 60
    attempt = failover(sel, [old])
    node = await attempt.next_node()
    assert node is not None
    attempt.failed(node, Verdict.COOL_DOWN, "dead")
    assert await failover(sel, [old]).next_node() is None  # cooling down
    assert await failover(sel, [rec("a", started_at=100.0, seq=6)]).next_node() is None
    restarted = rec("a", started_at=200.0, seq=9)
    assert await failover(sel, [restarted]).next_node() == restarted
    attempt = failover(sel, [restarted])
    node = await attempt.next_node()
    assert node is not None
    assert attempt.failed(node, Verdict.COOL_DOWN, "again") == 2.0  # a fresh streak


async def test_attempts_are_bounded() -> None:
    sel = selector()
    records = [rec(n) for n in "abcde"]
    attempt = failover(sel, records, attempts=2)
    for _ in range(2):
        node = await attempt.next_node()
        assert node is not None
        attempt.failed(node, Verdict.SKIP, "busy")
    assert await attempt.next_node() is None
    assert len(attempt.failures) == 2


async def test_refresh_once_when_nothing_is_left() -> None:
    sel = selector()
    records: list[NodeRecord] = []
    calls = 0

    async def refresh() -> None:
        nonlocal calls
        calls += 1
        records.append(rec("late"))

    attempt = Failover[str](sel, records=lambda: records, refresh=refresh, model=MODEL)
    node = await attempt.next_node()
    assert node is not None and node.node_id == "late" and calls == 1
    attempt.failed(node, Verdict.COOL_DOWN, "boom")
    assert await attempt.next_node() is None
    assert calls == 1  # one discovery round per request, not one per attempt


async def test_excluded_and_gateway_nodes() -> None:
    sel = selector()
    gateway = rec("g", models=[])
    records = [rec("self"), gateway, rec("b")]
    attempt = failover(sel, records, exclude={"self"})
    node = await attempt.next_node()
    assert node is not None and node.node_id == "b"
    assert [r.node_id for r in attempt.candidates()] == ["b"]  # a gateway serves no model
    unfiltered = Failover[str](sel, records=lambda: records, model=None, exclude={"self"})
    assert [r.node_id for r in unfiltered.candidates()] == ["b"]


async def test_prompt_estimate_prefers_nodes_that_fit_but_never_rules_out_the_last() -> None:
    sel = selector()
    small, big = rec("small", models=[(MODEL, 512)]), rec("big", models=[(MODEL, 8192)])
    prompt_tokens = estimate_prompt_tokens("word " * 300)
    assert prompt_tokens + 256 > 512
    for _ in range(5):
        attempt = failover(sel, [small, big], prompt_tokens=prompt_tokens, max_tokens=256)
        node = await attempt.next_node()
        assert node is not None and node.node_id == "big"
    attempt = failover(sel, [small], prompt_tokens=prompt_tokens, max_tokens=16)
    assert await attempt.next_node() == small  # the estimate is high: the node decides
    attempt = failover(sel, [small], prompt_tokens=2, max_tokens=600)
    assert await attempt.next_node() is None  # max_tokens alone does not fit


def test_retry_after_is_the_shortest_asked() -> None:
    attempt = failover(selector(), [rec("a"), rec("b")])
    assert attempt.retry_after(default=2.0) == 2.0
    attempt.failed(rec("a"), Verdict.SKIP, "busy", retry_after=5.0)
    attempt.failed(rec("b"), Verdict.SKIP, "busy", retry_after=3.0)
    assert attempt.retry_after() == 3.0


# --------------------------------------------------------------------------- shared helpers


def test_prompt_estimate_is_the_same_for_every_body_shape() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    expected = estimate_prompt_tokens(messages=[ChatMessage.model_validate(m) for m in messages])
    assert estimate_request_tokens({"messages": messages}) == expected  # chat / native chat
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert estimate_request_tokens({"messages": parts}) == estimate_prompt_tokens(
        messages=[ChatMessage(role="user", content="Hi")]
    )
    assert estimate_request_tokens({"prompt": "Once upon"}) == estimate_prompt_tokens("Once upon")
    assert estimate_request_tokens({"prompt": ["Once upon"]}) == estimate_prompt_tokens("Once upon")
    assert estimate_request_tokens({"prompt": 5}) == 0
    assert estimate_request_tokens({}) == 0
    # high on purpose: more than bytes / 4
    assert estimate_prompt_tokens("x" * 400) > 100


def test_swarm_models_take_the_largest_context() -> None:
    records = [
        rec("a", models=[(MODEL, 512)]),
        rec("b", models=[(MODEL, 4096), ("other", 1024)]),
        rec("c", models=[("gone", 9999)], withdrawn=True),
        rec("g", models=[]),
    ]
    cards = {c.id: c for c in swarm_models(records)}
    assert list(cards) == ["other", MODEL]  # by id
    assert cards[MODEL].nodes == 2 and cards[MODEL].n_ctx == 4096
    assert cards["other"].nodes == 1 and cards["other"].n_ctx == 1024


# --------------------------------------------------------------------------- first byte


async def test_an_answer_in_time_is_returned() -> None:
    async def alive() -> bool:
        raise AssertionError("no probe needed")

    assert await wait_for_answer(asyncio.sleep(0, "head"), first_byte_timeout=1, alive=alive)


async def test_a_slow_but_live_node_is_waited_for() -> None:
    probes = 0

    async def alive() -> bool:
        nonlocal probes
        probes += 1
        return True

    result = await wait_for_answer(asyncio.sleep(0.2, "head"), first_byte_timeout=0.05, alive=alive)
    assert result == "head" and probes == 1


@pytest.mark.parametrize("probe", ["false", "hangs", "raises"])
async def test_a_silent_node_that_fails_its_probe_is_abandoned(probe: str) -> None:
    cancelled = asyncio.Event()

    async def answer() -> str:
        try:
            await asyncio.sleep(30)
        finally:
            cancelled.set()
        return "never"

    async def alive() -> bool:
        if probe == "hangs":
            await asyncio.sleep(30)
        if probe == "raises":
            raise OSError("connection reset")
        return False

    with pytest.raises(TimeoutError):
        await wait_for_answer(answer(), first_byte_timeout=0.05, alive=alive)
    assert cancelled.is_set()  # the request to the frozen node is not left running


async def test_a_failure_is_raised_as_is() -> None:
    async def answer() -> str:
        raise ConnectionRefusedError("refused")

    async def alive() -> bool:
        return True

    with pytest.raises(ConnectionRefusedError):
        await wait_for_answer(answer(), first_byte_timeout=1, alive=alive)
