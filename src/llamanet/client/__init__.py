"""`LlamaNetClient`: discovery, routing and failover for Python programs.

Modules: `_client` (the async client), `_sync` (the blocking facade), `_discovery` (node URLs,
the DHT, round-trip probes), `_cache` (verified, expiring records), `_errors` (below). What a
failure means is decided by the swarm's one failover policy, `llamanet.swarm.failover`.

Exceptions::

    LlamaNetError
    ├── NodeError           a node answered with an error (status, OpenAI error body)
    ├── NodeUnreachable     a node could not be reached, or did not answer in time
    ├── NoNodeAvailable     no node could take the request (the attempts are attached)
    └── StreamInterrupted   a stream broke after tokens were delivered and could not resume
"""

from llamanet.client._cache import RecordCache
from llamanet.client._client import LlamaNetClient, SamplingOptions
from llamanet.client._errors import (
    LlamaNetError,
    NodeError,
    NodeUnreachable,
    NoNodeAvailable,
    StreamInterrupted,
)
from llamanet.client._sync import SyncLlamaNetClient
from llamanet.swarm.failover import estimate_prompt_tokens

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
