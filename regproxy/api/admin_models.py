"""The replies of the admin API (regproxy/api/admin.py), as pydantic models.

One definition has three readers: the admin server builds every JSON reply from these models, its
OpenAPI document (regproxy/api/admin_openapi.py) is generated from them, and ``regproxy ctl`` parses
the replies with them. A field renamed here is renamed for all three, and ctl reads typed fields
instead of guessing names.

Every field is in every reply (the document marks them required), but for the parts of the config
dump a query leaves out. Keys a model does not know are ignored when parsing (pydantic's default),
so a ctl reads a newer sidecar's replies by the fields it knows.

Errors have the pub/sub API's shape (regproxy.api.models.ErrorReply); a refused reload adds the
problems one by one (ConfigRefused). Nothing here does I/O.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from regproxy.api.models import ErrorReply, OkReply
from regproxy.config import LOG_LEVELS

__all__ = [
    "Alive",
    "AppCheck",
    "ClusterSource",
    "Clusters",
    "ConfigDump",
    "ConfigHost",
    "ConfigProblem",
    "ConfigRefused",
    "ConfigTableCluster",
    "Connection",
    "Draining",
    "Endpoint",
    "HealthView",
    "HostHealth",
    "HostState",
    "Index",
    "Latency",
    "ListenerCounters",
    "ListenerName",
    "ListenerView",
    "LiveCluster",
    "LiveHost",
    "LogLevel",
    "LogLevelReply",
    "LogLevelSet",
    "ProviderView",
    "PublicationView",
    "Publications",
    "Readiness",
    "ReadinessDetail",
    "RegistryCounters",
    "RegistryPublications",
    "RegistrySubscriptions",
    "Reloaded",
    "RouteMatchView",
    "RouteView",
    "Router",
    "SavedStateSummary",
    "SidecarInfo",
    "StateSaveStatus",
    "Stats",
    "SubscriptionView",
    "Subscriptions",
]

# Required in the document even where a default exists: the server always writes the field.
_REPLY = ConfigDict(frozen=True, json_schema_serialization_defaults_required=True)


class _Reply(BaseModel):
    model_config = _REPLY


class _Done(OkReply):
    """The reply to a change that went ahead: err_no 0, err_msg, and what was done."""

    model_config = _REPLY

    err_msg: str = Field(description="what was done, in words")


def _log_level(value: str) -> str:
    if value not in LOG_LEVELS:
        raise ValueError(f"not a log level (one of {', '.join(LOG_LEVELS)})")
    return value


LogLevel = Annotated[str, AfterValidator(_log_level), WithJsonSchema({"enum": list(LOG_LEVELS)})]
ListenerName = Literal["egress", "ingress"]
# Where a cluster comes from: the config file's clusters, a subscription's providers, or (ingress)
# the local application, one cluster per published application port.
ClusterSource = Literal["config", "registry", "local"]


def _finite(value: Any) -> Any:
    # JSON has no infinity: the bound of the last histogram bucket (+Inf) is written as null.
    return None if isinstance(value, float) and math.isinf(value) else value


BucketBound = Annotated[
    float | None,
    BeforeValidator(_finite),
    Field(description="upper bound of the histogram bucket holding the quantile, in seconds; null: "
          "beyond the largest bucket"),
]  # fmt: skip


# --------------------------------------------------------------------------------------------------
# GET /, /healthz, /readyz


class Endpoint(_Reply):
    method: Literal["GET", "POST"]
    path: str
    summary: str


class Index(_Reply):
    name: str
    endpoints: list[Endpoint]


class Alive(_Reply):
    status: Literal["alive"]
    uptime_s: float


class SavedStateSummary(_Reply):
    """What the state file held when the sidecar started (StateStore.load)."""

    file: str
    found: bool = Field(description="false: there was no state file (a new sidecar)")
    publications: int
    subscriptions: int
    error: str | None = Field(description="why the file could not be read (it was moved aside)")


class StateSaveStatus(_Reply):
    """The state file's writes (StateWriter.describe): while the last one failed, changes are answered 503."""

    data_dir: str
    file: str
    ok: bool
    error: str | None
    failing_for_s: float | None
    consecutive_failures: int
    writes: int
    failures: int


