"""The docs are true: every fenced block of README.md, docs/*.md and examples/*.md, and every config
under conf/, is checked against the real thing (tests/docsnippets.py finds and parses them).

* YAML (and JSON) blocks are configs or fragments of one: written to a file and read by
  regproxy.config.load_config, the loader `regproxy run --config` uses.  conf/**/*.yaml load as they
  are, and the examples commented out in them too.
* Shell blocks run, command by command: `curl` against a real sidecar (`regproxy run` with the
  arguments the doc's own Running section gives, on the memory:// registry), its reply compared with
  the `# {...}` lines under it; `regproxy ctl` against that sidecar, but for `regproxy ctl rules
  get|apply|delete --registry URL`, which talk to a ZooKeeper or Nacos config center this sidecar
  does not have (its memory:// is inside its own process), checked with --help; `regproxy run` with
  --print-config and the other long-lived commands with --help (every option the doc names must be
  in it); `make TARGET` with `make -n`; the example applications for real, their printed lines
  compared with the documented ones.
* The Python block (the SDK) runs against a sidecar; a `print(...)  # text` says what it prints.
* A block marked `<!-- snippet: KIND [CHECK] -->` is sample output, a diagram or a fragment; a CHECK
  compares it with what the code produces (CHECKS below).  Nothing is skipped silently: every fence
  is either checked or marked, and test_every_block_is_checked_or_marked counts them.

The documented ports (22222, 34901, 20881, ...) stand for the test sidecar's free ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from regproxy.config import ConfigError, load_config
from regproxy.demo.embedded import Window
from regproxy.discovery.rules import PARSERS as RULE_PARSERS
from regproxy.governance.errors import RuleError
from tests.docsnippets import (
    MARKER_KINDS,
    ROOT,
    Command,
    Snippet,
    commented_examples,
    compare_reply,
    config_files,
    doc_files,
    indented_commands,
    markdown_snippets,
    missing_lines,
    parse_reply,
    raw_fence_count,
    shell_commands,
)
from tests.pki import make_pki
from tests.ports import free_port
from tests.sidecars import SidecarProc, terminate

pytestmark = pytest.mark.timeout(180)

CONFIG_LANGS = {"yaml", "yml", "json"}
SHELL_LANGS = {"sh", "shell", "bash", "console"}
RUNNABLE_LANGS = CONFIG_LANGS | SHELL_LANGS | {"python", "config-file"}

# The listener flags tests/sidecars.py sets itself (free ports, the test's data directory).
SIDECAR_OWNED = {"--egress", "--ingress", "--api", "--admin", "--app-port", "--data-dir", "--advertise-ip"}

# Scripts that serve until stopped: started in the background, stopped when the module ends.
LONG_LIVED_SCRIPTS = {"examples/provider.py"}


def all_snippets() -> list[Snippet]:
    found: list[Snippet] = []
    for path in doc_files():
        found += markdown_snippets(path)
    for path in config_files():
        rel = str(path.relative_to(ROOT))
        found.append(Snippet(rel, 1, "config-file", path.read_text(encoding="utf-8")))
        found += commented_examples(path)
    return found


SNIPPETS = all_snippets()


def test_every_block_is_checked_or_marked() -> None:
    """Every fence the files hold is one the tests see, and each is runnable or carries a known mark."""
    for path in doc_files():
        blocks = markdown_snippets(path)
        assert raw_fence_count(path.read_text(encoding="utf-8")) == 2 * len(blocks), path
        # An indented code block is code no test would see: fence it.
        indented = indented_commands(path)
        assert not indented, f"{path}: commands in indented blocks, not fenced: {indented}"
    checked = [s for s in SNIPPETS if s.marker is None]
    marked = [s for s in SNIPPETS if s.marker is not None]
    unrunnable = [s.id for s in checked if s.lang not in RUNNABLE_LANGS]
    assert not unrunnable, (
        f"blocks neither runnable ({sorted(RUNNABLE_LANGS)}) nor marked <!-- snippet: KIND -->: {unrunnable}"
    )
    bad = [f"{s.id}: {s.marker!r}" for s in marked if s.marker_kind not in MARKER_KINDS]
    assert not bad, f"unknown snippet markers (known: {sorted(MARKER_KINDS)}): {bad}"
    unknown_checks = [
        f"{s.id}: {s.marker_check}" for s in marked if s.marker_check and s.marker_check not in CHECKS
    ]
    assert not unknown_checks, f"markers naming no check (known: {sorted(CHECKS)}): {unknown_checks}"
    fences = sum(raw_fence_count(p.read_text(encoding="utf-8")) for p in doc_files())
    assert fences == 2 * sum(1 for s in SNIPPETS if s.path.endswith(".md"))
    # Each doc has blocks, and most are run: a marker is the exception, not the way out.
    assert {s.path for s in SNIPPETS} >= {str(p.relative_to(ROOT)) for p in doc_files() + config_files()}
    assert len(checked) + sum(1 for s in marked if s.marker_check) > 2 * sum(
        1 for s in marked if not s.marker_check
    ), [s.id for s in marked]


def test_documented_replies_are_compared_for_real() -> None:
    """The comparison the curl and output checks rely on: it sees a missing key, a changed value, a
    wrong port and a missing line, and lets `...`, any host and the test's own ports through."""
    ports = {20882: 41000}
    doc = parse_reply('{"err_no":0,"url":"dubbo://10.0.0.5:20882/com.x.Svc?...","providers":[...]}')
    good = {"err_no": 0, "url": "dubbo://127.0.0.1:41000/com.x.Svc?a=1", "providers": [{"x": 1}]}
    assert compare_reply(doc, good, ports) == []
    assert compare_reply(doc, {**good, "app_port": 1}, ports)  # a key the docs do not show
    assert compare_reply(doc, {**good, "err_no": 1}, ports)
    assert compare_reply(doc, {**good, "url": "dubbo://127.0.0.1:20882/com.x.Svc?a=1"}, ports)
    assert compare_reply(doc, {**good, "providers": {}}, ports)
    printed = ["subscribed S: providers 127.0.0.1:41000", "[1] f -> 1", "done"]
    assert missing_lines(["subscribed S: providers 127.0.0.1:20882", "...", "done"], printed, ports) == []
    assert missing_lines(["done", "[1] f -> 1"], printed, ports) == ["[1] f -> 1"]  # order matters
    assert missing_lines(["[2] f -> 1"], printed, ports) == ["[2] f -> 1"]


