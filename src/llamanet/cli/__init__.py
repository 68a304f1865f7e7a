"""The `llamanet` command: `node`, `pull`, `demo`, `chat`, `status`, `monitor` (typer + rich)."""

from llamanet.cli.app import app, main

__all__ = ["app", "main"]