class ReadinessDetail(_Reply):
    registries: dict[str, str] = Field(description="the state of each registry readiness counts")
    restored: bool = Field(description="the restore step is done, whatever it found")
    saved_state: SavedStateSummary | None = Field(description="null without a data directory")
    draining: bool
    serving_from_cache: list[str] = Field(
        description="subscriptions routed on providers read from the state file, not yet confirmed"
    )
    state_save: StateSaveStatus | None = Field(description="null without a data directory")
    rules_refused: list[str] = Field(
        description="dynamic rules refused (each: where, and why); they do not make the sidecar unready: "
        "the previous good version of each stays in force"
    )


class Readiness(_Reply):
    status: Literal["ready", "not ready"]
    ready: bool
    reasons: list[str] = Field(description="why not ready, for people and probes' logs; [] when ready")
    detail: ReadinessDetail


# --------------------------------------------------------------------------------------------------
# The parts of GET /api/v1/config_dump


class SidecarInfo(_Reply):
    config_path: str | None
    advertise_ip: str
    started_at: float = Field(description="Unix time")
    uptime_s: float
    draining: bool
    log_level: LogLevel
    version: str = Field(description="regproxy's package version")
    data_path: str = Field(
        description="which data path runs: compiled with mypyc, or pure Python and why (as logged at start)"
    )


class RouteMatchView(_Reply):
    service: str
    version: str | None = Field(description='null: any version; "": only requests without one')
    group: str | None = Field(description='null: any group; "": only requests without one')
    method: str | None = Field(description="null: any method")


class RouteView(_Reply):
    name: str
    match: RouteMatchView
    cluster: str
    timeout_ms: int | None = Field(description="null: the request's own timeout, else timeouts.default_ms")
    retries: int


class Router(_Reply):
    version: int = Field(description="the routing table's version; it changes on every swap")
    routes: list[RouteView] = Field(description="in the order they are tried")


class FoundView(_Reply):
    """How a subscription's provider was found (Dubbo 3 application-level discovery, docs/discovery.md)."""

    how: Literal["interface", "application", "both"] = Field(
        description="interface-level node, application instance, or both at one address"
    )
    # Left out when found at interface level only.
    application: str | None = Field(
        None, exclude_if=lambda v: v is None, description="the provider application (application level)"
    )
    revision: str | None = Field(
        None, exclude_if=lambda v: v is None, description="its metadata revision (application level)"
    )


_PROTOCOLS_DOC = "the protocols it takes calls in: dubbo, tri (Triple), or both"


class ConfigHost(_Reply):
    address: str
    weight: int
    healthy: bool
    protocols: list[str] = Field(default_factory=list, description=_PROTOCOLS_DOC)
    metadata: dict[str, str] = Field(description="the provider URL's parameters, secrets as ***")
    found: FoundView | None = Field(None, description="how it was found; null: not from a subscription")


class ConfigTableCluster(_Reply):
    """A cluster of a routing table as configured or discovered, without live counters."""

    listener: ListenerName
    source: ClusterSource
    name: str
    lb: str
    hosts: list[ConfigHost]


class ListenerView(_Reply):
    name: ListenerName
    address: str = Field(description="HOST:PORT bound; the configured one while not accepting")
    accepting: bool
    connections: int = Field(description="client connections open")
    in_flight: int = Field(description="two-way requests forwarded and not yet answered")
    table_version: int


# --------------------------------------------------------------------------------------------------
# GET /api/v1/clusters


class Connection(_Reply):
    state: Literal["connecting", "open", "closed"]
    in_flight: int
    readonly: bool = Field(description="the host sent the read-only event: it is shutting down")


HostState = Literal["available", "unhealthy", "ejected"]


