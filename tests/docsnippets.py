"""The fenced blocks of the docs, and how their commands and documented outputs are read.

tests/test_docs.py checks every block; this module only finds and parses them.  A block that is
not runnable as it stands says so with an HTML comment on the line before its fence:

    <!-- snippet: KIND [CHECK] -->

KIND is one of MARKER_KINDS; CHECK, when given, names a check in tests/test_docs.py that compares
the block with what the code produces (the config-error sample, the demo's live line, the layout).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# What a marker may say a block is.  Anything else is a typo, and fails.
MARKER_KINDS = {
    "output": "sample output (a check name after it compares it with the real thing)",
    "diagram": "a picture in text",
    "listing": "a listing of files or keys (a check name after it compares it with the tree)",
    "partial": "a fragment that cannot run on its own",
    "illustrative": "shows a shape, not something to run",
    "rule": "a Dubbo dynamic rule; the check names its kind and parses it as the sidecar does",
}

FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
MARKER = re.compile(r"^\s*<!--\s*snippet:\s*(?P<body>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Snippet:
    path: str  # relative to the repository root
    line: int  # 1-based line of the opening fence (or of the commented example in a YAML file)
    lang: str
    text: str
    marker: str | None = None  # the text after "snippet:", None when unmarked

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def marker_kind(self) -> str | None:
        return self.marker.split()[0] if self.marker else None

    @property
    def marker_check(self) -> str | None:
        parts = (self.marker or "").split()
        return parts[1] if len(parts) > 1 else None


def doc_files() -> list[Path]:
    """Every markdown file whose snippets are checked."""
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "examples").glob("*.md")),
    ]


def config_files() -> list[Path]:
    """Every YAML config shipped under conf/ (conf/compose/ too: docker-compose mounts them)."""
    return sorted((ROOT / "conf").rglob("*.yaml"))


def raw_fence_count(text: str) -> int:
    """Lines that open or close a fence, counted without parsing: the parser must account for all."""
    return sum(1 for line in text.splitlines() if FENCE.match(line))


def indented_commands(path: Path) -> list[str]:
    """Commands in indented (unfenced) code blocks: an indented line after a blank line, outside
    fences and lists, that starts like a command."""
    found = []
    inside = False
    previous = ""  # the last non-blank line
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        if FENCE.match(line):
            inside = not inside
        elif (
            not inside
            and n
            and not lines[n - 1].strip()
            and line.startswith("    ")
            and not re.match(r"^\s*([*+-]|\d+\.)\s", previous)
            and re.match(r"^\s+(\$ |\.venv/|[A-Z_]+=|make |curl |regproxy |python)", line)
        ):
            found.append(f"{n + 1}: {line.strip()}")
        if line.strip():
            previous = line
    return found


def markdown_snippets(path: Path) -> list[Snippet]:
    lines = path.read_text(encoding="utf-8").splitlines()
    rel = str(path.relative_to(ROOT))
    out: list[Snippet] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence = m["fence"]
        start = i
        j = i + 1
        while j < len(lines):
            close = FENCE.match(lines[j])
            if (
                close
                and close["fence"][0] == fence[0]
                and len(close["fence"]) >= len(fence)
                and not close["info"].strip()
            ):
                break
            j += 1
        else:
            raise AssertionError(f"{rel}:{start + 1}: fence never closed")
        marker = None
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        if k >= 0 and (mm := MARKER.match(lines[k])):
            marker = mm["body"]
        indent = len(m["indent"])
        body = "\n".join(line[indent:] if line[:indent].isspace() else line for line in lines[start + 1 : j])
        out.append(Snippet(rel, start + 1, m["info"].strip().split(" ")[0].lower(), body, marker))
        i = j + 1
    return out


def commented_examples(path: Path) -> list[Snippet]:
    """Commented-out YAML examples in a config file: a run of ``#  - ...`` lines (a list item and its
    indented lines) belongs under the first uncommented top-level key after it (``routes:``)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rel = str(path.relative_to(ROOT))
    out: list[Snippet] = []
    i = 0
    while i < len(lines):
        if re.match(r"^#  - \w", lines[i]):
            start = i
            body = []
            while i < len(lines) and re.match(r"^#  ( |- )", lines[i]):
                body.append(lines[i][3:])
                i += 1
            key = next((ln.split(":")[0] for ln in lines[i:] if re.match(r"^\w+:", ln)), None)
            assert key, f"{rel}:{start + 1}: a commented example with no key after it"
            text = f"{key}:\n" + "\n".join("  " + b for b in body)
            out.append(Snippet(rel, start + 1, "yaml", text))
        else:
            i += 1
    return out


# -- shell blocks -------------------------------------------------------------------------------------


@dataclass
class Command:
    line: int  # 1-based, in the file
    text: str  # the command as written (continuations joined), without its trailing comment
    argv: list[str]  # shlex words; `|` and what follows are in `pipe`
    env: dict[str, str] = field(default_factory=dict)  # leading NAME=value words
    pipe: list[list[str]] = field(default_factory=list)
    output: list[str] = field(default_factory=list)  # the `# ...` lines right under it


