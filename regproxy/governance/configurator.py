"""Dubbo's configurators (override rules): parsed into ``override://`` URLs and applied to URLs.

Sources, in the order a Dubbo 3.3 consumer (``RegistryDirectory.overrideWithConfigurator``) and a
provider (``RegistryProtocol.OverrideListener.doOverrideIfNecessary``) apply them:

1. 2.6-era ``override://`` (or ``absent://``) URLs, the children of ``/dubbo/<interface>/configurators``
   (:func:`parse_override_url`, :func:`registry_configurators`);
2. the application's rule, ``<application>.configurators`` in the config center;
3. the service's rule, ``<interface>:<version>:<group>.configurators`` (:func:`colon_service_key`).

Each source is one sorted tuple (:func:`parse_configurators`); the consumer or provider applies
the three tuples one after the other, so the service's rule has the last word.

Facts from Dubbo 3.3 (``org.apache.dubbo.rpc.cluster.configurator``):

* ``ConfigParser.parseConfigurators``: a JSON array of URL strings is taken as it is; otherwise
  the YAML map (``configVersion``, ``scope``, ``key``, ``enabled``, ``configs``) gives one URL per
  item × address (``addresses``, default ``0.0.0.0``) × application (``applications``, service
  scope) or × service (``services``, application scope, default ``*``)::

      override://<address>/<interface>?[group=&version=]category=dynamicconfigurators[&side=]
          &<parameters>[&providerAddresses=a,b][&application=<key>]&enabled=&category=...&configVersion=

  The service scope's ``key`` (and the application scope's ``services``) are read as
  ``group/interface:version`` — so a rule whose key is the bare interface (as Dubbo Admin writes
  it) applies only to providers without a group or version.  ``enabled`` is the rule's unless the
  item has a ``type`` other than ``general``: then it is the item's (missing: the item is off).
  A ``side: provider`` item without ``providerAddresses`` gets its ``addresses`` as such.
* ``AbstractConfiguratorListener`` drops ``accesslog.fixed.path``, ``router``, ``rule``,
  ``runtime`` and ``type`` from config-center rules; ``Configurator.toConfigurators`` skips URLs
  with no parameter but ``anyhost``, clears everything at an ``empty://`` URL and sorts by host
  (Java's string order: ``0.0.0.0`` before specific addresses) then ``priority``, ascending —
  so with ``override://`` the more specific and the higher priority win.
* ``AbstractConfigurator.configure`` (:func:`applies`): a URL with ``configVersion`` (every
  config-center rule — a rule without ``configVersion`` gets the string ``null``) applies only to
  URLs of its own ``side``: ``consumer`` ones when its host is ``0.0.0.0`` or the consumer's own
  address, ``provider`` ones when its host is ``0.0.0.0`` or the provider URL's host.  Then
  ``providerAddresses`` (a URL's ``host:port``, its host, ``0.0.0.0``, ``0.0.0.0:*`` or
  ``0.0.0.0:<its port>``), ``application`` (``*`` any) and the service key (``*`` any) must match,
  and a v3.0 rule's ``match`` (:class:`ConditionMatch`).  The port in an ``addresses`` entry is
  not compared.  A URL without ``configVersion`` (2.6) applies by port instead: with a port, to
  URLs of that port whose host matches; without, to consumers at its host or ``0.0.0.0``, and to
  providers only from ``0.0.0.0``; ``~key=value``, ``application`` and ``side`` parameters must
  equal the URL's.
* What is applied: the configurator's parameters except ``CONDITION_KEYS`` (and ``~`` keys) —
  everything else, including ``anyhost``, ``providerAddresses`` and ``priority``, lands on the URL.
  ``override`` replaces, ``absent`` only adds missing keys.

In a 3.x consumer the configurators do not see the provider's parameters: they configure a URL
of the provider's address and path with only ``application`` (the consumer's), ``side=consumer``,
``group`` and ``version`` (``DubboServiceAddressURL``), and each parameter is then read from that
URL first, then the consumer's, then the provider's (:func:`configure_consumer`).  So a v3.0
``match.param`` or a ``~key`` condition on the consumer side sees only those keys.

Parsing refuses what Dubbo would drop or misread.  When a config-center rule cannot be parsed Dubbo
keeps the configurators it had (``genConfiguratorsFromRawRule`` returns false): callers should keep
the last good rule on RuleError, and drop it when the node is deleted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from regproxy.registry.url import DubboURL, java_url_decode

from .errors import RuleError
from .fields import JAVA_INT_MAX, JAVA_INT_MIN, Fields, load_document
from .match import ANY_VALUE, ANYHOST_VALUE, AddressMatch, ListStringMatch, ParamMatch

__all__ = [
    "CONDITION_KEYS",
    "CONFIG_VERSIONS",
    "RULE_SUFFIX",
    "SECURITY_KEYS",
    "ConditionMatch",
    "Configurator",
    "applies",
    "colon_service_key",
    "configure",
    "configure_consumer",
    "configure_provider",
    "consumer_view",
    "parse_configurators",
    "parse_override_url",
    "registry_configurators",
    "rule_key",
]

RULE_SUFFIX = ".configurators"  # registry Constants.CONFIGURATORS_SUFFIX
OVERRIDE = "override"
ABSENT = "absent"
EMPTY = "empty"
V30 = "v3.0"
CONFIG_VERSIONS = ("v2.7", V30)  # see tag.CONFIG_VERSIONS for why others are refused
DYNAMIC_CATEGORY = "dynamicconfigurators"  # RegistryConstants.DYNAMIC_CONFIGURATORS_CATEGORY
APP_DYNAMIC_CATEGORY = "appdynamicconfigurators"  # RegistryConstants.APP_DYNAMIC_CONFIGURATORS_CATEGORY
PROVIDER_ADDRESSES = "providerAddresses"  # Constants.OVERRIDE_PROVIDERS_KEY
# AbstractConfigurator.genConditionKeys: what decides where a configurator applies, never applied.
CONDITION_KEYS = frozenset(
    {
        "category",
        "check",
        "dynamic",
        "enabled",
        "group",
        "version",
        "application",
        "side",
        "configVersion",
        "compatible_config",
        "interfaces",
    }
)
# AbstractConfiguratorListener.initSecurityKey: removed from every config-center configurator.
SECURITY_KEYS = frozenset({"accesslog.fixed.path", "router", "rule", "runtime", "type"})
# The keys of the URL a 3.x consumer's configurators configure (DubboServiceAddressURL).
_VIEW_KEYS = ("application", "side", "group", "version")

_RULE_FIELDS = frozenset({"configVersion", "scope", "key", "enabled", "configs"})
_ITEM_FIELDS = frozenset(
    {
        "type",
        "enabled",
        "addresses",
        "providerAddresses",
        "services",
        "applications",
        "parameters",
        "match",
        "side",
    }
)
_SIDES = ("consumer", "provider")
_SCOPES = ("service", "application")


def rule_key(key: str) -> str:
    """The config-center key of a configurator rule: ``<application>`` or :func:`colon_service_key`
    followed by ``.configurators``."""
    return key + RULE_SUFFIX


def colon_service_key(interface: str, version: str = "", group: str = "") -> str:
    """``URL.getColonSeparatedKey``: ``interface:version:group`` with a blank part left empty but its
    colon kept (``com.x.Svc::``, ``com.x.Svc:1.0.0:``, ``com.x.Svc::g``), as ``URLTest`` checks."""
    return f"{interface}:{version if version.strip() else ''}:{group if group.strip() else ''}"


# ---------------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True, slots=True)
class ConditionMatch:
    """A v3.0 item's ``match`` (``ConditionMatch``): every part that is set must match.

    ``address`` is matched against the host the configurator is matched with (the consumer's own
    address, or a provider URL's host — no port), ``providerAddress`` against the URL's
    ``host:port``, ``service`` against its service key (``group/interface:version``), ``app``
    against its ``application`` and each ``param`` against its parameter.
    """

    address: AddressMatch | None = None
    provider_address: AddressMatch | None = None
    service: ListStringMatch | None = None
    app: ListStringMatch | None = None
    param: tuple[ParamMatch, ...] | None = None

    @classmethod
    def parse(cls, data: object, where: str) -> ConditionMatch:
        fields = Fields(data, where, frozenset({"address", "providerAddress", "service", "app", "param"}))

        def address(key: str) -> AddressMatch | None:
            return AddressMatch.parse(fields.raw(key), fields.path(key)) if key in fields else None

        def strings(key: str) -> ListStringMatch | None:
            return ListStringMatch.parse(fields.raw(key), fields.path(key)) if key in fields else None

        return cls(
            address=address("address"),
            provider_address=address("providerAddress"),
            service=strings("service"),
            app=strings("app"),
            param=ParamMatch.parse_list(fields.raw("param"), fields.path("param"))
            if "param" in fields
            else None,
        )

    def matches(self, host: str, url: DubboURL) -> bool:
        if self.address is not None and not self.address.matches(host):
            return False
        if self.provider_address is not None and not self.provider_address.matches(_address(url)):
            return False
        if self.service is not None and not self.service.matches(_service_key(url)):
            return False
        if self.app is not None and not self.app.matches(url.params.get("application")):
            return False
        return self.param is None or all(p.matches(url.params) for p in self.param)


@dataclass(frozen=True, slots=True)
class Configurator:
    """One configurator: its ``override://`` / ``absent://`` URL and, for v3.0 items, its ``match``
    (the URL attribute ``MATCH_CONDITION`` in Dubbo)."""

    url: DubboURL
    match: ConditionMatch | None = None

    @property
    def kind(self) -> str:
        """``override`` (replace parameters) or ``absent`` (add missing ones): the URL's protocol."""
        return self.url.protocol

    @property
    def priority(self) -> int:
        """The ``priority`` parameter (0 when absent); validated when the configurator is made."""
        text = self.url.params.get("priority")
        return int(text) if text else 0


def _check_priority(url: DubboURL, where: str) -> None:
    # Configurator.compareTo reads it with Integer.parseInt: a bad one breaks the sort in Dubbo.
    text = url.params.get("priority")
    if not text:
        return
    body = text[1:] if text[:1] in "+-" else text
    if not (body.isascii() and body.isdigit()) or not JAVA_INT_MIN <= int(text) <= JAVA_INT_MAX:
        raise RuleError(f"{where}: priority {text!r} is not an integer (a Java int)", reason="value")


def _order(configurator: Configurator) -> tuple[bytes, int]:
    # Configurator.compareTo: String.compareTo of the hosts (UTF-16 code units), then priority.
    return configurator.url.host.encode("utf-16-be"), configurator.priority


def _to_configurators(items: Iterable[Configurator]) -> tuple[Configurator, ...]:
    """``Configurator.toConfigurators``: ``empty://`` clears, parameterless URLs are skipped, sorted."""
    kept: list[Configurator] = []
    for item in items:
        if item.url.protocol == EMPTY:
            return ()
        if set(item.url.params) - {"anyhost"}:
            kept.append(item)
    return tuple(sorted(kept, key=_order))


# ---------------------------------------------------------------------------------------------------
# 2.6 override URLs from the registry


def parse_override_url(name: str, *, encoded: bool = True) -> DubboURL:
    """One child of ``/dubbo/<interface>/configurators``: the URL-encoded name (``encoded=False``
    for a URL already decoded).  RuleError unless it is an ``override``, ``absent`` or ``empty`` URL
    (``ConfiguratorFactory`` knows the first two; ``empty`` clears)."""
    try:
        text = java_url_decode(name) if encoded else name
        url = DubboURL.parse(text)
    except ValueError as exc:
        raise RuleError(f"{name!r} is not a Dubbo URL: {exc}", reason="url") from None
    if url.protocol not in (OVERRIDE, ABSENT, EMPTY):
        raise RuleError(
            f"{url.protocol}:// is not a configurator (override://, absent:// or empty://)", reason="url"
        )
    _check_priority(url, name)
    return url


def registry_configurators(urls: Iterable[DubboURL], *, side: str) -> tuple[Configurator, ...]:
    """The configurators from a service's ``configurators`` children, as one side uses them.

    A consumer (``RegistryDirectory.isNotCompatibleFor26x``) ignores URLs with ``compatible_config``
    (Dubbo Admin's 2.6 copies of its YAML rules, which the consumer reads from the config center);
    a provider (``OverrideListener``) applies them too.  No children: ZooKeeper notifies
    ``empty://``, so the result is empty, not "keep the previous ones".
    """
    if side not in _SIDES:
        raise ValueError(f"side must be consumer or provider, not {side!r}")
    return _to_configurators(
        Configurator(url) for url in urls if side == "provider" or not url.params.get("compatible_config")
    )


# ---------------------------------------------------------------------------------------------------
# Config-center rules


def parse_configurators(text: str, *, source: str = "") -> tuple[Configurator, ...]:
    """A config-center rule (``<key>.configurators``) as the sorted configurators Dubbo makes of it.

    RuleError naming the field (``source``, a ZooKeeper path or Nacos dataId, is put on it).
    """
    try:
        document = load_document(text)
        made = _from_list(document) if isinstance(document, list) else _from_map(document)
        return _to_configurators(
            dataclasses.replace(
                c,
                url=dataclasses.replace(
                    c.url, params={k: v for k, v in c.url.params.items() if k not in SECURITY_KEYS}
                ),
            )
            for c in made
        )
    except RuleError as exc:
        raise exc.at(source) if source else exc from None


def _from_list(document: list[object]) -> list[Configurator]:
    # ConfigParser.parseJsonArray: [ "override://...", ... ] (the compatible form).
    if not document:
        raise RuleError("the rule is an empty list", reason="value")
    out: list[Configurator] = []
    for i, item in enumerate(document):
        if not isinstance(item, str):
            raise RuleError(f"[{i}] must be an override URL string", reason="type")
        try:
            out.append(Configurator(parse_override_url(item, encoded=False)))
        except RuleError as exc:
            raise RuleError(f"[{i}]: {exc.message}", reason=exc.reason) from None
    return out


def _from_map(document: object) -> list[Configurator]:
    rule = Fields(document, "", _RULE_FIELDS)
    version = rule.string("configVersion")
    if version is not None and version not in CONFIG_VERSIONS:
        raise RuleError(
            f"configVersion {version!r} is not one of {', '.join(CONFIG_VERSIONS)}", reason="version"
        )
    scope = rule.string("scope")
    if scope is not None and scope not in _SCOPES:
        # ConfigParser treats anything but "application" as the service scope.
        raise RuleError(f"scope {scope!r} is not service or application", reason="value")
    key = rule.required("key")
    if any(c in key for c in "?&=#"):
        raise RuleError(f"key {key!r} is not an application name or group/interface:version", reason="value")
    enabled = rule.boolean("enabled", True)
    items = rule.mappings("configs", _ITEM_FIELDS)
    if items is None:
        raise RuleError("configs is missing", reason="missing-field")
    if not items:
        raise RuleError("configs is empty (Dubbo would keep the configurators it had)", reason="value")
    common = _Common(
        key=key,
        application_scope=scope == "application",
        enabled=enabled,
        # ConfigParser appends config.getConfigVersion(): a missing one is written "null", which still
        # selects the v2.7 rules in AbstractConfigurator.configure.
        version="null" if version is None else version,
    )
    out: list[Configurator] = []
    for item in items:
        out.extend(_item_configurators(item, common))
    return out


@dataclass(frozen=True, slots=True)
class _Common:
    key: str
    application_scope: bool
    enabled: bool
    version: str


def _service_pairs(service: str, where: str) -> tuple[str, list[tuple[str, str]]]:
    """``ConfigParser.appendService``: ``group/interface:version`` -> (interface, group/version pairs)."""
    if not service:
        raise RuleError(f"{where} is empty", reason="missing-field")
    if any(c in service for c in "?&=#"):
        raise RuleError(f"{where} {service!r} is not group/interface:version", reason="value")
    pairs: list[tuple[str, str]] = []
    interface = service
    slash = interface.find("/")
    if slash > 0:
        pairs.append(("group", interface[:slash]))
        interface = interface[slash + 1 :]
    colon = interface.find(":")
    if colon > 0:
        pairs.append(("version", interface[colon + 1 :]))
        interface = interface[:colon]
    if not interface:
        raise RuleError(f"{where} {service!r} has no interface", reason="value")
    return interface, pairs


def _address_url(address: str, interface: str, where: str) -> DubboURL:
    try:
        url = DubboURL.parse(f"{OVERRIDE}://{address}/{interface}")
    except ValueError as exc:
        raise RuleError(f"{where} {address!r} is not host or host:port: {exc}", reason="address") from None
    if url.path != interface or url.params:
        raise RuleError(f"{where} {address!r} is not host or host:port", reason="address")
    return url


def _item_configurators(item: Fields, common: _Common) -> list[Configurator]:
    side = item.string("side")
    if side is not None and side not in _SIDES:
        raise RuleError(f"{item.path('side')} {side!r} is not consumer or provider", reason="value")
    item_type = item.string("type")
    item_enabled = item.boolean("enabled", True) if "enabled" in item else None
    addresses = item.strings("addresses") or (ANYHOST_VALUE,)
    provider_addresses = item.strings("providerAddresses")
    services = item.strings("services")
    applications = item.strings("applications")
    parameters = item.string_map("parameters")
    if not parameters:
        # ConfigParser.toParameterString throws IllegalStateException.
        raise RuleError(
            f"{item.path('parameters')} is missing or empty (nothing to configure)", reason="missing-field"
        )
    for name, value in parameters.items():
        if not name or any(c in name for c in "&=%"):
            raise RuleError(f"{item.path('parameters')} has a bad key {name!r}", reason="value")
        if "&" in value:
            raise RuleError(
                f"{item.path('parameters')}.{name}: '&' would split the parameter in Dubbo", reason="value"
            )
    for entry in provider_addresses or ():
        if not entry or "&" in entry:
            raise RuleError(f"{item.path('providerAddresses')} has a bad entry {entry!r}", reason="value")
    match = None
    if "match" in item:
        if not common.version.startswith(V30):
            raise RuleError(
                f"{item.path('match')} needs configVersion: v3.0 (Dubbo ignores match in other versions)",
                reason="version",
            )
        match = ConditionMatch.parse(item.raw("match"), item.path("match"))

    # ConfigParser.toParameterString
    body: list[tuple[str, str]] = [("category", DYNAMIC_CATEGORY)]
    if side is not None:
        body.append(("side", side))
    body.extend(parameters.items())
    if provider_addresses:
        body.append((PROVIDER_ADDRESSES, ",".join(provider_addresses)))
    elif side == "provider":
        body.append((PROVIDER_ADDRESSES, ",".join(addresses)))
    # ConfigParser.parseEnabled
    if item_type is None or item_type == "general":
        enabled_text = "true" if common.enabled else "false"
    else:
        enabled_text = "null" if item_enabled is None else ("true" if item_enabled else "false")

    urls: list[tuple[DubboURL, list[tuple[str, str]]]] = []
    if common.application_scope:
        # ConfigParser.appItemToUrls: one URL per address and service; applications is not read.
        for i, address in enumerate(addresses):
            for j, service in enumerate(services or (ANY_VALUE,)):
                interface, head = _service_pairs(service, f"{item.path('services')}[{j}]")
                tail = [
                    ("application", common.key),
                    ("enabled", enabled_text),
                    ("category", APP_DYNAMIC_CATEGORY),
                    ("configVersion", common.version),
                ]
                urls.append(
                    (_address_url(address, interface, f"{item.path('addresses')}[{i}]"), head + body + tail)
                )
    else:
        # ConfigParser.serviceItemToUrls: one URL per address and application; services is not read.
        interface, head = _service_pairs(common.key, "key")
        tail = [("enabled", enabled_text), ("configVersion", common.version)]
        for i, address in enumerate(addresses):
            base = _address_url(address, interface, f"{item.path('addresses')}[{i}]")
            if applications:
                urls.extend((base, [*head, *body, *tail, ("application", app)]) for app in applications)
            else:
                urls.append((base, head + body + tail))

    out: list[Configurator] = []
    for base, pairs in urls:
        url = dataclasses.replace(base, params=dict(pairs))  # URL.valueOf: a later key wins
        _check_priority(url, item.path("parameters"))
        out.append(Configurator(url, match))
    return out


# ---------------------------------------------------------------------------------------------------
# Applying


def _address(url: DubboURL) -> str:
    """``URL.getAddress``: ``host:port``, or the host alone without a port."""
    return url.address if url.port else url.host


def _service_key(url: DubboURL) -> str:
    """``URL.getServiceKey``: ``group/interface:version`` (blank parts left out; ``0.0.0`` kept)."""
    params = url.params
    interface = params.get("interface") or url.path
    group = params.get("group")
    version = params.get("version")
    return f"{group + '/' if group else ''}{interface}{':' + version if version else ''}"


def _enabled(configurator_url: DubboURL) -> bool:
    # URL.getParameter(ENABLED_KEY, true): empty -> true, else Boolean.parseBoolean.
    text = configurator_url.params.get("enabled")
    return not text or text.lower() == "true"


def _v27_condition_match_or_unset(rule: DubboURL, url: DubboURL) -> bool:
    """``AbstractConfigurator.isV27ConditionMatchOrUnset`` (used for 2.6 URLs too)."""
    providers = rule.params.get(PROVIDER_ADDRESSES)
    if providers:
        accepted = {
            _address(url),
            ANYHOST_VALUE,
            f"{ANYHOST_VALUE}:{ANY_VALUE}",
            f"{ANYHOST_VALUE}:{url.port}",
            url.host,
        }
        if not any(entry in accepted for entry in providers.split(",")):
            return False
    # getApplication(username): an empty application is none.
    rule_app = rule.params.get("application") or None
    if rule_app is not None and rule_app != ANY_VALUE and rule_app != url.params.get("application"):
        return False
    rule_service = _service_key(rule)
    return rule_service == ANY_VALUE or rule_service == _service_key(url)


def _deprecated_condition_keys(rule: DubboURL, url: DubboURL) -> set[str] | None:
    """``AbstractConfigurator.isDeprecatedConditionMatch``: ``~key``, ``application`` and ``side``
    parameters must equal the URL's (``*`` any).  The condition keys to strip, or None (no match)."""
    keys = set(CONDITION_KEYS)
    for key, value in rule.params.items():
        tilde = key.startswith("~")
        if tilde or key in ("application", "side"):
            if tilde:
                keys.add(key)
            if value != ANY_VALUE and value != url.params.get(key[1:] if tilde else key):
                return None
    return keys


def _matching_keys(configurator: Configurator, url: DubboURL, local_host: str) -> set[str] | None:
    """Whether ``configurator`` applies to ``url`` (``AbstractConfigurator.configure``): the keys
    not to apply when it does, None when it does not."""
    rule = configurator.url
    if not _enabled(rule):
        return None
    if rule.params.get("configVersion"):  # v2.7 or above
        current_side = url.params.get("side")
        rule_side = rule.params.get("side")
        if current_side is None or current_side != rule_side:
            return None
        if rule_side == "consumer":
            return _if_match(configurator, local_host, url)
        if rule_side == "provider":
            return _if_match(configurator, url.host, url)
        return None
    # configureDeprecated: 2.6 URLs
    if rule.port != 0:
        return _if_match(configurator, url.host, url) if url.port == rule.port else None
    if (url.params.get("side") or "provider") == "consumer":
        return _if_match(configurator, local_host, url)
    if (url.params.get("side") or "consumer") == "provider":
        return _if_match(configurator, ANYHOST_VALUE, url)
    return None


def _if_match(configurator: Configurator, host: str, url: DubboURL) -> set[str] | None:
    """``AbstractConfigurator.configureIfMatch``."""
    rule = configurator.url
    if rule.host != ANYHOST_VALUE and rule.host != host:
        return None
    if not _v27_condition_match_or_unset(rule, url):
        return None
    version = rule.params.get("configVersion")
    if version is not None and version.startswith(V30):
        if configurator.match is not None and not configurator.match.matches(host, url):
            return None
        return set(CONDITION_KEYS)
    return _deprecated_condition_keys(rule, url)


def applies(configurator: Configurator, url: DubboURL, *, local_host: str) -> bool:
    """Whether ``configurator`` applies to ``url`` (a consumer's :func:`consumer_view` or a
    provider's published URL); ``local_host`` is the consumer's own address."""
    return _matching_keys(configurator, url, local_host) is not None


def configure(url: DubboURL, configurators: Iterable[Configurator], *, local_host: str) -> DubboURL:
    """``Configurator.configure`` of each configurator in turn; ``url`` itself when none applies."""
    for configurator in configurators:
        keys = _matching_keys(configurator, url, local_host)
        if keys is None:
            continue
        values = {k: v for k, v in configurator.url.params.items() if k not in keys}
        # AbsentConfigurator: addParametersIfAbsent; OverrideConfigurator: addParameters.
        merged = {**values, **url.params} if configurator.kind == ABSENT else {**url.params, **values}
        if merged != url.params:
            url = dataclasses.replace(url, params=merged)
    return url


def consumer_view(provider: DubboURL, *, application: str) -> DubboURL:
    """The URL a 3.x consumer's configurators configure for ``provider``
    (``RegistryDirectory.overrideWithConfigurators`` on a ``DubboServiceAddressURL``): the
    provider's address and path, ``application`` = the consumer's, ``side=consumer``, the
    provider's ``group`` and ``version``; empty values left out (``URLBuilder.addParameter``)."""
    values = (application, "consumer", provider.params.get("group"), provider.params.get("version"))
    params = {k: v for k, v in zip(_VIEW_KEYS, values, strict=True) if v}
    return DubboURL(
        provider.protocol, provider.host, provider.port, provider.path or provider.interface, params
    )


def configure_consumer(
    provider: DubboURL, configurators: Iterable[Configurator], *, application: str, local_host: str
) -> DubboURL:
    """``provider`` as a 3.x consumer reads it: the parameters the configurators set (on the
    :func:`consumer_view`) over the provider's own.  An empty value set by a configurator does not
    count (``DubboServiceAddressURL.getParameter`` falls back on an empty value).

    ``application`` is the consumer's application, ``local_host`` its own address
    (``NetUtils.getLocalHost()``).  A ``disabled=true`` result means the consumer drops the provider
    (``RegistryDirectory.toInvokers``); ``enabled`` is a condition key and cannot be set.
    """
    view = consumer_view(provider, application=application)
    configured = configure(view, configurators, local_host=local_host)
    overrides = {k: v for k, v in configured.params.items() if k not in _VIEW_KEYS and v}
    if all(provider.params.get(k) == v for k, v in overrides.items()):
        return provider
    return dataclasses.replace(provider, params={**provider.params, **overrides})


def configure_provider(published: DubboURL, configurators: Iterable[Configurator]) -> DubboURL:
    """A provider's URL after its configurators (``OverrideListener.doOverrideIfNecessary``): when it
    differs from ``published``, Dubbo re-exports and registers the new URL in place of the old one.
    ``published`` is the URL as registered (``side=provider``; for regproxy the sidecar's address and
    ingress port, the address Dubbo Admin shows and rules name)."""
    if published.params.get("side") != "provider":
        raise ValueError(f"not a provider URL (side={published.params.get('side')!r}): {published}")
    return configure(published, configurators, local_host=published.host)
