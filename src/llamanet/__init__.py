"""LlamaNet: a decentralized inference swarm for GGUF models."""

from llamanet._version import __version__

__all__ = ["__version__"]
