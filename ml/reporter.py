"""The small protocol through which ml stages report progress and are cancelled.

The web app passes an implementation that writes JobEvent rows and streams them; the CLI passes a
tqdm-backed one; tests pass ``RecordingReporter``. Stages must call ``should_stop()`` between units
of work (batches, training steps) and return early, keeping what they wrote, when it says True.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Reporter(Protocol):
    def progress(self, stage: str, done: int, total: int) -> None: ...

    def metric(self, name: str, value: float, step: int | None = None) -> None: ...

    def sample(self, data: dict[str, Any]) -> None: ...

    def log(self, msg: str) -> None: ...

    def should_stop(self) -> bool: ...


class NullReporter:
    """Reports nothing and never asks to stop."""

    def progress(self, stage: str, done: int, total: int) -> None:
        pass

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        pass

    def sample(self, data: dict[str, Any]) -> None:
        pass

    def log(self, msg: str) -> None:
        pass

    def should_stop(self) -> bool:
        return False


class RecordingReporter(NullReporter):
    """Keeps every call in memory; ``stop_after`` makes should_stop() true after N progress calls."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.events: list[tuple[str, Any]] = []
        self.stop_after = stop_after
        self._progress_calls = 0

    def progress(self, stage: str, done: int, total: int) -> None:
        self._progress_calls += 1
        self.events.append(("progress", (stage, done, total)))

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        self.events.append(("metric", (name, value, step)))

    def sample(self, data: dict[str, Any]) -> None:
        self.events.append(("sample", data))

    def log(self, msg: str) -> None:
        self.events.append(("log", msg))

    def should_stop(self) -> bool:
        return self.stop_after is not None and self._progress_calls >= self.stop_after

    def of(self, kind: str) -> list[Any]:
        return [payload for k, payload in self.events if k == kind]


