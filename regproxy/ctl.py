"""``regproxy ctl``: look at and steer a running sidecar through its admin endpoint.

    regproxy ctl [--admin HOST:PORT] [--token T] [--json] COMMAND

Read commands (``status``, ``clusters``, ``routes``, ``publications``, ``subscriptions``,
``rules``) print plain-text tables; ``--json`` prints the admin endpoint's JSON instead, for scripts
(``status`` reads two endpoints: ``{"ready": bool, "readyz": <GET /readyz>, "stats": <GET /api/v1/stats>}``).
A sidecar that is not ready is not an error: ``status`` says why and exits 0. Write commands
(``drain``, ``reload``, ``loglevel LEVEL``) are accepted from loopback callers, or with the token
when the sidecar has ``admin_token`` or ``auth_token`` (``--token``, ``REGPROXY_ADMIN_TOKEN`` or
``REGPROXY_AUTH_TOKEN``, sent as ``Authorization: Bearer`` on every request, reading ones
included). Failures go to stderr (the endpoint's err_msg) with exit code 1.

``rules get|apply|delete --registry URL`` are the exception: they read and write Dubbo's dynamic
rules in the config center itself, not through a sidecar (regproxy.ctl_rules, imported only by them).

Every reply is parsed with the model the admin server built it from (regproxy/api/admin_models.py),
and the tables read its typed fields: a reply that does not fit is an error naming the field, not
a table of dashes. HTTP is plain urllib (no event loop), so the command starts quickly.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError

from regproxy.api.admin_models import (
    Clusters,
    ConfigDump,
    Draining,
    FoundView,
    LogLevelReply,
    LogLevelSet,
    ProviderView,
    Publications,
    Readiness,
    Reloaded,
    Rules,
    SavedStateSummary,
    Stats,
    Subscriptions,
)
from regproxy.api.models import ErrorReply
from regproxy.config import LOG_LEVELS
from regproxy.governance.keys import split_rule_id
from regproxy.registry.registry_url import RegistryURL

__all__ = ["DEFAULT_ADMIN", "TOKEN_ENV", "AdminClient", "CtlError", "CtlUsageError", "format_table", "main"]

PROG = "regproxy ctl"
DEFAULT_ADMIN = "127.0.0.1:34901"
TOKEN_ENV = "REGPROXY_ADMIN_TOKEN"
AUTH_TOKEN_ENV = "REGPROXY_AUTH_TOKEN"  # the sidecar's auth_token, used when TOKEN_ENV is unset

Reply = TypeVar("Reply", bound=BaseModel)


class CtlError(Exception):
    """A failure to report on one line of stderr, exit code 1."""

    exit_code = 1


class CtlUsageError(CtlError):
    """Arguments that cannot work, found out only once the command runs (a file's name that is no
    rule id, say): exit code 2, as argparse's own usage errors."""

    exit_code = 2


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

    def call(
        self, method: str, path: str, model: type[Reply], body: Any = None, *, accept: Iterable[int] = ()
    ) -> tuple[Any, Reply]:
        """The reply as decoded JSON (what --json prints) and parsed by ``model``. CtlError when the
        endpoint refuses (see :meth:`request`) or the reply is not ``model``'s."""
        _status, payload = self.request(method, path, body, accept=accept)
        try:
            return payload, model.model_validate(payload)
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            where = ".".join(map(str, first["loc"])) or "the reply"
            raise CtlError(
                f"{method} {path}: not the reply of a regproxy admin endpoint ({where}: {first['msg']}); "
                f"is {self.base_url} one, of a version this ctl knows?"
            ) from None

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
    """The err_msg of the endpoint's error reply; else (a proxy's page, say) its first line."""
    try:
        return ErrorReply.model_validate(payload).err_msg
    except ValidationError:
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
# Commands: each returns (JSON to print with --json, text to print otherwise, exit code)

Result = tuple[Any, str, int]


def cmd_status(client: AdminClient, args: argparse.Namespace) -> Result:
    ready_json, ready = client.call("GET", "/readyz", Readiness, accept=(503,))
    stats_json, stats = client.call("GET", "/api/v1/stats", Stats)
    data = {"ready": ready.ready, "readyz": ready_json, "stats": stats_json}
    return data, render_status(client.base_url, ready, stats), 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _restored(done: bool, saved: SavedStateSummary | None) -> str:
    """What the start-up restore brought back: ``restored`` only says the step is over, the
    ``saved_state`` beside it what the state file held (a brand-new sidecar has none)."""
    if not done:
        return "not yet"
    if saved is None:  # no state file to restore from
        return "done"
    if saved.publications or saved.subscriptions:
        pubs, subs = _plural(saved.publications, "publication"), _plural(saved.subscriptions, "subscription")
        return f"yes ({pubs}, {subs})"
    if saved.error:
        return f"no (state file {saved.error})"
    if saved.found:
        return "no (the state file held nothing)"
    return f"no (a new sidecar: no {saved.file} yet)"


