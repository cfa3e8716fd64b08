"""A delay element for kernels without ``netem``: a TCP relay that holds every chunk it reads
for a one-way latency before forwarding it.

The link lab runs one per node with a latency, inside the node's namespace: it listens on
``127.0.0.1:<port>``, the SuperNode connects to it instead of the SuperLink, and for each
connection it opens one to the SuperLink's address over the node's shaped veth. In each
direction every chunk is stamped when it arrives and written at arrival + latency: the
delays overlap (a stream of chunks is delayed once, not once per chunk) and the order is
kept (a chunk never leaves before the one read before it, even after the latency fell).

What it emulates: a one-way delay per direction on each TCP byte stream, so that a request
and its response cost a round trip of 2 × latency, on top of the shaped rate. What it does
not: loss, jitter, reordering; TCP's own behaviour under a real round trip (the connection
set-up, slow start and the congestion window see the relay's zero-delay hops, and the
relay's buffer hides the link's back-pressure from the sender on the node's side); the
interplay of a queue with the delay.

Standard library only: the lab runs this file by its path, so it imports nothing of the
project. Control: on ``SIGUSR1`` it re-reads ``--control`` (JSON ``{"latency-ms": L}``);
a new latency applies to chunks that arrive after it. It prints ``relay: listening`` once
it accepts connections, and ends on SIGTERM/SIGINT.

    python relay.py --listen 127.0.0.1:8001 --to 10.213.0.1:8000 --latency-ms 50 \\
        [--control relay-0.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
from pathlib import Path

CHUNK = 64 * 1024
READY = "relay: listening"


class Delay:
    """The current one-way latency in seconds (changed by ``reload``)."""

    def __init__(self, seconds: float, control: Path | None) -> None:
        self.seconds = seconds
        self.control = control

    def reload(self) -> None:
        """Read ``{"latency-ms": L}`` from the control file (a bad file keeps the latency)."""
        if self.control is None:
            return
        try:
            ms = float(json.loads(self.control.read_text())["latency-ms"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"relay: control file {self.control} unreadable ({err}); latency stays "
                  f"{1e3 * self.seconds:g} ms", flush=True)
            return
        if ms >= 0:
            self.seconds = ms / 1e3
            print(f"relay: latency {ms:g} ms", flush=True)


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Delay
               ) -> None:
    """Forward ``reader`` to ``writer``, each chunk at its arrival + the latency, in order;
    the end of the stream (EOF) is forwarded the same way."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        while True:
            try:
                chunk = await reader.read(CHUNK)
            except (ConnectionError, OSError):
                chunk = b""
            queue.put_nowait((loop.time() + delay.seconds, chunk))
            if not chunk:
                return

    reading = asyncio.create_task(read())
    due_last = 0.0
    try:
        while True:
            due, chunk = await queue.get()
            due_last = max(due, due_last)
            wait = due_last - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        return
    finally:
        reading.cancel()


async def serve(listen: tuple[str, int], to: tuple[str, int], delay: Delay, *,
                signals: bool = True) -> None:
    """Accept on ``listen``; relay each connection to ``to`` through ``pipe`` both ways,
    until SIGTERM/SIGINT (``signals``: handle them and SIGUSR1, which needs the main
    thread; else until cancelled)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*to)
        except OSError as err:
            print(f"relay: cannot reach {to[0]}:{to[1]}: {err}", flush=True)
            writer.close()
            return
        for w in (writer, up_writer):
            _nodelay(w)
        try:
            await asyncio.gather(pipe(reader, up_writer, delay), pipe(up_reader, writer, delay))
        except asyncio.CancelledError:  # the relay is stopping
            pass
        finally:
            for w in (writer, up_writer):
                w.close()

    server = await asyncio.start_server(handle, *listen, reuse_address=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, delay.reload)
    print(f"{READY} on {listen[0]}:{listen[1]}, to {to[0]}:{to[1]}, latency "
          f"{1e3 * delay.seconds:g} ms", flush=True)
    async with server:
        await stop.wait()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT")
    parser.add_argument("--to", type=_address, required=True, help="HOST:PORT")
    parser.add_argument("--latency-ms", type=float, required=True, help="one-way, >= 0")
    parser.add_argument("--control", type=Path, help="JSON file re-read on SIGUSR1")
    args = parser.parse_args(argv)
    if not args.latency_ms >= 0:
        parser.error(f"--latency-ms must be >= 0, got {args.latency_ms}")
    asyncio.run(serve(args.listen, args.to, Delay(args.latency_ms / 1e3, args.control)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
