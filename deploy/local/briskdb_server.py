"""Runs the MongoDB-compatible stand-in server (PyPI briskdb) on loopback.

No real mongod can be installed on the development machines (see STACK.md), so the local stack
serves the MongoDB wire protocol from briskdb. Stops cleanly on SIGTERM/SIGINT so its data is
flushed; data survives kill -9 as well.

briskdb's listener accepts at most 8 connections in all (not configurable from Python) and
closes any further one at once; clients of the local stack therefore use the small pool of
CHAT_MONGO_URL (deploy/local/lib.sh), and tests that kill writers get a server of their own.
"""

import argparse
import asyncio
import signal
import sys

import briskdb


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="data directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=27017)
    parser.add_argument("--shards", type=int, default=2)
    args = parser.parse_args()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    db = await briskdb.connect_async(args.data, shards=args.shards, documents=True)
    srv = await db.serve(admin=None, mongo=f"{args.host}:{args.port}")
    print(f"briskdb serving MongoDB wire protocol on {args.host}:{args.port}, data in {args.data}", flush=True)
    await stop.wait()
    print("briskdb stopping", flush=True)
    await srv.close()
    await db.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