class LiveHost(_Reply):
    address: str
    weight: int
    healthy: bool = Field(description="as the routing table has it (false: kept out of load balancing)")
    protocols: list[str] = Field(default_factory=list, description=_PROTOCOLS_DOC)
    ejected: bool = Field(description="outlier detection has taken it out for a while (health.outlier)")
    state: HostState = Field(
        description="unhealthy: failing its active health checks, or healthy false in the routing table; "
        "ejected: taken out by outlier detection; available otherwise (unhealthy wins over ejected)"
    )
    reason: str | None = Field(
        description="why it is unhealthy or ejected, for people (the check's last error; the failures, "
        "when it comes back); null when available"
    )
    effective_weight: int = Field(
        description="the weight Dubbo's load balancers give it now (service level): weight, scaled down "
        "while it warms up (its timestamp and warmup parameters; AbstractLoadBalance.getWeight)"
    )
    active_requests: int = Field(description="requests (and Triple calls) in flight to this host")
    total_requests: int = Field(description="requests and Triple calls sent to this host, retries included")
    errors: int = Field(
        description="requests and Triple calls answered with an error whose last try went to this host "
        "(its error statuses, timeouts, failed connects, lost connections)"
    )
    connections: list[Connection]
    metadata: dict[str, str] | None = Field(
        description="the provider URL's parameters, secrets as ***; null with ?brief"
    )
    found: FoundView | None = Field(None, description="how it was found; null: not from a subscription")


class LiveCluster(_Reply):
    name: str
    listener: ListenerName
    source: ClusterSource
    lb: str
    hosts: list[LiveHost]


class Clusters(_Reply):
    clusters: list[LiveCluster]


# --------------------------------------------------------------------------------------------------
# GET /api/v1/publications and /api/v1/subscriptions


class PublicationView(_Reply):
    service: str = Field(description="group/interface:version")
    interface: str
    version: str
    group: str
    methods: list[str]
    application: str
    app_port: int = Field(description="the application port the ingress forwards its calls to")
    url: str = Field(description="the provider URL registered, secrets as ***")
    registered: bool = Field(description="its node is in this registry now")


class RegistryPublications(_Reply):
    registry: str = Field(description="the registry's URL, credentials redacted")
    state: str
    publications: list[PublicationView]


class Publications(_Reply):
    withdrawn: bool = Field(description="draining: every publication is out of the registries")
    registries: list[RegistryPublications]


class ProviderView(_Reply):
    address: str
    weight: int
    found: FoundView | None = Field(None, description="how it was found")


class EffectiveValue(_Reply):
    value: str
    source: str = Field(description="route, override, consumer, provider or default (docs/parameters.md)")


class ProviderParameters(_Reply):
    address: str
    parameters: dict[str, dict[str, EffectiveValue]] = Field(
        description='"*" (service-wide) and each method with a value of its own -> parameter -> value'
    )


class SubscriptionView(_Reply):
    cluster: str = Field(description="the egress cluster: group/interface:version")
    interface: str
    version: str
    group: str
    application: str = Field("", description="the consumer application: what its consumer:// URL says")
    params: dict[str, str] = Field(
        default_factory=dict, description="the consumer's own parameters (/sub params)"
    )
    effective: list[ProviderParameters] = Field(
        default_factory=list,
        description="each provider's effective Dubbo parameters and their sources (docs/parameters.md)",
    )
    watching: bool
    migration: str = Field(
        "both",
        description="where its providers are found: interface, application or both (docs/discovery.md)",
    )
    applications: dict[str, Any] | None = Field(
        None,
        description="application-level discovery on this registry: the provider applications (from the "
        "mapping or provided-by), their instances by metadata revision and each revision's metadata state",
    )
    from_cache: bool = Field(description="its providers were read from the state file, not yet confirmed")
    holding_empty: bool = Field(
        description="this registry's list lost every provider; the last ones are kept for "
        "discovery.empty_protection_s"
    )
    providers: list[ProviderView]


class RegistrySubscriptions(_Reply):
    registry: str = Field(description="the registry's URL, credentials redacted")
    state: str
    subscriptions: list[SubscriptionView]


class Subscriptions(_Reply):
    registries: list[RegistrySubscriptions]


# --------------------------------------------------------------------------------------------------
# GET /api/v1/config_dump: the parts above, whole or cut down by the query


def _absent(value: object) -> bool:
    return value is None


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # "null" would be wrong: an absent part is left out, never null


