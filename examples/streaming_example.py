"""Stream a chat answer from a LlamaNet swarm, printing tokens as they arrive.

python examples/streaming_example.py                               # via http://127.0.0.1:8000
python examples/streaming_example.py --url http://127.0.0.1:8000
python examples/streaming_example.py --bootstrap 127.0.0.1:8001    # discover through the DHT

`LlamaNetClient` finds the nodes, picks the least busy one for the request, fails over to another
node if the first cannot start, and yields `StreamingChunk`s (text, node_id, usage at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from llamanet import LlamaNetClient, LlamaNetError


async def main(args: argparse.Namespace) -> int:
    messages = [{"role": "user", "content": args.prompt}]
    async with LlamaNetClient(nodes=args.url, bootstrap=args.bootstrap) as client:
        try:
            async for chunk in client.chat_stream(messages, max_tokens=args.max_tokens):
                print(chunk.text, end="", flush=True)
                if chunk.finished:
                    usage = chunk.usage.completion_tokens if chunk.usage else "?"
                    print(
                        f"\n\n[node {chunk.node_id[:12]}, {usage} tokens, "
                        f"{chunk.tokens_per_second} tokens/s, finish: {chunk.finish_reason}]"
                    )
        except LlamaNetError as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", action="append", default=[], help="node URL (repeatable)")
    parser.add_argument(
        "--bootstrap", action="append", default=[], help="DHT peer host:port (repeatable)"
    )
    parser.add_argument("--prompt", default="Write a haiku about many small computers.")
    parser.add_argument("--max-tokens", type=int, default=128)
    sys.exit(asyncio.run(main(parser.parse_args())))