# -- sidecars -----------------------------------------------------------------------------------------


class DocSidecars:
    """At most two `regproxy run` processes for the whole module, started on first use: "README.md"
    as its Running section says (the same sidecar serves docs/*.md), "examples" as examples/README.md's
    one-sidecar section says.  Also the example applications started in the background."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.loop = asyncio.new_event_loop()
        self.sidecars: dict[str, SidecarProc] = {}
        self.ports: dict[str, dict[int, int]] = {}
        self.background: dict[str, subprocess.Popen[bytes]] = {}

    def get(self, doc: str) -> tuple[SidecarProc, dict[int, int]]:
        kind = "examples" if doc.startswith("examples/") else "README.md"
        if kind not in self.sidecars:
            run = self._documented_run(kind)
            extra: list[str] = []
            words = run.argv[2:]
            while words:
                word = words.pop(0)
                if word in SIDECAR_OWNED:
                    words.pop(0)
                elif word != "--print-config":
                    extra.append(word)
            app = free_port()
            sc = SidecarProc(
                kind, self.base / kind.replace(".", "-"), registries=[], app_port=app, extra=extra
            )
            self.loop.run_until_complete(sc.start())
            self.sidecars[kind] = sc
            # What each documented port stands for.  A and B of examples/README.md are one sidecar.
            self.ports[kind] = {
                22222: sc.api, 22223: sc.api, 34901: sc.admin, 34902: sc.admin,
                20881: sc.egress, 20882: sc.ingress, 20880: app,
            }  # fmt: skip
        return self.sidecars[kind], self.ports[kind]

    @staticmethod
    def _documented_run(kind: str) -> Command:
        """The doc's own `regproxy run` line for a sidecar that serves the API examples."""
        path = ROOT / ("README.md" if kind == "README.md" else "examples/README.md")
        for snippet in markdown_snippets(path):
            if snippet.lang not in SHELL_LANGS or snippet.marker:
                continue
            for cmd in shell_commands(snippet):
                if regproxy_args(cmd)[:1] != ["run"] or "--print-config" in cmd.argv:
                    continue
                if kind == "README.md" and "--config" in cmd.argv:
                    return cmd
                if kind == "examples" and "memory://" in cmd.argv:
                    return cmd
        raise AssertionError(f"{path}: no `regproxy run` line to start its sidecar from")

    def start_background(self, key: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.stop_background(key)  # the same application started again: as a user would, stop the first
        log = open(self.base / f"{Path(key).stem}.out", "wb")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        self.background[key] = proc
        return proc

    def stop_background(self, key: str) -> None:
        proc = self.background.pop(key, None)
        if proc is not None:
            terminate(proc, 15)

    def close(self) -> None:
        for key in list(self.background):
            self.stop_background(key)
        for sc in self.sidecars.values():
            # Killed, not drained: nothing here tests the drain, which would wait drain.grace_s.
            self.loop.run_until_complete(sc.kill())
        self.loop.close()


@pytest.fixture(scope="module")
def sidecars(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocSidecars]:
    docs = DocSidecars(tmp_path_factory.mktemp("doc-sidecars"))
    try:
        yield docs
    finally:
        docs.close()


# -- running commands ---------------------------------------------------------------------------------


def child_env(cmd: Command | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "PWD": str(ROOT)}
    for name, value in (cmd.env if cmd else {}).items():
        env[name] = value.replace("$PWD", str(ROOT))
    return env


def run(argv: list[str], cmd: Command | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, env=child_env(cmd), capture_output=True, text=True, timeout=timeout)


def map_ports(word: str, ports: dict[int, int]) -> str:
    """A documented address (`localhost:22222`, `127.0.0.1:PORT`) made the test sidecar's."""
    word = re.sub(r"\b(127\.0\.0\.1|localhost):PORT\b", lambda m: f"{m[1]}:{ports[34901]}", word)
    return re.sub(
        r"\b(127\.0\.0\.1|localhost):(\d+)\b", lambda m: f"{m[1]}:{ports.get(int(m[2]), int(m[2]))}", word
    )


def executable(word: str) -> str:
    """`.venv/bin/x` as typed (it must exist: the docs say to run it); `python` is this interpreter."""
    if word.startswith(".venv/bin/"):
        path = ROOT / word
        assert path.exists(), f"{word} does not exist (make venv creates it)"
        return str(path)
    return sys.executable if word in ("python", "python3") else word


def regproxy_args(cmd: Command) -> list[str]:
    """The arguments after `regproxy` / `.venv/bin/regproxy` / `python -m regproxy`; [] if not one."""
    argv = cmd.argv
    if argv and Path(argv[0]).name == "regproxy":
        return argv[1:]
    if len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1:3] == ["-m", "regproxy"]:
        return argv[3:]
    return []


