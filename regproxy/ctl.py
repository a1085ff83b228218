"""``regproxy ctl``: look at and steer a running sidecar through its admin endpoint.

    regproxy ctl [--admin HOST:PORT] [--token T] [--json] COMMAND

Read commands (``status``, ``clusters``, ``routes``, ``publications``, ``subscriptions``) print
plain-text tables; ``--json`` prints the admin endpoint's JSON instead, for scripts (``status``
reads two endpoints: ``{"ready": bool, "readyz": <GET /readyz>, "stats": <GET /api/v1/stats>}``).
A sidecar that is not ready is not an error: ``status`` says why and exits 0. Write commands
(``drain``, ``reload``, ``loglevel LEVEL``) are accepted from loopback callers, or with the token
when the sidecar has ``admin_token`` or ``auth_token`` (``--token``, ``REGPROXY_ADMIN_TOKEN`` or
``REGPROXY_AUTH_TOKEN``, sent as ``Authorization: Bearer`` on every request, reading ones
included). Failures go to stderr (the endpoint's err_msg) with exit code 1.

Only the standard library is used (urllib), so the command starts instantly and works from a
minimal image. The tables are built from the JSON by looking for the records (a cluster is an
object with ``hosts``, a publication one with ``interface``, ...) wherever the endpoint nests
them, so grouping changes in the admin API (by listener, by registry) still print.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from regproxy.routing.model import service_label

__all__ = ["DEFAULT_ADMIN", "TOKEN_ENV", "AdminClient", "CtlError", "format_table", "main"]

PROG = "regproxy ctl"
DEFAULT_ADMIN = "127.0.0.1:34901"
TOKEN_ENV = "REGPROXY_ADMIN_TOKEN"
AUTH_TOKEN_ENV = "REGPROXY_AUTH_TOKEN"  # the sidecar's auth_token, used when TOKEN_ENV is unset
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_LISTENERS = ("egress", "ingress")
_NO_DESCENT = frozenset({"metadata", "params", "parameters", "attachments"})


class CtlError(Exception):
    """A failure to report on one line of stderr, exit code 1."""


# --------------------------------------------------------------------------------------------------
# Talking to the admin endpoint


def admin_base_url(text: str) -> str:
    """``HOST:PORT``, ``[v6]:PORT``, ``PORT`` or ``http://HOST:PORT`` -> ``http://HOST:PORT``."""
    text = text.strip()
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    url = text if "://" in text else f"http://{text}"
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. {DEFAULT_ADMIN})")
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class AdminClient:
    base_url: str
    token: str | None = None
    timeout: float = 10.0

    def get(self, path: str, *, accept: Iterable[int] = ()) -> tuple[int, Any]:
        return self.request("GET", path, accept=accept)

    def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        return self.request("POST", path, body)

    def request(
        self, method: str, path: str, body: Any = None, *, accept: Iterable[int] = ()
    ) -> tuple[int, Any]:
        """(status, decoded JSON). A status >= 400 not in ``accept`` raises CtlError with the
        endpoint's err_msg; so does no reply at all."""
        url = self.base_url + path
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        # No proxy: an http_proxy in the environment must not carry an admin call elsewhere.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            with e:
                status, raw = e.code, e.read()
        except (OSError, http.client.HTTPException) as e:  # URLError is an OSError
            raise CtlError(self._unreachable(e)) from None
        payload = _decode(raw)
        if status >= 400 and status not in set(accept):
            raise CtlError(f"{method} {path}: HTTP {status}: {_error_message(payload, raw)}")
        if payload is _NOT_JSON:
            raise CtlError(
                f"{method} {path}: the reply is not JSON; is {self.base_url} a regproxy admin endpoint?"
            )
        return status, payload

    def _unreachable(self, e: BaseException) -> str:
        reason: object = e.reason if isinstance(e, urllib.error.URLError) else e
        where = f"the admin endpoint at {self.base_url}"
        if isinstance(reason, ConnectionRefusedError):
            return f"cannot connect to {where}: connection refused (is regproxy running, with this --admin?)"
        if isinstance(reason, TimeoutError):
            return f"no reply from {where} within {self.timeout:g} s"
        if isinstance(reason, OSError) and reason.strerror:
            return f"cannot connect to {where}: {reason.strerror}"
        return f"cannot connect to {where}: {reason}"


