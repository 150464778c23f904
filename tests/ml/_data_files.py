"""Dataset files built in the tests: the same rows in every format ml.data_formats reads, and the rows each shape
is expected to become. Shared by tests/ml/test_data_formats.py and tests/jobs/test_dataset_upload.py."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

FORMAT_FILES = {"jsonl": "d.jsonl", "json": "d.json", "csv": "d.csv", "parquet": "d.parquet", "arrow": "d.arrow"}


def _msgs(*turns: tuple[str, str], keys: tuple[str, str] = ("role", "content")) -> list[dict[str, str]]:
    return [{keys[0]: r, keys[1]: c} for r, c in turns]


# shape name -> (the kind to upload as, source rows, the rows they must become)
SHAPE_CASES: dict[str, tuple[str, list[dict[str, Any]], list[dict[str, str]]]] = {
    "prompt": (
        "prompts",
        [{"prompt": "Write a haiku."}, {"prompt": "42"}, {"prompt": "Name a colour."}],
        [{"prompt": "Write a haiku."}, {"prompt": "42"}, {"prompt": "Name a colour."}],
    ),
    "prompt_response": (
        "prompts",
        [{"prompt": "2+2?", "response": "4"}, {"prompt": "Capital of France?", "response": "Paris, of course"}],
        [{"prompt": "2+2?", "response": "4"}, {"prompt": "Capital of France?", "response": "Paris, of course"}],
    ),
    "preferences": (
        "preferences",
        [{"prompt": "Greet me", "chosen": "Hello!", "rejected": "No.", "score": "7"}],
        [{"prompt": "Greet me", "chosen": "Hello!", "rejected": "No."}],
    ),
    "preferences_messages": (  # UltraFeedback (HuggingFaceH4/ultrafeedback_binarized) rows
        "preferences",
        [
            {
                "prompt": "Greet me",
                "chosen": _msgs(("user", "Greet me"), ("assistant", "Hello!")),
                "rejected": _msgs(("user", "Greet me"), ("assistant", "No.")),
            },
            {
                "prompt": "2+2?",
                "chosen": _msgs(("user", "2+2?"), ("assistant", "4")),
                "rejected": _msgs(("user", "2+2?"), ("assistant", "5")),
            },
        ],
        [
            {"prompt": "Greet me", "chosen": "Hello!", "rejected": "No."},
            {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        ],
    ),
    "messages": (  # OpenAI chat rows: single-turn, multi-turn with a system turn, one ending in a user turn
        "prompts",
        [
            {"messages": _msgs(("user", "Hi"), ("assistant", "Hello"))},
            {
                "messages": _msgs(
                    ("system", "Be brief."),
                    ("user", "Hi"),
                    ("assistant", "Hello"),
                    ("user", "Bye?"),
                    ("assistant", "Bye"),
                )
            },
            {"messages": _msgs(("user", "Just asking"))},
        ],
        [
            {"prompt": "Hi", "response": "Hello"},
            {"prompt": "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello\n\nUser: Bye?", "response": "Bye"},
            {"prompt": "Just asking"},
        ],
    ),
    "sharegpt": (
        "prompts",
        [
            {"conversations": _msgs(("human", "Tell a joke"), ("gpt", "Knock knock"), keys=("from", "value"))},
            {"conversations": _msgs(("human", "Why?"), ("gpt", "Because"), keys=("from", "value"))},
        ],
        [{"prompt": "Tell a joke", "response": "Knock knock"}, {"prompt": "Why?", "response": "Because"}],
    ),
    "alpaca": (
        "prompts",
        [
            {"instruction": "Translate to French", "input": "cat", "output": "chat"},
            {"instruction": "Name a prime", "input": "", "output": "7"},
        ],
        [{"prompt": "Translate to French\n\ncat", "response": "chat"}, {"prompt": "Name a prime", "response": "7"}],
    ),
}
# The shape ml.data_formats reports for each case (ShareGPT is a `messages` shape).
SHAPE_NAMES = {k: ("messages" if k == "sharegpt" else k) for k in SHAPE_CASES}


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)  # a CSV cell is text: lists as JSON


def encode(fmt: str, rows: list[dict[str, Any]]) -> bytes:
    """``rows`` as the bytes of a file in ``fmt`` (Arrow: the IPC file format; ``arrow_stream`` the stream one)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if fmt == "json":
        return json.dumps(rows, ensure_ascii=False, indent=1).encode()
    if fmt == "csv":
        out = io.StringIO()
        cols = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(out, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(v) for k, v in r.items()})
        return out.getvalue().encode()
    table = pa.Table.from_pylist(rows)
    sink = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(table, sink)
    elif fmt == "arrow":
        with pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
    elif fmt == "arrow_stream":  # what datasets' save_to_disk writes
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
    else:
        raise ValueError(fmt)
    return sink.getvalue()