def assert_ok(result: subprocess.CompletedProcess[str], cmd: Command, snippet: Snippet) -> None:
    assert result.returncode == 0, (
        f"{snippet.path}:{cmd.line}: `{cmd.text}` exited {result.returncode}\n"
        f"{result.stdout}\n{result.stderr}"
    )


def assert_options_documented(help_text: str, cmd: Command, snippet: Snippet) -> None:
    """Every --option the doc writes is one the command has."""
    named = {w.strip("[]").split("=")[0] for w in cmd.argv if w.strip("[]").startswith("--")}
    missing = sorted(o for o in named if o not in help_text)
    assert not missing, f"{snippet.path}:{cmd.line}: `{cmd.text}`: {missing} not in its --help"


_HELP: dict[tuple[str, ...], subprocess.CompletedProcess[str]] = {}


def help_of(argv: list[str], cmd: Command | None = None) -> subprocess.CompletedProcess[str]:
    """`argv --help`, once per command for the whole module (each start costs a second or two)."""
    key = (*argv, *sorted(cmd.env.items() if cmd else ()))
    key = tuple(str(k) for k in key)
    if key not in _HELP:
        _HELP[key] = run([*argv, "--help"], cmd)
    return _HELP[key]


def check_help(argv: list[str], cmd: Command, snippet: Snippet) -> None:
    result = help_of(argv, cmd)
    assert_ok(result, cmd, snippet)
    assert_options_documented(result.stdout, cmd, snippet)


