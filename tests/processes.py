"""A test's child process whose output is read continuously, so it can never block on a full pipe."""
from __future__ import annotations

import subprocess
import threading


class DrainedProcess:
    """`subprocess.Popen` with stdout and stderr collected by reader threads while it runs.

    A child that writes more than a pipe holds (64 KiB) blocks until someone reads; a test that only reads
    after its wait would leave such a child hanging when that wait fails. Use `stop()` in a `finally`.
    """

    def __init__(self, command, **popen_options) -> None:
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        errors="replace", **popen_options)
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [threading.Thread(target=self._drain, args=(stream, into), daemon=True)
                         for stream, into in ((self.process.stdout, self._out), (self.process.stderr, self._err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _drain(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

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


def stop(process: "subprocess.Popen | None", *pids: "int | None") -> None:
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