def render_status(where: str, ready: Readiness, stats: Stats) -> str:
    detail = ready.detail
    head = (
        "READY" if ready.ready else "NOT READY" + (f" ({'; '.join(ready.reasons)})" if ready.reasons else "")
    )
    cache = detail.serving_from_cache
    facts = [
        f"uptime {_duration(stats.uptime_s)}",
        f"state restored: {_restored(detail.restored, detail.saved_state)}",
        f"draining: {_cell(detail.draining)}",
        f"serving from cache: {', '.join(cache) if cache else 'nothing'}",
    ]
    lines = [f"regproxy at {where}: {head}", ", ".join(facts)]
    if detail.rules_refused:
        # Not a readiness problem (the previous good version of each stays in force), but an
        # operator's: a rule someone wrote is not doing what they meant.
        lines.append(
            f"{_plural(len(detail.rules_refused), 'dynamic rule')} refused (the previous good version of "
            "each stays in force; regproxy ctl rules shows them):"
        )
        lines += [f"  {refused}" for refused in detail.rules_refused]
    lines.append("")
    states = sorted(detail.registries.items())
    lines.append(format_table(["REGISTRY", "STATE"], states) if states else "no registries")
    listeners = (("egress", stats.egress), ("ingress", stats.ingress))
    rows = [
        [name, s.requests, s.oneway, sum(n for code, n in s.responses.items() if code != "20"), s.timeouts,
         s.retries, s.connect_failures, s.downstream_connections, s.rejected_connections]
        for name, s in listeners
    ]  # fmt: skip
    headers = ["LISTENER", "REQUESTS", "ONEWAY", "ERRORS", "TIMEOUTS", "RETRIES", "CONNECT FAILS",
               "CONNECTIONS", "REJECTED"]  # fmt: skip
    lines += ["", format_table(headers, rows)]
    latency = [(name, key, h) for name, s in listeners for key, h in s.latency.items()]
    if latency:
        latency.sort(key=lambda t: -t[2].count)
        rows = [[n, k, h.count, _ms(h.p50), _ms(h.p99)] for n, k, h in latency[:15]]
        lines += ["", format_table(["LISTENER", "SERVICE.METHOD", "CALLS", "P50", "P99"], rows)]
        if len(latency) > 15:
            lines.append(f"... and {len(latency) - 15} more (--json shows all)")
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    if seconds is None:
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


def _metadata_summary(meta: Mapping[str, str] | None, limit: int = 60) -> str:
    if not meta:
        return "-"
    shown = [k for k in ("application", "version", "group", "release", "zone") if meta.get(k)]
    if not shown:  # none of the usual keys: the first few, whatever they are
        shown = list(meta)[:3]
    text = " ".join(f"{k}={meta[k]}" for k in shown)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    rest = len(meta) - len(shown)
    return f"{text} +{rest}" if rest > 0 else text


def cmd_clusters(client: AdminClient, args: argparse.Namespace) -> Result:
    data, clusters = client.call("GET", "/api/v1/clusters", Clusters)
    return data, render_clusters(clusters), 0


def render_clusters(reply: Clusters) -> str:
    """A row per host: its weights (declared, and what Dubbo's warm-up makes of it now), state, load
    and errors; then why each host that is out is out."""
    if not reply.clusters:
        return "no clusters"
    rows: list[list[Any]] = []
    out: list[str] = []
    for c in reply.clusters:
        cluster = [c.listener, c.source, c.name, c.lb]
        if not c.hosts:
            rows.append([*cluster, "(no hosts)", None, None, None, None, None, None, None, None])
        for h in c.hosts:
            rows.append(
                [*cluster, h.address, h.weight, h.effective_weight, h.state, h.active_requests,
                 h.total_requests, h.errors, _found_text(h.found), _metadata_summary(h.metadata)]
            )  # fmt: skip
            if h.reason:
                out.append(f"  {h.address} ({c.listener} {c.name}): {h.state}: {h.reason}")
    headers = ["LISTENER", "SOURCE", "CLUSTER", "LB", "HOST", "WEIGHT", "EFFECTIVE", "STATE", "ACTIVE",
               "TOTAL", "ERRORS", "FOUND", "METADATA"]  # fmt: skip
    table = format_table(headers, rows)
    return "\n".join([table, "", "Out of load balancing:", *out]) if out else table


