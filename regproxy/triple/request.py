"""What the planner and a cluster's policy read of a Triple call: the ``RequestView`` of
regproxy.routing.model, from a TripleCall's headers, so that a Triple call takes the same routes,
rules, routers and balancers as a Dubbo call.

Dubbo's Triple provider reads the same things (``TripleProtocol``/``TriplePathResolver``): the
interface and method from ``:path``, the version and group from ``tri-service-version`` and
``tri-service-group``, the attachments from the other headers (regproxy.triple.call says which).
The arguments are protobuf (or another format the caller chose), which regproxy does not decode:
a condition rule on ``arguments[N]`` sees none, as for a call without them.
"""

from __future__ import annotations

from typing import Any

from regproxy.triple.call import TripleCall

# Dubbo's version when the caller names none: a Dubbo 3 consumer leaves ``tri-service-version``
# out for it (IGNORE_1_0_0_VERSION; the Python SDK always does), and TriplePathResolver falls back
# to it.
DEFAULT_VERSION = "1.0.0"


class TripleRequest:
    """A Triple call as the planner reads a Dubbo request body (``dubbo.request.RequestBody``)."""

    __slots__ = ("attachments", "group", "method", "path", "version")

    # The Dubbo-only parts the planner looks at: no head bytes to memoise, every attachment read.
    head_end = -1
    ends_with_map = False
    argument_count = 0
    attachments_read = True

    def __init__(self, call: TripleCall, version: str | None = None) -> None:
        self.path = call.service
        self.version = call.version if version is None else version
        self.group = call.group
        self.method = call.method
        attachments: dict[str, Any] = {}
        for name, value in call.attachments:
            attachments.setdefault(name, value)  # the first of a repeated header, as Dubbo reads it
        self.attachments = attachments

    def arguments(self) -> list[Any]:
        return []

    def __repr__(self) -> str:
        return f"TripleRequest({self.path}:{self.version}.{self.method} group={self.group!r})"
