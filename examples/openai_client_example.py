"""Use the official `openai` SDK against a LlamaNet node: it speaks the OpenAI API unchanged.

    python examples/openai_client_example.py                       # http://127.0.0.1:8000/v1
    python examples/openai_client_example.py --url http://10.0.0.5:8000
    python examples/openai_client_example.py --bootstrap 127.0.0.1:8001   # pick a node via DHT

A node that does not serve the requested model (or is full) forwards the request to a peer.
"""

from __future__ import annotations

import argparse

from openai import OpenAI

from llamanet import LlamaNetClient


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="a node's base URL")
    parser.add_argument(
        "--bootstrap",
        default=None,
        help="DHT peer host:port: pick the least loaded node instead of --url",
    )
    parser.add_argument(
        "--model", default="llamanet", help="model id; 'llamanet' means whatever the node serves"
    )
    parser.add_argument("--max-tokens", type=int, default=96)
    return parser.parse_args()


def pick_node(bootstrap: str) -> str:
    """The best node's URL according to LlamaNet's router."""
    with LlamaNetClient.sync(bootstrap=[bootstrap]) as swarm:
        node = swarm.client.selector.select(swarm.nodes())
        if node is None:
            raise SystemExit("no node found through the DHT")
        return swarm.client.url_of(node)


def main() -> None:
    args = parse_args()
    base = pick_node(args.bootstrap) if args.bootstrap else args.url.rstrip("/")
    client = OpenAI(base_url=f"{base}/v1", api_key="none")
    print("models:", [m.id for m in client.models.list().data])

    stream = client.chat.completions.create(
        model=args.model,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write a haiku about distributed computing."},
        ],
        max_tokens=args.max_tokens,
        temperature=0.7,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.usage:
            print(f"\n\n[{chunk.usage.completion_tokens} tokens from {base}]")


if __name__ == "__main__":
    main()