_NOT_JSON = object()


def _decode(raw: bytes) -> Any:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return _NOT_JSON


def _error_message(payload: Any, raw: bytes) -> str:
    if isinstance(payload, Mapping):
        for key in ("err_msg", "error", "message", "detail"):
            value = payload.get(key)
            if isinstance(value, str) and value:
                return value
    text = raw.decode("utf-8", "replace").strip().splitlines()
    return text[0][:200] if text else "no details"


# --------------------------------------------------------------------------------------------------
# Plain-text tables


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, two spaces apart; numbers right-aligned; None is "-"."""
    values = [list(r) for r in rows]
    cells = [[_cell(v) for v in row] for row in values]
    numeric = [_is_numeric([r[i] for r in values]) for i in range(len(headers))]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = [_line(headers, widths, numeric)]
    lines += [_line(r, widths, numeric) for r in cells]
    return "\n".join(lines)


def _is_numeric(column: list[Any]) -> bool:
    numbers = [v for v in column if v is not None]
    return bool(numbers) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers)


def _line(values: Sequence[str], widths: Sequence[int], right: Sequence[bool]) -> str:
    parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)]
    return "  ".join(parts).rstrip()


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value) or "-"
    return str(value)


# --------------------------------------------------------------------------------------------------
# Finding records in the admin JSON

Record = tuple[Mapping[str, Any], dict[str, str]]  # the object, and context from its ancestors


def find_records(data: Any, is_record: Callable[[Mapping[str, Any]], bool]) -> list[Record]:
    """Every object ``is_record`` accepts, in order, with the listener / registry / key it sits under."""
    out: list[Record] = []
    _walk(data, is_record, {}, out)
    return out


def _walk(
    data: Any, is_record: Callable[[Mapping[str, Any]], bool], ctx: dict[str, str], out: list[Record]
) -> None:
    if isinstance(data, list):
        for item in data:
            _walk(item, is_record, ctx, out)
        return
    if not isinstance(data, Mapping):
        return
    if is_record(data):
        out.append((data, ctx))
        return
    ctx = dict(ctx)
    name = data.get("name", data.get("registry"))
    if isinstance(name, str) and "://" in name:  # a per-registry group: {"name": "zookeeper://...", ...}
        ctx["registry"] = name
        if isinstance(data.get("state"), str):
            ctx["registry_state"] = data["state"]
    for key, value in data.items():
        if key in _NO_DESCENT or not isinstance(value, Mapping | list):
            continue
        sub = dict(ctx)
        if key in _LISTENERS:
            sub["listener"] = key
        elif "://" in key:
            sub["registry"] = key
            if isinstance(value, Mapping) and isinstance(value.get("state"), str):
                sub["registry_state"] = value["state"]
        if isinstance(value, Mapping) and is_record(value):
            sub["key"] = key  # {"name": {...record...}}: the key is its name
        _walk(value, is_record, sub, out)


def _pick(d: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if n in d and d[n] is not None:
            return d[n]
    return default


def _service_label(rec: Mapping[str, Any], ctx: Mapping[str, str]) -> str:
    """``group/interface:version``, as regproxy names clusters."""
    for key in ("service", "cluster"):
        value = rec.get(key)
        if isinstance(value, str) and value:
            return value
    interface = rec.get("interface")
    if not isinstance(interface, str):
        return str(rec.get("key") or ctx.get("key") or "?")
    # Whatever JSON the fields hold, as text; "*" may be a subscription's "any version".
    version, group = str(rec.get("version") or ""), str(rec.get("group") or "")
    return service_label(interface, version, group, any_version=True)


def _registry_states(data: Any) -> dict[str, str]:
    """Registry name -> state from wherever the reply lists them (top level or nested once)."""
    states: dict[str, str] = {}
    if not isinstance(data, Mapping):
        return states
    for holder in (data, data.get("detail"), data.get("registry")):
        if not isinstance(holder, Mapping):
            continue
        for key in ("registries", "states", "registry_states"):
            regs = holder.get(key)
            if isinstance(regs, Mapping):
                for name, value in regs.items():
                    state = _state_of(value)
                    if state is not None:
                        states[str(name)] = state
            elif isinstance(regs, list):
                for item in regs:
                    name = _pick(item, "name", "registry") if isinstance(item, Mapping) else None
                    state = _state_of(item)
                    if isinstance(name, str) and state is not None:
                        states[name] = state
    return states


def _state_of(value: Any) -> str | None:
    """A registry's state given as "connected" or as {"state": "connected", ...}."""
    if isinstance(value, Mapping):
        value = value.get("state")
    return value if isinstance(value, str) else None


