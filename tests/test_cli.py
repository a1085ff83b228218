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


@pytest.mark.process
def test_top_level_help_lists_subcommands() -> None:
    r = regproxy("--help")
    assert r.returncode == 0
    for word in ("run", "demo-provider", "demo-consumer", "ctl", "--version"):
        assert word in r.stdout
    assert re.search(r"^\s+demo\s+run the whole demo", r.stdout, re.M), r.stdout


@pytest.mark.process
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


@pytest.mark.process
def test_version_flag_prints_the_program_name_and_version() -> None:
    r = regproxy("--version")
    assert r.returncode == 0
    assert r.stdout.startswith("regproxy ")


@pytest.mark.process
def test_no_command_prints_usage_and_fails() -> None:
    r = regproxy()
    assert r.returncode == 2
    assert "usage:" in r.stderr


@pytest.mark.process
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


@pytest.mark.process
def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    r = regproxy("run", "--config", str(tmp_path / "absent.yaml"))
    assert r.returncode == 2
    assert "config file not found" in r.stderr and "absent.yaml" in r.stderr


@pytest.mark.process
def test_bad_flag_value_exits_2_naming_key_and_flag() -> None:
    r = regproxy("run", "--egress", "nohostport", "--registry", "zk://h")
    assert r.returncode == 2
    assert "egress: 'nohostport' is not HOST:PORT" in r.stderr and "(from --egress)" in r.stderr
    assert "registries[0]: unknown registry scheme 'zk'" in r.stderr


@pytest.mark.process
def test_file_errors_do_not_name_flags_that_were_not_given(tmp_path: Path) -> None:
    # They said "(from --registry)", "(from --log-level)", "(from --app-port)": every flag was an origin.
    p = tmp_path / "c.yaml"
    p.write_text("registries: ['zk://h']\nlog_level: loud\napp_port: 0\n")
    r = regproxy("run", "--config", str(p))
    assert r.returncode == 2
    assert r.stderr.startswith(f"regproxy: config error: {p}: 3 errors\n"), r.stderr
    for key in ("registries[0]: unknown registry scheme 'zk'", "log_level: 'loud'", "app_port: "):
        assert f"\n  {key}" in r.stderr
    assert "(from" not in r.stderr


@pytest.mark.process
def test_flag_and_file_errors_each_name_their_source(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("log_level: loud\n")
    r = regproxy("run", "--config", str(p), "--registry", "zk://h")
    assert r.returncode == 2
    lines = dict(line.strip().split(": ", 1) for line in r.stderr.splitlines()[1:])
    assert lines["registries[0]"].endswith("(from --registry)")
    assert "(from" not in lines["log_level"]


@pytest.mark.process
def test_print_config_reads_back_identically(tmp_path: Path) -> None:
    # Strings YAML would take for booleans or numbers come out quoted, so the dump is the same config.
    traps = [
        "on",
        "off",
        "yes",
        "no",
        "y",
        "n",
        "0o17",
        "0x1F",
        "010",
        "1_000",
        "1:20",
        "1e3",
        "true",
        "null",
    ]
    metadata = ", ".join(f"k{i}: '{w}'" for i, w in enumerate(traps))
    p = tmp_path / "c.yaml"
    host = f"{{address: '127.0.0.1:1', metadata: {{{metadata}}}}}"
    p.write_text(f"access_log: 'yes'\nclusters:\n  - name: 'on'\n    hosts: [{host}]\n")
    first = regproxy("run", "--config", str(p), "--print-config")
    assert first.returncode == 0, first.stderr
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(first.stdout)
    second = regproxy("run", "--config", str(dumped), "--print-config")
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    data = yaml.safe_load(first.stdout)  # a YAML 1.1 reader sees the same strings
    assert data["access_log"] == "yes" and data["clusters"][0]["name"] == "on"
    assert list(data["clusters"][0]["hosts"][0]["metadata"].values()) == traps


@pytest.mark.process
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
        def run(
            config: object, *, loader: object = None, config_path: object = None, origins: object = None
        ) -> int:
            seen.append(config)
            # Reload re-reads the same file with the same flags on top.
            assert config_path == str(EXAMPLE) and callable(loader) and loader() == config
            # Start-up checks name the flags that were given, and only those.
            assert origins == {"ingress": "--ingress"}
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


@pytest.mark.process
def test_python_m_regproxy_cli_runs_the_command_line() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "regproxy.cli", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0 and r.stdout.startswith("regproxy ")
