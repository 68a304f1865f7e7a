"""A node's ed25519 identity: the key pair behind its node id and its record signatures.

`node_id` is the hex SHA-1 of the raw 32-byte public key: 160 bits, usable directly as the
Kademlia id, and impossible to claim without the private key.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

log = logging.getLogger(__name__)

KEY_FILE = "node_key"


def node_id_for(public_key: bytes) -> str:
    """The node id that belongs to a raw 32-byte ed25519 public key."""
    return hashlib.sha1(public_key).hexdigest()


class NodeIdentity:
    """An ed25519 key pair; `load_or_create` keeps it in a home directory across restarts."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key_hex: str = self.public_key.hex()
        self.node_id: str = node_id_for(self.public_key)

    @property
    def node_id_bytes(self) -> bytes:
        return bytes.fromhex(self.node_id)

    @classmethod
    def generate(cls) -> NodeIdentity:
        """A fresh identity kept only in memory (tests, throwaway nodes)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> NodeIdentity:
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def load_or_create(cls, home: Path) -> NodeIdentity:
        """Load `home/node_key` (raw 32 bytes or PEM), creating it (mode 600) on first use.

        An unreadable key file raises instead of being replaced: silently minting a new key
        would change the node's id.
        """
        home = Path(home).expanduser()
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = home / KEY_FILE
        if not path.exists():
            identity = cls.generate()
            if _create_exclusive(path, identity.private_bytes()):
                log.info("created node key %s (node id %s)", path, identity.node_id)
                return identity
            # another process created it first: use theirs
        return cls._load(path)

    @classmethod
    def _load(cls, path: Path) -> NodeIdentity:
        data = path.read_bytes()
        _tighten_permissions(path)
        if len(data) == 32:
            return cls.from_private_bytes(data)
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path}: not an ed25519 private key")
            return cls(key)
        raise ValueError(f"{path}: expected a raw 32-byte or PEM ed25519 private key")

    def private_bytes(self) -> bytes:
        return self._private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)

    def __repr__(self) -> str:
        return f"NodeIdentity(node_id={self.node_id!r})"


def _create_exclusive(path: Path, data: bytes) -> bool:
    """Write `data` to a new file at `path` atomically; False if `path` already exists."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(tmp, path)  # atomic create-if-absent, complete content or nothing
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _tighten_permissions(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o600)
    except OSError as exc:  # read-only home: still usable, just warn
        log.warning("could not restrict permissions of %s: %s", path, exc)
