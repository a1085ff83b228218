"""The in-process ``memory://`` registry in tests: fresh stores for each test, registries made for one,
and letting its events run (it schedules listeners with ``call_soon``; a metadata fetch is a task)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from regproxy.registry.memory import MemoryRegistry
from regproxy.registry.registry_url import RegistryURL


async def settle(rounds: int = 5) -> None:
    """Let the callbacks and tasks the memory registry scheduled run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


@pytest.fixture
def memory_stores() -> Iterator[None]:
    """Every memory:// registry of the test starts empty, and none outlives it."""
    MemoryRegistry.reset_all()
    yield
    MemoryRegistry.reset_all()


@pytest.fixture
async def make_memory(memory_stores: None) -> AsyncIterator[Callable[..., MemoryRegistry]]:
    """``make_memory(name="")`` -> a new memory:// registry (not started), stopped after the test."""
    made: list[MemoryRegistry] = []

    def factory(name: str = "") -> MemoryRegistry:
        reg = MemoryRegistry(RegistryURL.parse("memory://"), name=name)
        made.append(reg)
        return reg

    yield factory
    for reg in made:
        await reg.stop()
