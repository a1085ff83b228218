"""Discovery's state on disk: desired state and the provider cache as a SavedState, read back after a
restart, and the writes that keep the file in step (regproxy.state.StateWriter does the writing).

Owns: the Saver (when to write: an API change before it is answered, the provider cache a moment
later, bursts sharing one write). The rest are functions of their arguments: they build the saved
form and check what a file holds, field by field, dropping a bad part with an ERROR naming it and
keeping the rest. No registry, no table: the coordinator restores what these return.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from regproxy.discovery.desired import Publication, SubscriptionState
from regproxy.discovery.screen import short
from regproxy.registry.url import CONSUMER_KEYS, DubboURL, provider_problem
from regproxy.state import SavedState, StateStore, StateWriter

log = logging.getLogger(__name__)

CACHE_SAVE_DELAY_S = 3.0  # provider cache writes are coalesced: a write is linear in the table


def saved_state(
    publications: Iterable[Publication], subscriptions: Mapping[str, SubscriptionState]
) -> SavedState:
    return SavedState(
        publications=[
            {"spec": p.spec.to_dict(), "url": str(p.url), "registries": p.registries} for p in publications
        ],
        subscriptions=[
            {
                "interface": s.sub.interface,
                "version": s.sub.version,
                "group": s.sub.group,
                "registries": s.registries,
                **_consumer_identity(s),
                **({"migration": s.migration} if s.migration else {}),
            }
            for s in subscriptions.values()
        ],
        providers={name: provider_texts(s) for name, s in subscriptions.items()},
    )


def _consumer_identity(st: SubscriptionState) -> dict[str, Any]:
    """The consumer's application and own parameters, as /sub gave them (regproxy's keys left out)."""
    params = {k: v for k, v in st.consumer.params.items() if k not in CONSUMER_KEYS}
    out: dict[str, Any] = {"application": st.consumer.params.get("application", "")}
    if params:
        out["params"] = params
    return out


def provider_texts(st: SubscriptionState) -> dict[str, list[str]]:
    """The cache form of a subscription's providers, re-rendered only for lists that changed:
    the whole state is saved after every event, and rendering 10,000 URLs each time would make
    one provider's change cost in proportion to every provider known."""
    out: dict[str, list[str]] = {}
    memo = st.text_memo
    for key, urls in st.providers.items():
        seen = memo.get(key)
        if seen is None or seen[0] is not urls:
            seen = memo[key] = (urls, [str(u) for u in urls])
        out[key] = seen[1]
    for key in memo.keys() - st.providers.keys():
        del memo[key]
    return out


def cached_providers(name: str, cached: object) -> dict[str, list[DubboURL]]:
    """A subscription's providers as the state file holds them (registry key -> URL texts),
    each part checked as registry URLs are (provider_problem): a part of the wrong type, an
    unparseable or unusable URL is dropped with an ERROR naming it; the rest is restored."""
    out: dict[str, list[DubboURL]] = {}
    if cached is None:
        return out
    if not isinstance(cached, dict):
        log.error(
            "state file: skipping cached providers of %s: %s is not a mapping", name, short(repr(cached))
        )
        return out
    for key, texts in cached.items():
        if not isinstance(texts, list):
            log.error(
                "state file: skipping cached providers of %s from %s: %s is not a list",
                name, key, short(repr(texts)),
            )  # fmt: skip
            continue
        urls: list[DubboURL] = []
        for text in texts:
            try:
                if not isinstance(text, str):
                    raise ValueError("not a URL string")
                url = DubboURL.parse(text)
                problem = provider_problem(url)
                if problem is not None:
                    raise ValueError(problem)
            except ValueError as exc:
                log.error(
                    "state file: skipping cached provider %s of %s from %s: %s",
                    short(repr(text)), name, key, exc,
                )  # fmt: skip
                continue
            urls.append(url)
        out[key] = urls
    return out


class Saver:
    """When discovery's state is written. Without a store (no data directory) it writes nothing."""

    def __init__(self, store: StateStore | None, snapshot: Callable[[], SavedState]) -> None:
        self.writer = StateWriter(store, snapshot) if store is not None else None

    async def save(self) -> None:
        """Desired state changed (an API call): answer only once it is on disk.

        StateSaveError when it could not be written: the change is kept, in effect here and in the
        registries, and the writer retries the whole state until a write succeeds (see StateWriter).
        Undoing it instead would mean more registry calls that can fail in turn, and would race with
        the other calls sharing the failed write."""
        if self.writer is not None:
            await self.writer.save()

    def save_soon(self) -> None:
        """The provider cache changed: it may lag, and bursts of events share one write."""
        if self.writer is not None:
            self.writer.save_later(CACHE_SAVE_DELAY_S)

    async def flush(self) -> None:
        """Write what is pending now (StateSaveError when that fails)."""
        if self.writer is not None:
            await self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def describe(self) -> dict[str, Any] | None:
        """The state file's writes (StateWriter.describe), None without a data directory."""
        return self.writer.describe() if self.writer is not None else None

    @property
    def error(self) -> str | None:
        """Why the last state write failed; None while writes succeed (or there is no data dir)."""
        return self.writer.error if self.writer is not None else None