@dataclass
class _RegEntry:
    name: str | None
    state: str | None = None
    registered: bool | None = None
    providers: int | None = None


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, list):
        return len(value)
    if isinstance(value, Mapping):
        return sum(_count(v) or 0 for v in value.values())
    return None


def _per_registry(
    rec: Mapping[str, Any], ctx: Mapping[str, str], states: Mapping[str, str]
) -> list[_RegEntry]:
    """One entry per registry a publication or subscription is on, with what is known of each."""
    regs = _pick(rec, "registries", "registry")
    entries: list[_RegEntry] = []
    if isinstance(regs, str):
        regs = [regs]
    if isinstance(regs, Mapping):
        for name, value in regs.items():
            entry = _RegEntry(str(name))
            if isinstance(value, str):
                entry.state = value
            elif isinstance(value, bool):
                entry.registered = value
            elif isinstance(value, Mapping):
                entry.state = _pick(value, "state")
                entry.registered = _pick(value, "registered", "watching")
                entry.providers = _count(value.get("providers"))
            entries.append(entry)
    elif isinstance(regs, list):
        for value in regs:
            if isinstance(value, str):
                entries.append(_RegEntry(value))
            elif isinstance(value, Mapping):
                entries.append(
                    _RegEntry(
                        _pick(value, "name", "registry", "url"),
                        _pick(value, "state"),
                        _pick(value, "registered", "watching"),
                        _count(value.get("providers")),
                    )
                )
    if not entries:
        entries.append(_RegEntry(ctx.get("registry")))
    registered = rec.get("registered")
    providers = rec.get("providers")
    for entry in entries:
        if entry.state is None:
            entry.state = _pick(rec, "state") or ctx.get("registry_state") or states.get(entry.name or "")
        if entry.registered is None:
            if isinstance(registered, bool):
                entry.registered = registered
            elif isinstance(registered, list) and entry.name is not None:
                entry.registered = entry.name in registered
        if entry.providers is None:
            if isinstance(providers, Mapping) and entry.name in providers:
                entry.providers = _count(providers[entry.name])
            else:
                entry.providers = _count(providers)
    return entries


def _metadata_summary(meta: Any, limit: int = 60) -> str:
    if not isinstance(meta, Mapping) or not meta:
        return "-"
    shown = [k for k in ("application", "version", "group", "release", "zone") if meta.get(k)]
    text = " ".join(f"{k}={meta[k]}" for k in shown)
    if not shown:  # none of the usual keys: the first few, whatever they are
        shown = list(meta)[:3]
        text = " ".join(f"{k}={meta[k]}" for k in shown)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    rest = len(meta) - len(shown)
    return f"{text} +{rest}" if rest > 0 else text


# --------------------------------------------------------------------------------------------------
# Commands: each returns (JSON to print with --json, text to print otherwise, exit code)

Result = tuple[Any, str, int]


