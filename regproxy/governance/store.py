"""The rules in force, by rule id (``<key><suffix>``), and the ones refused.

A rule text arrives from the config center (or the state file) with where it was read and its
version (ZooKeeper's mzxid, Nacos's md5).  It is parsed by the parser of its suffix; one that parses
replaces the rule in force, one that does not is refused and **the previous good version stays in
force** (issue 17: a rule that did not parse never changes traffic).  A deleted rule (text ``None``)
is taken out of force; empty text is not a deletion but a rule that does not parse.  Refusals
are logged once per (rule id, version) and counted by reason.

Pure and synchronous: no I/O, no loop.  ``on_change`` is told which rule ids changed what is in
force, so the caller rebuilds only what those rules name.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from regproxy.governance.errors import RuleError
from regproxy.governance.keys import split_rule_id

log = logging.getLogger(__name__)

__all__ = ["Parser", "RefusedRule", "RuleInForce", "RuleStore"]

Parser = Callable[[str], Any]  # rule text → parsed rule; RuleError if it cannot be used


@dataclass(frozen=True, slots=True)
class RuleInForce:
    rule_id: str
    key: str  # service key (interface:version:group) or application name
    suffix: str  # .condition-router, .tag-router, .configurators
    rule: Any
    text: str
    source: str  # ZooKeeper path or Nacos dataId/group, or "state file"
    version: str

    def describe(self) -> dict[str, Any]:
        return {"rule_id": self.rule_id, "source": self.source, "version": self.version, "text": self.text}


@dataclass(frozen=True, slots=True)
class RefusedRule:
    rule_id: str
    source: str
    version: str
    reason: str
    message: str

    def describe(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "source": self.source,
            "version": self.version,
            "reason": self.reason,
            "message": self.message,
        }


class RuleStore:
    def __init__(
        self,
        parsers: Mapping[str, Parser],
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self._parsers = dict(parsers)
        self._on_change = on_change
        self.in_force: dict[str, RuleInForce] = {}
        self.refused: dict[str, RefusedRule] = {}
        # (origin, reason) → count, for regproxy_rule_errors_total{source,reason}
        self.errors: Counter[tuple[str, str]] = Counter()

    def update(
        self, rule_id: str, text: str | None, *, origin: str, source: str, version: str = ""
    ) -> RuleError | None:
        """Take a new text of ``rule_id`` (None: deleted).  ``origin`` is the kind of place it was read
        (``zookeeper``, ``nacos``, ``state``: the counter's label), ``source`` the place itself (a node
        path, a dataId).  Returns the refusal, if it was refused."""
        if text is None:
            # Only a deletion takes a rule out of force (ListenableStateRouter.process: DELETED clears
            # the router; any other content that fails to parse leaves the old rule).  Which events
            # are deletions is the watcher's to say, as in Dubbo: Nacos's blank content
            # (NacosDynamicConfiguration.getChangeType), ZooKeeper's node gone (ZookeeperDataListener);
            # a ZooKeeper node emptied is a modification, parsed and refused.
            self.refused.pop(rule_id, None)
            if self.in_force.pop(rule_id, None) is not None:
                self._changed(rule_id)
            return None
        current = self.in_force.get(rule_id)
        if current is not None and current.text == text:
            self.refused.pop(rule_id, None)
            return None
        try:
            key, suffix = split_rule_id(rule_id)
        except ValueError as exc:
            return self._refuse(rule_id, origin, source, version, RuleError(str(exc), reason="key"))
        parser = self._parsers.get(suffix)
        if parser is None:
            return self._refuse(
                rule_id, origin, source, version, RuleError(f"no parser for {suffix}", reason="kind")
            )
        try:
            rule = parser(text)
        except RuleError as exc:
            return self._refuse(rule_id, origin, source, version, exc)
        self.refused.pop(rule_id, None)
        self.in_force[rule_id] = RuleInForce(rule_id, key, suffix, rule, text, source, version)
        self._changed(rule_id)
        return None

    def _refuse(self, rule_id: str, origin: str, source: str, version: str, exc: RuleError) -> RuleError:
        seen = self.refused.get(rule_id)
        refusal = RefusedRule(rule_id, source, version, exc.reason, exc.message)
        self.refused[rule_id] = refusal
        if seen is None or (seen.version, seen.message) != (version, exc.message):
            kept = self.in_force.get(rule_id)
            log.error(
                "rule %s refused (%s, version %s): %s; %s",
                source or rule_id,
                exc.reason,
                version or "?",
                exc.message,
                f"version {kept.version or '?'} stays in force" if kept else "no version of it is in force",
            )
            self.errors[(origin, exc.reason)] += 1
        return exc.at(source or rule_id)

    def _changed(self, rule_id: str) -> None:
        if self._on_change is not None:
            self._on_change(rule_id)

    def rules(self, suffix: str, keys: Iterable[str]) -> list[RuleInForce]:
        """The rules of one kind in force for ``keys``, in the order of ``keys``."""
        out = []
        for key in keys:
            found = self.in_force.get(key + suffix)
            if found is not None:
                out.append(found)
        return out

    # Persistence: the rules in force survive a restart during a config-center outage.
    def snapshot(self) -> list[dict[str, str]]:
        return [
            {"rule_id": r.rule_id, "text": r.text, "source": r.source, "version": r.version}
            for r in sorted(self.in_force.values(), key=lambda r: r.rule_id)
        ]

    def restore(self, saved: Iterable[Mapping[str, Any]]) -> None:
        for item in saved:
            try:
                rule_id, text = str(item["rule_id"]), str(item["text"])
            except (KeyError, TypeError):
                log.error("state file: a saved rule without rule_id and text was dropped: %r", item)
                continue
            source, version = str(item.get("source", "")), str(item.get("version", ""))
            self.update(rule_id, text, origin="state", source=source or "state file", version=version)
