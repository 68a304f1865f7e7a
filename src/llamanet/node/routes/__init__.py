"""The node's HTTP routes, one module-level `APIRouter` per family (vLLM style).

`openai` (`/v1/...`), `native` (`/generate...`, `/status`, `/info`, `/health`), `swarm`
(`/nodes...`, `/dht/status`, `/metrics`); `_serving` is what their handlers share (serve here or
forward, admission, sampling), `_openapi` the documented error responses.
"""
