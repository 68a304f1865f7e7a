"""The model list (`GET /v1/models`): OpenAI's model objects, with what the swarm serves of each."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["ModelCard", "ModelList"]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "llamanet"
    nodes: int = 1
    n_ctx: int | None = None
    capabilities: list[str] = Field(default_factory=list)  # served by at least one node


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
