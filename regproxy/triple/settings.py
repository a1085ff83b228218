"""How regproxy's HTTP/2 connections are set up: the SETTINGS it sends, its windows, and the
``h2`` configuration of each side.

The bounds are what keeps one connection from making the sidecar hold much (the rule of
regproxy.proxy.flow, per stream):

* Every stream's receive window is STREAM_WINDOW; a stream's bytes are acknowledged (its window
  reopened) only once they are written on the other side. A slow reader therefore stops its own
  stream's sender, and nothing else: the connection's window is the sum of every stream's
  (MAX_STREAMS of them), so stalled streams can never close it for the others.
* At most MAX_STREAMS streams at once per client connection (SETTINGS_MAX_CONCURRENT_STREAMS;
  RFC 9113 §6.5.2 recommends no fewer than 100). A stream over it is refused with RST_STREAM
  REFUSED_STREAM, which a client may retry (RFC 9113 §5.1.2: a stream error). ``h2`` itself would
  end the whole connection for it (TooManyStreamsError), so it is told a higher limit,
  H2_STREAMS_CAP, and the TripleForwarder refuses the streams between the two.
* A frame is refused as soon as its header says it is longer than SETTINGS_MAX_FRAME_SIZE, not
  once all of it has been read (``h2``'s FrameBuffer waits for the whole frame first).
* So what one connection can make regproxy hold is bounded by MAX_STREAMS × STREAM_WINDOW in each
  direction, whatever its peer does; header blocks are bounded by MAX_HEADER_LIST; what is written
  to it and not read, by MAX_UNSENT; the frames it sends that are no call's work, by
  MAX_CONTROL_PER_S.

Upstream (regproxy as the client) uses the same windows, and at most UPSTREAM_STREAMS streams per
connection (fewer when the server says so); a host gets more connections when they are full.
"""

from __future__ import annotations

from typing import Final

import h2.config
import h2.connection
import h2.frame_buffer
import h2.settings

STREAM_WINDOW: Final = 1 << 20  # 1 MiB, grpc-java's (and Netty's) default flow-control window
MAX_STREAMS: Final = 100
CONNECTION_WINDOW: Final = STREAM_WINDOW * MAX_STREAMS
MAX_HEADER_LIST: Final = 64 * 1024  # what gRPC implementations accept by default (grpc-go: 16 MiB)
UPSTREAM_STREAMS: Final = 100
# What h2 is told, on its side, of MAX_STREAMS (see the docstring): a client past it is abusive.
H2_STREAMS_CAP: Final = 10 * MAX_STREAMS
# A client's frames that cost regproxy work and answer nothing of its own calls (SETTINGS, PING,
# PRIORITY, empty DATA frames, RST_STREAM of a call in flight, streams refused): more than this many in one
# second and the connection is closed with GOAWAY ENHANCE_YOUR_CALM. The floods of CVE-2019-9512
# (PING), CVE-2019-9515 (SETTINGS) and CVE-2023-44487 (rapid reset) send thousands a second; no
# gRPC client comes near this.
MAX_CONTROL_PER_S: Final = 1000
# Bytes written to a client's socket and not yet taken by it: past this, it does not read what it
# asked for (control-frame answers are not flow-controlled) and the connection is closed.
MAX_UNSENT: Final = 16 * 1024 * 1024
DEFAULT_WINDOW: Final = 65_535  # RFC 9113 §6.9.2: every window's size before SETTINGS


class _EagerFrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's FrameBuffer, which refuses a frame longer than ``max_frame_size`` at its 9-byte header
    instead of after buffering the whole of it."""

    def __next__(self) -> h2.frame_buffer.Frame:
        if len(self._data) >= 9:
            self._validate_frame_length(int.from_bytes(self._data[:3], "big"))
        return super().__next__()


def _connection(client: bool) -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(
        client_side=client,
        header_encoding=None,  # names and values stay bytes: forwarded as they came
        validate_inbound_headers=True,
        normalize_inbound_headers=True,
        # What is sent was read from a validated peer, or made here.
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    conn = h2.connection.H2Connection(config)
    values = {
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS if not client else UPSTREAM_STREAMS,
    }
    if client:
        values[h2.settings.SettingCodes.ENABLE_PUSH] = 0
    # Set before the preface so that its SETTINGS frame carries them, and current at once: a peer
    # sends no more than the defaults before it has read them.
    conn.local_settings = h2.settings.Settings(client=client, initial_values=values)
    frames = _EagerFrameBuffer(server=not client)
    frames.max_frame_size = conn.incoming_buffer.max_frame_size
    conn.incoming_buffer = frames
    return conn


def start(conn: h2.connection.H2Connection) -> None:
    """The connection preface and SETTINGS, and the connection window opened to CONNECTION_WINDOW.
    A server's h2 is then told H2_STREAMS_CAP as its stream limit (the SETTINGS frame sent says
    MAX_STREAMS): see the module's docstring."""
    conn.initiate_connection()
    conn.increment_flow_control_window(CONNECTION_WINDOW - DEFAULT_WINDOW)
    if not conn.config.client_side:
        values = {code: conn.local_settings[code] for code in conn.local_settings}
        values[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = H2_STREAMS_CAP
        conn.local_settings = h2.settings.Settings(client=False, initial_values=values)


def server_connection() -> h2.connection.H2Connection:
    """The HTTP/2 state of a client's connection to a listener (regproxy is the server)."""
    return _connection(client=False)


def client_connection() -> h2.connection.H2Connection:
    """The HTTP/2 state of a connection to an upstream host (regproxy is the client)."""
    return _connection(client=True)
