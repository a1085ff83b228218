"""``regproxy ctl rules get|apply|delete --registry URL``: one of Dubbo's dynamic rules read from,
written to or deleted from the config center itself (ZooKeeper or Nacos), not through a sidecar, so
a fleet can be steered without Dubbo Admin (issue 17).

The config center is reached with the sidecar's own registry adapter (``make_registry``), so a rule
lands in the node or dataId every sidecar watches (regproxy.governance.keys).  ``apply`` first parses
the file with the parser a sidecar uses for the rule id's suffix (regproxy.discovery.rules.PARSERS):
a rule a sidecar would refuse is not written.  The parsers read a rule's fields, not whether its
``key`` names the rule id's service; the rule id decides where the rule applies, as in Dubbo.

Each command connects (bounded by ``--timeout``), does its one operation, and disconnects.
``memory://`` is refused: it is a registry inside one sidecar's process, which no other process
reaches.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from regproxy.ctl import CtlError, CtlUsageError, Result, rule_id_arg
from regproxy.discovery.rules import PARSERS
from regproxy.governance.errors import RuleError
from regproxy.governance.keys import split_rule_id
from regproxy.registry.base import AUTH_FAILED, CONNECTED, Registry, RegistryError
from regproxy.registry.factory import make_registry
from regproxy.registry.registry_url import RegistryURL

__all__ = ["COMMANDS", "check_rule", "config_center", "rule_id_of_file"]

RULE_FILE_EXTENSIONS = (".yaml", ".yml")
T = TypeVar("T")


def rule_id_of_file(path: str, explicit: str | None) -> str:
    """``--id``, else the file's name without ``.yaml``/``.yml``
    (``com.foo.Svc:1.0.0:g.condition-router.yaml``); CtlUsageError when that is no rule id."""
    if explicit is not None:
        return explicit
    name = Path(path).name
    for extension in RULE_FILE_EXTENSIONS:
        name = name.removesuffix(extension)
    try:
        return rule_id_arg(name)
    except argparse.ArgumentTypeError as e:
        raise CtlUsageError(f"{path}: its name is no rule id, so give one with --id RULE_ID ({e})") from None


def check_rule(rule_id: str, text: str, path: str) -> None:
    """Parse ``text`` as a sidecar parses ``rule_id``'s kind; CtlError naming the file, the reason and
    what is wrong (the field) when a sidecar would refuse it."""
    _key, suffix = split_rule_id(rule_id)
    try:
        PARSERS[suffix](text)
    except RuleError as e:
        raise CtlError(
            f"{path}: refused as a {suffix.lstrip('.')} rule ({e.reason}): {e.message}; nothing was written"
        ) from None


@asynccontextmanager
async def config_center(url: RegistryURL, timeout: float) -> AsyncIterator[Registry]:
    """The registry adapter of ``url``, connected (at most ``timeout`` seconds), stopped afterwards."""
    if url.scheme == "memory":
        raise CtlUsageError(
            "memory:// is a registry inside one sidecar's process: no other process reaches it; "
            "give the sidecars' ZooKeeper or Nacos"
        )
    if not url.config_center:
        raise CtlUsageError(
            f"{url} says config_center=false: sidecars given that URL read no rules from it; "
            "give the URL without it"
        )
    registry = make_registry(url)
    if not registry.config_center:
        raise CtlUsageError(f"registry {registry.name} is not a config center")
    settled = asyncio.Event()
    registry.add_state_listener(lambda state: settled.set() if state in (CONNECTED, AUTH_FAILED) else None)
    await registry.start()
    try:
        try:
            async with asyncio.timeout(timeout):
                await settled.wait()
        except TimeoutError:
            why = f": {registry.connect_error}" if registry.connect_error else ""
            raise CtlError(f"cannot connect to registry {registry.name} within {timeout:g} s{why}") from None
        if registry.state == AUTH_FAILED:
            raise CtlError(registry.auth_error or f"registry {registry.name}: authentication failed")
        yield registry
    finally:
        await registry.stop()


def _run(args: argparse.Namespace, operation: Callable[[Registry], Awaitable[T]]) -> T:
    """Connect to ``--registry``, run ``operation`` on it, disconnect; its result."""

    async def session() -> T:
        async with config_center(args.registry, args.timeout) as registry:
            return await operation(registry)

    # The adapters log as a sidecar would ("reconnecting in the background"); this command says
    # what went wrong in its one error line instead.
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    try:
        return asyncio.run(session())
    except RegistryError as e:  # its message names the registry and the operation
        raise CtlError(str(e)) from None


def cmd_get(args: argparse.Namespace) -> Result:
    text, source, version = _run(args, lambda registry: registry.read_rule(args.rule_id))
    if text is None:
        raise CtlError(f"no rule {args.rule_id} in {args.registry} ({source})")
    data = {"rule_id": args.rule_id, "registry": str(args.registry), "source": source, "version": version,
            "text": text}  # fmt: skip
    if not args.json:
        # stdout holds only the rule, so `get ... > FILE` gives a file `apply` takes back.
        print(f"# {source}, version {version or '?'}", file=sys.stderr)
    return data, text.removesuffix("\n"), 0


def cmd_apply(args: argparse.Namespace) -> Result:
    rule_id = rule_id_of_file(args.file, args.rule_id)
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CtlError(f"cannot read {args.file}: {getattr(e, 'strerror', None) or e}") from None
    check_rule(rule_id, text, args.file)
    source = _run(args, lambda registry: registry.write_rule(rule_id, text))
    data = {"rule_id": rule_id, "registry": str(args.registry), "source": source}
    return data, f"{rule_id} written to {source}", 0


def cmd_delete(args: argparse.Namespace) -> Result:
    deleted = _run(args, lambda registry: registry.delete_rule(args.rule_id))
    if not deleted:
        raise CtlError(f"no rule {args.rule_id} in {args.registry}: nothing to delete")
    data: dict[str, Any] = {"rule_id": args.rule_id, "registry": str(args.registry), "deleted": True}
    return data, f"{args.rule_id} deleted from {args.registry}", 0


COMMANDS: dict[str, Callable[[argparse.Namespace], Result]] = {
    "get": cmd_get,
    "apply": cmd_apply,
    "delete": cmd_delete,
}
