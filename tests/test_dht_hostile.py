"""A hostile DHT peer inside a swarm of real node processes (the end-to-end half of the DHT
validation tests; tests/test_dht.py covers storage and lookups in-process).

The attacker is an in-process `DHTNode` that joins the swarm through its bootstrap peers and then
talks the record RPCs directly: it pushes (`put`) one record of each bad kind under the
`model:<id>`, `all_nodes:<shard>` and `node:<id>` keys to every node, and it serves the same
records from its own storage to every lookup that asks it (a lying replica). Each kind must be
refused by every node (the node's `/dht/status` `invalid_records` counter for it moves) and none
may ever reach a router: not in any node's `GET /nodes`, `GET /v1/models`, nor in
`LlamaNetClient(bootstrap=...).nodes()`. A flood of valid records from one peer is bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from collections.abc import Set as AbstractSet
from typing import Any

import httpx
import pytest
from kademlia.node import Node

from llamanet import LlamaNetClient
from llamanet.cli.launcher import NodeProcess, wait_for_swarm
from llamanet.protocol import NodeRecord
from llamanet.swarm.dht import DHTNode
from llamanet.swarm.dht.keys import all_nodes_keys, digest, keys_for, model_key
from llamanet.swarm.dht.storage import Entry, RecordStorage
from llamanet.swarm.identity import NodeIdentity
from llamanet.swarm.records import MAX_RECORD_BYTES, canonical_bytes, encode_record

from factories import StartNode, make_record

# the attacker's UDP endpoint lives on the loop its fixture ran on: the tests must share it
pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="session")]

MODEL = "smol"
FORGED = "http://127.0.0.1:9/forged"  # every forged record points here: easy to spot
REASONS = (
    "unsigned",
    "bad_signature",
    "id_mismatch",
    "expired",
    "oversized",
    "malformed",
    "wrong_key",
    "stale_seq",
)


# ------------------------------------------------------------------ the swarm and the attacker


@pytest.fixture(scope="module")
def swarm(start_node: StartNode) -> list[NodeProcess]:
    a = start_node("--model-id", MODEL)
    b = start_node("--model-id", MODEL, "--bootstrap", a.bootstrap)
    wait_for_swarm([a, b])
    return [a, b]


@pytest.fixture
async def attacker(swarm: list[NodeProcess]) -> AsyncIterator[DHTNode]:
    """A full DHT peer (it enters the nodes' routing tables) with an identity of its own,
    running on the test's own event loop."""
    peer = DHTNode(NodeIdentity.generate(), rpc_timeout=1.0)
    await peer.start("127.0.0.1", 0)
    try:
        assert await peer.bootstrap([("127.0.0.1", n.dht_port) for n in swarm]) >= len(swarm)
        yield peer
    finally:
        await peer.stop()


async def get(node: NodeProcess, path: str, **params: str) -> Any:
    async with httpx.AsyncClient(timeout=30) as http:
        res = await http.get(node.url + path, params=params)
        assert res.status_code == 200, res.text
        return res.json()


async def node_id(node: NodeProcess) -> str:
    value: str = (await get(node, "/info"))["node_id"]
    return value


async def invalid_counts(node: NodeProcess) -> Counter[str]:
    return Counter((await get(node, "/dht/status"))["invalid_records"])


def dht_contact(node: NodeProcess, node_id_hex: str) -> Node:
    return Node(bytes.fromhex(node_id_hex), "127.0.0.1", node.dht_port)


async def record_of(observer: NodeProcess, wanted: str) -> NodeRecord:
    """`wanted`'s record as `observer` found it in the DHT (not a node's fresh self-portrait)."""
    for raw in (await get(observer, "/nodes"))["nodes"]:
        if raw["node_id"] == wanted:
            return NodeRecord.model_validate(raw)
    raise AssertionError(f"{observer.url} does not know {wanted}")


async def push(
    attacker: DHTNode,
    targets: list[tuple[NodeProcess, str]],
    wire: bytes,
    keys: list[str],
    ttl: float = 30.0,
) -> int:
    """`put` one wire record under each key at each target; how many copies were accepted."""
    accepted = 0
    for node, target_id in targets:
        for key in keys:
            ok, count = await attacker.protocol.call_put(
                dht_contact(node, target_id), digest(key), [[wire, ttl]]
            )
            assert ok, f"{node.url} did not answer the put"
            accepted += count
    return accepted


# ------------------------------------------------------------------ "never reaches a router"


async def assert_nothing_forged_visible(
    swarm: list[NodeProcess], gone: AbstractSet[str] = frozenset()
) -> None:
    """Every node, every read path, and a DHT client: each honest node listed as it is (its own
    URL), no forged record (they all point at `FORGED`), no node that has left (`gone`), and no
    model but the real one. (Only genuine strangers may appear too: other test runs on this
    machine can reach these nodes through reused ports.)"""
    honest = {(await get(n, "/info"))["node_id"]: n.url for n in swarm}

    def check(records: list[dict[str, Any]], where: str) -> None:
        by_id = {r["node_id"]: r for r in records}
        for nid, url in honest.items():
            assert nid in by_id and by_id[nid]["url"] == url, (where, nid, records)
        assert not any(r["url"].startswith(FORGED) for r in records), (where, records)
        assert not gone & set(by_id), (where, gone & set(by_id))

    for node in swarm:
        check((await get(node, "/nodes"))["nodes"], node.url + "/nodes")
        for record in (await get(node, "/nodes", model=MODEL))["nodes"]:
            assert not record["url"].startswith(FORGED), record
        models = {m["id"]: m["nodes"] for m in (await get(node, "/v1/models"))["data"]}
        assert not {"evil", "flood"} & set(models) and models[MODEL] >= len(honest), models
    async with LlamaNetClient(bootstrap=[swarm[0].bootstrap], refresh_interval=60) as client:
        found = await client.nodes()
    check([r.model_dump() for r in found], "LlamaNetClient.nodes()")


# ------------------------------------------------------------------ the forged records


def forge(victim: NodeRecord) -> dict[str, tuple[bytes, list[str]]]:
    """reason -> (wire record, keys to push it under); one record per kind of invalidity.

    Records claiming the victim's id carry a seq far above its own, so that nothing but their
    own defect can be why they are refused.
    """
    forger = NodeIdentity.generate()
    newer = {"url": FORGED, "seq": victim.seq + 10**9, "issued_at": time.time()}
    unsigned = victim.model_copy(update={**newer, "signature": ""})
    other_key = victim.model_copy(update=newer)  # the victim's key, the forger's signature
    other_key = other_key.model_copy(
        update={"signature": forger.sign(canonical_bytes(other_key)).hex()}
    )
    mismatch = victim.model_copy(update={**newer, "public_key": forger.public_key_hex})
    mismatch = mismatch.model_copy(  # a valid signature, but the id is not the key's hash
        update={"signature": forger.sign(canonical_bytes(mismatch)).hex()}
    )
    expired = make_record(forger, url=FORGED, models=(MODEL,), issued_at=time.time() - 1000)
    oversized = make_record(url=FORGED + "/" + "a" * MAX_RECORD_BYTES, models=(MODEL,))
    elsewhere = make_record(url=FORGED, models=("evil",))
    victim_keys = keys_for(victim)
    out = {
        "unsigned": (encode_record(unsigned), victim_keys),
        "bad_signature": (encode_record(other_key), victim_keys),
        "id_mismatch": (encode_record(mismatch), victim_keys),
        "expired": (encode_record(expired), keys_for(expired)),
        "oversized": (encode_record(oversized), keys_for(oversized)),
        "malformed": (b"\x81\xa1i\xc4\x01x", victim_keys),
        # valid and signed, but pushed under a key it does not name: cannot squat other keys
        "wrong_key": (
            encode_record(elsewhere),
            [
                model_key(MODEL),
                *[key for key in all_nodes_keys() if key not in keys_for(elsewhere)][:2],
            ],
        ),
    }
    assert len(out["oversized"][0]) > MAX_RECORD_BYTES
    return out


# ------------------------------------------------------------------ the tests


async def test_forged_records_pushed_to_every_node_are_refused(
    swarm: list[NodeProcess], attacker: DHTNode
) -> None:
    ids = [await node_id(n) for n in swarm]
    victim = await record_of(swarm[0], ids[1])
    forged = forge(victim)
    before = [await invalid_counts(n) for n in swarm]
    targets = list(zip(swarm, ids, strict=True))
    for reason, (wire, keys) in forged.items():
        assert await push(attacker, targets, wire, keys) == 0, reason
    middle = []
    for node, was in zip(swarm, before, strict=True):
        middle.append(await invalid_counts(node))
        moved = middle[-1] - was
        for reason in forged:
            assert moved[reason] >= 1, (node.url, reason, moved)
    # a valid record handed over with no life left is refused too
    fresh = make_record(url=FORGED, models=(MODEL,), n_ctx=8)
    assert await push(attacker, targets, encode_record(fresh), keys_for(fresh), ttl=0.0) == 0
    for node, was in zip(swarm, middle, strict=True):
        assert (await invalid_counts(node) - was)["expired"] >= 1
    await assert_nothing_forged_visible(swarm)


async def test_a_lying_replica_cannot_slip_forged_records_into_lookups(
    swarm: list[NodeProcess], attacker: DHTNode
) -> None:
    """The attacker serves the forged records from its own storage (bypassing its validation)
    to every `get`: the nodes' lookups verify what they are handed and drop all of it."""
    ids = [await node_id(n) for n in swarm]
    victim = await record_of(swarm[0], ids[1])
    # (not "wrong_key": that record is valid and signed, so a lookup may use it whatever key it
    # came under: it could have been published under its own keys just as well)
    forged = {k: v for k, v in forge(victim).items() if k != "wrong_key"}
    placeholder = make_record(url=FORGED, models=())
    storage: RecordStorage = attacker.storage
    lookup_keys = [model_key(MODEL), *all_nodes_keys()]
    for index, (wire, _keys) in enumerate(forged.values()):
        for key in lookup_keys:
            storage.data.setdefault(digest(key), {})[f"forged-{index}"] = Entry(
                placeholder, wire, time.monotonic() + 60, None, bytes([index]) * 8
            )
    before = [await invalid_counts(n) for n in swarm]
    await assert_nothing_forged_visible(swarm)  # these reads are the lookups
    refused_in_lookups = Counter[str]()
    for node, was in zip(swarm, before, strict=True):
        refused_in_lookups += await invalid_counts(node) - was
    for reason in forged:  # the lookups asked the liar and refused what it served
        assert refused_in_lookups[reason] >= 1, (reason, refused_in_lookups)


async def test_replayed_old_records_are_refused(
    start_node: StartNode, swarm: list[NodeProcess], attacker: DHTNode
) -> None:
    """A node's genuine but older record, replayed: refused while a newer one (a later
    heartbeat, or the tombstone of a clean stop) is held; the node stays as it is, or gone."""
    ids = [await node_id(n) for n in swarm]
    targets = list(zip(swarm, ids, strict=True))
    old = await record_of(swarm[0], ids[1])
    deadline = time.monotonic() + 30
    while (await record_of(swarm[0], ids[1])).seq <= old.seq:  # B has heartbeated since
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    before = [await invalid_counts(n) for n in swarm]
    assert await push(attacker, targets, encode_record(old), keys_for(old)) == 0
    for node, was in zip(swarm, before, strict=True):
        assert (await invalid_counts(node) - was)["stale_seq"] >= 1
    assert (await record_of(swarm[0], ids[1])).url == swarm[1].url
    # a node that left cleanly: its last live record, replayed, must not bring it back
    leaving_id, last = await join_and_leave(start_node, swarm, heartbeat=5)
    assert await push(attacker, targets, encode_record(last), keys_for(last)) == 0
    await assert_nothing_forged_visible(swarm, gone={leaving_id})


async def join_and_leave(
    start_node: StartNode,
    swarm: list[NodeProcess],
    heartbeat: float,
) -> tuple[str, NodeRecord]:
    """A third node joins, is seen by every node, and stops cleanly (publishing a tombstone of
    ttl 3 x heartbeat); returns its id and its last live record as the swarm held it, once no
    node lists it any more."""
    leaving = start_node(
        "--model-id", MODEL, "--bootstrap", swarm[0].bootstrap, "--heartbeat", str(heartbeat)
    )
    leaving_id = await node_id(leaving)

    async def listed_by() -> list[bool]:
        return [
            leaving_id in {r["node_id"] for r in (await get(n, "/nodes"))["nodes"]} for n in swarm
        ]

    deadline = time.monotonic() + 30
    while not all(await listed_by()):
        assert time.monotonic() < deadline, "the new node never became visible everywhere"
        await asyncio.sleep(0.2)
    last = await record_of(swarm[1], leaving_id)
    leaving.stop()
    deadline = time.monotonic() + 3 * heartbeat + 10  # the tombstone, or at worst the ttl
    while any(await listed_by()):
        assert time.monotonic() < deadline, "a node still lists a node that left"
        await asyncio.sleep(0.2)
    return leaving_id, last


async def test_a_flood_from_one_peer_is_bounded(
    swarm: list[NodeProcess], attacker: DHTNode
) -> None:
    """Valid records of many made-up identities, all from one peer: each node takes at most
    its per-peer quota, counts the rest as `over_limit`, and keeps serving."""
    ids = [await node_id(n) for n in swarm]
    quota = RecordStorage().max_per_source
    flood = quota + 150
    key = model_key("flood")
    wires = [
        encode_record(make_record(url=f"{FORGED}/{i}", ttl=20.0, models=("flood",), n_ctx=8))
        for i in range(flood)
    ]
    for node, target_id in zip(swarm, ids, strict=True):
        stored_before = (await get(node, "/dht/status"))["records_stored"]
        was = await invalid_counts(node)
        accepted = 0
        for start in range(0, flood, 16):  # each put well under the 8 KiB request cap
            batch = [[wire, 20.0] for wire in wires[start : start + 16]]
            ok, count = await attacker.protocol.call_put(
                dht_contact(node, target_id), digest(key), batch
            )
            assert ok
            accepted += count
        status = await get(node, "/dht/status")
        assert accepted <= quota, (node.url, accepted)
        assert (await invalid_counts(node) - was)["over_limit"] >= flood - quota
        assert status["records_stored"] - stored_before <= quota
        async with httpx.AsyncClient(timeout=60) as http:
            res = await http.post(
                node.url + "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2}
            )
            assert res.status_code == 200
    await assert_nothing_forged_visible(swarm)  # `all_nodes` was never flooded


async def test_a_replay_after_the_tombstone_expired_is_refused(
    start_node: StartNode, swarm: list[NodeProcess], attacker: DHTNode
) -> None:
    ids = [await node_id(n) for n in swarm]
    targets = list(zip(swarm, ids, strict=True))
    leaving_id, last = await join_and_leave(start_node, swarm, heartbeat=1)
    await asyncio.sleep(3 * 1.0 + 2.5)  # the tombstone's life (3 s), and the 2 s cull
    accepted = await push(attacker, targets, encode_record(last), keys_for(last), ttl=3.0)
    assert accepted == 0
    await assert_nothing_forged_visible(swarm, gone={leaving_id})
