"""Progress reporting shared by the CLI (a terminal bar), the worker (JSON lines) and tests (silent).

The pipeline only calls `stage`, `advance` and `note`; how progress is shown is the caller's choice,
passed in as one of these reporters.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Callable, TextIO

from .text import format_duration


class Progress:
    """Silent reporter; the base of the others. Keeps counts so callers can read them."""

    def __init__(self) -> None:
        self.stage_name = ""
        self.total: int | None = None
        self.done = 0
        self.notes: list[str] = []
        self._stage_start = time.monotonic()

    def stage(self, name: str, total: int | None = None) -> None:
        self.stage_name, self.total, self.done = name, total, 0
        self._stage_start = time.monotonic()
        self._emit()

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._emit()

    def note(self, text: str) -> None:
        self.notes.append(text)
        self._emit_note(text)

    def finish(self) -> None:
        pass

    # --- helpers for subclasses
    def seconds_left(self) -> float | None:
        if not self.total or self.done <= 0:
            return None
        elapsed = time.monotonic() - self._stage_start
        return elapsed / self.done * (self.total - self.done)

    def _emit(self) -> None:
        pass

    def _emit_note(self, text: str) -> None:
        pass


class TerminalProgress(Progress):
    """A one-line bar on stderr: stage, slices done / total and time left. Notes go on their own line."""

    def __init__(self, stream: TextIO | None = None, min_interval_s: float = 0.1) -> None:
        super().__init__()
        self.stream = stream or sys.stderr
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self._open_line = False

    def _emit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and self.total and 0 < self.done < self.total and now - self._last < self.min_interval_s:
            return
        self._last = now
        if self.total:
            width = 28
            filled = int(width * min(self.done, self.total) / self.total)
            left = self.seconds_left()
            eta = f" {format_duration(left)} left" if left is not None and self.done < self.total else ""
            text = f"\r{self.stage_name:<12} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}{eta}   "
        else:
            text = f"\r{self.stage_name}...   "
        self.stream.write(text)
        self.stream.flush()
        self._open_line = True

    def _emit_note(self, text: str) -> None:
        self._close_line()
        self.stream.write(f"note: {text}\n")
        self.stream.flush()

    def _close_line(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False

    def stage(self, name: str, total: int | None = None) -> None:
        self._close_line()
        super().stage(name, total)

    def finish(self) -> None:
        self._close_line()


class JsonLinesProgress(Progress):
    """One JSON object per line on stdout, for the Slicer logic that watches the worker process."""

    def __init__(self, stream: TextIO | None = None, on_broken_pipe: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stdout
        self.on_broken_pipe = on_broken_pipe
        self.reader_gone = False

    def _write(self, obj: dict) -> None:
        if self.reader_gone:
            return
        try:
            self.stream.write(json.dumps(obj) + "\n")
            self.stream.flush()
        except BrokenPipeError:
            if self.on_broken_pipe is None:
                raise
            # nobody reads any more (e.g. a launcher in between died): keep quiet and let the owner decide
            self.reader_gone = True
            self.on_broken_pipe()

    def started(self, pid: int) -> None:
        """The first event: the real worker's own pid (a launcher may sit between it and the reader)."""
        self._write({"event": "started", "pid": pid})

    def _emit(self) -> None:
        left = self.seconds_left()
        self._write(
            {
                "event": "progress",
                "stage": self.stage_name,
                "done": self.done,
                "total": self.total,
                "seconds_left": None if left is None else round(left, 1),
            }
        )

    def _emit_note(self, text: str) -> None:
        self._write({"event": "note", "text": text})

    def result(self, **fields) -> None:
        self._write({"event": "result", **fields})

    def error(self, message: str, exit_code: int) -> None:
        self._write({"event": "error", "message": message, "exit_code": exit_code})
