"""The one error a governance rule can raise: it names the rule's source and what is wrong."""

from __future__ import annotations

__all__ = ["RuleError"]


class RuleError(ValueError):
    """A rule that cannot be used.  ``reason`` is a short machine label (for the
    ``regproxy_rule_errors_total{reason}`` counter: ``yaml``, ``unknown-field``, ``condition``, ...);
    ``source`` is where the rule came from (a ZooKeeper path or a Nacos dataId), once known."""

    def __init__(self, message: str, *, reason: str, source: str = "") -> None:
        self.message = message
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)

    def at(self, source: str) -> RuleError:
        """The same error, naming where the rule was read."""
        return RuleError(self.message, reason=self.reason, source=source)
