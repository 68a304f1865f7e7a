"""`LlamaNetClient`: discovery, routing, failover and resume for Python programs.

Exceptions::

    LlamaNetError
    ├── NodeError           a node answered with an error (status, OpenAI error body)
    ├── NodeUnreachable     a node could not be reached (connection, timeout)
    ├── NoNodeAvailable     no node could take the request (the attempts are attached)
    └── StreamInterrupted   a stream broke after tokens were delivered and could not resume
"""

from llamanet.client._client import (
    LlamaNetClient,
    LlamaNetError,
    NodeError,
    NodeUnreachable,
    NoNodeAvailable,
    RecordCache,
    SamplingOptions,
    StreamInterrupted,
    SyncLlamaNetClient,
    estimate_prompt_tokens,
)

__all__ = [
    "LlamaNetClient",
    "LlamaNetError",
    "NoNodeAvailable",
    "NodeError",
    "NodeUnreachable",
    "RecordCache",
    "SamplingOptions",
    "StreamInterrupted",
    "SyncLlamaNetClient",
    "estimate_prompt_tokens",
]