def _found_text(found: FoundView | None) -> str | None:
    """``interface``, or ``application app@revision`` / ``both app@revision`` (its first 8 digits)."""
    if found is None:
        return None
    if found.how == "interface":
        return found.how
    return f"{found.how} {found.application}@{(found.revision or '')[:8]}"


def cmd_routes(client: AdminClient, args: argparse.Namespace) -> Result:
    data, dump = client.call("GET", "/api/v1/config_dump?allrouters", ConfigDump)
    return data, render_routes(dump), 0


def render_routes(dump: ConfigDump) -> str:
    rows = [
        [listener, number, r.name, r.match.service, r.match.version, r.match.group, r.match.method, r.cluster,
         f"{r.timeout_ms}ms" if r.timeout_ms is not None else "default", r.retries]
        for listener, router in (dump.routers or {}).items()
        for number, r in enumerate(router.routes, 1)  # routes are tried in order: show it
    ]  # fmt: skip
    if not rows:
        return "no routes"
    headers = [
        "LISTENER",
        "#",
        "ROUTE",
        "SERVICE",
        "VERSION",
        "GROUP",
        "METHOD",
        "CLUSTER",
        "TIMEOUT",
        "RETRIES",
    ]
    return format_table(headers, rows)


def cmd_publications(client: AdminClient, args: argparse.Namespace) -> Result:
    data, pubs = client.call("GET", "/api/v1/publications", Publications)
    return data, render_publications(pubs), 0


def render_publications(reply: Publications) -> str:
    rows = [
        [p.service, p.app_port, reg.registry, reg.state, p.registered, urlsplit(p.url).netloc]
        for reg in reply.registries
        for p in reg.publications
    ]
    if not rows:
        return "no publications"
    text = format_table(["SERVICE", "APP PORT", "REGISTRY", "STATE", "REGISTERED", "REGISTERED AS"], rows)
    if reply.withdrawn:
        text += "\nwithdrawn from the registries: this sidecar is draining"
    return text


def cmd_subscriptions(client: AdminClient, args: argparse.Namespace) -> Result:
    data, subs = client.call("GET", "/api/v1/subscriptions", Subscriptions)
    return data, render_subscriptions(subs), 0


def render_subscriptions(reply: Subscriptions) -> str:
    rows = [
        [s.cluster, reg.registry, reg.state, len(s.providers), s.migration, _found_summary(s.providers),
         s.from_cache]
        for reg in reply.registries
        for s in reg.subscriptions
    ]  # fmt: skip
    if not rows:
        return "no subscriptions"
    return format_table(
        ["SERVICE", "REGISTRY", "STATE", "PROVIDERS", "MIGRATION", "FOUND", "FROM CACHE"], rows
    )


def _found_summary(providers: Sequence[ProviderView]) -> str:
    """How many providers were found each way, e.g. "application 2, both 1" (docs/discovery.md)."""
    counts = Counter(p.found.how if p.found is not None else "interface" for p in providers)
    return ", ".join(f"{how} {counts[how]}" for how in ("interface", "application", "both") if counts[how])


def cmd_drain(client: AdminClient, args: argparse.Namespace) -> Result:
    data, drain = client.call("POST", "/api/v1/drain", Draining)
    return data, render_drain(client.base_url, drain), 0


def render_drain(where: str, reply: Draining) -> str:
    if not reply.started:
        return f"{where} is already draining"
    return (
        f"draining {where}: publications withdrawn; it keeps serving {reply.grace_s:g} s so consumers see "
        f"it, then finishes the requests in flight (at most {reply.timeout_s:g} s) and exits"
    )


def cmd_reload(client: AdminClient, args: argparse.Namespace) -> Result:
    data, reload = client.call("POST", "/api/v1/reload", Reloaded)
    return (data, *render_reload(reload))


def render_reload(reply: Reloaded) -> tuple[str, int]:
    if not reply.reloaded:
        return f"not reloaded: {reply.reason or 'no reason given'}", 1
    lines = [f"reloaded: {', '.join(reply.changes) if reply.changes else 'no change'}"]
    if reply.needs_restart:
        lines.append(f"changed but only applied after a restart: {', '.join(reply.needs_restart)}")
    return "\n".join(lines), 0


def cmd_loglevel(client: AdminClient, args: argparse.Namespace) -> Result:
    if args.level is None:
        data, current = client.call("GET", "/api/v1/loglevel", LogLevelReply)
        return data, f"log level: {current.level}", 0
    data, changed = client.call("POST", "/api/v1/loglevel", LogLevelSet, {"level": args.level})
    return data, f"log level: {changed.level} (was {changed.previous})", 0


def cmd_rules(client: AdminClient, args: argparse.Namespace) -> Result:
    if args.rules_command in (None, "list"):
        data, rules = client.call("GET", "/api/v1/rules", Rules)
        return data, render_rules(rules), 0
    # The registry adapters (kazoo, the Nacos SDK) load only for the commands that use them.
    from regproxy import ctl_rules

    return ctl_rules.COMMANDS[args.rules_command](args)