def _part(description: str) -> Any:
    return Field(None, exclude_if=_absent, description=description, json_schema_extra=_no_default)


class ConfigDump(BaseModel):
    """The whole dump without a query; with one, only the parts it asks for (the others are left out)."""

    model_config = ConfigDict(frozen=True)

    sidecar: SidecarInfo | SkipJsonSchema[None] = _part("this process; ?sidecar")
    config: dict[str, Any] | SkipJsonSchema[None] = _part(
        "the configuration in effect, as the config file spells it, credentials as ***"
    )
    routers: dict[ListenerName, Router] | SkipJsonSchema[None] = _part("?allrouters, ?router=NAME")
    clusters: list[ConfigTableCluster] | SkipJsonSchema[None] = _part("?allclusters, ?cluster=NAME")
    listeners: list[ListenerView] | SkipJsonSchema[None] = _part("?alllisteners, ?listener=NAME")
    publications: Publications | SkipJsonSchema[None] = _part("as GET /api/v1/publications")
    subscriptions: Subscriptions | SkipJsonSchema[None] = _part("as GET /api/v1/subscriptions")
    rules: Rules | SkipJsonSchema[None] = _part("as GET /api/v1/rules")


# --------------------------------------------------------------------------------------------------
# GET /api/v1/rules


class RuleInForceView(_Reply):
    rule_id: str = Field(description="<key><suffix>: the ZooKeeper node's or Nacos dataId's name")
    source: str = Field(description="where it was read: a node path, a dataId, or the state file")
    version: str = Field(description="ZooKeeper mzxid, Nacos md5; empty when unknown")
    text: str


class RefusedRuleView(_Reply):
    rule_id: str
    source: str
    version: str
    reason: str = Field(description="yaml, unknown-field, type, version, scope, condition, value, key ...")
    message: str = Field(description="what is wrong, naming the field")


class RuleCenter(_Reply):
    registry: str = Field(description="the registry read as a config center (password shown as ***)")
    watched: list[str] = Field(description="the rule ids this sidecar's publications and subscriptions need")
    in_force: list[RuleInForceView]
    refused: list[RefusedRuleView] = Field(description="the last version refused of each rule, if any")


class Stage(_Reply):
    stage: str = Field(description="registry, configurators, tag router, ... condition rule")
    hosts: list[str] = Field(description="the providers left after this stage")
    message: str | None = Field(None, description="why none is left (a blocking rule), if so")


class Explain(_Reply):
    """?cluster=NAME[&method=M][&tag=T]: what each stage does to a subscription's providers for such
    a request, in the order a request goes through them (docs/governance.md)."""

    cluster: str
    method: str
    tag: str
    rules: list[str] = Field(description="the rule ids in force for this subscription")
    stages: list[Stage]


class Rules(_Reply):
    centers: list[RuleCenter]
    explain: Explain | SkipJsonSchema[None] = _part("?cluster=NAME[&method=M][&tag=T]")


# --------------------------------------------------------------------------------------------------
# GET /api/v1/stats


class Latency(_Reply):
    count: int
    sum: float
    p50: BucketBound
    p99: BucketBound
    buckets: dict[str, int] = Field(description="requests per bucket (not cumulative), by upper bound")


class ListenerCounters(_Reply):
    """A listener's counters (ListenerStats); all zero for a listener that has not started."""

    requests: int = 0
    oneway: int = 0
    heartbeats: int = 0
    responses: dict[str, int] = Field(default_factory=dict, description="by Dubbo status")
    per_service: dict[str, int] = Field(default_factory=dict, description="by group/interface:version.method")
    per_service_errors: dict[str, int] = Field(
        default_factory=dict, description="of per_service, those answered with an error"
    )
    latency: dict[str, Latency] = Field(default_factory=dict, description="by group/interface:version.method")
    upstream_requests: dict[str, int] = Field(default_factory=dict, description="by upstream address")
    upstream_errors: dict[str, int] = Field(
        default_factory=dict,
        description="requests answered with an error, by the upstream address of their last try",
    )
    upstream_latency: dict[str, Latency] = Field(
        default_factory=dict,
        description="request to response (errors and timeouts included), by the upstream address of their "
        "last try",
    )
    timeouts: int = 0
    retries: int = 0
    connect_failures: int = 0
    protocol_errors: int = 0
    ejections: int = 0
    downstream_connections: int = 0
    rejected_connections: int = 0
    loops: int = 0
    paused_reads: int = 0
    unsent_closes: int = 0
    upstream_unsent_refusals: int = 0
    upstream_foreign_frames: int = 0
    refused_streams: int = Field(0, description="Triple streams refused over SETTINGS_MAX_CONCURRENT_STREAMS")
    failsafe: int = Field(0, description="failures a declared cluster=failsafe answered with an empty result")
    refused_tokens: int = Field(0, description="calls the ingress refused for a wrong token (TokenFilter)")
    refused_executes: int = Field(
        0, description="calls the ingress refused over `executes` (ExecuteLimitFilter)"
    )


