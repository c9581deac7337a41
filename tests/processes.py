"""A test's child process whose output is read continuously, so it can never block on a full pipe; one whose
stderr is a terminal, to see the progress bar a person sees."""

from __future__ import annotations

import os
import subprocess
import threading
import time


class _Child:
    """What both kinds share: `process` (a Popen) and `_readers` (threads that read its output)."""

    process: subprocess.Popen
    _readers: list[threading.Thread]

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def send_signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return code

    def stop(self) -> None:
        """Kill it if it still runs (for `finally`)."""
        if self.process.poll() is None:
            self.process.kill()
        self.wait(timeout=30)


class DrainedProcess(_Child):
    """`subprocess.Popen` with stdout and stderr collected by reader threads while it runs.

    A child that writes more than a pipe holds (64 KiB) blocks until someone reads; a test that only reads
    after its wait would leave such a child hanging when that wait fails. Use `stop()` in a `finally`.
    """

    def __init__(self, command, **popen_options) -> None:
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace", **popen_options
        )
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=self._drain, args=(stream, into), daemon=True)
            for stream, into in ((self.process.stdout, self._out), (self.process.stderr, self._err))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _drain(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    @property
    def stderr(self) -> str:
        return "".join(self._err)


class TerminalProcess(_Child):
    """A child whose stderr is a terminal (a pseudo-terminal), as when a person runs the command: the CLI
    shows its progress bar there. The bar's text is collected while it runs, so a test can wait for a stage.
    Use `stop()` in a `finally`."""

    def __init__(self, command, **popen_options) -> None:
        import pty  # POSIX only, like the terminal it stands for

        leader, follower = pty.openpty()
        try:
            self.process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=follower, text=True, errors="replace", **popen_options
            )
        finally:
            os.close(follower)
        self._leader = leader
        self._closed = False
        self._text: list[str] = []
        self._changed = threading.Condition()
        self._out: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_terminal, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_terminal(self) -> None:
        while True:
            try:
                chunk = os.read(self._leader, 4096)
            except OSError:  # EIO: the child closed its end
                chunk = b""
            with self._changed:
                if chunk:
                    self._text.append(chunk.decode("utf-8", "replace"))
                else:
                    self._closed = True
                self._changed.notify_all()
            if not chunk:
                os.close(self._leader)
                return

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            self._out.append(line)

    @property
    def terminal(self) -> str:
        """What was written to the terminal, raw (with carriage returns); the terminal turns \\n into \\r\\n."""
        with self._changed:
            return "".join(self._text).replace("\r\n", "\n")

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    def wait_for_text(self, text: str, timeout: float) -> None:
        """Block until `text` has appeared on the terminal; AssertionError (with what was shown) if it does not."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while text not in "".join(self._text):
                left = deadline - time.monotonic()
                assert left > 0 and not self._closed, (
                    f"'{text}' never shown; the terminal showed: {''.join(self._text)!r}"
                )
                self._changed.wait(left)


def visible_lines(terminal_text: str) -> list[str]:
    """The non-blank lines a terminal shows for this output: a carriage return goes back to the line's start,
    and what follows overwrites what was there."""
    shown = []
    for line in terminal_text.split("\n"):
        screen = ""
        for piece in line.split("\r"):
            screen = piece + screen[len(piece) :]
        if screen.strip():
            shown.append(screen.rstrip())
    return shown


def stop(process: subprocess.Popen | None, *pids: int | None) -> None:
    """Test clean-up for a `finally`: kill `process` (and the other processes `pids` it left, e.g. a worker
    behind a launcher) if they still run, reap it and close its pipes."""
    import os
    import signal

    for pid in pids:
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    if process is None:
        return
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()
