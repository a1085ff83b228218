"""The OpenAPI 3.1 document of the admin API, served at its GET /openapi.json.

The reply schemas are generated from the models the server builds its replies from
(regproxy/api/admin_models.py), as regproxy/api/openapi.py does for the pub/sub API, so the document
cannot drift from the replies; tests/test_api_schema.py checks it against the running API with
schemathesis (a status, content type or body the document does not describe fails that test).
The paths, the one request body and the error statuses are written here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from regproxy.api.admin_models import (
    Alive,
    Clusters,
    ConfigDump,
    ConfigRefused,
    Draining,
    Index,
    LogLevelReply,
    LogLevelSet,
    Publications,
    Readiness,
    Reloaded,
    Rules,
    Stats,
    Subscriptions,
    TimeSeriesReply,
)
from regproxy.api.models import ERR_NO_DOC, ErrorReply
from regproxy.config import LOG_LEVELS

__all__ = ["build_admin_openapi"]

_REF = "#/components/schemas/{model}"
_JSON = "application/json"

# Every reply model the document refers to.
_REPLY_MODELS: tuple[type[BaseModel], ...] = (
    Index, Alive, Readiness, ConfigDump, Clusters, Publications, Subscriptions, Rules, Stats,
    LogLevelReply, LogLevelSet, Draining, Reloaded, ErrorReply, ConfigRefused, TimeSeriesReply,
)  # fmt: skip


def _reply(description: str, model: type[BaseModel]) -> dict[str, Any]:
    return {
        "description": description,
        "content": {_JSON: {"schema": {"$ref": _REF.format(model=model.__name__)}}},
    }


def _error(description: str) -> dict[str, Any]:
    return _reply(description, ErrorReply)


def _get(op_id: str, summary: str, ok: dict[str, Any], *, probe: bool = False, **more: Any) -> dict[str, Any]:
    responses = {"200": ok, "405": _error("wrong HTTP method (err_no 7)")}
    if not probe:  # probes answer without a token, so orchestrators need none
        responses["401"] = _error("a token is configured and the request carries none (err_no 8)")
        responses["403"] = _error("a wrong token (err_no 9)")
    responses.update(more.pop("responses", {}))
    return {"get": {"operationId": op_id, "summary": summary, "responses": responses, **more}}


# Who may change things: loopback callers without admin_token (not from a web browser), every
# caller with the token.
_CHANGING = {
    "401": _error("a token is configured and the request carries none (err_no 8)"),
    "403": _error("wrong token, or a caller that may not change anything (err_no 9)"),
    "405": _error("wrong HTTP method (err_no 7)"),
}
# "debug", " INFO " and "Warning" alike: the level is stripped and lower-cased.
_LEVEL_PATTERN = (
    "^\\s*(?:" + "|".join("".join(f"[{c.upper()}{c}]" for c in level) for level in LOG_LEVELS) + ")\\s*$"
)


def build_admin_openapi(*, max_body: int) -> dict[str, Any]:
    _, top = models_json_schema([(m, "serialization") for m in _REPLY_MODELS], ref_template=_REF)
    name_query = {"type": "string", "minLength": 1}
    flag = {"type": "string", "description": "a flag: present (any value, or none) or absent"}
    dump_params = [
        {"name": n, "in": "query", "required": False, "allowEmptyValue": True, "schema": flag}
        for n in ("sidecar", "allrouters", "allclusters", "alllisteners")
    ] + [
        {"name": n, "in": "query", "required": False, "schema": name_query, "description": f"one {n} by name"}
        for n in ("router", "cluster", "listener")
    ]
    codes = "\n".join(f"* `{int(code)}` {code.name}: {doc}" for code, doc in ERR_NO_DOC.items())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "regproxy admin API",
            "version": "1",
            "description": "What the sidecar is doing, and a few controls. Errors are JSON `err_no` and "
            "`err_msg` with a matching HTTP status:\n" + codes,
        },
        "paths": {
            "/": _get("index", "the endpoints", _reply("names and endpoints", Index)),
            "/openapi.json": _get(
                "openapi",
                "this document",
                {"description": "OpenAPI 3.1", "content": {_JSON: {"schema": {"type": "object"}}}},
            ),
            "/healthz": _get("healthz", "alive", _reply("the process is serving", Alive), probe=True),
            "/readyz": _get(
                "readyz",
                "ready: registries connected, state restored and being saved, not draining",
                _reply("ready", Readiness),
                probe=True,
                responses={"503": _reply("not ready (reasons says why)", Readiness)},
            ),
            "/metrics": _get(
                "metrics",
                "Prometheus metrics",
                {
                    "description": "the text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
            ),
            "/api/v1/config_dump": _get(
                "config_dump",
                "effective config and live tables, whole or cut down by the query",
                _reply("the dump (only the parts the query asks for, when it asks)", ConfigDump),
                parameters=dump_params,
                responses={
                    "400": _error("an unknown query parameter, or a name left empty (err_no 1)"),
                    "404": _error("no router, cluster or listener of that name (err_no 2)"),
                },
            ),
            "/api/v1/clusters": _get(
                "clusters",
                "clusters and hosts with weight, health, state, requests, errors",
                _reply("the clusters", Clusters),
                parameters=[
                    {
                        "name": "brief",
                        "in": "query",
                        "required": False,
                        "allowEmptyValue": True,
                        "schema": flag,
                        "description": "hosts without their metadata (null)",
                    }
                ],
                responses={"400": _error("an unknown query parameter (err_no 1)")},
            ),
            "/api/v1/publications": _get(
                "publications", "services published, per registry", _reply("the publications", Publications)
            ),
            "/api/v1/subscriptions": _get(
                "subscriptions",
                "services subscribed and their providers, per registry",
                _reply("the subscriptions", Subscriptions),
            ),
            "/api/v1/rules": _get(
                "rules",
                "dynamic rules from each config center: in force (source, version) and refused",
                _reply("the rules", Rules),
            ),
            "/api/v1/stats": _get("stats", "counters as JSON", _reply("the counters", Stats)),
            "/api/v1/timeseries": _get(
                "timeseries",
                "each service's requests/s, errors/s, p50 and p99 latency, a point a second, for the last "
                "15 minutes at most (?seconds=N: the last N)",
                _reply("the history", TimeSeriesReply),
            ),
            "/api/v1/loglevel": {
                **_get("get_loglevel", "current log level", _reply("the level", LogLevelReply)),
                "post": {
                    "operationId": "set_loglevel",
                    "summary": "set the log level (also accepted as ?level=NAME, which wins over the body)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            _JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["level"],
                                    "properties": {"level": {"type": "string", "pattern": _LEVEL_PATTERN}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _reply("set", LogLevelSet),
                        "400": _error("not JSON, or not a log level (err_no 1)"),
                        "413": _error(f"body over {max_body} bytes (err_no 6)"),
                        **_CHANGING,
                    },
                },
            },
            "/api/v1/drain": {
                "post": {
                    "operationId": "drain",
                    "summary": "unpublish, keep serving for drain.grace_s, finish requests in flight, exit 0",
                    "responses": {"202": _reply("draining (or already)", Draining), **_CHANGING},
                }
            },
            "/api/v1/reload": {
                "post": {
                    "operationId": "reload",
                    "summary": "re-read the config file (routes, clusters, timeouts, log level)",
                    "responses": {
                        "200": _reply("reloaded, or why not", Reloaded),
                        "400": _reply(
                            "the new config is invalid; errors names each key (err_no 1)", ConfigRefused
                        ),
                        **_CHANGING,
                    },
                }
            },
        },
        "components": {"schemas": top.get("$defs", {})},
    }
