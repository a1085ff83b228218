"""The floor of a frame-aware hop in Python: the least any Python Dubbo proxy must do per request.

    python -m benchmarks.floorrelay --port LISTEN --upstream PORT

It splits frames, gives each request a fresh id on one multiplexed upstream connection, maps the
response back to its client and id, and writes the way regproxy does (one ``write`` per connection
per event-loop round, and at once after a read of 8 frames or more) — on the same asyncio + uvloop
stack as regproxy, with the same id patching. It does
nothing else: no routing, no deadline, no counters, no health, no error answers, no partial-frame
limits. It is a yardstick, not a proxy: ``python -m benchmarks.run --floor`` runs two of them in a
chain beside the other topologies, to tell how much of regproxy's gap to HAProxy is Python itself
and how much is what regproxy does per request.
"""

from __future__ import annotations

import argparse
import asyncio
import struct

import uvloop

_MAGIC_AND_LEN = struct.Struct(">H10xI")
_ID = struct.Struct(">q")


class _Conn(asyncio.Protocol):
    """One side of the relay: reads frames, queues the frames bound for other connections."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.rest = b""  # a partial frame from the last read
        self.out: list[bytearray] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def frames(self, data: bytes) -> list[bytes]:
        buf = self.rest + data if self.rest else data
        pos, end, out = 0, len(buf), []
        while end - pos >= 16:
            stop = pos + 16 + _MAGIC_AND_LEN.unpack_from(buf, pos)[1]
            if stop > end:
                break
            out.append(buf[pos:stop])
            pos = stop
        self.rest = buf[pos:]
        return out


class _Client(_Conn):
    def data_received(self, data: bytes) -> None:
        relay = self.relay
        up = relay.upstream
        frames = self.frames(data)
        for raw in frames:
            relay.next_id += 1
            relay.pending[relay.next_id] = (self, _ID.unpack_from(raw, 4)[0])
            out = bytearray(raw)
            _ID.pack_into(out, 4, relay.next_id)
            relay.send(up, out)
        relay.done(len(frames))


class _Upstream(_Conn):
    def data_received(self, data: bytes) -> None:
        relay = self.relay
        frames = self.frames(data)
        for raw in frames:
            client, request_id = relay.pending.pop(_ID.unpack_from(raw, 4)[0])
            out = bytearray(raw)
            _ID.pack_into(out, 4, request_id)
            relay.send(client, out)
        relay.done(len(frames))


class Relay:
    def __init__(self) -> None:
        self.pending: dict[int, tuple[_Client, int]] = {}
        self.next_id = 0
        self.dirty: list[_Conn] = []
        self.scheduled = False
        self.upstream: _Upstream

    def send(self, conn: _Conn, frame: bytearray) -> None:
        if not conn.out:
            self.dirty.append(conn)
        conn.out.append(frame)

    def done(self, frames: int) -> None:
        """A read is handled: write now after a large one, else at the end of the loop round."""
        if frames >= 8:
            self.flush()
        elif self.dirty and not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            out, conn.out = conn.out, []
            if conn.transport is not None:
                conn.transport.write(b"".join(out))


async def serve(port: int, upstream: int, host: str = "127.0.0.1") -> None:
    loop = asyncio.get_running_loop()
    relay = Relay()
    _, relay.upstream = await loop.create_connection(lambda: _Upstream(relay), host, upstream)
    server = await loop.create_server(lambda: _Client(relay), host, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", type=int, required=True)
    args = ap.parse_args()
    uvloop.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
