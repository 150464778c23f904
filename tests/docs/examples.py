"""The runnable examples of the docs, read out of their fenced code blocks.

- **curl examples** (docs/API.md, README.md): every fenced block with a ``curl`` command in it, run as one bash
  script. A command whose line ends with ``# -> NNN`` shows an error on purpose: the harness expects that HTTP
  status from each of its curl calls; every other curl call must answer 2xx.
- **CLI examples** (docs/ML.md): every ``python -m ml ...`` command in a fenced block, continuation lines joined.

Nothing here decides what is an example by a list: a new block or line is picked up by the same rules, so the
docs-run test runs it (or fails saying it could not).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CURL_DOCS = ("docs/API.md", "README.md")
CLI_DOCS = ("docs/ML.md",)

FENCE = re.compile(r"^\s*```(\S*)\s*$")
EXPECT = re.compile(r"#\s*->\s*(\d{3})\b")  # `# -> 404 (why)`: the comment starts with the status
# `curl` in command position: first in the command or right after `;`, `|`, `&&`, `$(`, a backtick; not an
# argument (`grep curl`) nor in a comment (stripped first). A curl in another position (`time curl`) is not
# counted but still reports a status when run, so the docs run fails on the mismatch instead of skipping it.
CURL_WORD = re.compile(r"(?:^|[;|&(`])\s*curl(?=\s|$)", re.M)
SHELL_LANGS = ("bash", "sh", "shell", "console", "")  # blocks read as shell (an unlabelled fence too)
ML_COMMAND = re.compile(r"^(?:\S*/)?python3? -m ml(?:\s|$)")


@dataclass
class Command:
    """One logical shell command: its lines joined where they end with a backslash."""

    line: int  # 1-based line number in the doc of its first line
    text: str  # as written, comment included
    code: str  # without the trailing comment

    @property
    def expect(self) -> int | None:
        """The HTTP status a ``# -> NNN`` comment says each of its curl calls answers, else None (2xx)."""
        m = EXPECT.search(self.text)
        return int(m.group(1)) if m else None

    @property
    def curl_calls(self) -> int:
        return len(CURL_WORD.findall(self.code))


@dataclass
class Block:
    doc: str  # path relative to the repository
    line: int  # line number of the opening fence
    lang: str
    body: str
    commands: list[Command] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def curl_calls(self) -> int:
        return sum(c.curl_calls for c in self.commands)


def scan_line(line: str, quote: str) -> tuple[str, str]:
    """The code of one line (a shell comment cut off: a '#' at the start or after a blank, outside quotes)
    and the quote still open at its end ('' when none; a quoted JSON body may span lines)."""
    out: list[str] = []
    escaped = False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            break
        out.append(ch)
    return "".join(out), quote


def split_commands(body: str, first_line: int) -> list[Command]:
    """The logical commands of a block: lines joined where one ends with a backslash or inside quotes."""
    out: list[Command] = []
    text: list[str] = []
    code = ""
    quote = ""
    start = first_line
    for offset, raw in enumerate(body.splitlines()):
        if not text:
            start = first_line + offset
        part, quote = scan_line(raw, quote)
        text.append(raw)
        if quote:  # a newline inside quotes is part of the word
            code += part + "\n"
        elif part.rstrip().endswith("\\"):
            code += part.rstrip()[:-1] + " "
        else:
            out.append(Command(start, "\n".join(text), (code + part).strip()))
            text, code = [], ""
    assert not text, f"line {start}: a command never ends (an open quote or a trailing backslash)"
    return [c for c in out if c.code or c.expect is not None]


def fenced_blocks(doc: str) -> list[Block]:
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    open_at: int | None = None
    lang = ""
    for i, line in enumerate(lines):
        m = FENCE.match(line)
        if not m:
            continue
        if open_at is None:
            open_at, lang = i, m.group(1)
        else:
            body = "\n".join(lines[open_at + 1 : i])
            commands = split_commands(body, open_at + 2) if lang in SHELL_LANGS else []
            blocks.append(Block(doc, open_at + 1, lang, body, commands))
            open_at = None
    assert open_at is None, f"{doc}:{open_at + 1 if open_at is not None else 0}: a code fence is never closed"
    return blocks


def curl_blocks(docs: tuple[str, ...] = CURL_DOCS) -> list[Block]:
    """Every shell block with at least one curl call: each is an example to run."""
    return [b for doc in docs for b in fenced_blocks(doc) if b.curl_calls]


def curl_outside_shell(docs: tuple[str, ...] = CURL_DOCS) -> list[str]:
    """Blocks in another language (json, python...) that show a curl command: nothing would run them."""
    return [b.where for doc in docs for b in fenced_blocks(doc) if not b.commands and CURL_WORD.search(b.body)]


@dataclass
class MlExample:
    where: str
    text: str  # the command as written
    argv: list[str]  # its words after `python -m ml`, placeholders not yet replaced


def ml_examples(docs: tuple[str, ...] = CLI_DOCS) -> list[MlExample]:
    """Every `python -m ml ...` command in a fenced block. Other lines of those blocks must be comments or
    `export NAME=value` (what the harness sets itself): anything else would be a command that nothing runs."""
    out: list[MlExample] = []
    for doc in docs:
        for block in fenced_blocks(doc):
            commands = [c for c in block.commands if c.code]
            if not any(ML_COMMAND.match(c.code) for c in commands):
                continue
            for c in commands:
                where = f"{doc}:{c.line}"
                if ML_COMMAND.match(c.code):
                    words = shlex.split(c.code)
                    out.append(MlExample(where, c.text, words[3:]))
                else:
                    assert re.fullmatch(r"export \w+=\S+", c.code), f"{where}: not a command the harness runs: {c.code}"
    return out


def ml_mentions(docs: tuple[str, ...] = CLI_DOCS) -> int:
    """How many fenced-block lines start a `python -m ml` command, counted on the raw text (not through the
    parser above): the docs-run test checks that it ran exactly that many."""
    n = 0
    for doc in docs:
        inside = False
        for line in (ROOT / doc).read_text(encoding="utf-8").splitlines():
            if FENCE.match(line):
                inside = not inside
            elif inside and ML_COMMAND.match(line.strip()):
                n += 1
    return n