def check_pytest(cmd: Command, snippet: Snippet) -> None:
    """A documented pytest run: its files hold tests, its options are pytest's, the words of its -k
    are in its files.  Not run, nor collected (a pytest start costs seconds; the suite runs them)."""
    where = f"{snippet.path}:{cmd.line}: `{cmd.text}`"
    args = cmd.argv[3:]
    files = [a for a in args if a.startswith("tests/")]
    assert files, f"{where}: names no test file"
    sources = ""
    for f in files:
        path = ROOT / f.split("::")[0]
        assert path.is_file(), f"{where}: {f} does not exist"
        sources += path.read_text(encoding="utf-8")
        assert re.search(r"^(async )?def test_", sources, re.MULTILINE), f"{where}: {f} holds no test"
    helptext = help_of([sys.executable, "-m", "pytest"]).stdout
    options = [a for a in args if a.startswith("-") and a not in files]
    unknown = [
        o
        for o in options
        if not re.search(rf"(^|[\s,]){re.escape(o.split('=')[0])}([\s,=]|$)", helptext, re.M)
    ]
    assert not unknown, f"{where}: not pytest options: {unknown}"
    if "-k" in args:
        words = [
            w for w in re.findall(r"[\w-]+", args[args.index("-k") + 1]) if w not in ("and", "or", "not")
        ]
        assert all(w in sources for w in words), f"{where}: -k names what its files do not hold"


def check_output(
    documented: list[str], printed: str, ports: dict[int, int], cmd: Command, snippet: Snippet
) -> None:
    missing = missing_lines(documented, printed.splitlines(), ports)
    assert not missing, (
        f"{snippet.path}:{cmd.line}: `{cmd.text}` did not print the documented {missing}; "
        f"it printed:\n{printed}"
    )


# -- checks by kind -----------------------------------------------------------------------------------


def check_config_text(text: str, snippet: Snippet, tmp_path: Path) -> None:
    if "/etc/regproxy/tls/" in text:
        # The files a TLS example names, made real: a CA and a certificate signed by it.
        (tmp_path / "pki").mkdir()
        pki = make_pki(tmp_path / "pki")
        for name, real in (("tls.crt", pki.peer.cert), ("tls.key", pki.peer.key), ("ca.crt", pki.ca)):
            text = text.replace(f"/etc/regproxy/tls/{name}", real)
    path = tmp_path / "snippet.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as e:
        pytest.fail(f"{snippet.id}: the config snippet does not load:\n{e}\n---\n{text}", pytrace=False)


def check_shell(snippet: Snippet, sidecars: DocSidecars, tmp_path: Path) -> None:
    commands = shell_commands(snippet)
    assert commands, f"{snippet.id}: an empty shell block"
    for cmd in commands:
        check_command(cmd, snippet, sidecars)


