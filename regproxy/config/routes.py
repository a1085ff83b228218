"""The ``clusters:`` and ``routes:`` sections: static clusters, and the route rules that match
requests (service, method, attachments) and act on them (cluster, weighted subsets, timeout, retry,
fault, rate limit).  ``regproxy.routing.from_config`` compiles them for the data path."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from regproxy.address import Address
from regproxy.config.errors import describe, nested
from regproxy.config.fields import MAX_WEIGHT, DurationMs, Float, Int, Model, Percent, non_blank

__all__ = [
    "ACTION_KEYS",
    "LB_NAMES",
    "AttachmentMatchConfig",
    "ClusterConfig",
    "HostConfig",
    "RouteConfig",
    "RouteMatchConfig",
    "StringMatchConfig",
    "cross_check",
    "raw_cross_check",
]

# Kept in step with regproxy.routing.balancer.BALANCERS; repeated here so that loading a config does not
# import the routing package (tests/test_config.py checks the two agree).
LB_NAMES: tuple[str, ...] = ("round_robin", "random", "weighted_round_robin", "least_request", "dubbo")


class HostConfig(Model):
    address: Address
    weight: Int = Field(100, ge=0, le=MAX_WEIGHT)
    metadata: dict[str, str] = Field(default_factory=dict)


class ClusterConfig(Model):
    name: str
    lb: str = "round_robin"
    hosts: list[HostConfig] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return non_blank(v, "cluster name")

    @field_validator("lb")
    @classmethod
    def _lb(cls, v: str) -> str:
        if v not in LB_NAMES:
            raise PydanticCustomError("lb", f"{v!r} is not a load balancer (one of {', '.join(LB_NAMES)})")
        return v


def _one_of(model: BaseModel, kinds: tuple[str, ...]) -> tuple[str, Any]:
    given = [(k, getattr(model, k)) for k in kinds if getattr(model, k) is not None]
    if len(given) != 1:
        raise PydanticCustomError("match", f"give exactly one of {', '.join(kinds)}")
    kind, value = given[0]
    if kind == "regex":
        try:
            re.compile(value)
        except re.error as e:
            raise PydanticCustomError("match", f"bad regex {value!r}: {e}") from None
    return kind, value


class StringMatchConfig(Model):
    """``{exact: ..}``, ``{prefix: ..}`` or ``{regex: ..}`` (a full match)."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StringMatchConfig:
        _one_of(self, ("exact", "prefix", "regex"))
        return self

    def kind_value(self) -> tuple[str, str]:
        return _one_of(self, ("exact", "prefix", "regex"))


def _string_match(value: Any) -> Any:
    # Validated here rather than as a union member, so a mistake gets one message, not one per member.
    if isinstance(value, Mapping):
        try:
            return StringMatchConfig.model_validate(value)
        except ValidationError as e:
            path, problem = describe(e.errors()[0])
            raise (nested(path, problem) if path else PydanticCustomError("match", problem)) from None
    if not isinstance(value, str | StringMatchConfig):
        # Else pydantic reports one error per union member, under member names as keys.
        raise PydanticCustomError("match", f"expected a name or {{exact|prefix|regex: ...}}, not {value!r}")
    return value


StringOrMatch = Annotated[str | StringMatchConfig, BeforeValidator(_string_match)]


