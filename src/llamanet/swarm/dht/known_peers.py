"""`KnownPeers`: the DHT contacts a node had, kept in a small file in its home.

A node restarted without `--bootstrap` (the first node of a swarm, typically) would otherwise
start with an empty routing table and nobody to ask: its peers dropped it from their tables
while it was down and never contact it again. With this file it rejoins through the peers it
knew. The file is JSON (`{"peers": ["host:port", ...]}`), newest contacts first, capped; it is
written atomically and only when its content differs from what was last written (not from the
list in memory: a write cancelled before the executor ran it, as a node's stop cancels its
heartbeat, is done by the next `remember`); an unreadable file is ignored.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from llamanet.swarm.addresses import parse_hostport
from llamanet.swarm.dht.rpc import Address

__all__ = ["KnownPeers"]

log = logging.getLogger(__name__)

MAX_KNOWN: Final = 32
_writes = itertools.count()


class KnownPeers:
    def __init__(self, path: Path | None, *, limit: int = MAX_KNOWN) -> None:
        self.path = path
        self.limit = limit
        self.peers: list[Address] = []
        self._written: list[Address] | None = None  # the file's content as last written or read
        self._lock = asyncio.Lock()

    async def load(self) -> list[Address]:
        if self.path is not None:
            self.peers = await asyncio.to_thread(self._read, self.path)
            self._written = list(self.peers)
        return list(self.peers)

    @staticmethod
    def _read(path: Path) -> list[Address]:
        try:
            data = json.loads(path.read_text())
            return [parse_hostport(str(p)) for p in data["peers"]][:MAX_KNOWN]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the known peers file %s: %s", path, exc)
            return []

    async def remember(self, contacts: Iterable[Address]) -> None:
        """Put `contacts` first (the live ones), keep older entries after them, up to `limit`."""
        self.peers = list(dict.fromkeys([*contacts, *self.peers]))[: self.limit]
        if self.path is None:
            return
        async with self._lock:  # one write at a time, the newest list
            peers = list(self.peers)
            if peers == self._written:
                return
            try:
                await asyncio.to_thread(self._write, self.path, peers)
            except OSError as exc:  # a read-only home costs only the restart shortcut
                log.warning("could not save the known peers to %s: %s", self.path, exc)
            self._written = peers  # (after a refusal too: tried again when the list changes)

    @staticmethod
    def _write(path: Path, peers: list[Address]) -> None:
        # a name of its own per write: a cancelled caller leaves its thread writing
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_writes)}.tmp")
        text = json.dumps({"peers": [_format(host, port) for host, port in peers]}, indent=1)
        tmp.write_text(text + "\n")
        os.replace(tmp, path)


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
