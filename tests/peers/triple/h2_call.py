"""One gRPC call over a bare HTTP/2 connection (h2, sans-IO, on a blocking socket), returning every
header and trailer exactly as the server sent them: what a test needs to pin a server's response shape
(``:status``, ``content-type``, ``grpc-status``, ``grpc-message``, anything else in the trailers), which a
gRPC library would digest.  The counterpart of h2_capture.py, which shows what a client sends.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events

from regproxy.triple.messages import pack_message


@dataclass
class RawResponse:
    headers: list[tuple[str, str]] = field(default_factory=list)
    """The first HEADERS frame (for a trailers-only answer: everything, and ``trailers`` stays empty)."""
    messages: list[bytes] = field(default_factory=list)
    """The gRPC messages of the DATA frames, unframed."""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    reset: int | None = None
    """The RST_STREAM error code, when the server reset the stream."""

    def header(self, name: str) -> str | None:
        for k, v in [*self.headers, *self.trailers]:
            if k == name:
                return v
        return None


def unframe(data: bytes) -> list[bytes]:
    out, offset = [], 0
    while offset + 5 <= len(data):
        size = int.from_bytes(data[offset + 1 : offset + 5], "big")
        out.append(data[offset + 5 : offset + 5 + size])
        offset += 5 + size
    return out


class Connection:
    """One HTTP/2 connection to a gRPC server, calls made one at a time on it (a socket and h2's state
    machine, nothing else): for a test that needs to hold a connection open while it opens others."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.host, self.port = host, port
        self._conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._conn.initiate_connection()
        self._sock.sendall(self._conn.data_to_send())

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def call(
        self,
        path: str,
        messages: list[bytes],
        *,
        extra_headers: list[tuple[str, str]] | None = None,
        timeout: float = 10.0,
    ) -> RawResponse:
        """POST ``messages`` to ``path`` with the headers a gRPC client sends, half-close, and read the
        whole answer; TimeoutError when it is not complete within ``timeout`` seconds."""
        conn, sock = self._conn, self._sock
        out = RawResponse()
        body = bytearray()
        sid = conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", f"{self.host}:{self.port}"), ("content-type", "application/grpc"),
            ("te", "trailers"), *(extra_headers or []),
        ]  # fmt: skip
        conn.send_headers(sid, headers)
        # Small messages only: within the initial window, no flow-control loop needed.
        conn.send_data(sid, b"".join(pack_message(m) for m in messages), end_stream=True)
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + timeout
        done = False
        while not done:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(f"no complete answer on stream {sid} within {timeout} s: {out}") from None
            if not data:
                raise ConnectionError(f"connection closed before stream {sid} ended: {out}")
            for event in conn.receive_data(data):
                if getattr(event, "stream_id", sid) != sid:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    out.headers = [(str(k), str(v)) for k, v in event.headers]
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.TrailersReceived):
                    out.trailers = [(str(k), str(v)) for k, v in event.headers]
                elif isinstance(event, h2.events.StreamReset):
                    out.reset = int(event.error_code)
                    done = True
                elif isinstance(event, h2.events.StreamEnded):
                    done = True
            sock.sendall(conn.data_to_send())
        out.messages = unframe(bytes(body))
        return out


def call(
    port: int,
    path: str,
    messages: list[bytes],
    *,
    extra_headers: list[tuple[str, str]] | None = None,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
) -> RawResponse:
    """One call on a connection of its own (``Connection.call``)."""
    with Connection(port, host, timeout) as conn:
        return conn.call(path, messages, extra_headers=extra_headers, timeout=timeout)
