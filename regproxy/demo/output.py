"""The demo's lines on stdout, written so that a reader going away never raises.

``regproxy demo | head`` or ``make demo | tee out`` followed by Ctrl-C close the pipe the demo
writes to. Python ignores SIGPIPE, so the next write fails with EPIPE (BrokenPipeError). A demo
has nothing left to do once nobody reads its lines, so :class:`Output` then calls ``on_closed``
(the demo stops, closes everything and exits 0, as ``yes | head`` ends ``yes``), and points file
descriptor 1 at /dev/null: the interpreter flushes stdout once more at exit, and what is still
buffered would otherwise fail again and print ``Exception ignored ... BrokenPipeError`` (the
pattern the Python documentation recommends, in the notes on SIGPIPE of the ``signal`` module).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable


class Output:
    def __init__(self) -> None:
        self.closed = False
        # Called once, when the reader has gone; the demo sets its stop flag here.
        self.on_closed: Callable[[], None] | None = None

    def say(self, line: str) -> None:
        """Print ``line`` and flush; never raises (a lost reader closes this output instead)."""
        if self.closed:
            return
        try:
            print(line, flush=True)
        except (OSError, ValueError):  # EPIPE, EIO of a vanished terminal, or stdout already closed
            self._lost()

    def _lost(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, sys.stdout.fileno())
            finally:
                os.close(devnull)
        if self.on_closed is not None:
            self.on_closed()
