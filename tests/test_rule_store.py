"""The rule store: a rule that does not parse never replaces the one in force."""

from __future__ import annotations

import logging

import pytest

from regproxy.governance.errors import RuleError
from regproxy.governance.keys import CONDITION_ROUTER, TAG_ROUTER
from regproxy.governance.store import RuleStore

RID = "com.foo.Svc::" + CONDITION_ROUTER


def parse_upper(text: str) -> str:
    """A stand-in parser: a rule is any text without the word "bad", and not blank."""
    if "bad" in text or not text.strip():
        raise RuleError("the rule says bad", reason="condition")
    return text.upper()


def store() -> tuple[RuleStore, list[str]]:
    changes: list[str] = []
    return RuleStore({CONDITION_ROUTER: parse_upper}, on_change=changes.append), changes


def test_good_rule_in_force_and_bad_one_keeps_it(caplog: pytest.LogCaptureFixture) -> None:
    s, changes = store()
    assert s.update(RID, "a => b", origin="zookeeper", source="/p", version="1") is None
    assert s.in_force[RID].rule == "A => B" and changes == [RID]
    with caplog.at_level(logging.ERROR, "regproxy.governance.store"):
        err = s.update(RID, "bad =>", origin="zookeeper", source="/p", version="2")
        s.update(RID, "bad =>", origin="zookeeper", source="/p", version="2")  # the same again: no new line
    assert err is not None and err.reason == "condition" and str(err) == "/p: the rule says bad"
    assert s.in_force[RID].version == "1" and changes == [RID]
    assert s.refused[RID].describe()["message"] == "the rule says bad"
    assert [r.getMessage() for r in caplog.records] == [
        "rule /p refused (condition, version 2): the rule says bad; version 1 stays in force"
    ]
    assert s.errors == {("zookeeper", "condition"): 1}
    # A good version clears the refusal.
    assert s.update(RID, "c => d", origin="zookeeper", source="/p", version="3") is None
    assert RID not in s.refused and s.in_force[RID].rule == "C => D" and changes == [RID, RID]


def test_only_a_deletion_leaves_force_an_emptied_rule_is_refused() -> None:
    s, changes = store()
    s.update(RID, "a => b", origin="zookeeper", source="/p", version="1")
    # ZookeeperDataListener: a node emptied is MODIFIED; ListenableStateRouter keeps the old rule when
    # the new content fails to parse.
    s.update(RID, "   ", origin="zookeeper", source="/p", version="2")
    assert s.in_force[RID].version == "1" and s.refused[RID].version == "2" and changes == [RID]
    s.update(RID, None, origin="zookeeper", source="/p")
    assert RID not in s.in_force and RID not in s.refused and changes == [RID, RID]
    s.update(RID, None, origin="zookeeper", source="/p")  # already gone: nothing changes
    assert changes == [RID, RID]


def test_unknown_kind_and_bad_rule_ids_are_refused() -> None:
    s, changes = store()
    assert s.update("app" + TAG_ROUTER, "tags: []", origin="nacos", source="d").reason == "kind"
    assert s.update("no-suffix", "x", origin="nacos", source="d").reason == "key"
    assert not s.in_force and not changes


def test_snapshot_restores_what_was_in_force() -> None:
    s, _ = store()
    s.update(RID, "a => b", origin="zookeeper", source="/p", version="7")
    s.update(RID, "bad", origin="zookeeper", source="/p", version="8")
    again, changes = store()
    again.restore([*s.snapshot(), {"text": "no id"}])
    assert again.in_force[RID].rule == "A => B" and again.in_force[RID].version == "7"
    assert changes == [RID]
    assert [r.rule for r in again.rules(CONDITION_ROUTER, ["com.foo.Svc::", "other::"])] == ["A => B"]
