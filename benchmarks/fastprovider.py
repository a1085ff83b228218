"""A Dubbo provider that costs as little as a Python provider can, so the hop is what gets measured.

Every two-way request is answered with one prepared response frame whose id is patched; bodies
are never read.  All the answers to one ``data_received`` chunk go out in one ``write``.  The
header walk is done here rather than with ``FrameParser`` because the parser copies every body
into a Frame, work this provider has no use for.

    python -m benchmarks.fastprovider --port 20880
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import struct
from typing import cast

from benchmarks import aio
from benchmarks.payload import ID, response_template
from regproxy.dubbo.encode import heartbeat_reply
from regproxy.dubbo.frame import DEFAULT_MAX_BODY, FLAG_EVENT, FLAG_REQUEST, FLAG_TWOWAY, HEADER_LEN, MAGIC

_HEADER = struct.Struct(">HBBqI")
_TWO_WAY_REQUEST = FLAG_REQUEST | FLAG_TWOWAY


class FastProvider(asyncio.Protocol):
    __slots__ = ("_buf", "_post", "_pre", "transport")

    def __init__(self) -> None:
        self._pre, self._post = response_template()
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        end = len(view)
        pos = 0
        out: list[bytes] = []
        pre, post, pack, unpack = self._pre, self._post, ID.pack, _HEADER.unpack_from
        while end - pos >= HEADER_LEN:
            magic, flag, _status, request_id, body_len = unpack(view, pos)
            if magic != MAGIC or body_len > DEFAULT_MAX_BODY:
                assert self.transport is not None
                self.transport.abort()  # not a Dubbo peer; a benchmark has no use for a polite error
                return
            stop = pos + HEADER_LEN + body_len
            if stop > end:
                break
            if flag & _TWO_WAY_REQUEST == _TWO_WAY_REQUEST:
                if flag & FLAG_EVENT:
                    out.append(heartbeat_reply(request_id))
                else:
                    out += (pre, pack(request_id), post)
            pos = stop
        if buf:
            del buf[:pos]
        elif pos < end:
            buf += view[pos:]
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(host: str, port: int) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(FastProvider, host, port, reuse_address=True, backlog=1024)


async def _main(host: str, port: int) -> None:
    server = await serve(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"fastprovider listening on {host}:{server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=20880)
    args = parser.parse_args(argv)
    aio.run(_main(args.host, args.port))


if __name__ == "__main__":
    main()
