"""LlamaNet: a decentralized inference swarm for GGUF models."""

from llamanet._version import __version__
from llamanet.client import (
    LlamaNetClient,
    LlamaNetError,
    NodeError,
    NodeUnreachable,
    NoNodeAvailable,
    StreamInterrupted,
    SyncLlamaNetClient,
)
from llamanet.protocol import (
    ChatMessage,
    ErrorDetail,
    ErrorResponse,
    GenerateResponse,
    ModelCard,
    ModelInfo,
    NodeList,
    NodeRecord,
    StreamingChunk,
    StreamingRequest,
    Usage,
)
from llamanet.swarm.selector import NodeSelector

__all__ = [
    "ChatMessage",
    "ErrorDetail",
    "ErrorResponse",
    "GenerateResponse",
    "LlamaNetClient",
    "LlamaNetError",
    "ModelCard",
    "ModelInfo",
    "NoNodeAvailable",
    "NodeError",
    "NodeList",
    "NodeRecord",
    "NodeSelector",
    "NodeUnreachable",
    "StreamInterrupted",
    "StreamingChunk",
    "StreamingRequest",
    "SyncLlamaNetClient",
    "Usage",
    "__version__",
]