def check_command(cmd: Command, snippet: Snippet, sidecars: DocSidecars) -> None:
    argv = cmd.argv
    where = f"{snippet.path}:{cmd.line}: `{cmd.text}`"
    assert argv, f"{where}: no command"
    prog = Path(argv[0]).name
    if prog == "make":
        # Exists and expands; `make -n` runs nothing (but $(shell ...) probes).
        assert_ok(run(["make", "-n", *argv[1:]], cmd), cmd, snippet)
        return
    if prog == "curl":
        check_curl(cmd, snippet, sidecars)
        return
    if rp := regproxy_args(cmd):
        check_regproxy(rp, cmd, snippet, sidecars)
        return
    if prog.startswith("python"):
        exe = executable(argv[0])
        if argv[1] == "-m" and argv[2] == "pytest":
            check_pytest(cmd, snippet)
            return
        if argv[1] == "-m":
            check_help([exe, "-m", argv[2]], cmd, snippet)
            return
        if argv[1].startswith("examples/"):
            check_example(exe, cmd, snippet, sidecars)
            return
    pytest.fail(
        f"{where}: no check knows this command; teach tests/test_docs.py or mark the block", pytrace=False
    )


def check_curl(cmd: Command, snippet: Snippet, sidecars: DocSidecars) -> None:
    _sc, ports = sidecars.get(snippet.path)
    argv = [map_ports(w, ports) for w in cmd.argv]
    result = run(argv, cmd, timeout=30)
    assert_ok(result, cmd, snippet)
    for stage in cmd.pipe:
        # `| jq .` pretty-prints JSON: the reply must be JSON.  No other pipe is documented.
        assert stage == ["jq", "."], f"{snippet.path}:{cmd.line}: a pipe the test cannot check: {stage}"
        json.loads(result.stdout)
    if cmd.output:
        documented = "".join(cmd.output)
        try:
            reply = json.loads(result.stdout)
        except ValueError:
            pytest.fail(f"{snippet.path}:{cmd.line}: `{cmd.text}` answered no JSON: {result.stdout!r}")
        problems = compare_reply(parse_reply(documented), reply, ports)
        assert not problems, f"{snippet.path}:{cmd.line}: `{cmd.text}`:\n" + "\n".join(problems)


def check_regproxy(args: list[str], cmd: Command, snippet: Snippet, sidecars: DocSidecars) -> None:
    base = cmd.argv[: len(cmd.argv) - len(args)]
    # `regproxy` alone is on PATH only in an activated venv; what a reader types must work as typed.
    assert base[0] != "regproxy", (
        f"{snippet.path}:{cmd.line}: `{cmd.text}`: write .venv/bin/regproxy (make venv puts it there)"
    )
    base = [executable(base[0]), *base[1:]]
    sub = args[0] if args else ""
    if sub == "run":
        # Long-lived: validate the flags and the config, print the result, exit.
        extra = [] if "--print-config" in args else ["--print-config"]
        result = run([*base, *args, *extra], cmd)
        assert_ok(result, cmd, snippet)
        check_help([*base, "run"], cmd, snippet)
        return
    if sub == "ctl" and "--registry" in args:
        # `ctl rules get|apply|delete`: every option the doc names must be the subcommand's.
        assert "rules" in args, f"{snippet.path}:{cmd.line}: `{cmd.text}`: --registry is ctl rules'"
        check_help([*base, *args[: args.index("rules") + 2]], cmd, snippet)
        return
    if sub == "ctl":
        _sc, ports = sidecars.get(snippet.path)
        mapped = [map_ports(w, ports) for w in args]
        if "--admin" not in mapped:
            mapped[1:1] = ["--admin", f"127.0.0.1:{ports[34901]}"]
        result = run([*base, *mapped], cmd)
        assert_ok(result, cmd, snippet)
        check_output(cmd.output, result.stdout, ports, cmd, snippet)
        return
    if sub in ("demo", "demo-provider", "demo-consumer"):
        check_help([*base, sub], cmd, snippet)
        return
    pytest.fail(f"{snippet.path}:{cmd.line}: `{cmd.text}`: no check for `regproxy {sub}`", pytrace=False)


