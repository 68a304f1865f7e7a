"""DHT peer addresses as users type them (`host:port`, `[v6]:port`, `host`): one parser for the
node's `--bootstrap` and the client's `bootstrap=`, so both read the same strings the same way."""

from __future__ import annotations

import ipaddress
from typing import Final

__all__ = ["DEFAULT_DHT_PORT", "is_loopback", "parse_hostport"]

DEFAULT_DHT_PORT: Final = 8001


def parse_hostport(value: str, default_port: int = DEFAULT_DHT_PORT) -> tuple[str, int]:
    """`"host:port"` -> `("host", port)`; a bare host gets `default_port`, an empty host
    `127.0.0.1`; brackets around an IPv6 literal are dropped. Raises ValueError on a bad port."""
    text = value.strip()
    host, sep, port = text.rpartition(":")
    if not sep or (host.count(":") and not host.endswith("]")):  # a bare IPv6 literal
        return text.strip("[]"), default_port
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port out of range in {value!r}")
    return host.strip("[]") or "127.0.0.1", number


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
