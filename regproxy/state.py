"""What a sidecar must remember across restarts: its publications, its subscriptions, and the last
providers it saw for each subscription (so it can route while the registry is unreachable).

One small JSON file in the data directory, replaced atomically (write a temporary file, fsync,
rename, fsync the directory) so a crash mid-write leaves the old state or the new, never half.

A write that fails (a full disk, an I/O error) leaves the previous file in place. The change that
asked for it stays in effect in memory, its caller is told (StateSaveError, answered 503 by the
API), and the writer tries again with the whole state every SAVE_RETRY_S seconds until one write
succeeds: see StateWriter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

STATE_FILE = "regproxy-state.json"
FORMAT_VERSION = 1
# While writes fail, the whole state is written again this often: a disk that has room again is
# noticed within a second, and one failing write a second (it stops at the first full block and
# removes its temporary file) costs next to nothing.
SAVE_RETRY_S = 1.0
# While writes keep failing, the ERROR is repeated this often (each retry is logged at DEBUG): a
# line a second for hours would bury the rest of the log, one for the first failure only would
# hide that it goes on.
REMIND_S = 60.0


class StateSaveError(Exception):
    """The write that would have covered the caller's change failed: the change is in effect in
    memory but not on disk, so a restart would lose it until a later write succeeds."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"state not saved to {path}: {reason}")
        self.path = path
        self.reason = reason


def _reason(exc: BaseException) -> str:
    """Why a write failed, for people: ``[Errno 28] No space left on device`` (without the name of
    the temporary file some OSErrors carry: the state file's path is said next to it)."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass
class SavedState:
    publications: list[dict[str, Any]] = field(default_factory=list)
    subscriptions: list[dict[str, Any]] = field(default_factory=list)
    # cluster name -> registry name -> provider URLs (str), as last seen
    providers: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    # registry key -> the dynamic rules in force there (regproxy.discovery.rules), as last seen
    rules: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "version": FORMAT_VERSION,
                "publications": self.publications,
                "subscriptions": self.subscriptions,
                "providers": self.providers,
                "rules": self.rules,
            },
            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
        )


def _short(value: object, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class StateStore:
    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / STATE_FILE
        # What the last load() found, for /readyz and `regproxy ctl status`: "restore done" alone
        # cannot tell a sidecar that came back with its publications from a brand-new one.
        self.loaded: dict[str, Any] | None = None

    def load(self) -> SavedState:
        """The saved state; empty when there is none. A corrupt file is kept aside, not trusted."""
        state, error = self._read()
        self.loaded = {
            "file": str(self.path),
            "found": error != "missing",
            "publications": len(state.publications),
            "subscriptions": len(state.subscriptions),
            "error": None if error == "missing" else error,
        }
        return state

    def _read(self) -> tuple[SavedState, str | None]:
        """The state and None; or an empty state and "missing", or why the file was unreadable."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return SavedState(), "missing"
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
                raise ValueError(
                    f"unknown format version {data.get('version') if isinstance(data, dict) else None}"
                )
            return SavedState(
                publications=self._items(data, "publications"),
                subscriptions=self._items(data, "subscriptions"),
                providers=self._providers(data.get("providers")),
                rules=self._rules(data.get("rules")),
            ), None
        except (ValueError, TypeError) as exc:
            aside = self.path.with_suffix(".corrupt")
            log.error("state file %s is unreadable (%s); moved to %s, starting empty", self.path, exc, aside)
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            return SavedState(), f"unreadable ({exc}); moved to {aside}"

    def _items(self, data: dict[str, Any], section: str) -> list[dict[str, Any]]:
        """One list section of a readable file, each entry of the wrong type dropped with an ERROR:
        one broken entry must not cost the others (or the start-up)."""
        value = data.get(section) or []
        if not isinstance(value, list):
            log.error("state file %s: skipping %s: %s is not a list", self.path, section, _short(value))
            return []
        items = []
        for item in value:
            if isinstance(item, dict):
                items.append(item)
            else:
                log.error(
                    "state file %s: skipping %s entry %s: not an object", self.path, section, _short(item)
                )
        return items

    def _providers(self, value: object) -> dict[str, dict[str, list[str]]]:
        """The provider cache, cluster by cluster: a cluster whose entry is not a mapping is dropped
        with an ERROR (its URLs are checked one by one when restored, see Discovery)."""
        if not value:
            return {}
        if not isinstance(value, dict):
            log.error("state file %s: skipping providers: %s is not an object", self.path, _short(value))
            return {}
        out: dict[str, dict[str, list[str]]] = {}
        for name, per_registry in value.items():
            if isinstance(per_registry, dict):
                out[name] = per_registry
            else:
                log.error(
                    "state file %s: skipping cached providers of %s: %s is not an object",
                    self.path, name, _short(per_registry),
                )  # fmt: skip
        return out

    def _rules(self, value: object) -> dict[str, list[dict[str, str]]]:
        """The rules in force, registry by registry: one whose entry is not a list is dropped with an
        ERROR (each rule is parsed again when restored, see regproxy.discovery.rules)."""
        if not value:
            return {}
        if not isinstance(value, dict):
            log.error("state file %s: skipping rules: %s is not an object", self.path, _short(value))
            return {}
        out: dict[str, list[dict[str, str]]] = {}
        for key, items in value.items():
            if isinstance(items, list):
                out[key] = [item for item in items if isinstance(item, dict)]
            else:
                log.error(
                    "state file %s: skipping rules of %s: %s is not a list", self.path, key, _short(items)
                )
        return out

    def save(self, state: SavedState) -> None:
        data = state.to_json()
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".regproxy-state.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


