"""The node layer: one process serving a model to the swarm.

`node` (the running node: engine + DHT presence + gateway), `engine` (the model), `app` and
`routes/` (the HTTP API), `middleware` and `access` (request guards, logging, keys, limits),
`gateway` (forwarding to peers), `streaming` (SSE formats), `errors`, `metrics`, `config`,
`model_store` (the default model).
"""
