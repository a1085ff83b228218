"""Flow control: how much one connection may make a listener hold (``limits:`` in the config).

A sidecar reads a client's requests faster than answers can leave when the client does not read
them, and a provider can stop reading what is written to it. Without bounds either grows the
sidecar's memory without end (a client that never read took one to gigabytes). So:

* A client connection stops being read (``pause_reading``) while its requests in flight reach
  ``max_in_flight`` or ``max_in_flight_bytes``, and while its unsent answers fill the transport's
  write buffer past ``pause_unsent``; it is read again once all that fell back to the resume marks.
  Nothing is refused: the kernel's buffers fill and the client's writes wait, as TCP means them to.
* A client whose unsent answers still reach ``max_unsent`` (answers to requests already in flight
  when reading stopped) is closed with a logged reason: it stopped reading.
* A provider connection with ``max_unsent`` bytes not yet written takes no new requests: they are
  not written, so they go to another host (the retry rule of connect failures) or fail at once with
  a named error, never queued behind a peer that does not read.

Other connections are never paused for one: a stalled client delays only its own requests.
"""

from __future__ import annotations

from typing import Final

KIB: Final = 1024
MIB: Final = 1024 * KIB


class FlowLimits:
    """Per-connection bounds, fixed when a listener starts; the resume marks are half the limits."""

    __slots__ = (
        "max_in_flight",
        "max_in_flight_bytes",
        "max_unsent",
        "pause_unsent",
        "resume_in_flight",
        "resume_in_flight_bytes",
        "resume_unsent",
    )

    def __init__(
        self,
        max_in_flight: int = 4096,
        max_in_flight_bytes: int = 32 * MIB,
        max_unsent: int = 64 * MIB,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.max_in_flight_bytes = max_in_flight_bytes
        self.max_unsent = max_unsent
        self.resume_in_flight = max_in_flight // 2
        self.resume_in_flight_bytes = max_in_flight_bytes // 2
        # Reading stops well before the close: a slow reader's answers to what it already sent
        # (at most max_in_flight_bytes' worth for a same-sized answer) fit below max_unsent.
        self.pause_unsent = min(MIB, max_unsent // 4)
        self.resume_unsent = self.pause_unsent // 4