def cmd_status(client: AdminClient, args: argparse.Namespace) -> Result:
    status, ready_body = client.get("/readyz", accept=(503,))
    _s, stats = client.get("/api/v1/stats")
    ready = ready_body.get("ready") if isinstance(ready_body, Mapping) else None
    if not isinstance(ready, bool):
        ready = status < 400
    data = {"ready": ready, "readyz": ready_body, "stats": stats}
    return data, render_status(client.base_url, ready, ready_body, stats), 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _restored(done: bool, saved: Any) -> str:
    """What the start-up restore brought back: ``restored`` only says the step is over, the
    ``saved_state`` beside it what the state file held (a brand-new sidecar has none)."""
    if not done:
        return "not yet"
    if not isinstance(saved, Mapping):  # a sidecar that does not say (no state store, or older)
        return "done"
    pubs, subs = int(saved.get("publications") or 0), int(saved.get("subscriptions") or 0)
    if pubs or subs:
        return f"yes ({_plural(pubs, 'publication')}, {_plural(subs, 'subscription')})"
    if saved.get("error"):
        return f"no (state file {saved['error']})"
    if saved.get("found"):
        return "no (the state file held nothing)"
    return f"no (a new sidecar: no {saved.get('file') or 'state file'} yet)"


def render_status(where: str, ready: bool, ready_body: Any, stats: Any) -> str:
    detail = ready_body.get("detail", ready_body) if isinstance(ready_body, Mapping) else {}
    if not isinstance(detail, Mapping):
        detail = {}
    states = _registry_states(ready_body) or _registry_states(stats)
    restored = detail.get("restored")
    draining = _pick(
        detail, "draining", default=stats.get("draining") if isinstance(stats, Mapping) else None
    )
    cache = detail.get("serving_from_cache") or []
    reasons = (
        _pick(ready_body, "reasons", default=detail.get("reasons"))
        if isinstance(ready_body, Mapping)
        else None
    )
    if isinstance(reasons, list):  # the endpoint spells them out
        why = [str(r) for r in reasons]
    else:
        why = ["draining"] if draining else []
        if restored is False:
            why.append("state not restored yet")
        why += [f"registry {name} is {state}" for name, state in states.items() if state != "connected"]
    head = "READY" if ready else "NOT READY" + (f" ({'; '.join(why)})" if why else "")
    lines = [f"regproxy at {where}: {head}"]
    facts = []
    if isinstance(stats, Mapping) and isinstance(stats.get("uptime_s"), int | float):
        facts.append(f"uptime {_duration(stats['uptime_s'])}")
    if restored is not None:
        facts.append(f"state restored: {_restored(bool(restored), detail.get('saved_state'))}")
    if draining is not None:
        facts.append(f"draining: {_cell(bool(draining))}")
    facts.append(f"serving from cache: {', '.join(map(str, cache)) if cache else 'nothing'}")
    lines.append(", ".join(facts))
    lines += ["", format_table(["REGISTRY", "STATE"], sorted(states.items())) if states else "no registries"]
    listeners = [
        (n, stats[n]) for n in _LISTENERS if isinstance(stats, Mapping) and isinstance(stats.get(n), Mapping)
    ]
    if listeners:
        rows = []
        for name, s in listeners:
            responses = s.get("responses") if isinstance(s.get("responses"), Mapping) else {}
            errors = sum(int(n) for code, n in responses.items() if str(code) != "20")
            rows.append(
                [name, s.get("requests"), s.get("oneway"), errors, s.get("timeouts"), s.get("retries"),
                 s.get("connect_failures"), s.get("downstream_connections"), s.get("rejected_connections")]
            )  # fmt: skip
        headers = ["LISTENER", "REQUESTS", "ONEWAY", "ERRORS", "TIMEOUTS", "RETRIES", "CONNECT FAILS",
                   "CONNECTIONS", "REJECTED"]  # fmt: skip
        lines += ["", format_table(headers, rows)]
        latency = [
            (name, key, h)
            for name, s in listeners
            if isinstance(s.get("latency"), Mapping)
            for key, h in s["latency"].items()
            if isinstance(h, Mapping)
        ]
        if latency:
            latency.sort(key=lambda t: -(t[2].get("count") or 0))
            rows = [[n, k, h.get("count"), _ms(h.get("p50")), _ms(h.get("p99"))] for n, k, h in latency[:15]]
            lines += ["", format_table(["LISTENER", "SERVICE.METHOD", "CALLS", "P50", "P99"], rows)]
            if len(latency) > 15:
                lines.append(f"... and {len(latency) - 15} more (--json shows all)")
    return "\n".join(lines)


