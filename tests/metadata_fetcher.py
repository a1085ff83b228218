"""A MetadataService stand-in for AppDiscovery (regproxy.discovery.apps) in in-process tests, and quick
retries: the fetch-retry schedule made short enough for a unit test."""

from __future__ import annotations

import asyncio

import pytest

from regproxy.discovery import apps as apps_module
from regproxy.registry.instances import AppInstance
from regproxy.registry.metadata_info import MetadataInfo


class Fetcher:
    """The MetadataService of every instance: answers from ``infos``, or raises ``failing``'s error for
    a revision; ``gate`` (when set) holds every answer until it is set."""

    def __init__(self, *infos: MetadataInfo) -> None:
        self.infos = {(i.app, i.revision): i for i in infos}
        self.failing: dict[str | None, str] = {}  # revision -> error
        self.calls: list[tuple[str, str, str]] = []  # (application, revision, instance id)
        self.gate: asyncio.Event | None = None

    def count(self, revision: str | None) -> int:
        return sum(1 for c in self.calls if c[1] == revision)

    async def __call__(self, inst: AppInstance, revision: str) -> MetadataInfo:
        self.calls.append((inst.app, revision, inst.id))
        if self.gate is not None:
            await self.gate.wait()
        error = self.failing.get(revision)
        if error is not None:
            raise OSError(error)
        return self.infos[(inst.app, revision)]


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed fetch is asked for again within 10-20 ms instead of 0.5-30 s."""
    monkeypatch.setattr(apps_module, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(apps_module, "RETRY_MAX_S", 0.02)
