"""Node settings: every CLI option also reads a `LLAMANET_*` environment variable."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from llamanet.swarm.failover import (
    DEFAULT_FIRST_BYTE_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_STALL_TIMEOUT,
)


def default_home() -> Path:
    return Path(os.environ.get("LLAMANET_HOME", "~/.llamanet")).expanduser()


class NodeSettings(BaseSettings):
    """Configuration of one node. Field `x_y` is option `--x-y` and variable `LLAMANET_X_Y`."""

    model_config = SettingsConfigDict(env_prefix="LLAMANET_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    model: Path | None = None
    model_id: str | None = None
    no_model: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = None
    n_ctx: int = 2048
    n_threads: int | None = None
    n_batch: int = 512
    parallel: int | None = None  # slots; None: 8, fewer if their KV cache would not fit
    n_gpu_layers: int | None = None  # None: every layer when llama.cpp has a GPU backend, else 0
    queue_size: int = 8
    embeddings: bool = True  # serve /v1/embeddings (a second context on the model, made lazily)
    max_body_size: int = 1 << 20
    request_timeout: float = 600.0
    first_byte_timeout: float = Field(default=DEFAULT_FIRST_BYTE_TIMEOUT, gt=0)
    # a relayed stream silent this long (keep-alives included) is resumed on another node
    stall_timeout: float = Field(default=DEFAULT_STALL_TIMEOUT, gt=0)
    # SSE keep-alive comments while a stream waits (queue, prefill): silence means failure
    keepalive_interval: float = Field(default=DEFAULT_KEEPALIVE_INTERVAL, gt=0)
    dht_host: str | None = None
    dht_port: int = 8001
    bootstrap: Annotated[list[str], NoDecode] = Field(default_factory=list)
    heartbeat: float = 10.0
    forward: bool = True
    api_key: Annotated[list[str], NoDecode] = Field(default_factory=list)
    swarm_key: str | None = None
    rate_limit: int = 0
    max_streams: int = 0
    log_level: str = "info"

    @field_validator("bootstrap", "api_key", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        """`a,b` (as typed in a shell or env variable) or a list."""
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list | tuple):
            return [p.strip() for item in items for p in str(item).split(",") if p.strip()]
        return value

    @property
    def models_dir(self) -> Path:
        return self.home / "models"