def _ms(seconds: Any) -> str:
    if isinstance(seconds, str):
        return seconds
    if not isinstance(seconds, int | float):
        return "-"
    if seconds == float("inf"):
        return "> max bucket"
    return f"<={seconds * 1000:g}ms"  # the bound of the histogram bucket, not an exact value


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h}h{m}m"
    if h:
        return f"{h}h{m}m{s}s"
    return f"{m}m{s}s" if m else f"{s}s"


def cmd_clusters(client: AdminClient, args: argparse.Namespace) -> Result:
    _s, data = client.get("/api/v1/clusters")
    return data, render_clusters(data), 0


def render_clusters(data: Any) -> str:
    found = find_records(data, lambda d: isinstance(d.get("hosts"), list))
    if not found:
        return "no clusters"
    by_listener = any("listener" in ctx or "listener" in rec for rec, ctx in found)
    with_source = any("source" in rec for rec, _ctx in found)
    rows = []
    for rec, ctx in found:
        name = _pick(rec, "name", "cluster", default=ctx.get("key", "?"))
        prefix = [_pick(rec, "listener", default=ctx.get("listener"))] if by_listener else []
        if with_source:
            prefix.append(rec.get("source"))
        hosts = [h for h in rec["hosts"] if isinstance(h, Mapping)]
        if not hosts:
            rows.append([*prefix, name, rec.get("lb"), "(no hosts)", None, None, None, None, None, None])
        for h in hosts:
            healthy = _pick(h, "healthy", "health")
            health = ("healthy" if healthy else "unhealthy") if isinstance(healthy, bool) else healthy
            rows.append(
                [*prefix, name, rec.get("lb"), _pick(h, "address", "addr", "host"), h.get("weight"), health,
                 _ejected(h), _pick(h, "active_requests", "active", "in_flight"),
                 _pick(h, "total_requests", "requests", "total"), _metadata_summary(h.get("metadata"))]
            )  # fmt: skip
    headers = ["CLUSTER", "LB", "HOST", "WEIGHT", "HEALTH", "EJECTED", "ACTIVE", "TOTAL", "METADATA"]
    prefix_headers = (["LISTENER"] if by_listener else []) + (["SOURCE"] if with_source else [])
    return format_table([*prefix_headers, *headers], rows)


def _ejected(host: Mapping[str, Any]) -> Any:
    value = _pick(host, "ejected", "ejection")
    if isinstance(value, Mapping):
        value = _pick(value, "ejected", "state", "until")
    return value


def cmd_routes(client: AdminClient, args: argparse.Namespace) -> Result:
    _s, data = client.get("/api/v1/config_dump?allrouters")
    return data, render_routes(data), 0


def _is_route(d: Mapping[str, Any]) -> bool:
    return isinstance(d.get("match"), Mapping) or ("cluster" in d and ("retries" in d or "timeout_ms" in d))


def render_routes(data: Any) -> str:
    found = find_records(data, _is_route)
    if not found:
        return "no routes"
    by_listener = any("listener" in ctx for _r, ctx in found)
    rows = []
    numbers: dict[str | None, int] = {}
    for rec, ctx in found:
        listener = ctx.get("listener")
        numbers[listener] = numbers.get(listener, 0) + 1  # routes are tried in order: show it
        match = rec.get("match") if isinstance(rec.get("match"), Mapping) else rec
        timeout = rec.get("timeout_ms")
        name = _pick(rec, "name", default=ctx.get("key"))
        rows.append(
            [*([listener] if by_listener else []), numbers[listener], name,
             match.get("service"), match.get("version"), match.get("group"), match.get("method"),
             rec.get("cluster"), f"{timeout}ms" if timeout is not None else "default", rec.get("retries")]
        )  # fmt: skip
    headers = ["#", "ROUTE", "SERVICE", "VERSION", "GROUP", "METHOD", "CLUSTER", "TIMEOUT", "RETRIES"]
    return format_table(["LISTENER", *headers] if by_listener else headers, rows)


