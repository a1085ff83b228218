"""Which provider URLs may be routed to: the one validity check every URL passes (from a registry or
from the state file's cache), and loop protection (a provider at one of this sidecar's own
listeners would have the egress forward to itself, forever).

Owns: the sidecar's own listener addresses, and the bounded memory of URLs already reported (one
WARNING per URL, not one per event: every event repeats the whole list). May touch: the counters
it is given (``invalid_providers``, ``own_providers_ignored``). No registry, no table, no loop.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from regproxy.address import is_loopback_host
from regproxy.registry.url import DubboURL, provider_problem

log = logging.getLogger(__name__)

REPORTED_MAX = 4096  # URLs remembered as reported, per kind; forgotten all at once beyond


def short(text: str, limit: int = 300) -> str:
    """``text`` cut for a log line: a registry node may be 1 MB long."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def own_addresses(listeners: Iterable[tuple[str, str, int]], advertise_ip: str) -> dict[str, str]:
    """The provider addresses (``host:port`` as DubboURL.address writes them, lowercase) at which a
    sidecar reaches its own listeners, each with what it is ("egress listener 127.0.0.1:20880"), for
    ``listeners`` given as (name, bound host, port): the bound host; the loopback names when it is
    bound to a loopback or unspecified address; the advertise IP when that is the bound host or the
    host is unspecified (a listener on 127.0.0.1 is not reachable at the advertise IP: something
    else may listen on that port there)."""
    unspecified = ("", "0.0.0.0", "::")
    out: dict[str, str] = {}
    for name, host, port in listeners:
        what = f"{name} listener {'[' + host + ']' if ':' in host else host or '*'}:{port}"
        hosts = {host.lower()}
        if host in unspecified or is_loopback_host(host):
            hosts.update(("127.0.0.1", "localhost", "::1"))
        if host in unspecified:
            hosts.add(advertise_ip.lower())
        for h in hosts - {""}:
            out[f"[{h}]:{port}" if ":" in h else f"{h}:{port}"] = what
    return out


class _Once:
    """Texts already reported; bounded memory."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def first(self, text: str) -> bool:
        if text in self._seen:
            return False
        if len(self._seen) >= REPORTED_MAX:
            self._seen.clear()
        self._seen.add(text)
        return True


class Screen:
    """The provider checks of one Discovery. ``registry_name`` names a registry key in log lines."""

    def __init__(self, events: Counter[str], registry_name: Callable[[str], str] = str) -> None:
        self._events = events
        self._registry_name = registry_name
        # Provider addresses that are this sidecar's own egress, API or admin listener (see
        # own_addresses): the egress would forward to itself. Its ingress is not among them.
        self.own: dict[str, str] = {}
        self._invalid = _Once()
        self._own_seen = _Once()

    def set_own(self, addresses: Mapping[str, str]) -> bool:
        """Take ``addresses`` (own_addresses) as this sidecar's own; whether they changed."""
        addresses = {a.lower(): what for a, what in addresses.items()}
        if addresses == self.own:
            return False
        self.own = addresses
        return True

    def usable(self, cluster_name: str, key: str, urls: Iterable[DubboURL]) -> list[DubboURL]:
        """The one check every provider URL passes, from any registry (events and the list a
        subscribe returns): one that cannot be routed to (see provider_problem) is left out, never
        kept in the providers (so never saved), and reported with one WARNING per URL, not one per
        event, and counted as ``invalid_providers``."""
        out: list[DubboURL] = []
        for url in urls:
            problem = provider_problem(url)
            if problem is None:
                out.append(url)
            elif self._invalid.first(str(url)):
                self._events["invalid_providers"] += 1
                log.warning(
                    "registry %s: skipping provider %s of %s: %s",
                    self._registry_name(key), short(str(url)), cluster_name, problem,
                )  # fmt: skip
        return out

    def report_own(self, cluster_name: str, key: str, url: DubboURL, what: str) -> None:
        """A provider whose address is one of this sidecar's own listeners (``what``): requests sent
        there would come back into this sidecar. Said once per URL, not at every rebuild, and counted."""
        text = str(url)
        if not self._own_seen.first(text):
            return
        self._events["own_providers_ignored"] += 1
        log.warning(
            "registry %s: ignoring provider %s of %s: %s is this sidecar's own %s, and requests sent "
            "there would come back into it in a loop",
            self._registry_name(key), text, cluster_name, url.address, what,
        )  # fmt: skip
