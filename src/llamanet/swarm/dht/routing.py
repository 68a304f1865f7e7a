"""Routing table with exact k-nearest selection.

kademlia's `RoutingTable.find_neighbors` returns the first k nodes of a bucket walk, not the k
nearest (docs/dht.md, defect 4). Tables hold at most a few hundred contacts, so an exact
selection over all of them is cheap. Peers that timed out recently are never handed out.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from kademlia.node import Node
from kademlia.routing import RoutingTable

if TYPE_CHECKING:
    from llamanet.swarm.dht.peer_protocol import DHTProtocol


class ExactRoutingTable(RoutingTable):
    protocol: DHTProtocol

    def contacts(self) -> list[Node]:
        return [node for bucket in self.buckets for node in bucket.nodes.values()]

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self.buckets)

    def find_neighbors(
        self, node: Node, k: int | None = None, exclude: Node | None = None
    ) -> list[Node]:
        k = k or self.ksize
        target = node.long_id
        ranked = [
            (contact.long_id ^ target, contact)
            for bucket in self.buckets
            for contact in bucket.nodes.values()
        ]
        # distances are unique (ids are), so the tuples never compare two Nodes
        nearest = heapq.nsmallest(k + 2, ranked)
        out = [contact for _, contact in nearest if self._usable(contact, node, exclude)]
        if len(out) < k and len(nearest) < len(ranked):  # many filtered out: rank them all
            ranked.sort()
            out = [contact for _, contact in ranked if self._usable(contact, node, exclude)]
        return out[:k]

    def _usable(self, contact: Node, target: Node, exclude: Node | None) -> bool:
        return (
            contact.id != target.id
            and (exclude is None or not contact.same_home_as(exclude))
            and not self.protocol.is_dead((contact.ip, contact.port))
        )