class AttachmentMatchConfig(Model):
    """An attachment value: ``exact``, ``prefix``, ``regex`` (full match), or ``present: true``."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> AttachmentMatchConfig:
        kind, value = _one_of(self, ("exact", "prefix", "regex", "present"))
        if kind == "present" and value is not True:
            raise PydanticCustomError("match", "present must be true (leave the key out to match anything)")
        return self

    def kind_value(self) -> tuple[str, str]:
        kind, value = _one_of(self, ("exact", "prefix", "regex", "present"))
        return kind, "" if kind == "present" else value


class RouteMatchConfig(Model):
    """None matches anything; "" for version/group matches only requests that carry none."""

    service: StringOrMatch = "*"
    version: str | None = None
    group: str | None = None
    method: StringOrMatch | None = None
    attachments: dict[str, AttachmentMatchConfig] = Field(default_factory=dict)

    @field_validator("service")
    @classmethod
    def _service(cls, v: str | StringMatchConfig) -> str | StringMatchConfig:
        if isinstance(v, str):
            return non_blank(v, "service", " (use '*' for any service)")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str | StringMatchConfig | None) -> str | StringMatchConfig | None:
        if isinstance(v, str):
            non_blank(v, "method", " (use null for any method)")
        return v

    @property
    def plain(self) -> bool:
        """Expressible by the routing table: exact (or '*') service and method, no attachments."""
        return (
            isinstance(self.service, str)
            and not isinstance(self.method, StringMatchConfig)
            and not self.attachments
        )


class WeightedSubsetConfig(Model):
    subset: dict[str, str]
    weight: Int = Field(1, ge=0, le=MAX_WEIGHT)


class RetryConfig(Model):
    """``attempts``: extra attempts after the first.  Connect failures (nothing written) are always
    retried; ``reset`` (connection lost with the request written) and ``unavailable`` (the upstream
    answered 35, 60 or 100: it did not run the call) only when listed."""

    attempts: Int = Field(1, ge=0, le=10)
    on: list[Literal["connect-failure", "reset", "unavailable"]] = Field(
        default_factory=lambda: ["connect-failure"]
    )


class RouteActionConfig(Model):
    cluster: str | None = None
    weighted_subsets: list[WeightedSubsetConfig] = Field(default_factory=list)
    timeout: DurationMs | None = None
    retry: RetryConfig | None = None

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, v: str | None) -> str | None:
        return v if v is None else non_blank(v, "cluster name")

    @model_validator(mode="after")
    def _weights(self) -> RouteActionConfig:
        if self.weighted_subsets and sum(s.weight for s in self.weighted_subsets) <= 0:
            raise nested("weighted_subsets", "the weights must not all be 0")
        return self


class FaultDelayConfig(Model):
    fixed: DurationMs
    percentage: Percent = 100.0


class FaultAbortConfig(Model):
    status: Int = Field(70, ge=21, le=255, description="the Dubbo status to answer with (not 20 = OK)")
    message: str = ""
    percentage: Percent = 100.0


class FaultConfig(Model):
    delay: FaultDelayConfig | None = None
    abort: FaultAbortConfig | None = None


class RateLimitConfig(Model):
    requests_per_second: Float = Field(gt=0)
    burst: Int | None = Field(None, ge=1, description="bucket size; default: requests_per_second rounded up")
    per: Literal["service", "method"] = "service"


class RouteConfig(Model):
    name: str
    match: RouteMatchConfig = Field(default_factory=RouteMatchConfig)
    # None: the cluster of the service's subscription (the first table route that matches).
    cluster: str | None = None
    timeout_ms: Int | None = Field(None, gt=0)
    retries: Int = Field(1, ge=0, le=10)
    route: RouteActionConfig | None = None
    fault: FaultConfig | None = None
    rate_limit: RateLimitConfig | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return non_blank(v, "route name")

    @model_validator(mode="after")
    def _one_cluster(self) -> RouteConfig:
        if self.route is not None:
            if self.cluster is not None and self.route.cluster is not None:
                raise PydanticCustomError("route", "give cluster or route.cluster, not both")
            if self.timeout_ms is not None and self.route.timeout is not None:
                raise PydanticCustomError("route", "give timeout_ms or route.timeout, not both")
        return self

    @property
    def target(self) -> str | None:
        return self.cluster if self.cluster is not None else (self.route.cluster if self.route else None)

    @property
    def timeout(self) -> int | None:
        if self.route is not None and self.route.timeout is not None:
            return self.route.timeout
        return self.timeout_ms

    @property
    def attempts(self) -> int:
        if self.route is not None and self.route.retry is not None:
            return self.route.retry.attempts
        return self.retries


ACTION_KEYS = ("route", "fault", "rate_limit")


def cross_check(
    clusters: list[tuple[int, Any]], routes: list[tuple[int, Any, Any, bool]]
) -> list[tuple[str, str]]:
    """Checks that span list items: unique cluster and route names, routes naming existing clusters.

    Takes (index, name) / (index, name, cluster) so it can run both on the validated model and, when
    other fields failed, on the raw data (so one run reports everything).
    """
    errors: list[tuple[str, str]] = []
    first: dict[str, int] = {}
    for i, name in clusters:
        if not isinstance(name, str):
            continue
        if name in first:
            errors.append(
                (f"clusters[{i}].name", f"duplicate cluster name {name!r} (also clusters[{first[name]}])")
            )
        else:
            first[name] = i
    known = ", ".join(sorted(first)) or "none defined"
    seen_routes: dict[str, int] = {}
    for i, name, cluster, has_action in routes:
        if cluster is None and not has_action:
            errors.append(
                (
                    f"routes[{i}].cluster",
                    "required unless the route has route, fault or rate_limit "
                    "(a rule without a cluster uses the service's subscription)",
                )
            )
        if isinstance(name, str):
            if name in seen_routes:
                errors.append(
                    (f"routes[{i}].name", f"duplicate route name {name!r} (also routes[{seen_routes[name]}])")
                )
            else:
                seen_routes[name] = i
        if isinstance(cluster, str) and cluster not in first:
            errors.append((f"routes[{i}].cluster", f"no cluster named {cluster!r} (known: {known})"))
    return errors


def raw_cross_check(data: Any) -> list[tuple[str, str]]:
    if not isinstance(data, Mapping):
        return []

    def items(key: str) -> list[tuple[int, Mapping[str, Any]]]:
        value = data.get(key)
        if not isinstance(value, list):
            return []
        return [(i, item) for i, item in enumerate(value) if isinstance(item, Mapping)]

    clusters = [(i, c.get("name")) for i, c in items("clusters")]
    routes = [
        (i, r.get("name"), r.get("cluster"), any(k in r for k in ACTION_KEYS)) for i, r in items("routes")
    ]
    if not isinstance(data.get("clusters", []), list):
        # The cluster list itself is broken; "no cluster named" would only add noise.
        routes = [(i, name, None, True) for i, name, _, _ in routes]
    return cross_check(clusters, routes)
