"""What a sidecar must remember across restarts: its publications, its subscriptions, and the last
providers it saw for each subscription (so it can route while the registry is unreachable).

One small JSON file in the data directory, replaced atomically (write a temporary file, fsync,
rename, fsync the directory) so a crash mid-write leaves the old state or the new, never half.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

STATE_FILE = "regproxy-state.json"
FORMAT_VERSION = 1


@dataclass
class SavedState:
    publications: list[dict[str, Any]] = field(default_factory=list)
    subscriptions: list[dict[str, Any]] = field(default_factory=list)
    # cluster name -> registry name -> provider URLs (str), as last seen
    providers: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "version": FORMAT_VERSION,
                "publications": self.publications,
                "subscriptions": self.subscriptions,
                "providers": self.providers,
            },
            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
        )


class StateStore:
    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / STATE_FILE

    def load(self) -> SavedState:
        """The saved state; empty when there is none. A corrupt file is kept aside, not trusted."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return SavedState()
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
                raise ValueError(
                    f"unknown format version {data.get('version') if isinstance(data, dict) else None}"
                )
            return SavedState(
                publications=list(data.get("publications") or []),
                subscriptions=list(data.get("subscriptions") or []),
                providers=dict(data.get("providers") or {}),
            )
        except (ValueError, TypeError) as exc:
            aside = self.path.with_suffix(".corrupt")
            log.error("state file %s is unreadable (%s); moved to %s, starting empty", self.path, exc, aside)
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            return SavedState()

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
