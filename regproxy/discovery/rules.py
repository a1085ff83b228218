"""The config center's rules as discovery uses them: which rules to watch on which registry, the
stores they land in, and the rules a subscription or a publication is under.

Each registry that is a Dubbo config center (ZooKeeper, Nacos; ``?config_center=false`` opts out)
gets one RuleStore (regproxy.governance.store): a rule that does not parse is refused there and its
previous good version stays.  What is watched follows desired state: for a subscription, its
service's ``.configurators`` and ``.condition-router``, the consumer application's, the provider
application's ``.condition-router`` and ``.tag-router``; for a publication, its service's and its
application's ``.configurators``; for both, the interface's 2.6-era override URLs.  A subscription
or publication on several registries reads each rule from the first of them that has it in force
(a Dubbo application reads one config center).

Owns: the stores, the watches (re-made by ``sync`` whenever desired state, providers or a
registry's connection change).  Never a table: the coordinator asks for ``service_rules`` /
``provider_configurators`` and builds tables and registrations from them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from regproxy.discovery.desired import Publication, SubscriptionState
from regproxy.governance.condition import ConditionRouters, parse_condition_rule, provider_rule_application
from regproxy.governance.configurator import Configurator, parse_configurators, registry_configurators
from regproxy.governance.keys import CONDITION_ROUTER, CONFIGURATORS, TAG_ROUTER, service_rule_key
from regproxy.governance.policy import ServiceRules
from regproxy.governance.store import RuleInForce, RuleStore
from regproxy.governance.tag import parse_tag_rule
from regproxy.registry.base import Registry, RegistryError, RuleListener
from regproxy.registry.url import DubboURL

log = logging.getLogger(__name__)

# registry key, rule id (or "override:<interface>" for 2.6-era override URLs)
ChangeListener = Callable[[str, str], None]

OVERRIDES = "override:"


def subscription_rule_ids(st: SubscriptionState) -> set[str]:
    """The rule ids a subscription is under (see the module docstring)."""
    service = service_rule_key(st.sub.interface, st.sub.version, st.sub.group)
    app = st.consumer.params.get("application", "")
    ids = {service + CONFIGURATORS, service + CONDITION_ROUTER}
    if app:
        ids.update((app + CONFIGURATORS, app + CONDITION_ROUTER))
    providers = _first_list(st)
    provider_app = provider_rule_application(providers, st.consumer)
    if provider_app:
        ids.add(provider_app + CONDITION_ROUTER)
    tag_app = _tag_application(providers)
    if tag_app:
        ids.add(tag_app + TAG_ROUTER)
    return ids


def _publication_ids_in_order(pub: Publication) -> list[str]:
    """The application's configurators, then the service's (the provider's listeners' order)."""
    spec = pub.spec
    app = pub.url.params.get("application", "")
    service = service_rule_key(spec.interface, spec.version, spec.group) + CONFIGURATORS
    return [app + CONFIGURATORS, service] if app else [service]


def publication_rule_ids(pub: Publication) -> set[str]:
    return set(_publication_ids_in_order(pub))


def _first_list(st: SubscriptionState) -> list[DubboURL]:
    """The providers in the registry's order, from the first registry that has some: what Dubbo's
    routers see first (``provider_rule_application`` and the tag router read the first one)."""
    for key in st.registries:
        urls = st.providers.get(key)
        if urls:
            return urls
    return []


def _tag_application(providers: Sequence[DubboURL]) -> str:
    """``TagStateRouter.notify``: the tag rule is the first provider's application's (none when it
    has none)."""
    return providers[0].params.get("application", "") if providers else ""


def _parse_condition(text: str) -> Any:
    return parse_condition_rule(text)


def _parse_tag(text: str) -> Any:
    return parse_tag_rule(text)


def _parse_configurators(text: str) -> Any:
    return parse_configurators(text)


PARSERS = {CONDITION_ROUTER: _parse_condition, TAG_ROUTER: _parse_tag, CONFIGURATORS: _parse_configurators}


class Rules:
    """The rule stores and watches of a sidecar's config-center registries."""

    def __init__(self, on_change: ChangeListener) -> None:
        self._on_change = on_change
        self.stores: dict[str, RuleStore] = {}  # registry key -> its rules
        self._origins: dict[str, str] = {}  # registry key -> "zookeeper" / "nacos" (the error label)
        self._watched: dict[str, dict[str, RuleListener]] = {}  # registry key -> rule id -> listener
        # registry key -> interface -> (listener, the override URLs it last delivered)
        self._overrides: dict[str, dict[str, tuple[Callable[[list[DubboURL]], None], list[DubboURL]]]] = {}

    # --- stores ---------------------------------------------------------------------------------

    def store(self, key: str, origin: str) -> RuleStore:
        store = self.stores.get(key)
        if store is None:
            store = self.stores[key] = RuleStore(
                PARSERS, lambda rule_id, key=key: self._on_change(key, rule_id)
            )
            self._origins[key] = origin
        return store

    def is_config_center(self, key: str) -> bool:
        return key in self.stores

    def _in_force(self, registries: Sequence[str], rule_id: str) -> RuleInForce | None:
        for key in registries:
            store = self.stores.get(key)
            if store is not None and (found := store.in_force.get(rule_id)) is not None:
                return found
        return None

    def _rule(self, registries: Sequence[str], rule_id: str) -> Any:
        found = self._in_force(registries, rule_id)
        return None if found is None else found.rule

    def _override_urls(self, registries: Sequence[str], interface: str) -> list[DubboURL]:
        for key in registries:
            entry = self._overrides.get(key, {}).get(interface)
            if entry is not None and entry[1]:
                return entry[1]
        return []

    # --- what rules apply -------------------------------------------------------------------------

    def service_rules(self, st: SubscriptionState) -> ServiceRules:
        """The rules ``st`` is under now (empty when none, or no registry of it is a config center)."""
        registries = [k for k in st.registries if k in self.stores]
        if not registries:
            return ServiceRules()
        service = service_rule_key(st.sub.interface, st.sub.version, st.sub.group)
        app = st.consumer.params.get("application", "")
        providers = _first_list(st)
        provider_app = provider_rule_application(providers, st.consumer)
        tag_app = _tag_application(providers)
        sources: list[str] = []

        def rule(rule_id: str) -> Any:
            found = self._in_force(registries, rule_id)
            if found is None:
                return None
            sources.append(rule_id)
            return found.rule

        # RegistryDirectory.overrideWithConfigurators: the registry's, the application's, the service's.
        configurators: list[Configurator] = list(
            registry_configurators(self._override_urls(registries, st.sub.interface), side="consumer")
        )
        for rule_id in ((app + CONFIGURATORS) if app else "", service + CONFIGURATORS):
            if rule_id and (found := rule(rule_id)) is not None:
                configurators.extend(found)
        conditions = ConditionRouters(
            service=rule(service + CONDITION_ROUTER),
            provider_application=rule(provider_app + CONDITION_ROUTER) if provider_app else None,
            consumer_application=rule(app + CONDITION_ROUTER) if app else None,
        )
        tag = rule(tag_app + TAG_ROUTER) if tag_app else None
        return ServiceRules(tuple(configurators), conditions, tag, tuple(sources))

    def provider_configurators(self, pub: Publication) -> tuple[Configurator, ...]:
        """The configurators a provider applies to its own URL (``OverrideListener``, then the
        provider application's and the service's ``ProviderConfigurationListener`` /
        ``ServiceConfigurationListener``)."""
        registries = [k for k in pub.registries if k in self.stores]
        if not registries:
            return ()
        out = list(
            registry_configurators(self._override_urls(registries, pub.spec.interface), side="provider")
        )
        for rule_id in _publication_ids_in_order(pub):
            found = self._rule(registries, rule_id)
            if found is not None:
                out.extend(found)
        return tuple(out)

    # --- watches ----------------------------------------------------------------------------------

    async def sync(self, key: str, reg: Registry, rule_ids: set[str], interfaces: set[str]) -> None:
        """Watch exactly ``rule_ids`` and the override URLs of ``interfaces`` on registry ``key``.
        A watch the registry refuses now (it is down) is tried again at the next sync."""
        if key not in self.stores:
            return
        watched = self._watched.setdefault(key, {})
        for rule_id in sorted(watched.keys() - rule_ids):
            listener = watched.pop(rule_id)
            await _quietly(reg.unwatch_rule(rule_id, listener))
        for rule_id in sorted(rule_ids - watched.keys()):
            listener = self._rule_listener(key)
            # Watched before the registry is asked: watch_rule hands the listener what the config
            # center holds now, before it returns, and the listener drops what is not watched.
            watched[rule_id] = listener
            try:
                await reg.watch_rule(rule_id, listener)
            except RegistryError as exc:
                if watched.get(rule_id) is listener:
                    del watched[rule_id]
                log.warning(
                    "registry %s: watching rule %s: %s (tried again on reconnect)", reg.name, rule_id, exc
                )
        overrides = self._overrides.setdefault(key, {})
        for interface in sorted(overrides.keys() - interfaces):
            listener_, _ = overrides.pop(interface)
            await _quietly(reg.unwatch_overrides(interface, listener_))
        for interface in sorted(interfaces - overrides.keys()):
            on_urls = self._override_listener(key, interface)
            try:
                urls = await reg.watch_overrides(interface, on_urls)
            except RegistryError as exc:
                log.warning("registry %s: watching override URLs of %s: %s", reg.name, interface, exc)
                continue
            overrides[interface] = (on_urls, list(urls))
            if urls:
                self._on_change(key, OVERRIDES + interface)

    def _rule_listener(self, key: str) -> RuleListener:
        def listener(rule_id: str, text: str | None, source: str, version: str) -> None:
            store = self.stores.get(key)
            if store is None or self._watched.get(key, {}).get(rule_id) is not listener:
                return  # unwatched meanwhile
            store.update(rule_id, text, origin=self._origins[key], source=source, version=version)

        return listener

    def _override_listener(self, key: str, interface: str) -> Callable[[list[DubboURL]], None]:
        def listener(urls: list[DubboURL]) -> None:
            entry = self._overrides.get(key, {}).get(interface)
            if entry is None or entry[1] == urls:
                return
            self._overrides[key][interface] = (entry[0], list(urls))
            self._on_change(key, OVERRIDES + interface)

        return listener

    def drop(self, key: str) -> None:
        """Registry ``key`` is closed: its rules and watches go with it."""
        self.stores.pop(key, None)
        self._origins.pop(key, None)
        self._watched.pop(key, None)
        self._overrides.pop(key, None)

    # --- display and persistence --------------------------------------------------------------------

    def describe(self, names: Mapping[str, str]) -> list[dict[str, Any]]:
        """Every rule in force and every refusal, per config center (``names``: key -> shown name)."""
        out = []
        for key, store in self.stores.items():
            out.append(
                {
                    "registry": names.get(key, key),
                    "watched": sorted(self._watched.get(key, {})),
                    "in_force": [
                        r.describe() for r in sorted(store.in_force.values(), key=lambda r: r.rule_id)
                    ],
                    "refused": [
                        r.describe() for r in sorted(store.refused.values(), key=lambda r: r.rule_id)
                    ],
                }
            )
        return out

    def error_counts(self) -> dict[tuple[str, str], int]:
        """(origin, reason) -> refusals, for regproxy_rule_errors_total."""
        total: dict[tuple[str, str], int] = {}
        for store in self.stores.values():
            for label, n in store.errors.items():
                total[label] = total.get(label, 0) + n
        return total

    def snapshot(self) -> dict[str, list[dict[str, str]]]:
        return {key: store.snapshot() for key, store in self.stores.items() if store.in_force}

    def restore(self, saved: Mapping[str, Iterable[Mapping[str, Any]]]) -> None:
        """The rules in force at the last save, until the config center says otherwise: a sidecar
        restarted during an outage routes as before it."""
        for key, items in saved.items():
            store = self.stores.get(key)
            if store is None:
                log.warning("state file: rules of %s dropped: it is not a config center now", key)
                continue
            store.restore(items)


async def _quietly(op: Any) -> None:
    try:
        await op
    except RegistryError as exc:
        log.debug("ignored: %s", exc)
