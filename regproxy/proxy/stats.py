"""Counters kept by the forwarding engine; the admin endpoint exports them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class ListenerStats:
    requests: int = 0
    oneway: int = 0
    heartbeats: int = 0
    responses: Counter[int] = field(default_factory=Counter)  # by Dubbo status, including our own errors
    per_service: Counter[str] = field(default_factory=Counter)  # by "group/interface:version"
    timeouts: int = 0
    retries: int = 0
    connect_failures: int = 0
    protocol_errors: int = 0
    downstream_connections: int = 0
    rejected_connections: int = 0

    def snapshot(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "oneway": self.oneway,
            "heartbeats": self.heartbeats,
            "responses": {str(k): v for k, v in sorted(self.responses.items())},
            "per_service": dict(self.per_service),
            "timeouts": self.timeouts,
            "retries": self.retries,
            "connect_failures": self.connect_failures,
            "protocol_errors": self.protocol_errors,
            "downstream_connections": self.downstream_connections,
            "rejected_connections": self.rejected_connections,
        }
