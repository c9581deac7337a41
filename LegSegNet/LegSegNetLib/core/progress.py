"""Progress reporting shared by the CLI (a bar on a terminal, plain lines in a log), the worker (JSON lines)
and tests (silent).

The pipeline only calls `stage`, `advance` and `note`; how progress is shown is the caller's choice,
passed in as one of these reporters (`for_stream` picks the bar or the lines). The caller ends a run with
`finish()`, or with `abandon()` when it failed: the error line that follows is then the only line the
failure adds, with no fragment of a bar before it.
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

    def abandon(self) -> None:
        """The run failed: show nothing more of the unfinished stage (its error line comes next)."""
        self.finish()

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


def for_stream(stream: TextIO | None) -> Progress:
    """A bar on a terminal; plain lines (no carriage returns) in a file or a pipe; nothing without a stream
    (Python's sys.stderr is None when the process was started with it closed)."""
    if stream is None:
        return Progress()
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError, OSError):
        interactive = False
    return TerminalProgress(stream) if interactive else LineProgress(stream)


class _StreamProgress(Progress):
    """Writes text to a stream; a stream that fails (closed, full) ends the reporting, never the run."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stderr
        self._broken = False

    def _write(self, text: str) -> None:
        if self._broken:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # ValueError: the stream was closed
            self._broken = True


class TerminalProgress(_StreamProgress):
    """A one-line bar on stderr: stage, slices done / total and time left. Notes go on their own line."""

    def __init__(self, stream: TextIO | None = None, min_interval_s: float = 0.1) -> None:
        super().__init__(stream)
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self._open_line = 0  # characters of the bar now on screen

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
            text = f"{self.stage_name:<12} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}{eta}   "
        else:
            text = f"{self.stage_name}...   "
        width, self._open_line = self._open_line, max(self._open_line, len(text))  # first: a signal may stop the write
        self._write("\r" + text.ljust(width))

    def _emit_note(self, text: str) -> None:
        self._close_line()
        self._write(f"note: {text}\n")

    def _close_line(self) -> None:
        if self._open_line:
            self._write("\n")
            self._open_line = 0

    def stage(self, name: str, total: int | None = None) -> None:
        self._close_line()
        super().stage(name, total)

    def finish(self) -> None:
        self._close_line()

    def abandon(self) -> None:
        if self._open_line:  # blank the unfinished bar and return to the line's start
            self._write("\r" + " " * self._open_line + "\r")
            self._open_line = 0


class LineProgress(_StreamProgress):
    """Progress as plain lines, for a log file or a pipe. A stage gets its line when it is done, and a long
    counted stage one every `interval_s` meanwhile; so a run that fails in its first stage prints only its
    error line. Notes go on their own line at once."""

    def __init__(self, stream: TextIO | None = None, interval_s: float = 30.0) -> None:
        super().__init__(stream)
        self.interval_s = interval_s
        self._last = time.monotonic()
        self._stage_done = True

    def stage(self, name: str, total: int | None = None) -> None:
        self._end_stage()
        self._stage_done = False
        self._last = time.monotonic()
        super().stage(name, total)

    def _emit(self) -> None:
        now = time.monotonic()
        if self.total and 0 < self.done < self.total and now - self._last >= self.interval_s:
            self._last = now
            left = self.seconds_left()
            self._write(
                f"{self.stage_name}: {self.done}/{self.total}"
                + (f", {format_duration(left)} left" if left is not None else "")
                + "\n"
            )

    def _emit_note(self, text: str) -> None:
        self._write(f"note: {text}\n")

    def _end_stage(self) -> None:
        if self._stage_done:
            return
        self._stage_done = True
        took = format_duration(time.monotonic() - self._stage_start)
        done = f"{self.done}/{self.total}" if self.total else "done"
        self._write(f"{self.stage_name}: {done} ({took})\n")

    def finish(self) -> None:
        self._end_stage()

    def abandon(self) -> None:
        self._stage_done = True


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
