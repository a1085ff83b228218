"""What StateStore.load() reports having found (for /readyz's saved_state and `regproxy ctl status`)."""

from __future__ import annotations

from pathlib import Path

from regproxy.state import SavedState, StateStore


def test_load_reports_what_the_file_held(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.loaded is None  # not loaded yet
    store.load()
    assert store.loaded == {
        "file": str(tmp_path / "regproxy-state.json"), "found": False,
        "publications": 0, "subscriptions": 0, "error": None,
    }  # fmt: skip
    store.save(SavedState(publications=[{"spec": {}}, {"spec": {}}], subscriptions=[{"interface": "a"}]))
    store.load()
    assert store.loaded is not None
    found = store.loaded
    assert (found["found"], found["publications"], found["subscriptions"]) == (True, 2, 1)
    store.path.write_text("{not json")
    store.load()
    assert store.loaded is not None and store.loaded["found"] is True
    assert (store.loaded["publications"], store.loaded["subscriptions"]) == (0, 0)
    assert "unreadable" in store.loaded["error"] and "regproxy-state.corrupt" in store.loaded["error"]