def check_example(exe: str, cmd: Command, snippet: Snippet, sidecars: DocSidecars) -> None:
    script = cmd.argv[1]
    args = cmd.argv[2:]
    # The documented defaults, written out so they can be pointed at the test sidecar.
    if "--api" not in args:
        args = [*args, "--api", "http://127.0.0.1:22222"]
    if script == "examples/consumer.py" and "--egress" not in args:
        args = [*args, "--egress", "127.0.0.1:20881"]
    count = args[args.index("--count") + 1] if "--count" in args else None
    if script not in LONG_LIVED_SCRIPTS and count == "0":
        check_help([exe, script], cmd, snippet)
        return
    _sc, ports = sidecars.get(snippet.path)
    # Addresses, and the application's own port (`--port 20880`, the sidecar's app_port).
    mapped = [map_ports(w, ports) for w in args]
    mapped = [
        str(ports.get(int(w), int(w))) if i and mapped[i - 1] == "--port" and w.isdigit() else w
        for i, w in enumerate(mapped)
    ]
    argv = [exe, script, *mapped]
    if script in LONG_LIVED_SCRIPTS:
        proc = sidecars.start_background(script, argv, child_env(cmd))
        out = sidecars.base / f"{Path(script).stem}.out"
        want = cmd.output or ["..."]
        deadline = 30.0
        while deadline > 0:
            printed = out.read_text(errors="replace")
            if printed and not missing_lines(want, printed.splitlines(), ports):
                return
            assert proc.poll() is None, f"{snippet.path}:{cmd.line}: `{cmd.text}` exited:\n{printed}"
            time.sleep(0.1)
            deadline -= 0.1
        check_output(want, out.read_text(errors="replace"), ports, cmd, snippet)
        return
    result = run(argv, cmd, timeout=90)
    assert_ok(result, cmd, snippet)
    check_output(cmd.output, result.stdout, ports, cmd, snippet)


def check_python(snippet: Snippet, sidecars: DocSidecars, tmp_path: Path) -> None:
    """Run the block; `print(...)  # text` lines say what it prints."""
    _sc, ports = sidecars.get(snippet.path)
    code = re.sub(r"http://(127\.0\.0\.1|localhost):\d+", lambda m: map_ports(m[0], ports), snippet.text)
    documented = [
        line.split("#", 1)[1].strip()
        for line in snippet.text.splitlines()
        if line.lstrip().startswith("print(") and "#" in line
    ]
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    cmd = Command(snippet.line, "the block", [], output=documented)
    assert result.returncode == 0, f"{snippet.id}: the block failed:\n{result.stdout}\n{result.stderr}"
    check_output(documented, result.stdout, ports, cmd, snippet)


# -- checks of marked blocks --------------------------------------------------------------------------


def check_config_error(snippet: Snippet, tmp_path: Path) -> None:
    """The config-error sample: a file with exactly those two problems gives exactly those lines."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "bad.yaml").write_text(
        "limits: {max_bodyy: 1}\n"
        "clusters:\n"
        "  - name: c\n"
        "    hosts: [{address: '127.0.0.1:20882'}, {address: 'x:99999'}]\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "regproxy", "run", "--config", "conf/bad.yaml"],
        cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result
    assert result.stderr.strip().splitlines() == snippet.text.strip().splitlines()


def check_demo_line(snippet: Snippet, tmp_path: Path) -> None:
    """The demo's live line: the same numbers give the same text (regproxy.demo.embedded.Window)."""
    line = snippet.text.strip("\n")
    m = re.fullmatch(
        r"\s*(\d+)s  calls\s+(\d+)  errors\s+(\d+)  p50\s+([\d.]+) ms  p99\s+([\d.]+) ms  answered by (.*)",
        line,
    )
    assert m, f"{snippet.id}: not the demo's line format: {line!r}"
    window = Window()
    calls, errors = int(m[2]), int(m[3])
    p50, p99 = float(m[4]) / 1000, float(m[5]) / 1000
    answered = [(name, int(n)) for name, n in (part.rsplit(": ", 1) for part in m[6].split(", "))]
    assert sum(n for _, n in answered) == calls - errors, (
        f"{snippet.id}: answered by adds up to no call count"
    )
    names = [name for name, n in answered for _ in range(n)]
    # Latencies whose nearest-rank p50 and p99 are the documented ones.
    lat = [p50] * (len(names) - 1) + [p99]
    for name, latency in zip(names, lat, strict=True):
        window.ok(latency, name)
    for _ in range(errors):
        window.failed("x")
    window.last_error = ""
    assert window.line(float(m[1])) == line


