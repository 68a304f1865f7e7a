"""Generate and chat through a LlamaNet swarm with `LlamaNetClient`.

python examples/simple_client.py                          # a node on http://127.0.0.1:8000
python examples/simple_client.py --url http://10.0.0.5:8000
python examples/simple_client.py --bootstrap 127.0.0.1:8001   # find nodes through the DHT
"""

from __future__ import annotations

import argparse
import asyncio

from llamanet import LlamaNetClient, LlamaNetError


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        action="append",
        default=[],
        help="a node URL to discover the swarm from (repeatable; default "
        "http://127.0.0.1:8000 when no --bootstrap is given)",
    )
    parser.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        help="a DHT peer host:port to join instead (repeatable)",
    )
    parser.add_argument("--model", default=None, help="model id (default: any node's model)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--strategy",
        default="load_balanced",
        choices=["load_balanced", "round_robin", "random", "fastest", "latency"],
    )
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    async with LlamaNetClient(
        nodes=args.url, bootstrap=args.bootstrap, model=args.model, strategy=args.strategy
    ) as client:
        print("nodes:", ", ".join(f"{n.node_id[:12]} ({n.url})" for n in await client.nodes()))
        print("models:", ", ".join(f"{m.id} x{m.nodes}" for m in await client.models()))

        result = await client.generate("The three primary colors are", max_tokens=args.max_tokens)
        print(
            f"\n[generate] node {result.node_id[:12]}, {result.tokens_generated} tokens "
            f"at {result.tokens_per_second:.1f} tok/s:\n{result.text.strip()}"
        )

        reply = await client.chat(
            [
                {"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": "Why is the sky blue? One sentence."},
            ],
            max_tokens=args.max_tokens,
        )
        print(f"\n[chat] node {reply.node_id[:12]} ({reply.finish_reason}):\n{reply.text.strip()}")


if __name__ == "__main__":
    try:
        asyncio.run(main(parse_args()))
    except LlamaNetError as exc:
        raise SystemExit(f"error: {exc}") from exc