class ConsoleReporter(NullReporter):
    """CLI reporter: progress, logs and metrics on stderr. On a terminal, one tqdm bar per stage; elsewhere (CI, a
    log file, ``2> log``) no carriage returns or cursor escapes: a plain line "stage: done/total" at the first
    report, at most every ``line_every`` seconds after it, and at the end, the stage's latest metrics on it."""

    def __init__(self, quiet: bool = False, line_every: float = 10.0) -> None:
        self.quiet = quiet
        self.lines = not on_terminal()
        self.line_every = line_every
        self._bars: dict[str, Any] = {}
        self._last_line: dict[str, float] = {}  # stage -> when its last progress line was written (line mode)
        self._post: dict[str, dict[str, str]] = {}  # stage -> its latest metrics, for its next line

    def progress(self, stage: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.lines:
            self._progress_line(stage, done, total)
            return
        from tqdm import tqdm

        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr, leave=True)
        if total and bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()
        if total and done >= total:
            bar.close()
            self._bars.pop(stage, None)

    def _progress_line(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        end = bool(total) and done >= total
        last = self._last_line.get(stage)
        if not end and last is not None and now - last < self.line_every:
            return
        post = " ".join(f"{k}={v}" for k, v in self._post.get(stage, {}).items())
        self._write(f"{stage}: {done}/{total or '?'}" + (f" ({post})" if post else ""))
        if end:  # the stage is over: a rerun of it (resume) starts with a line again
            self._last_line.pop(stage, None)
            self._post.pop(stage, None)
        else:
            self._last_line[stage] = now

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        if self.quiet:
            return
        # Metrics of a running stage ("sft/loss" while the "sft" bar is open) ride on its bar (or its next progress
        # line) instead of breaking it with a new line every few steps.
        for stage in self._last_line if self.lines else self._bars:
            if name.startswith(stage + "/"):
                key, text = name[len(stage) + 1 :], f"{value:.4g}"
                if self.lines:
                    self._post.setdefault(stage, {})[key] = text
                else:
                    self._bars[stage].set_postfix_str(f"{key}={text}", refresh=True)
                return
        at = f" @ {step}" if step is not None else ""
        self._write(f"{name} = {value:.4g}{at}")

    def log(self, msg: str) -> None:
        if not self.quiet:
            self._write(msg)

    def _write(self, line: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {line}"
        if self.lines:
            print(line, file=sys.stderr, flush=True)
            return
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)


def on_terminal() -> bool:
    """Whether stderr is a terminal (where progress bars redraw themselves) rather than a file or a pipe."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False


# Known harmless warnings of the libraries, silenced by exact message where a process starts (quiet_libraries),
# each with why it is harmless. A new warning still shows.
HARMLESS_WARNINGS: list[tuple[str, type[Warning]]] = [
    # TRL's DPOTrainer reads the old property name (transformers 5 renamed it is_activation_checkpointing and keeps
    # the old one as an alias until v6): the value it reads is the same. Nothing of ours calls it.
    ("`is_gradient_checkpointing` is deprecated", FutureWarning),
]


def quiet_libraries() -> None:
    """Called where a process starts (``python -m ml``, the Celery worker), never in library code. Always: silence
    HARMLESS_WARNINGS. Off a terminal: turn off the libraries' own progress bars, which would write carriage returns
    into a log: transformers' ("Loading weights", "Writing model shards"), huggingface_hub's, datasets' ("Building
    labels ...") and every other tqdm bar (TQDM_DISABLE: tqdm reads it when imported, TRL's DPO "Computing reference
    log probs" when it starts). The environment reaches libraries imported later and the processes this one starts
    (``--nproc`` ranks); a library already imported is told directly."""
    import re
    import warnings

    for message, category in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
    if on_terminal():
        return
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
        os.environ.setdefault(name, "1")
    if "transformers" in sys.modules:  # it read HF_HUB_DISABLE_PROGRESS_BARS when imported
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()


def or_null(reporter: Reporter | None) -> Reporter:
    return reporter if reporter is not None else NullReporter()


class FileReporter(NullReporter):
    """The reporter of a stage run in other processes (ml.distributed.Launched): every call is one JSON line
    appended to ``events``, and ``should_stop()`` is true once the ``stop`` file exists or the process that
    launched this one is gone (killed outright: the orphaned ranks then checkpoint and stop instead of training on
    for nobody). ``forward_events`` replays the lines into the launcher's own reporter."""

    def __init__(self, events: str | Path, stop: str | Path, watch_pid: int | None = None) -> None:
        self.events, self.stop, self.watch_pid = Path(events), Path(stop), watch_pid

    def _put(self, kind: str, *args: Any) -> None:
        with self.events.open("a", encoding="utf-8") as f:
            f.write(json.dumps([kind, *args], default=str) + "\n")

    def progress(self, stage: str, done: int, total: int) -> None:
        self._put("progress", stage, done, total)

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        self._put("metric", name, value, step)

    def sample(self, data: dict[str, Any]) -> None:
        self._put("sample", data)

    def log(self, msg: str) -> None:
        self._put("log", msg)

    def should_stop(self) -> bool:
        if self.stop.exists():
            return True
        if self.watch_pid is not None:
            try:
                os.kill(self.watch_pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:  # alive, owned by someone else
                pass
        return False


def forward_events(path: Path, offset: int, reporter: Reporter) -> int:
    """Replay the complete lines of ``path`` from byte ``offset`` into ``reporter``; the offset to resume from (a
    line still being written waits for the next call)."""
    if not path.exists():
        return offset
    with path.open("rb") as f:
        f.seek(offset)
        chunk = f.read()
    end = chunk.rfind(b"\n") + 1
    for line in chunk[:end].splitlines():
        kind, *args = json.loads(line)
        getattr(reporter, kind)(*args)
    return offset + end


class StopOnly(NullReporter):
    """Says nothing but answers should_stop like ``inner``: the reporter of every process but the first when
    several run one stage (one speaks for the group; all must stop together)."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner

    def should_stop(self) -> bool:
        return self.inner.should_stop()
