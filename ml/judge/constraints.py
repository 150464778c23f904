"""Verifiable instruction-following constraints: how each is written into a prompt, read back from
the prompt text, and checked on a response.

Each constraint kind has
- an id (IFEval's naming where the meaning matches IFEval's, ``congweb:...`` where it is our own),
- ``render(kwargs) -> str``: the sentence appended to a task to state the constraint,
- ``parse(text) -> list[kwargs]``: the same sentences found again in any prompt text (so the gold reward
  needs nothing but the prompt: ``parse_constraints(render(...))`` gives the constraints back exactly),
- ``check(response, kwargs) -> bool``.

All checkers are the project's own and need no data files: IFEval's reference sentence counter needs
NLTK's punkt model, which nothing installable offline ships, so sentences are counted with a regex here.
Where our meaning equals IFEval's, tests compare our checkers with if-verifiable's on the same responses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_WORD = re.compile(r"\w+")


def count_words(text: str) -> int:
    """Runs of word characters, as IFEval counts words (``RegexpTokenizer(r"\\w+")``)."""
    return len(_WORD.findall(text))


# Abbreviations whose dot does not end a sentence (lowercase, without the final dot).
_ABBREV = {"e.g", "i.e", "etc", "mr", "mrs", "ms", "dr", "prof", "st", "vs", "approx", "no", "fig", "jr", "sr"}
_SENT_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")


def split_sentences(text: str) -> list[str]:
    """Sentences: pieces ending in . ! or ? followed by whitespace or the end of the text; a line break
    also ends a sentence (list items, headings). Dots inside numbers (3.5) and after common
    abbreviations (e.g., Dr.) do not end one. Pieces without a word character (a stray "***") are dropped.
    """
    out: list[str] = []
    for line in re.split(r"\n+", text):
        start = 0
        for m in _SENT_END.finditer(line):
            if m.group(0) == ".":
                before = re.search(r"([\w.]+)$", line[: m.start()])
                if before and before.group(1).lower() in _ABBREV:
                    continue  # "e.g. this" or "Dr. Smith" does not end the sentence
            out.append(line[start : m.end()])
            start = m.end()
        out.append(line[start:])
    return [s.strip() for s in out if _WORD.search(s)]


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def _strip_fences(text: str) -> str:
    """An answer wrapped in a markdown code fence (```json ... ```) still counts as JSON, as in IFEval."""
    t = text.strip()
    t = re.sub(r"^```(?:json|JSON|Json)?\s*", "", t)
    t = re.sub(r"\s*```$", "", t)
    return t.strip()


def _has_word(text: str, word: str) -> bool:
    return re.search(r"\b" + re.escape(word) + r"\b", text, flags=re.IGNORECASE) is not None


def _count_word(text: str, word: str) -> int:
    return len(re.findall(r"\b" + re.escape(word) + r"\b", text, flags=re.IGNORECASE))


def _first_word(text: str) -> str:
    # Leading markdown or quoting (#, *, ", >) is decoration, not the first word.
    m = _WORD.search(text.strip())
    return m.group(0) if m else ""


def _bullets(text: str) -> int:
    """Markdown bullet lines ("* item" or "- item"), as IFEval counts them."""
    stars = re.findall(r"^\s*\*[^\*].*$", text, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", text, flags=re.MULTILINE)
    return len(stars) + len(dashes)


def _paragraphs(text: str) -> int:
    return len([p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()])


def _quoted_list(words: list[str], joiner: str) -> str:
    q = [f"'{w}'" for w in words]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + f" {joiner} " + q[-1]


def _words(items: list[str]) -> str:
    return "word" if len(items) == 1 else "words"


def _unquote_list(s: str) -> list[str]:
    return re.findall(r"'([^']+)'", s)


def _relation_phrase(relation: str) -> str:
    return {"less than": "fewer than", "at least": "at least"}[relation]


_REL = r"(fewer than|at least)"


def _relation_of(phrase: str) -> str:
    return {"fewer than": "less than", "at least": "at least"}[phrase]


def _compare(n: int, relation: str, bound: int) -> bool:
    if relation == "less than":
        return n < bound
    if relation == "at least":
        return n >= bound
    raise ValueError(f"relation must be 'less than' or 'at least', not {relation!r}")


@dataclass(frozen=True)
class Kind:
    id: str
    render: Callable[[dict[str, Any]], str]
    pattern: re.Pattern[str]
    from_match: Callable[[re.Match[str]], dict[str, Any]]
    check: Callable[[str, dict[str, Any]], bool]
    ifeval_same: bool  # True when IFEval's checker with the same id and kwargs means the same thing

    def parse(self, text: str) -> list[dict[str, Any]]:
        return [self.from_match(m) for m in self.pattern.finditer(text)]


KINDS: dict[str, Kind] = {}


def _kind(**kw: Any) -> None:
    k = Kind(**kw)
    KINDS[k.id] = k


_kind(
    id="length_constraints:number_words",
    render=lambda k: f"Answer in {_relation_phrase(k['relation'])} {k['num_words']} words.",
    pattern=re.compile(rf"Answer in {_REL} (\d+) words\."),
    from_match=lambda m: {"relation": _relation_of(m.group(1)), "num_words": int(m.group(2))},
    check=lambda r, k: _compare(count_words(r), k["relation"], k["num_words"]),
    ifeval_same=True,
)

_kind(
    id="length_constraints:number_sentences",
    render=lambda k: f"Use {_relation_phrase(k['relation'])} {k['num_sentences']} sentences.",
    pattern=re.compile(rf"Use {_REL} (\d+) sentences\."),
    from_match=lambda m: {"relation": _relation_of(m.group(1)), "num_sentences": int(m.group(2))},
    check=lambda r, k: _compare(count_sentences(r), k["relation"], k["num_sentences"]),
    ifeval_same=False,
)  # same meaning, but IFEval counts with NLTK punkt (not available offline)

_kind(
    id="keywords:existence",
    render=lambda k: f"Include the {_words(k['keywords'])} {_quoted_list(k['keywords'], 'and')}.",
    pattern=re.compile(r"Include the words? ((?:'[^']+'(?:, | and )?)+)\."),
    from_match=lambda m: {"keywords": _unquote_list(m.group(1))},
    check=lambda r, k: all(_has_word(r, w) for w in k["keywords"]),
    ifeval_same=False,
)  # IFEval matches substrings; we match whole words

_kind(
    id="keywords:forbidden_words",
    render=lambda k: f"Do not use the {_words(k['forbidden_words'])} {_quoted_list(k['forbidden_words'], 'or')}.",
    pattern=re.compile(r"Do not use the words? ((?:'[^']+'(?:, | or )?)+)\."),
    from_match=lambda m: {"forbidden_words": _unquote_list(m.group(1))},
    check=lambda r, k: not any(_has_word(r, w) for w in k["forbidden_words"]),
    ifeval_same=True,
)

_kind(
    id="keywords:frequency",
    render=lambda k: f"Use the word '{k['keyword']}' {_relation_phrase(k['relation'])} {k['frequency']} times.",
    pattern=re.compile(rf"Use the word '([^']+)' {_REL} (\d+) times\."),
    from_match=lambda m: {"keyword": m.group(1), "relation": _relation_of(m.group(2)), "frequency": int(m.group(3))},
    check=lambda r, k: _compare(_count_word(r, k["keyword"]), k["relation"], k["frequency"]),
    ifeval_same=False,
)  # IFEval counts substrings

_kind(
    id="detectable_format:number_bullet_lists",
    render=lambda k: (
        f"Format the answer as exactly {k['num_bullets']} markdown bullet points, each line starting with '* '."
    ),
    pattern=re.compile(r"Format the answer as exactly (\d+) markdown bullet points, each line starting with '\* '\."),
    from_match=lambda m: {"num_bullets": int(m.group(1))},
    check=lambda r, k: _bullets(r) == k["num_bullets"],
    ifeval_same=True,
)

_kind(
    id="detectable_format:json_format",
    render=lambda k: "Give the whole answer as valid JSON.",
    pattern=re.compile(r"Give the whole answer as valid JSON\."),
    from_match=lambda m: {},
    check=lambda r, k: _is_json(r),
    ifeval_same=True,
)

_kind(
    id="change_case:english_lowercase",
    render=lambda k: "Write the whole answer in lowercase letters, with no capital letters at all.",
    pattern=re.compile(r"Write the whole answer in lowercase letters, with no capital letters at all\."),
    from_match=lambda m: {},
    check=lambda r, k: r == r.lower() and any(c.isalpha() for c in r),
    ifeval_same=False,
)  # IFEval also requires langdetect to say English

_kind(
    id="change_case:english_capital",
    render=lambda k: "Write the whole answer in capital letters only.",
    pattern=re.compile(r"Write the whole answer in capital letters only\."),
    from_match=lambda m: {},
    check=lambda r, k: r == r.upper() and any(c.isalpha() for c in r),
    ifeval_same=False,
)

_kind(
    id="startend:end_checker",
    render=lambda k: f'End the answer with the exact phrase "{k["end_phrase"]}".',
    pattern=re.compile(r"End the answer with the exact phrase \"([^\"]+)\"\."),
    from_match=lambda m: {"end_phrase": m.group(1)},
    check=lambda r, k: r.strip().strip('"').lower().endswith(k["end_phrase"].strip().lower()),
    ifeval_same=True,
)

_kind(
    id="congweb:first_word",
    render=lambda k: f"Begin the answer with the word '{k['first_word']}'.",
    pattern=re.compile(r"Begin the answer with the word '([^']+)'\."),
    from_match=lambda m: {"first_word": m.group(1)},
    check=lambda r, k: _first_word(r).lower() == k["first_word"].lower(),
    ifeval_same=False,
)

_kind(
    id="congweb:paragraphs",
    render=lambda k: f"Write exactly {k['num_paragraphs']} paragraphs separated by blank lines.",
    pattern=re.compile(r"Write exactly (\d+) paragraphs separated by blank lines\."),
    from_match=lambda m: {"num_paragraphs": int(m.group(1))},
    check=lambda r, k: _paragraphs(r) == k["num_paragraphs"],
    ifeval_same=False,
)  # IFEval separates paragraphs with *** instead

_kind(
    id="detectable_format:title",
    render=lambda k: "Give the answer a title wrapped in double angular brackets, such as <<a title>>.",
    pattern=re.compile(r"Give the answer a title wrapped in double angular brackets, such as <<a title>>\."),
    from_match=lambda m: {},
    check=lambda r, k: any(t.strip() for t in re.findall(r"<<([^\n]+?)>>", r)),
    ifeval_same=True,
)

_kind(
    id="punctuation:no_comma",
    render=lambda k: "Do not use any commas.",
    pattern=re.compile(r"Do not use any commas\."),
    from_match=lambda m: {},
    check=lambda r, k: "," not in r,
    ifeval_same=True,
)

_kind(
    id="detectable_content:postscript",
    render=lambda k: f"At the end, add a postscript starting with {k['postscript_marker']}",
    pattern=re.compile(r"At the end, add a postscript starting with (P\.S\.|P\.P\.S\.)"),
    from_match=lambda m: {"postscript_marker": m.group(1)},
    check=lambda r, k: _has_postscript(r, k["postscript_marker"]),
    ifeval_same=True,
)

_kind(
    id="startend:quotation",
    render=lambda k: "Wrap the whole answer in double quotation marks.",
    pattern=re.compile(r"Wrap the whole answer in double quotation marks\."),
    from_match=lambda m: {},
    check=lambda r, k: len(r.strip()) > 1 and r.strip()[0] == '"' and r.strip()[-1] == '"',
    ifeval_same=True,
)


def _is_json(text: str) -> bool:
    try:
        json.loads(_strip_fences(text))
    except ValueError:
        return False
    return True


def _has_postscript(text: str, marker: str) -> bool:
    # A line starting with the marker, as IFEval checks it ("P.S." also accepts "P. S.").
    if marker == "P.S.":
        pat = r"\s*p\.\s?s\..*$"
    else:
        pat = r"\s*" + re.escape(marker.lower()) + r".*$"
    return re.search(pat, text.lower(), flags=re.MULTILINE) is not None


# ---------------------------------------------------------------------------------------------------
# Constraint lists


def render(constraint: dict[str, Any]) -> str:
    """The instruction sentence for one constraint ({"id": ..., "kwargs": {...}})."""
    kind = KINDS.get(constraint["id"])
    if kind is None:
        raise ValueError(f"unknown constraint id {constraint['id']!r}; known: {', '.join(sorted(KINDS))}")
    return kind.render(constraint.get("kwargs") or {})


def parse_constraints(prompt: str) -> list[dict[str, Any]]:
    """Every constraint stated in the prompt text, in the order they appear."""
    found: list[tuple[int, dict[str, Any]]] = []
    for kind in KINDS.values():
        for m in kind.pattern.finditer(prompt):
            found.append((m.start(), {"id": kind.id, "kwargs": kind.from_match(m)}))
    return [c for _, c in sorted(found, key=lambda t: t[0])]


def check(constraint: dict[str, Any], response: str) -> bool:
    kind = KINDS.get(constraint["id"])
    if kind is None:
        raise ValueError(f"unknown constraint id {constraint['id']!r}; known: {', '.join(sorted(KINDS))}")
    return bool(kind.check(response, constraint.get("kwargs") or {}))