def _flatten_spec(rec: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = rec.get("spec")
    return {**spec, **{k: v for k, v in rec.items() if k != "spec"}} if isinstance(spec, Mapping) else rec


def cmd_publications(client: AdminClient, args: argparse.Namespace) -> Result:
    _s, data = client.get("/api/v1/publications")
    return data, render_publications(data), 0


def render_publications(data: Any) -> str:
    found = find_records(
        data, lambda d: isinstance(d.get("interface"), str) or isinstance(d.get("spec"), Mapping)
    )
    if not found:
        return "no publications"
    states = _registry_states(data)
    rows = []
    for raw, ctx in found:
        rec = _flatten_spec(raw)
        url = rec.get("url")
        advertised = urlsplit(url).netloc if isinstance(url, str) and "://" in url else None
        port = _pick(rec, "app_port", "port")
        for entry in _per_registry(rec, ctx, states):
            rows.append(
                [_service_label(rec, ctx), port, entry.name, entry.state, entry.registered, advertised]
            )
    text = format_table(["SERVICE", "APP PORT", "REGISTRY", "STATE", "REGISTERED", "REGISTERED AS"], rows)
    if isinstance(data, Mapping) and data.get("withdrawn"):
        text += "\nwithdrawn from the registries: this sidecar is draining"
    return text


def _is_subscription(d: Mapping[str, Any]) -> bool:
    return isinstance(d.get("interface"), str) or "providers" in d or ("cluster" in d and "registries" in d)


def cmd_subscriptions(client: AdminClient, args: argparse.Namespace) -> Result:
    _s, data = client.get("/api/v1/subscriptions")
    return data, render_subscriptions(data), 0


def render_subscriptions(data: Any) -> str:
    found = find_records(data, _is_subscription)
    if not found:
        return "no subscriptions"
    states = _registry_states(data)
    cached: set[str] = set()
    if isinstance(data, Mapping):
        for key in ("from_cache", "serving_from_cache"):
            if isinstance(data.get(key), list):
                cached.update(map(str, data[key]))
    rows = []
    for raw, ctx in found:
        rec = _flatten_spec(raw)
        label = _service_label(rec, ctx)
        from_cache = _pick(rec, "from_cache", "serving_from_cache", "cached", default=label in cached)
        for entry in _per_registry(rec, ctx, states):
            rows.append([label, entry.name, entry.state, entry.providers, from_cache])
    return format_table(["SERVICE", "REGISTRY", "STATE", "PROVIDERS", "FROM CACHE"], rows)


def cmd_drain(client: AdminClient, args: argparse.Namespace) -> Result:
    _s, data = client.post("/api/v1/drain")
    return data, render_drain(client.base_url, data), 0


def render_drain(where: str, data: Any) -> str:
    data = data if isinstance(data, Mapping) else {}
    if data.get("err_msg") == "already draining":
        return f"{where} is already draining"
    grace, timeout = data.get("grace_s"), data.get("timeout_s")
    serving = (
        f"keeps serving {grace:g} s" if isinstance(grace, int | float) else "keeps serving a grace period"
    )
    finish = f"at most {timeout:g} s" if isinstance(timeout, int | float) else "bounded"
    return (
        f"draining {where}: publications withdrawn; it {serving} so consumers see it, then finishes "
        f"the requests in flight ({finish}) and exits"
    )


def cmd_reload(client: AdminClient, args: argparse.Namespace) -> Result:
    _s, data = client.post("/api/v1/reload")
    return (data, *render_reload(data))


def render_reload(data: Any) -> tuple[str, int]:
    if not isinstance(data, Mapping):
        return "reloaded", 0
    if data.get("reloaded") is False:
        return f"not reloaded: {data.get('reason') or data.get('err_msg') or 'no reason given'}", 1
    changes = data.get("changes") or []
    lines = [f"reloaded: {', '.join(map(str, changes)) if changes else 'no change'}"]
    restart = data.get("needs_restart") or []
    if restart:
        lines.append(f"changed but only applied after a restart: {', '.join(map(str, restart))}")
    return "\n".join(lines), 0


def cmd_loglevel(client: AdminClient, args: argparse.Namespace) -> Result:
    if args.level is None:
        _s, data = client.get("/api/v1/loglevel")
        return data, f"log level: {_level_of(data)}", 0
    level = args.level.lower()
    # The level goes in the body and the query string, so either style of handler reads it.
    _s, data = client.post("/api/v1/loglevel?" + urlencode({"level": level}), {"level": level})
    new = _level_of(data) if _level_of(data) != "?" else level
    was = _pick(data, "previous", "old", "was") if isinstance(data, Mapping) else None
    return data, f"log level: {new}" + (f" (was {was})" if was else ""), 0


def _level_of(data: Any) -> str:
    if isinstance(data, str):
        return data
    if isinstance(data, Mapping):
        value = _pick(data, "level", "log_level", "loglevel")
        if isinstance(value, str):
            return value
    return "?"


COMMANDS: dict[str, tuple[Callable[[AdminClient, argparse.Namespace], Result], str]] = {
    "status": (cmd_status, "readiness, registry connections and traffic counters"),
    "clusters": (cmd_clusters, "every cluster and its hosts (weight, health, requests)"),
    "routes": (cmd_routes, "the routes, in the order they are tried"),
    "publications": (cmd_publications, "what this sidecar registered, per registry"),
    "subscriptions": (cmd_subscriptions, "what this sidecar watches, per registry, with provider counts"),
    "drain": (cmd_drain, "withdraw everything, finish requests in flight and exit (as on SIGTERM)"),
    "reload": (cmd_reload, "re-read the config file: routes, clusters, timeouts, log level"),
    "loglevel": (cmd_loglevel, "show the log level, or set it: loglevel debug"),
}


# --------------------------------------------------------------------------------------------------
# Command line


def _add_common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # On the subcommands the defaults are SUPPRESS, so `ctl status --json` and `ctl --json status`
    # both work and a flag given before the subcommand is not reset by the subcommand's parser.
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--admin",
        metavar="HOST:PORT",
        default=default(DEFAULT_ADMIN),
        help=f"the sidecar's admin endpoint (default {DEFAULT_ADMIN})",
    )
    parser.add_argument(
        "--token",
        default=default(None),
        help=f"admin_token or auth_token, sent as 'Authorization: Bearer'; prefer the {TOKEN_ENV} "
        f"(or {AUTH_TOKEN_ENV}) environment variable (a flag shows in the process list)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the endpoint's JSON instead of tables",
    )
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", default=default(10.0), help="seconds to wait for a reply"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Query and control a running regproxy through its admin endpoint.",
        epilog="Exit codes: 0 done, 1 the sidecar could not be reached or refused, 2 bad usage.",
    )
    _add_common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "loglevel":
            p.add_argument(
                "level",
                nargs="?",
                type=str.lower,
                choices=LOG_LEVELS,
                metavar="LEVEL",
                help=f"new level: {', '.join(LOG_LEVELS)} (omit to show the current one)",
            )
        _add_common(p, suppress=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        base_url = admin_base_url(args.admin)
    except ValueError as e:
        parser.error(f"--admin: {e}")
    token = args.token
    if token is None:
        token = os.environ.get(TOKEN_ENV) or os.environ.get(AUTH_TOKEN_ENV) or None
    client = AdminClient(base_url, token=token, timeout=args.timeout)
    command, _help = COMMANDS[args.command]
    try:
        data, text, code = command(client, args)
    except CtlError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
