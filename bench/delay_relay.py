#!/usr/bin/env python3
"""A TCP relay on loopback that holds every byte for a fixed delay in each direction: a far
peer without netem (these machines' kernel has none). bench.py runs the `far` part through it.

    delay_relay.py --listen 127.0.0.1:0 --target 127.0.0.1:PORT [--delay-ms 25]

It prints "listening on HOST:PORT" once it accepts connections. Each connection gets a fresh
connection to the target, and each direction is a pipe of timestamped chunks: a reader takes
whatever the socket has and stamps it with when it may leave; a writer sends every chunk
whose time has come, all at once. So a whole window of data is in flight at any moment and
the delay is added once per byte, not once per chunk: throughput is bounded by the sockets
and this process's CPU, not by the delay.

What it does not model: the relay acknowledges bytes as soon as it reads them, so the
sender's TCP window never waits for the far side's ACKs; a protocol whose only window is
TCP's streams as if the link had no latency. Application-level round trips (a request that
waits for its reply, an SSH channel window, an SFTP request queue) do pay the full delay,
twice per round trip. No loss, no bandwidth limit, no jitter.
"""

import argparse
import asyncio
import collections
import sys
import time

CHUNK = 256 * 1024
# How many bytes one direction may hold before the relay stops reading: far more than
# 25 ms of loopback traffic, so it does not limit throughput; bounded, so a stalled reader
# cannot make it grow without end.
MAX_HELD = 64 * 1024 * 1024


async def pipe(reader, writer, delay):
    held = collections.deque()  # (time it may leave, bytes); b"" marks EOF
    size = 0
    more = asyncio.Event()  # the writer waits on it when nothing is held
    room = asyncio.Event()  # the reader waits on it when MAX_HELD is reached
    room.set()

    async def read_side():
        nonlocal size
        try:
            while True:
                await room.wait()
                data = await reader.read(CHUNK)
                held.append((time.monotonic() + delay, data))
                size += len(data)
                if size >= MAX_HELD:
                    room.clear()
                more.set()
                if not data:
                    return
        except (ConnectionError, OSError):
            held.append((time.monotonic() + delay, b""))
            more.set()

    async def write_side():
        nonlocal size
        try:
            while True:
                if not held:
                    more.clear()
                    await more.wait()
                    continue
                wait = held[0][0] - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                now = time.monotonic()
                out = []
                eof = False
                while held and held[0][0] <= now:
                    _, data = held.popleft()
                    if not data:
                        eof = True
                        break
                    out.append(data)
                    size -= len(data)
                if size < MAX_HELD:
                    room.set()
                if out:
                    writer.write(b"".join(out))
                    await writer.drain()
                if eof:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
        except (ConnectionError, OSError):
            return

    await asyncio.gather(read_side(), write_side())


async def serve(listen, target, delay):
    thost, tport = target.rsplit(":", 1)

    async def handle(creader, cwriter):
        try:
            treader, twriter = await asyncio.open_connection(thost, int(tport))
        except OSError as e:
            print(f"delay_relay: cannot reach {target}: {e}", file=sys.stderr, flush=True)
            cwriter.close()
            return
        try:
            await asyncio.gather(pipe(creader, twriter, delay), pipe(treader, cwriter, delay))
        finally:
            for w in (twriter, cwriter):
                w.close()

    host, port = listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, host, int(port), backlog=1024)
    h, p = server.sockets[0].getsockname()[:2]
    print(f"listening on {h}:{p}", flush=True)
    async with server:
        await server.serve_forever()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--target", required=True, help="HOST:PORT to forward to")
    ap.add_argument("--delay-ms", type=float, default=25.0, help="each direction")
    args = ap.parse_args()
    try:
        asyncio.run(serve(args.listen, args.target, args.delay_ms / 1000))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