class StateWriter:
    """Saves snapshots of a sidecar's state off the event loop, one write at a time.

    A write of a table with 10,000 providers (a few MB, then two fsyncs) takes tens of ms; done on
    the loop it would stall every request in flight, and done once per change it would make each
    change cost in proportion to the whole table.  So snapshots are taken on the loop (cheap,
    consistent), written in a worker thread, and requests made while a write runs share the next
    write (group commit).  ``save()`` returns once a write that includes the caller's change is on
    disk, and raises StateSaveError when that write failed; ``save_later(delay)`` is for data that
    may lag (the provider cache).

    A failed write is not undone in memory (the caller's change already reached the registry, and
    undoing that could fail in turn); instead, while the last write failed (``error``), the whole
    state is written again every SAVE_RETRY_S seconds, so the first write after the disk has room
    again saves everything, the refused changes included.  Each write is one snapshot of the
    whole state: a successful one covers every change made before it, a failed one leaves the file
    as the last successful one wrote it.
    """

    def __init__(self, store: StateStore, snapshot: Callable[[], SavedState]) -> None:
        self.store = store
        self._snapshot = snapshot
        self._wanted = 0  # generation of the latest change to save
        self._written = 0  # generation the last finished write (successful or not) covered
        self._saved = 0  # generation the last successful write covered
        self._writer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._done = asyncio.Event()
        self._closed = False
        self.writes = 0  # successful writes
        self.failures = 0  # failed writes, retries included
        self.error: str | None = None  # why the last write failed; None once one succeeds
        self.consecutive_failures = 0
        self._failing_since = 0.0  # monotonic time of the first failure of the current run
        self._reminded = 0.0  # monotonic time of the last ERROR about it

    @property
    def pending(self) -> bool:
        return self._written < self._wanted

    def describe(self) -> dict[str, Any]:
        """For /readyz and /metrics: the file, whether the last write succeeded, and the counts."""
        failing = self.error is not None
        return {
            "data_dir": str(self.store.path.parent),
            "file": str(self.store.path),
            "ok": not failing,
            "error": self.error,
            "failing_for_s": round(time.monotonic() - self._failing_since, 1) if failing else None,
            "consecutive_failures": self.consecutive_failures,
            "writes": self.writes,
            "failures": self.failures,
        }

    def save_later(self, delay: float) -> None:
        """Save within ``delay`` seconds; changes meanwhile join the same write."""
        self._wanted += 1
        if self._writer is not None or self._timer is not None:
            return  # a running write is followed by another; a timer (or the retry) will start one
        self._timer = asyncio.get_running_loop().call_later(delay, self._start)

    async def save(self) -> None:
        """Return when the state as it is now is on disk.

        Raises StateSaveError when the write covering it failed and no later one has succeeded
        (the change stays in memory; the retries described in the class keep trying)."""
        self._wanted += 1
        target = self._wanted
        self._start()
        while self._written < target:
            self._done.clear()
            await self._done.wait()
        if self._saved < target:
            raise StateSaveError(self.store.path, self.error or "the write failed")

    async def flush(self) -> None:
        """Write what is pending or not saved yet, if anything (on shutdown); StateSaveError if
        that fails."""
        if self.pending or self.error is not None:
            await self.save()

    def close(self) -> None:
        """No more retries (the sidecar stops; flush() first)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write_pending())

    def _retry(self) -> None:
        self._timer = None
        self._wanted += 1
        self._start()

    async def _write_pending(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._written < self._wanted:
                generation = self._wanted
                try:
                    state = self._snapshot()  # on the loop, so it is one consistent moment
                    await loop.run_in_executor(None, self.store.save, state)
                except Exception as exc:  # whatever it was, the waiters must hear of it
                    self._failed(exc)
                else:
                    self._succeeded(generation)
                self._written = generation
                self._done.set()
        finally:
            self._writer = None
        if self.error is not None and self._timer is None and not self._closed:
            self._timer = loop.call_later(SAVE_RETRY_S, self._retry)

    def _failed(self, exc: Exception) -> None:
        reason = _reason(exc)
        now = time.monotonic()
        self.failures += 1
        self.consecutive_failures += 1
        first = self.error is None
        if first:
            self._failing_since = now
        if first or reason != self.error or now - self._reminded >= REMIND_S:
            self._reminded = now
            # Not an OSError: a bug (a value the snapshot cannot encode), so the traceback too.
            trace = not isinstance(exc, OSError)
            if first:
                log.error(
                    "cannot save state to %s: %s; API changes are answered 503 until a save succeeds "
                    "(they are in effect, but a restart would lose them); retrying every %g s",
                    self.store.path, reason, SAVE_RETRY_S, exc_info=trace,
                )  # fmt: skip
            else:
                log.error(
                    "still cannot save state to %s: %s (%d attempts failed over %.0f s)",
                    self.store.path, reason, self.consecutive_failures, now - self._failing_since,
                    exc_info=trace,
                )  # fmt: skip
        else:
            log.debug(
                "cannot save state to %s: %s (attempt %d)", self.store.path, reason, self.consecutive_failures
            )
        self.error = reason

    def _succeeded(self, generation: int) -> None:
        self.writes += 1
        self._saved = generation
        if self.error is not None:
            log.warning(
                "state saved to %s again, the whole of it, after %d failed attempt(s) over %.1f s",
                self.store.path, self.consecutive_failures, time.monotonic() - self._failing_since,
            )  # fmt: skip
            self.error = None
            self.consecutive_failures = 0
