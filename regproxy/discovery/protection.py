"""Empty-provider protection: one policy, in discovery, the same for every registry adapter.

When the provider list one registry reports for one subscription goes from some provider the
subscription would use (Dubbo's matching rules, ``regproxy.registry.url.matches``) to none, the
last list is kept for ``hold_s`` seconds (config ``discovery.empty_protection_s``) instead of
being applied. Most often nothing is really gone: a provider's ZooKeeper session expired and its
node is re-created within a second, or a Nacos re-subscription answered before the providers
re-registered after a reconnect. Applying the empty list meanwhile would fail every request with
"no provider" where the last list still works.

* A list with a provider the subscription would use ends the hold and is applied at once.
* A list still without one replaces the list held back; the hold goes on.
* When the hold runs out, the list held back (the latest one reported) is applied.
* ``hold_s`` 0: nothing is held; every list is applied as it comes.

Adapters deliver every list as they get it; holding is decided here alone.

Dubbo (3.x, ``RegistryConstants.ENABLE_EMPTY_PROTECTION_KEY`` = ``enable-empty-protection`` on the
registry): with it on, the registries (``CacheableFailbackRegistry.toUrlsWithEmpty`` for ZooKeeper,
``NacosRegistry.toUrlWithEmpty``, ``ServiceInstancesChangedListener.toUrlsWithEmpty`` for
application-level discovery) leave out the ``empty://`` URL that would clear the list, and
``RegistryDirectory.refreshInvoker``, given an empty list, keeps its ``cachedInvokerUrls`` for as
long as the list stays empty; with it off, ``empty://`` destroys every invoker at once. It was on by
default in 3.0 and 3.1 and is off by default since 3.2.0 (apache/dubbo#10940). regproxy differs in
two ways: the hold is on by default, and it is timed, so a service whose providers really all left
stops being routed to after ``hold_s`` rather than never.

Owns: the timers of the holds under way. May touch: a SubscriptionState's ``held`` (the only
writer) and, when a hold runs out, the coordinator through ``release``, which applies the list.
Never ``providers`` itself: the caller applies a list this does not hold back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from regproxy.registry.url import DubboURL, Subscription, matches

if TYPE_CHECKING:
    from regproxy.discovery.desired import SubscriptionState

log = logging.getLogger(__name__)

# The hold when none is given: the default of config's discovery.empty_protection_s. Longer than a
# ZooKeeper node takes to be re-created after its session expired (well under a second), or a Nacos
# provider to re-register after a reconnect; short enough that a provider really gone is not dialled
# for long.
DEFAULT_HOLD_S = 5.0

Release = Callable[["SubscriptionState", str, list[DubboURL]], None]


@dataclass(eq=False)
class Hold:
    """One (subscription, registry) list held back."""

    pending: list[DubboURL]  # the latest list reported: applied when the hold runs out
    since: float  # loop time the hold began
    timer: asyncio.TimerHandle


def serves(sub: Subscription, urls: Iterable[DubboURL]) -> bool:
    """Whether ``urls`` has a provider a consumer subscribed as ``sub`` would use: the list is "empty"
    in Dubbo's sense otherwise (its registries match providers to the consumer before they notify)."""
    return any(matches(sub, url) for url in urls)


class EmptyProtection:
    """The holds of one Discovery, all with the same ``hold_s`` (read when a hold begins)."""

    def __init__(
        self,
        hold_s: float,
        release: Release,
        *,
        registry_name: Callable[[str], str] = str,
        events: Counter[str] | None = None,
    ) -> None:
        self.hold_s = hold_s
        self._release = release  # applies a list once its hold ran out
        self._registry_name = registry_name
        self._events = events if events is not None else Counter()  # counts ``empty_holds``

    def holds_back(self, st: SubscriptionState, key: str, urls: list[DubboURL]) -> bool:
        """Whether ``urls``, reported by registry ``key`` for ``st``, must not replace
        ``st.providers[key]`` now. Called with every list before it is applied, on the event loop."""
        hold = st.held.get(key)
        if serves(st.sub, urls):
            if hold is not None:
                self.end(st, key)
                away = asyncio.get_running_loop().time() - hold.since
                log.info(
                    "registry %s: a provider of %s is back after %.1f s; the empty list was never applied",
                    self._registry_name(key), st.sub.cluster_name, away,
                )  # fmt: skip
            return False
        if hold is not None:
            hold.pending = urls
            return True
        if self.hold_s <= 0 or not serves(st.sub, st.providers.get(key, ())):
            return False
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.hold_s, self._ran_out, st, key)
        st.held[key] = Hold(urls, loop.time(), timer)
        self._events["empty_holds"] += 1
        log.info(
            "registry %s: no provider of %s left; keeping the last %d for %g s unless one comes back",
            self._registry_name(key), st.sub.cluster_name, len(st.providers.get(key, ())), self.hold_s,
        )  # fmt: skip
        return True

    def _ran_out(self, st: SubscriptionState, key: str) -> None:
        hold = st.held.pop(key, None)
        if hold is None:
            return
        log.info(
            "registry %s: still no provider of %s after %.1f s: applying the empty list",
            self._registry_name(key), st.sub.cluster_name, asyncio.get_running_loop().time() - hold.since,
        )  # fmt: skip
        self._release(st, key, hold.pending)

    @staticmethod
    def end(st: SubscriptionState, key: str | None = None) -> None:
        """Drop the hold of registry ``key`` (None: every hold of ``st``) without applying anything:
        the list is replaced or the registry (or subscription) dropped by the caller."""
        for k in [key] if key is not None else list(st.held):
            hold = st.held.pop(k, None)
            if hold is not None:
                hold.timer.cancel()
