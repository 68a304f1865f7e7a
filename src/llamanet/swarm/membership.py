"""Private swarms: a shared secret that peers prove they hold without ever sending it.

A node started with `--swarm-key` publishes `swarm_id(secret)` in its record, so nodes of other
swarms never route to it, and sends `swarm_proof` (an HMAC over a timestamp and its node id) with
every request it forwards; the receiving node checks it with `verify_swarm_proof`.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from llamanet.swarm.records import CLOCK_SKEW

__all__ = [
    "FORWARDED_HEADER",
    "SWARM_AUTH_HEADER",
    "swarm_id",
    "swarm_proof",
    "verify_swarm_proof",
]

SWARM_AUTH_HEADER = "X-LlamaNet-Swarm-Auth"
FORWARDED_HEADER = "X-LlamaNet-Forwarded-By"


def swarm_id(secret: str | None) -> str:
    """The public name of a private swarm (empty for the open swarm)."""
    if not secret:
        return ""
    return hashlib.sha256(b"llamanet-swarm:" + secret.encode()).hexdigest()[:16]


def _mac(secret: str, stamp: str, node_id: str) -> str:
    return hmac.new(secret.encode(), f"{stamp}.{node_id}".encode(), hashlib.sha256).hexdigest()


def swarm_proof(secret: str, node_id: str, now: float | None = None) -> str:
    """The header value a forwarding node sends: `<unix time>.<hmac>`."""
    stamp = str(int(now if now is not None else time.time()))
    return f"{stamp}.{_mac(secret, stamp, node_id)}"


def verify_swarm_proof(secret: str, node_id: str, proof: str, now: float | None = None) -> bool:
    stamp, _, mac = proof.partition(".")
    if not stamp.isdigit() or not mac:
        return False
    if abs((now if now is not None else time.time()) - int(stamp)) > CLOCK_SKEW:
        return False
    return hmac.compare_digest(mac, _mac(secret, stamp, node_id))