class RegistryCounters(_Reply):
    states: dict[str, str] = Field(description="every registry's connection state, by redacted name")
    events: dict[str, int]


class HostHealth(_Reply):
    """An upstream host's active check (the first six fields; null: never checked) and outlier detection."""

    healthy: bool
    checked: bool
    checked_at: float | None = None
    consecutive_check_failures: int | None = None
    last_error: str | None = None
    connected: bool | None = Field(None, description="the check's connection is open")
    ejected: bool
    ejected_until: float | None = Field(description="Unix time")
    ejected_for_s: float | None
    ejections: int
    consecutive_failures: int
    available: bool = Field(description="healthy and not ejected: load balancing may pick it")


class AppCheck(_Reply):
    address: str
    up: bool
    consecutive_failures: int
    last_error: str | None
    checked_at: float | None


class HealthView(_Reply):
    hosts: dict[str, HostHealth] = Field(description="by address")
    app_check: dict[str, AppCheck] = Field(description="by published application port")
    suspended_app_ports: dict[str, str] = Field(description="application port: why its publications are out")


class Stats(_Reply):
    uptime_s: float
    id: str = Field(description="this sidecar's id in loop markers and loop errors")
    draining: bool
    egress: ListenerCounters
    ingress: ListenerCounters
    triple: dict[ListenerName, ListenerCounters] = Field(
        default_factory=dict,
        description="each listener's Triple calls, counted apart from its Dubbo requests (responses by "
        "grpc-status, -1: ended by a stream reset)",
    )
    registry: RegistryCounters
    state_save: StateSaveStatus | None = Field(description="null without a data directory")
    health: HealthView


class ServiceSeries(_Reply):
    listener: ListenerName
    protocol: Literal["dubbo", "tri"]
    service: str = Field(description="group/interface:version")
    points: list[tuple[float, float, float, float | None, float | None]] = Field(
        description="[time (Unix seconds), requests/s, errors/s, p50 ms, p99 ms] per interval, oldest "
        "first; the latencies are null for an interval in which no call ended"
    )


class TimeSeriesReply(_Reply):
    """The last minutes of each service's rates and latency, a point per interval (api.timeseries)."""

    interval_s: float
    history_s: int = Field(description="how much history is kept")
    series: list[ServiceSeries]


# --------------------------------------------------------------------------------------------------
# /api/v1/loglevel, /api/v1/drain, /api/v1/reload


class LogLevelReply(_Reply):
    level: LogLevel


class LogLevelSet(_Done):
    level: LogLevel
    previous: LogLevel


class Draining(_Done):
    draining: Literal[True]
    started: bool = Field(description="this request started the drain (false: it was draining already)")
    grace_s: float
    timeout_s: float


class Reloaded(_Done):
    reloaded: bool = Field(description="false: nothing to re-read (no config file); reason says so")
    changes: list[str] = Field(description="what the reload applied")
    needs_restart: list[str] = Field(description="keys that changed but apply only after a restart")
    reason: str | None = Field(description="why not reloaded; null when reloaded")


class ConfigProblem(_Reply):
    key: str
    problem: str


class ConfigRefused(ErrorReply):
    """A reload refused: the new config is invalid, and nothing changed."""

    model_config = _REPLY

    errors: list[ConfigProblem]