def check_layout(snippet: Snippet, tmp_path: Path) -> None:
    """README's Layout: every module and package of regproxy/, every top-level directory, and the
    commands of cli.py, listed; nothing listed that does not exist."""
    entries = re.findall(r"^\s{2}(\w+(?:\.py|/))\s", snippet.text, re.MULTILINE)
    listed = set(entries)
    actual = {
        p.name + ("/" if p.is_dir() else "")
        for p in (ROOT / "regproxy").iterdir()
        if not p.name.startswith("_") and (p.suffix == ".py" or (p / "__init__.py").exists())
    }
    assert listed == actual, (
        f"listed but absent: {sorted(listed - actual)}; not listed: {sorted(actual - listed)}"
    )
    top = set(re.findall(r"^(\w+/)", snippet.text, re.MULTILINE))
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    dirs = {
        line.split("/")[0] + "/" for line in tracked.splitlines() if "/" in line and not line.startswith(".")
    }
    assert top == dirs, f"top-level: listed {sorted(top)}, in git {sorted(dirs)}"
    for name in re.findall(
        r"\b([\w-]+\.(?:sh|py))\b", snippet.text.split("scripts/", 1)[1].split("tests/", 1)[0]
    ):
        assert (ROOT / "scripts" / name).exists(), f"scripts/{name} is listed but absent"
    cli_line = next(line for line in snippet.text.splitlines() if line.strip().startswith("cli.py"))
    helptext = run([sys.executable, "-m", "regproxy", "--help"]).stdout
    commands = re.findall(r"^    ([a-z][\w-]*)", helptext, re.MULTILINE)
    assert commands, helptext
    absent = [c for c in commands if not re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", cli_line)]
    assert not absent, f"cli.py's line does not list the commands {absent}: {cli_line!r}"


def check_rule(suffix: str) -> Callable[[Snippet, Path], None]:
    """A documented rule of kind ``suffix`` is one the sidecar takes: parsed with its own parser."""

    def check(snippet: Snippet, tmp_path: Path) -> None:
        try:
            RULE_PARSERS[suffix](snippet.text)
        except RuleError as exc:
            pytest.fail(f"{snippet.id}: the sidecar would refuse this {suffix} rule: {exc}", pytrace=False)

    return check


CHECKS: dict[str, Callable[[Snippet, Path], None]] = {
    "config-error": check_config_error,
    "demo-line": check_demo_line,
    "layout": check_layout,
    **{suffix.lstrip("."): check_rule(suffix) for suffix in RULE_PARSERS},
}


# -- one test per block -------------------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_snippet(snippet: Snippet, sidecars: DocSidecars, tmp_path: Path) -> None:
    if snippet.marker is not None:
        assert snippet.marker_kind in MARKER_KINDS, f"{snippet.id}: unknown marker {snippet.marker!r}"
        if snippet.marker_check:
            CHECKS[snippet.marker_check](snippet, tmp_path)
        return
    if snippet.lang == "config-file":
        try:
            load_config(ROOT / snippet.path)
        except ConfigError as e:
            pytest.fail(f"{snippet.path} does not load:\n{e}", pytrace=False)
    elif snippet.lang in CONFIG_LANGS:
        check_config_text(snippet.text, snippet, tmp_path)
    elif snippet.lang in SHELL_LANGS:
        check_shell(snippet, sidecars, tmp_path)
    elif snippet.lang == "python":
        check_python(snippet, sidecars, tmp_path)
    else:
        pytest.fail(f"{snippet.id}: a ```{snippet.lang} block, neither runnable nor marked", pytrace=False)


# -- one set of versions ------------------------------------------------------------------------------


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonical(name)] = version
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert m, requirement
    return canonical(m[1])