def shell_commands(snippet: Snippet) -> list[Command]:
    """The commands of a shell block.  A line ending in a backslash, or inside an open quote (a JSON
    body over two lines), continues the command; so does one starting with ``[`` (usage syntax: more
    optional arguments).  ``# ...`` lines under a command are its documented output."""
    commands: list[Command] = []
    pending = ""
    pending_line = 0
    for n, line in enumerate(snippet.text.splitlines()):
        stripped = line.strip()
        if not pending:
            if not stripped:
                continue
            if stripped.startswith("[") and commands:
                last = commands[-1]
                commands[-1] = _parse(last.line, last.text + " " + stripped, last.output)
                continue
            if stripped.startswith("#"):
                assert commands, f"{snippet.id}: a comment before any command"
                commands[-1].output.append(stripped[1:].strip())
                continue
            pending_line = snippet.line + 1 + n
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        try:
            commands.append(_parse(pending_line, pending, []))
        except ValueError as e:  # shlex: "No closing quotation": the quote goes on on the next line
            assert "quotation" in str(e), f"{snippet.id}: {e}"
            pending += "\n"
            continue
        pending = ""
    assert not pending, f"{snippet.id}: a command never ends (a backslash or an open quote)"
    return commands


def _parse(line: int, text: str, output: list[str]) -> Command:
    words = shlex.split(text, comments=True)
    env: dict[str, str] = {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    pipe: list[list[str]] = []
    if "|" in words:
        at = words.index("|")
        rest = words[at + 1 :]
        words = words[:at]
        while rest:
            nxt = rest.index("|") if "|" in rest else len(rest)
            pipe.append(rest[:nxt])
            rest = rest[nxt + 1 :]
    return Command(line, _without_comment(text), words, env, pipe, output)


def _without_comment(text: str) -> str:
    """The command as written, without its trailing ``# comment`` (a ``#`` inside quotes stays)."""
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text.strip()


# -- documented replies -------------------------------------------------------------------------------

ANY_LIST = "\u2026list"
ANY_DICT = "\u2026dict"


def parse_reply(text: str) -> Any:
    """A documented JSON reply, where ``[...]`` and ``{...}`` stand for any list or object and
    ``...`` inside a string for any text."""
    return json.loads(text.replace("[...]", json.dumps(ANY_LIST)).replace("{...}", json.dumps(ANY_DICT)))


def text_pattern(doc: str, ports: dict[int, int]) -> re.Pattern[str]:
    """A documented line as a pattern: ``...`` is any text, a URL's host is any host, and a documented
    port is the port the test's sidecar actually uses."""
    out = []
    for part in re.split(r"(\.\.\.|://[^/:\s]+(?=:\d)|:\d{2,5}\b)", doc):
        if part == "...":
            out.append(".*")
        elif part.startswith("://"):
            out.append(r"://[^/:\s]+")
        elif re.fullmatch(r":\d{2,5}", part):
            out.append(":" + str(ports.get(int(part[1:]), int(part[1:]))))
        else:
            out.append(re.escape(part))
    return re.compile("".join(out), re.DOTALL)


def compare_reply(doc: Any, actual: Any, ports: dict[int, int], where: str = "reply") -> list[str]:
    """Differences between a documented reply (parse_reply) and a real one: the same keys, the same
    scalar values (strings as text_pattern), any value where the docs say ``...``."""
    if doc == ANY_LIST:
        return [] if isinstance(actual, list) else [f"{where}: a list documented, got {actual!r}"]
    if doc == ANY_DICT:
        return [] if isinstance(actual, dict) else [f"{where}: an object documented, got {actual!r}"]
    if isinstance(doc, dict):
        if not isinstance(actual, dict):
            return [f"{where}: an object documented, got {actual!r}"]
        problems = []
        if set(doc) != set(actual):
            problems.append(
                f"{where}: documented keys {sorted(doc)}, the sidecar answered {sorted(actual)} "
                f"(missing from the docs: {sorted(set(actual) - set(doc))}; not in the reply: "
                f"{sorted(set(doc) - set(actual))})"
            )
        for key in set(doc) & set(actual):
            problems += compare_reply(doc[key], actual[key], ports, f"{where}.{key}")
        return problems
    if isinstance(doc, list):
        if not isinstance(actual, list) or len(doc) != len(actual):
            return [f"{where}: documented {doc!r}, got {actual!r}"]
        return [
            p
            for i, (d, a) in enumerate(zip(doc, actual, strict=True))
            for p in compare_reply(d, a, ports, f"{where}[{i}]")
        ]
    if isinstance(doc, str) and isinstance(actual, str):
        if text_pattern(doc, ports).fullmatch(actual):
            return []
        return [f"{where}: documented {doc!r}, got {actual!r}"]
    return [] if doc == actual else [f"{where}: documented {doc!r}, got {actual!r}"]


def missing_lines(documented: list[str], actual: list[str], ports: dict[int, int]) -> list[str]:
    """Documented output lines not found, in order, among the actual ones (a lone ``...`` is any
    number of lines)."""
    missing = []
    at = 0
    for doc in documented:
        if doc.strip() == "...":
            continue
        pattern = text_pattern(doc, ports)
        for k in range(at, len(actual)):
            if pattern.fullmatch(actual[k].strip()):
                at = k + 1
                break
        else:
            missing.append(doc)
    return missing
