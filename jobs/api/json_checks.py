"""JSON from users, parsed so that nothing unstorable gets past it.

Three kinds of input used to turn into 500s or into rows that break every page showing them:

- a lone UTF-16 surrogate (``"\\ud800"``): valid JSON, but not encodable as UTF-8, so PostgreSQL, the
  JSON encoder and every page rendering the row fail on it;
- nesting thousands deep: the stdlib decoder raises RecursionError (and so would anything walking it);
- integers with thousands of digits: Python refuses to convert them (ValueError), and numbers beyond a
  signed 64-bit integer or float range cannot be stored or compared by the databases.

``loads`` parses text with those checks; ``check_value`` walks data already parsed (form fields,
uploaded names) without recursion. Both raise ``UnsafeJSON`` with a message that says what to change.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator

from django.conf import settings

# What both databases store as an integer (signed 64-bit); a limit of the storage, not a policy.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
INT_MAX_DIGITS = len(str(INT_MAX))  # longer literals are refused before Python converts them
SURROGATE = re.compile("[\ud800-\udfff]")


class UnsafeJSON(ValueError):
    """Input that parses but cannot be stored; ``str(exc)`` is the message for the user and ``path``
    the keys/indexes leading to the offending value ([] when the whole text is at fault)."""

    def __init__(self, message: str, path: list | None = None):
        super().__init__(message)
        self.path = path or []


class _Refused:
    """What the decoder hooks return for a literal that must not be converted (a 5000-digit integer,
    NaN): ``check_value`` then reports it with its place in the document."""

    def __init__(self, message: str):
        self.message = message


def max_depth() -> int:
    return settings.JSON_MAX_DEPTH


def _parse_int(literal: str) -> int | _Refused:
    if len(literal.lstrip("-")) > INT_MAX_DIGITS:  # int() of thousands of digits is slow, then refused
        return _Refused(
            f"integer {literal[:12]}... has more than {INT_MAX_DIGITS} digits; integers must fit "
            f"in 64 bits ({INT_MIN} to {INT_MAX})"
        )
    return int(literal)  # the range is checked by check_value


def _parse_constant(name: str) -> _Refused:
    return _Refused(f"{name} is not valid JSON; send a number or null")


def _where(path: list) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _surrogate(text: str, path: list) -> UnsafeJSON:
    found = SURROGATE.search(text)
    bad = found.group() if found else ""
    return UnsafeJSON(
        f"text at {_where(path)} contains a lone UTF-16 surrogate ({ascii(bad)[1:-1]}); "
        f"send valid Unicode (surrogates are only valid in pairs)",
        path,
    )


def check_value(value, *, depth_limit: int | None = None) -> None:
    """Refuse lone surrogates (keys and values), nesting deeper than JSON_MAX_DEPTH and numbers out
    of range anywhere in ``value``. Iterative, so arbitrarily deep input cannot exhaust the stack."""
    limit = max_depth() if depth_limit is None else depth_limit
    stack: list[tuple[object, int, list]] = [(value, 0, [])]
    while stack:
        v, depth, path = stack.pop()
        if isinstance(v, str):
            if SURROGATE.search(v):
                raise _surrogate(v, path)
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, _Refused):
            raise UnsafeJSON(f"at {_where(path)}: {v.message}", path)
        elif isinstance(v, int):
            if not INT_MIN <= v <= INT_MAX:
                raise UnsafeJSON(
                    f"integer at {_where(path)} is out of range; integers must fit in 64 bits ({INT_MIN} to {INT_MAX})",
                    path,
                )
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise UnsafeJSON(
                    f"number at {_where(path)} is too large for a 64-bit float (or not finite); "
                    f"send a smaller number or null",
                    path,
                )
        elif isinstance(v, dict | list | tuple):
            if depth + 1 > limit:
                raise UnsafeJSON(f"JSON at {_where(path)} is nested deeper than {limit} levels; flatten it", path)
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, item in items:
                if isinstance(k, str) and SURROGATE.search(k):
                    raise _surrogate(k, [*path, ascii(k)])
                stack.append((item, depth + 1, [*path, k]))


def loads(text: str | bytes):
    """``json.loads`` that refuses what ``check_value`` refuses, NaN/Infinity, and nesting too deep for
    the stdlib decoder (caught as RecursionError, reported like any other too-deep input)."""
    if isinstance(text, bytes | bytearray):
        text = text.decode("utf-8")  # UnicodeDecodeError is a ValueError: callers report it as bad input
    try:
        value = json.loads(text, parse_int=_parse_int, parse_constant=_parse_constant)
    except RecursionError:
        raise UnsafeJSON(f"JSON is nested deeper than {max_depth()} levels; flatten it") from None
    check_value(value)
    return value


def _lines(chunks: Iterable[bytes], line_limit: int) -> Iterator[bytes]:
    """Lines split on b"\\n" only, as jobs.validation splits them; stops at a line over the limit."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        yield from lines
        if len(buf) > line_limit:
            return
    if buf:
        yield buf


def check_jsonl(chunks: Iterable[bytes], *, line_limit: int) -> None:
    """Refuse an upload whose JSON lines carry what ``loads`` refuses, naming the line.

    Lines that are not UTF-8 or not JSON are left alone: jobs.validation reports those with its own
    messages. Raises UnsafeJSON."""
    for n, raw in enumerate(_lines(chunks, line_limit), start=1):
        if not raw.strip() or len(raw) > line_limit:
            continue
        try:
            loads(raw)
        except UnsafeJSON as exc:
            raise UnsafeJSON(f"line {n}: {exc}") from None
        except ValueError:  # not UTF-8, not JSON: jobs.validation says so
            continue