def render_rules(reply: Rules) -> str:
    if not reply.centers:
        return "no config center: this sidecar has no registry, or each one says config_center=false"
    lines = [
        f"{c.registry}: {_plural(len(c.watched), 'rule')} watched, {len(c.in_force)} in force, "
        f"{len(c.refused)} refused"
        for c in reply.centers
    ]
    in_force = [[c.registry, r.rule_id, r.source, r.version] for c in reply.centers for r in c.in_force]
    if in_force:
        lines += ["", format_table(["REGISTRY", "RULE ID", "SOURCE", "VERSION"], in_force)]
    refused = [[c.registry, r.rule_id, r.reason, r.message] for c in reply.centers for r in c.refused]
    if refused:
        lines += [
            "",
            "refused (the previous good version of each, if any, stays in force):",
            format_table(["REGISTRY", "RULE ID", "REASON", "MESSAGE"], refused),
        ]
    return "\n".join(lines)


COMMANDS: dict[str, tuple[Callable[[AdminClient, argparse.Namespace], Result], str]] = {
    "status": (cmd_status, "readiness, registry connections and traffic counters"),
    "clusters": (cmd_clusters, "every cluster and its hosts (weight, health, requests)"),
    "routes": (cmd_routes, "the routes, in the order they are tried"),
    "publications": (cmd_publications, "what this sidecar registered, per registry"),
    "subscriptions": (cmd_subscriptions, "what this sidecar watches, per registry, with provider counts"),
    "drain": (cmd_drain, "withdraw everything, finish requests in flight and exit (as on SIGTERM)"),
    "reload": (cmd_reload, "re-read the config file: routes, clusters, timeouts, log level"),
    "loglevel": (cmd_loglevel, "show the log level, or set it: loglevel debug"),
    "rules": (
        cmd_rules,
        "Dubbo's dynamic rules: those in force and those refused (list, the default), or one read, "
        "written or deleted in the config center (get, apply, delete)",
    ),
}


# --------------------------------------------------------------------------------------------------
# Command line


def _add_common(parser: argparse.ArgumentParser, *, suppress: bool, admin: bool = True) -> None:
    # On the subcommands the defaults are SUPPRESS, so `ctl status --json` and `ctl --json status`
    # both work and a flag given before the subcommand is not reset by the subcommand's parser.
    # ``admin=False``: a command that talks to a config center, not to a sidecar.
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    if admin:
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
        help="print the endpoint's JSON instead of tables" if admin else "print JSON, for scripts",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=default(10.0),
        help="seconds to wait for a reply" if admin else "seconds to wait for the registry to connect",
    )


def rule_id_arg(text: str) -> str:
    """A rule id as the config center names it: ``<key><suffix>``, one ZooKeeper node's name."""
    try:
        split_rule_id(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if "/" in text or any(c.isspace() or not c.isprintable() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r}: a rule id has no '/' and no blanks")
    return text


def registry_arg(text: str) -> RegistryURL:
    try:
        return RegistryURL.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_rules_commands(rules: argparse.ArgumentParser) -> None:
    sub = rules.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")
    listing = "the rules the sidecar has in force and the ones it refused (the default)"
    _add_common(sub.add_parser("list", help=listing, description=listing), suppress=True)
    where = "the config center, zookeeper://HOST:PORT or nacos://HOST:PORT (the registry's own URL)"
    for name, help_text in (
        ("get", "print a rule as the config center holds it (its node or dataId and version on stderr)"),
        ("apply", "check a rule file with the sidecar's own parser, then write it to the config center"),
        ("delete", "delete a rule from the config center"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "apply":
            p.add_argument("file", metavar="FILE", help="the rule, YAML as Dubbo Admin writes it")
            p.add_argument(
                "--id",
                dest="rule_id",
                type=rule_id_arg,
                metavar="RULE_ID",
                help="<key><suffix> (com.foo.Svc:1.0.0:g.condition-router); default: FILE's name "
                "without .yaml or .yml",
            )
        else:
            p.add_argument("rule_id", type=rule_id_arg, metavar="RULE_ID", help="<key><suffix>")
        p.add_argument("--registry", type=registry_arg, required=True, metavar="URL", help=where)
        _add_common(p, suppress=True, admin=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Query and control a running regproxy through its admin endpoint.",
        epilog="Exit codes: 0 done, 1 the sidecar or the config center could not be reached or refused, "
        "or the rule asked for is not there, 2 bad usage.",
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
        if name == "rules":
            _add_rules_commands(p)
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
        return e.exit_code
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
