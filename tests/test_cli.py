from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from regproxy import cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "conf" / "regproxy.yaml"

RUN_FLAGS = [
    "--config",
    "--registry",
    "--egress",
    "--ingress",
    "--api",
    "--admin",
    "--app-port",
    "--advertise-ip",
    "--data-dir",
    "--log-level",
    "--print-config",
]


def regproxy(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "regproxy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_top_level_help_lists_subcommands() -> None:
    r = regproxy("--help")
    assert r.returncode == 0
    for word in ("run", "demo-provider", "demo-consumer", "ctl", "--version"):
        assert word in r.stdout
    assert re.search(r"^\s+demo\s+run the whole demo", r.stdout, re.M), r.stdout


def test_run_help_lists_every_flag_with_help_text() -> None:
    r = regproxy("run", "--help")
    assert r.returncode == 0
    for flag in RUN_FLAGS:
        assert flag in r.stdout, flag
    # every flag has help text
    run_parser = next(
        a
        for a in cli.build_parser()._subparsers._group_actions  # type: ignore[union-attr]
    ).choices["run"]
    for action in run_parser._actions:
        assert action.help, action.option_strings


def test_version() -> None:
    r = regproxy("--version")
    assert r.returncode == 0
    assert r.stdout.startswith("regproxy ")


def test_no_command_prints_usage_and_fails() -> None:
    r = regproxy()
    assert r.returncode == 2
    assert "usage:" in r.stderr


def test_bad_config_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("limits:\n  max_bodyy: 5\nclusters:\n  - {name: c, hosts: [{address: 'x:99999'}]}\n")
    r = regproxy("run", "--config", str(p))
    assert r.returncode == 2
    assert r.stderr.startswith("regproxy: config error: ")
    assert "limits.max_bodyy: unknown key" in r.stderr
    assert "clusters[0].hosts[0].address: 'x:99999' is not HOST:PORT" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    r = regproxy("run", "--config", str(tmp_path / "absent.yaml"))
    assert r.returncode == 2
    assert "config file not found" in r.stderr and "absent.yaml" in r.stderr


def test_bad_flag_value_exits_2_naming_key_and_flag() -> None:
    r = regproxy("run", "--egress", "nohostport", "--registry", "zk://h")
    assert r.returncode == 2
    assert "egress: 'nohostport' is not HOST:PORT" in r.stderr and "(from --egress)" in r.stderr
    assert "registries[0]: unknown registry scheme 'zk'" in r.stderr


def test_print_config_applies_flags_over_file() -> None:
    r = regproxy(
        "run",
        "--config",
        str(EXAMPLE),
        "--egress",
        "127.0.0.1:30001",
        "--app-port",
        "30000",
        "--log-level",
        "DEBUG",
        "--registry",
        "zookeeper://zk1",
        "--registry",
        "nacos://n?username=u&password=hunter2",
        "--print-config",
    )
    assert r.returncode == 0, r.stderr
    dumped = yaml.safe_load(r.stdout)
    assert dumped["egress"] == "127.0.0.1:30001"
    assert dumped["app_port"] == 30000
    assert dumped["log_level"] == "debug"
    assert dumped["registries"] == ["zookeeper://zk1:2181", "nacos://n:8848?password=***&username=u"]
    assert dumped["routes"][0]["cluster"] == "greetings"  # the file's routes survive
    assert "hunter2" not in r.stdout


def test_run_hands_config_to_sidecar(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    class FakeSidecar:
        @staticmethod
        def run(config: object, *, loader: object = None, config_path: object = None) -> int:
            seen.append(config)
            # Reload re-reads the same file with the same flags on top.
            assert config_path == str(EXAMPLE) and callable(loader) and loader() == config
            return 7

    monkeypatch.setattr(cli, "import_module", lambda name: FakeSidecar)
    assert cli.main(["run", "--config", str(EXAMPLE), "--ingress", "127.0.0.1:40000"]) == 7
    (config,) = seen
    assert str(config.ingress) == "127.0.0.1:40000"  # type: ignore[attr-defined]


def test_demo_subcommands_pass_arguments_through(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class FakeDemo:
        @staticmethod
        def main(argv: list[str]) -> int:
            calls.append(argv)
            return 0

    imported = []

    def fake_import(name: str) -> type[FakeDemo]:
        imported.append(name)
        return FakeDemo

    monkeypatch.setattr(cli, "import_module", fake_import)
    assert cli.main(["demo-provider", "--port", "20880", "--help"]) == 0
    assert cli.main(["demo-consumer", "-n", "3"]) == 0
    assert cli.main(["demo", "--duration", "1"]) == 0
    assert imported == ["regproxy.demo.provider", "regproxy.demo.consumer", "regproxy.demo.embedded"]
    assert calls == [["--port", "20880", "--help"], ["-n", "3"], ["--duration", "1"]]


def test_module_entry_point() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "regproxy.cli", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0 and r.stdout.startswith("regproxy ")