def test_make_test_says_what_it_installs_and_how_long_it_takes() -> None:
    """`make help` and README's Quick start name every system package scripts/test-deps.sh installs
    (a newcomer sees apt install them) and how long the suite takes."""
    deps = (ROOT / "scripts" / "test-deps.sh").read_text(encoding="utf-8")
    packages = re.findall(r"^\s*missing\+=\(([\w-]+)\)$", deps, re.MULTILINE)
    assert {"zookeeper", "iproute2"} <= set(packages), packages
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    help_line = re.search(r'^\t@echo "make test (.*)"$', makefile, re.MULTILINE)
    assert help_line, "no `make test` line in make help"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick_start = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    for where, text in (("make help", help_line[1]), ("README's Quick start", quick_start)):
        unnamed = [p for p in packages if p not in text]
        assert not unnamed, f"{where} does not name {unnamed}, which make test installs: {text}"
        assert re.search(r"\d+ min", text), f"{where} does not say how long make test takes: {text}"


def test_one_set_of_versions() -> None:
    """make venv (hence make test, make demo) and the Docker image install with constraints.txt, which
    pins every dependency regproxy declares; and the nacos-sdk-python pinned is the one tested."""
    pins = constraint_pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = list(project["dependencies"])
    for extra in ("test", "native"):
        declared += project["optional-dependencies"][extra]
    unpinned = sorted({requirement_name(r) for r in declared} - set(pins))
    assert not unpinned, f"dependencies of pyproject.toml with no pin in constraints.txt: {unpinned}"

    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    stamp_rule = re.search(r"^\$\(STAMP\):(.*)$", makefile, re.MULTILINE)
    assert stamp_rule and "constraints.txt" in stamp_rule[1].split(), (
        "the venv stamp must depend on constraints.txt"
    )
    installs = re.findall(r"pip install[^\n]*-e '\.\[[^\n]*", makefile)
    assert installs and all("-c constraints.txt" in line for line in installs), installs

    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    copies = re.findall(r"^COPY\s+(.*)$", dockerfile, re.MULTILINE)
    assert any("constraints.txt" in c.split() for c in copies), copies
    # The image's pip installs: in the Dockerfile, or in the scripts its RUN lines call (its stages'
    # steps are scripts/docker-build.sh, which tests/test_docker_build_steps.py runs too).
    run_scripts = sorted(set(re.findall(r"^RUN\s.*?(\S+\.sh)\b", dockerfile, re.MULTILINE)))
    steps = [
        dockerfile,
        *((ROOT / "scripts" / Path(s).name).read_text(encoding="utf-8") for s in run_scripts),
    ]
    pip_lines = [line for text in steps for line in re.findall(r"pip install[^\n&]*", text)]
    assert pip_lines and all(re.search(r"-c \S*constraints\.txt", line) for line in pip_lines), pip_lines
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "!constraints.txt" in ignore, ".dockerignore keeps constraints.txt out of the build context"

    # The Nacos client the tests talk to is the one pinned (and so the one the image ships).
    from importlib.metadata import version

    assert pins["nacos-sdk-python"] == version("nacos-sdk-python")
    for name in ("kazoo", "aiohttp", "pydantic", "pyyaml", "orjson"):
        assert pins[name] == version(name), name
