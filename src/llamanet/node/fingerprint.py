"""The model fingerprint: which nodes can continue each other's streams token for token.

Resuming a stream on another node (issue 13) is exact only when that node runs the very same
weights with the same llama.cpp build: the fingerprint is the sha256 of the GGUF file (short
hex), and the runtime the llama-cpp-python version. Hashing a multi-gigabyte file takes a while,
so it runs on a thread, once: the digest is cached in the node's home keyed by the file's
path, size and modification time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Final

from llamanet.node.model_store import sha256_of

__all__ = ["model_fingerprint", "runtime_build"]

log = logging.getLogger(__name__)

CACHE_FILE: Final = "fingerprints.json"
SHORT: Final = 16  # hex digits published (64 bits: collisions are not a concern here)


def runtime_build() -> str:
    """The llama.cpp runtime: the llama-cpp-python version (it pins its llama.cpp build)."""
    try:
        import llama_cpp
    except ImportError:  # pragma: no cover - the node always has it
        return "unknown"
    return f"llama-cpp-python {getattr(llama_cpp, '__version__', 'unknown')}"


async def model_fingerprint(path: Path, home: Path) -> str:
    """The short sha256 of the GGUF at `path`, from the cache in `home` when the file is
    unchanged (same size and mtime), else hashed on a thread and cached."""
    return await asyncio.to_thread(_fingerprint, path, home)


def _fingerprint(path: Path, home: Path) -> str:
    path = path.resolve()
    stat = path.stat()
    key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    cache_path = home / CACHE_FILE
    cache: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(cache_path.read_text())
        if isinstance(loaded, dict):
            cache = {str(k): str(v) for k, v in loaded.items()}
    digest = cache.get(key)
    if digest is None:
        digest = sha256_of(path)
        cache = {k: v for k, v in cache.items() if not k.startswith(f"{path}:")}
        cache[key] = digest
        try:
            home.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache, indent=1))
            tmp.replace(cache_path)
        except OSError as exc:  # a read-only home only costs hashing again next start
            log.warning("could not cache the model fingerprint: %s", exc)
    return digest[:SHORT]
