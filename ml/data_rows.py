"""One row of a dataset file normalised to the stored form (ml.data_formats reads the files): the shapes' rules,
chat turns rendered as one prompt, and errors that name the row and the column."""

from __future__ import annotations

import json
import re
from typing import Any

CHAT_COLUMNS = ("messages", "conversations")
PREFERENCE_SHAPES = ("preferences", "preferences_messages")
# Role names as OpenAI and ShareGPT write them, to the three a prompt can hold.
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "model": "assistant"}
ROLES |= {"bot": "assistant", "system": "system"}
ROLE_LABELS = {"user": "User", "assistant": "Assistant", "system": "System"}
SURROGATE = re.compile("[\ud800-\udfff]")


class DataFormatError(ValueError):
    """A file that cannot become a dataset. ``row`` (1-based data row) and ``column`` say where, when known;
    ``field`` is the upload field at fault when it is not the file (``mapping``, ``format``)."""

    def __init__(
        self,
        message: str,
        *,
        row: int | None = None,
        column: str | None = None,
        line: int | None = None,
        field: str = "",
    ) -> None:
        where = ""
        if row is not None:
            where = f"row {row}" + (f" (line {line})" if line is not None and line != row else "")
        if column is not None:
            where += (", " if where else "") + f"column {column!r}"
        super().__init__(f"{where}: {message}" if where else message)
        self.message, self.row, self.column, self.line, self.field = message, row, column, line, field


def type_name(value: Any) -> str:
    return "null (or a missing value)" if value is None else type(value).__name__


def render_turns(turns: list[tuple[str, str]]) -> str:
    """Chat turns as one prompt string: a lone user turn is its text; else one ``Role: text`` paragraph each."""
    if len(turns) == 1 and turns[0][0] == "user":
        return turns[0][1]
    return "\n\n".join(f"{ROLE_LABELS[role]}: {text}" for role, text in turns)


class Row:
    """One source row being normalised; errors name it and the column."""

    def __init__(self, n: int, line: int | None, values: dict[str, Any], json_cells: bool) -> None:
        self.n, self.line, self.values, self.json_cells = n, line, values, json_cells

    def error(self, column: str | None, message: str) -> DataFormatError:
        return DataFormatError(message, row=self.n, column=column, line=self.line)

    def text(self, column: str, *, optional: bool = False) -> str:
        value = self.values.get(column)
        if optional and (value is None or value == ""):
            return ""
        if not isinstance(value, str):
            raise self.error(column, f"expected a string, got {type_name(value)}")
        return self.clean(column, value)

    def clean(self, column: str, value: str) -> str:
        if not value.strip():
            raise self.error(column, "is empty; every row needs text here")
        if SURROGATE.search(value):
            raise self.error(column, "contains a lone UTF-16 surrogate; send valid Unicode")
        return value

    def message_list(self, value: Any) -> list[Any] | None:
        """``value`` as a message list: a list, or in a CSV (whose cells are text) a JSON array of objects."""
        if isinstance(value, list):
            return value
        if self.json_cells and isinstance(value, str) and value.lstrip().startswith("["):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                return None
            if isinstance(parsed, list) and parsed and all(isinstance(m, dict) for m in parsed):
                return parsed
        return None

    def turns(self, column: str, value: Any) -> list[tuple[str, str]]:
        as_list = self.message_list(value)
        value = as_list if as_list is not None else value
        if not isinstance(value, list) or not value:
            raise self.error(column, f"expected a non-empty list of messages, got {type_name(value)}")
        out: list[tuple[str, str]] = []
        for j, m in enumerate(value, start=1):
            if not isinstance(m, dict):
                raise self.error(column, f"message {j} must be an object with role and content, got {type_name(m)}")
            role = m.get("role") if m.get("role") is not None else m.get("from")
            content = m.get("content") if m.get("content") is not None else m.get("value")
            if role not in ROLES:
                raise self.error(
                    column, f"message {j} has role {role!r}; known roles: {', '.join(ROLES)} (in 'role' or 'from')"
                )
            if not isinstance(content, str):
                raise self.error(column, f"message {j}'s content must be a string, got {type_name(content)}")
            if SURROGATE.search(content):
                raise self.error(column, f"message {j} contains a lone UTF-16 surrogate; send valid Unicode")
            out.append((ROLES[role], content))
        return out

    def split_chat(self, column: str, value: Any) -> tuple[list[tuple[str, str]], str | None]:
        """(the turns before the last assistant turn, its text); (all turns, None) when no assistant turn ends it."""
        turns = self.turns(column, value)
        if turns[-1][0] != "assistant":
            return turns, None
        if not turns[-1][1].strip():
            raise self.error(column, "the last assistant turn is empty")
        return turns[:-1], turns[-1][1]

    def prompt_value(self, column: str = "prompt") -> str:
        """The prompt column: a string, or a message list rendered as text."""
        value = self.values.get(column)
        if self.message_list(value) is not None:
            return self.clean(column, render_turns(self.turns(column, value)))
        return self.text(column)

    def answer(self, column: str) -> tuple[str, list[tuple[str, str]] | None]:
        """A chosen/rejected side: (its text, the turns before it when it was a message list)."""
        value = self.values.get(column)
        if isinstance(value, str) and self.message_list(value) is None:
            return self.clean(column, value), None
        if not isinstance(value, (list, str)):
            raise self.error(column, f"expected a string or a list of messages, got {type_name(value)}")
        context, text = self.split_chat(column, value)
        if text is None:
            raise self.error(column, "the message list does not end with an assistant turn (the answer)")
        return text, context


def normalise(shape: str, kind: str, r: Row) -> dict[str, str]:
    """One row in the stored form of ``kind``."""
    response: str | None = None
    if shape in PREFERENCE_SHAPES:
        chosen, chosen_ctx = r.answer("chosen")
        rejected, rejected_ctx = r.answer("rejected")
        if "prompt" in r.values and r.values["prompt"] is not None:
            prompt = r.prompt_value()
        else:
            if not chosen_ctx:
                raise r.error("chosen", "no 'prompt' column and no turns before the answer to take the prompt from")
            if rejected_ctx is not None and rejected_ctx != chosen_ctx:
                raise r.error("rejected", "its turns before the answer differ from the chosen side's (the prompt)")
            prompt = r.clean("chosen", render_turns(chosen_ctx))
        if kind == "preferences":
            return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        return {"prompt": prompt}
    if shape == "messages":
        column = next(c for c in CHAT_COLUMNS if c in r.values)
        context, response = r.split_chat(column, r.values[column])
        if not context:
            raise r.error(column, "has only an assistant turn; a prompt needs at least one turn before it")
        prompt = r.clean(column, render_turns(context))
    elif shape == "alpaca":
        instruction = r.text("instruction")
        extra = r.text("input", optional=True) if "input" in r.values else ""
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        response = r.text("output")
    else:
        prompt = r.prompt_value()
        if shape == "prompt_response":
            response = r.text("response")
    return {"prompt": prompt} | ({"response": response} if response is not None else {})
