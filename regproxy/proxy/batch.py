"""Write batching: everything queued for a connection while the loop handles one round of events
goes out in a single ``transport.write``.

System calls dominate the cost of a hop at low concurrency, so a frame must not cost a write of
its own: a connection that gets its first chunk in a round registers itself once, and one
callback scheduled with ``call_soon`` writes every dirty connection's chunks, joined, at the end of
the round.

A read that brought many frames is written out at once instead (``EARLY_FLUSH_FRAMES``): under
pipelined load one round handles the reads of many connections, and holding all their frames to
the round's end would move every request through the chain in one wave, each process idle while
the one before it works. Written after each large read, the next hop starts on them at once.
"""

from __future__ import annotations

import asyncio
from typing import Final

EARLY_FLUSH_FRAMES: Final = 8


class Batcher:
    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[BatchedWriter] = []
        self._scheduled = False

    def mark(self, writer: BatchedWriter) -> None:
        self._dirty.append(writer)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for writer in dirty:
            writer.flush()


class BatchedWriter:
    """Mixin for a protocol with a transport: ``queue`` chunks, they are written at the round's end."""

    __slots__ = ("_batcher", "_out", "transport")
    transport: asyncio.Transport | None
    _out: list[bytes | bytearray]
    _batcher: Batcher

    def queue(self, chunk: bytes | bytearray) -> None:
        if self.transport is None:
            return  # closed: the peer is gone, nobody can read the answer
        out = self._out
        if not out:
            self._batcher.mark(self)
        out.append(chunk)

    def queue_all(self, chunks: list[bytes | bytearray]) -> None:
        if self.transport is None:
            return
        out = self._out
        if not out:
            self._batcher.mark(self)
        out.extend(chunks)

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        self._out = []
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))
