"""An HTTP/2 server that records each request's headers exactly as they arrive (order, case, every
pseudo-header) and answers like a gRPC server would, so a test can see what a Triple or gRPC *client*
puts on the wire: apache-dubbo's, grpcio's, or a sidecar's egress on its way to a provider.

    python -m tests.peers.triple.h2_capture --port P

Prints ``READY <port>``, then one JSON line per request once its client half-closes:
``{"event": "request", "headers": [[name, value], ...], "data": <bytes received>, "messages": <gRPC
length-prefixed messages in them>}``.  Every request is answered ``:status 200``, ``content-type:
application/grpc``, one empty message (a default protobuf: an empty ``StringValue``, ``UInt32Value``, ...)
and trailers ``grpc-status: 0``.  Runs in either venv: only h2 (pinned in both) and the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions

if __package__ in (None, ""):  # run by path: make `tests.peers.triple` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.peers.triple import greeter

_EMPTY_MESSAGE = b"\x00\x00\x00\x00\x00"  # uncompressed, length 0


def _count_messages(data: bytes) -> int:
    count = offset = 0
    while offset + 5 <= len(data):
        offset += 5 + int.from_bytes(data[offset + 1 : offset + 5], "big")
        count += 1
    return count


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding="utf-8", validate_inbound_headers=False)
    )
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    headers: dict[int, list[list[str]]] = {}
    bodies: dict[int, bytearray] = {}
    try:
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    headers[event.stream_id] = [[str(k), str(v)] for k, v in event.headers]
                    bodies[event.stream_id] = bytearray()
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):  # also after HEADERS with END_STREAM
                    sid = event.stream_id
                    body = bytes(bodies.pop(sid, b""))
                    greeter.emit(
                        {
                            "event": "request",
                            "headers": headers.pop(sid, []),
                            "data": len(body),
                            "messages": _count_messages(body),
                        }
                    )
                    conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
                    conn.send_data(sid, _EMPTY_MESSAGE)
                    conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)
                elif isinstance(event, h2.events.StreamReset):
                    greeter.emit({"event": "reset", "stream": event.stream_id, "code": int(event.error_code)})
            writer.write(conn.data_to_send())
            await writer.drain()
    except (ConnectionError, h2.exceptions.ProtocolError):
        pass
    finally:
        writer.close()


async def _main(port: int) -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", port)
    print(greeter.ready_line(port), flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
