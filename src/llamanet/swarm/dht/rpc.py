"""rpcudp's datagram RPC with the C `msgpack` codec, a short timeout and fail-fast for dead peers.

The framing is rpcudp's (`\\x00`/`\\x01` + 20-byte message id + msgpack payload), so the wire is
unchanged; what differs (see docs/dht.md, defects 7 and 9):
- C `msgpack` instead of the pure-Python `umsgpack` that dominated CPU;
- requests are dispatched synchronously to a fixed set of `rpc_*` handlers (no task per datagram,
  and no remote call of arbitrary `rpc_*` attributes);
- a peer that timed out is skipped (its calls fail at once) for a while, doubling on repeats, until
  it is heard from again;
- round-trip times feed an estimate used to decide when a lookup stops waiting for a straggler;
- late or duplicate replies and calls on a closed socket never raise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

import msgpack
from rpcudp.exceptions import MalformedMessage
from rpcudp.protocol import RPCProtocol

log = logging.getLogger(__name__)

Address = tuple[str, int]
CallResult = tuple[bool, Any]

MAX_REQUEST_BYTES: Final = 8192  # rpcudp's cap on a request, kept for compatibility
DEAD_FOR: Final = 30.0  # seconds a peer that timed out is skipped; doubles on repeats
DEAD_FOR_MAX: Final = 600.0
MAX_TRACKED: Final = 10_000  # addresses remembered as recently heard from
MIN_STRAGGLER: Final = 0.1  # never treat a reply as late sooner than this ...
MAX_STRAGGLER: Final = 0.3  # ... nor later (a late reply is still used if it comes)
MIN_GRACE: Final = 0.025  # a lookup that has its quorum waits at least this for the rest
TAKE_IN_MAX: Final = 1024  # datagrams `take_in` handles at once (bounded under a flood)


class MsgpackRPCProtocol(RPCProtocol):
    """`RPCProtocol` packed with C msgpack; `RPC_NAMES` lists the callable `rpc_*` handlers."""

    RPC_NAMES: frozenset[str] = frozenset()
    _wait_timeout: float  # set by RPCProtocol.__init__

    def __init__(self, wait_timeout: float = 1.5) -> None:
        super().__init__(wait_timeout=wait_timeout)
        self._sent: dict[bytes, tuple[float, Address]] = {}
        self._dead: dict[Address, tuple[float, int]] = {}  # address -> (skip until, strikes)
        self.last_seen: dict[Address, float] = {}
        self.stats: Counter[str] = Counter()
        self.srtt: float | None = None
        self.rttvar = 0.0
        self._sock: socket.socket | None = None

    # ------------------------------------------------------------------ receiving

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if len(data) < 22:
            return
        try:
            payload = msgpack.unpackb(data[21:], raw=False, strict_map_key=False)
        except Exception:  # any garbage from the network
            self.stats["bad_datagrams"] += 1
            return
        self._heard_from(addr)
        kind, msg_id = data[:1], data[1:21]
        if kind == b"\x00":
            self._accept_request(msg_id, payload, addr)
        elif kind == b"\x01":
            self._accept_response(msg_id, payload, addr)

    def read_from(self, sock: socket.socket) -> None:
        """The bound socket under the transport, for `take_in`."""
        self._sock = sock

    def take_in(self) -> int:
        """Handle every datagram already waiting in the socket; how many there were.

        The event loop reads one datagram per turn and runs due timers in the same turn, so
        after this process was busy or stalled, a reply that arrived on time can still be
        unread when its timeout (or a lookup's straggler timer) fires: call this before
        concluding that a peer did not answer.
        """
        sock = self._sock
        if sock is None or self.transport is None or self.transport.is_closing():
            return 0
        count = 0
        while count < TAKE_IN_MAX:
            try:
                data, addr = sock.recvfrom(65536)
            except OSError:  # BlockingIOError: nothing more waiting
                break
            count += 1
            self.datagram_received(data, addr)
        return count

    def _accept_request(self, msg_id: bytes, data: Any, address: Address) -> None:
        if not isinstance(data, list) or len(data) != 2:
            self.stats["bad_requests"] += 1
            return
        name, args = data
        if name not in self.RPC_NAMES or not isinstance(args, list):
            self.stats["bad_requests"] += 1
            return
        handler: Callable[..., Any] = getattr(self, f"rpc_{name}")
        try:
            response = handler(address, *args)
            self.stats["requests"] += 1
        except Exception as exc:  # a malformed request must not take the node down
            self.stats["bad_requests"] += 1
            log.debug("rpc_%s from %s failed: %r", name, address, exc)
            response = None  # answer anyway, so the caller need not wait for its timeout
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(b"\x01" + msg_id + msgpack.packb(response), address)

    def _accept_response(self, msg_id: bytes, data: Any, address: Address) -> None:
        pending = self._outstanding.pop(msg_id, None)
        sent = self._sent.pop(msg_id, None)
        if pending is None:
            self.stats["late_replies"] += 1
            return
        future, timeout = pending
        timeout.cancel()
        if sent is not None:
            self._sample_rtt(time.monotonic() - sent[0])
        if not future.done():
            future.set_result((True, data))

    def _timeout(self, msg_id: bytes) -> None:
        if self.take_in() and msg_id not in self._outstanding:
            return  # its reply was waiting in the socket: answered in time after all
        pending = self._outstanding.pop(msg_id, None)
        sent = self._sent.pop(msg_id, None)
        self.stats["timeouts"] += 1
        if sent is not None:
            self.mark_dead(sent[1])
        if pending is not None and not pending[0].done():
            pending[0].set_result((False, None))

    # ------------------------------------------------------------------ calling

    def __getattr__(self, name: str) -> Any:
        # rpcudp turns every unknown attribute into a remote call; here calls are explicit
        raise AttributeError(name)

    def call(self, address: Address, name: str, *args: Any) -> asyncio.Future[CallResult]:
        """Send request `name(*args)`; the future resolves to (True, reply) or (False, None)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CallResult] = loop.create_future()
        if self.transport is None or self.transport.is_closing():
            future.set_result((False, None))
            return future
        if self.is_dead(address):
            self.stats["skipped_dead"] += 1
            future.set_result((False, None))
            return future
        data = msgpack.packb([name, list(args)])
        if len(data) > MAX_REQUEST_BYTES:
            raise MalformedMessage(
                f"request {name} is {len(data)} bytes, above {MAX_REQUEST_BYTES}"
            )
        msg_id = os.urandom(20)
        self.transport.sendto(b"\x00" + msg_id + data, address)
        self.stats["calls"] += 1
        timeout = loop.call_later(self._wait_timeout, self._timeout, msg_id)
        self._outstanding[msg_id] = (future, timeout)
        self._sent[msg_id] = (time.monotonic(), address)
        return future

    def fail_outstanding(self) -> None:
        """Resolve every call still waiting as failed (the socket is closing)."""
        for future, timeout in self._outstanding.values():
            timeout.cancel()
            if not future.done():
                future.set_result((False, None))
        self._outstanding.clear()
        self._sent.clear()

    # ------------------------------------------------------------------ peer health

    def _heard_from(self, addr: Address) -> None:
        # kept in least-recently-heard order, so the table stays bounded under a flood
        self.last_seen.pop(addr, None)
        self.last_seen[addr] = time.monotonic()
        if len(self.last_seen) > MAX_TRACKED:
            del self.last_seen[next(iter(self.last_seen))]
        if addr in self._dead:
            del self._dead[addr]

    def mark_dead(self, addr: Address) -> None:
        _, strikes = self._dead.get(addr, (0.0, 0))
        skip = min(DEAD_FOR * 2**strikes, DEAD_FOR_MAX)
        self._dead[addr] = (time.monotonic() + skip, strikes + 1)

    def is_dead(self, addr: Address) -> bool:
        entry = self._dead.get(addr)
        return entry is not None and entry[0] > time.monotonic()

    def forget_dead(self, addr: Address) -> None:
        """Allow calls to `addr` again (an explicit bootstrap target, for instance)."""
        self._dead.pop(addr, None)

    def dead_peers(self) -> list[Address]:
        now = time.monotonic()
        return [addr for addr, (until, _) in self._dead.items() if until > now]

    def prune(self, horizon: float = 3600.0) -> None:
        """Forget bookkeeping about peers not heard from for `horizon` seconds."""
        now = time.monotonic()
        for addr in [a for a, (until, _) in self._dead.items() if until + horizon < now]:
            del self._dead[addr]
        for addr in [a for a, seen in self.last_seen.items() if seen + horizon < now]:
            del self.last_seen[addr]

    def _sample_rtt(self, sample: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = sample, sample / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(sample - self.srtt)
            self.srtt = 0.875 * self.srtt + 0.125 * sample

    def straggler_timeout(self) -> float:
        """How long a lookup waits on one reply before treating it as a straggler (TCP's RTO)."""
        if self.srtt is None:
            return min(self._wait_timeout, MAX_STRAGGLER)
        estimate = max(MIN_STRAGGLER, min(MAX_STRAGGLER, self.srtt + 4 * self.rttvar))
        return min(self._wait_timeout, estimate)

    def grace_timeout(self) -> float:
        """How long a lookup that already has most answers waits for the others."""
        if self.srtt is None:
            return MIN_GRACE
        return min(self.straggler_timeout(), max(MIN_GRACE, self.srtt))
