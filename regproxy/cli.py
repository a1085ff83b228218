"""Command line: ``regproxy run`` starts the sidecar; ``ctl`` talks to a running one's admin endpoint;
``demo`` runs the whole demo in one process, ``demo-provider``/``demo-consumer`` its apps.

Heavy modules (the sidecar, uvloop, the demo apps) are imported only by the subcommand that needs
them, so ``--help`` and config errors are instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

PROG = "regproxy"

# Subcommands whose arguments belong to another module's own parser: (module, help).
_PASSTHROUGH: dict[str, tuple[str, str]] = {
    "demo-provider": ("regproxy.demo.provider", "run the demo GreetingsService provider (a Dubbo server)"),
    "demo-consumer": ("regproxy.demo.consumer", "run the demo consumer (calls GreetingsService)"),
    "demo": ("regproxy.demo.embedded", "run the whole demo in one process: providers, consumer, sidecars"),
    "ctl": ("regproxy.ctl", "query and control a running sidecar: status, clusters, routes, drain, ..."),
}

# `run` flag -> config key; the flag value replaces the file's value.
_RUN_FLAGS: dict[str, str] = {
    "egress": "--egress",
    "ingress": "--ingress",
    "api": "--api",
    "admin": "--admin",
    "app_port": "--app-port",
    "advertise_ip": "--advertise-ip",
    "data_dir": "--data-dir",
    "log_level": "--log-level",
    "registries": "--registry",
    "api_allow_remote": "--api-allow-remote",
    "admin_allow_remote": "--admin-allow-remote",
}


def _version() -> str:
    try:
        return version("regproxy")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Dubbo registry-proxy sidecar: applications publish and subscribe through it, "
        "and their Dubbo calls go through its egress and ingress listeners.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the sidecar",
        description="Run the sidecar.  Flags override the config file; without --config the built-in "
        "defaults apply (see conf/regproxy.yaml for every key).",
    )
    run.add_argument("--config", metavar="FILE", help="YAML config file (default: built-in defaults only)")
    run.add_argument(
        "--registry",
        metavar="URL",
        action="append",
        dest="registries",
        help="registry URL, repeatable; replaces the file's registries list.  "
        "zookeeper://HOST[:PORT][,HOST[:PORT]...], "
        "nacos://HOST[:PORT]?namespace=NS&group=G&username=U&password=P, or memory://",
    )
    run.add_argument("--egress", metavar="HOST:PORT", help="listener for the local application's Dubbo calls")
    run.add_argument("--ingress", metavar="HOST:PORT", help="listener for calls from other sidecars")
    run.add_argument("--api", metavar="HOST:PORT", help="local HTTP API (publish / subscribe)")
    run.add_argument("--admin", metavar="HOST:PORT", help="admin HTTP API and metrics")
    for which in ("api", "admin"):
        run.add_argument(
            f"--{which}-allow-remote",
            action="store_const",
            const=True,
            default=None,
            help=f"let --{which} bind a non-loopback address (logs a warning; set auth_token too)",
        )
    run.add_argument("--app-port", metavar="PORT", help="the application's own Dubbo port on 127.0.0.1")
    run.add_argument(
        "--advertise-ip", metavar="IP", help="address registered for this host (default: detected)"
    )
    run.add_argument("--data-dir", metavar="DIR", help="directory for state kept across restarts")
    run.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning, error or critical")
    run.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective config (passwords hidden) as YAML and exit without starting",
    )

    for name, (_module, help_text) in _PASSTHROUGH.items():
        # Listed here for --help only; main() hands their arguments to the demo module untouched.
        sub.add_parser(name, help=f"{help_text}; options: regproxy {name} --help", add_help=False)
    return parser


def _run(args: argparse.Namespace) -> int:
    from regproxy.config import ConfigError, load_config

    overrides: dict[str, Any] = {}
    for key in _RUN_FLAGS:
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    # The flags given, and only those: an error in a key the file set names the file, not a flag.
    origins = {key: _RUN_FLAGS[key] for key in overrides}
    try:
        config = load_config(args.config, overrides, origins=origins)
    except ConfigError as e:
        print(f"{PROG}: config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        from regproxy import yamlio

        # Read back by --config as the same values (a string like "on" comes out quoted).
        sys.stdout.write(yamlio.dump(config.redacted_dict()))
        return 0
    try:
        sidecar = import_module("regproxy.sidecar")
    except ModuleNotFoundError as e:
        if e.name != "regproxy.sidecar":
            raise
        print(f"{PROG}: this build has no sidecar yet (regproxy/sidecar.py is missing)", file=sys.stderr)
        return 1

    # Reload re-reads the same file with the same flags on top: flags keep winning over the file.
    def loader() -> Any:
        return load_config(args.config, overrides, origins=origins)

    return int(sidecar.run(config, loader=loader, config_path=args.config, origins=origins))


def _passthrough(command: str, argv: list[str]) -> int:
    module_name, _help = _PASSTHROUGH[command]
    try:
        module = import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        print(f"{PROG}: {command} is not available in this build ({module_name} is missing)", file=sys.stderr)
        return 1
    entry: Callable[[list[str]], int | None] = module.main
    return int(entry(argv) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in _PASSTHROUGH:
        return _passthrough(args_list[0], args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "run":
        return _run(args)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
