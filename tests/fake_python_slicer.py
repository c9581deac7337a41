#!/usr/bin/env python3
"""A stand-in for Slicer's `PythonSlicer` launcher, for tests.

    fake_python_slicer.py ARGS...      runs `<this interpreter> ARGS...` as its child

Like the real launcher it starts the real interpreter as a child with the same arguments, hands it its
own stdin/stdout/stderr (the reader's pipes stay open while the child lives), returns the child's exit
status, and handles no signals: SIGTERM ends the launcher at once and is not forwarded. With
FAKE_LAUNCHER_OWN_GROUP=1 the child also gets a process group of its own, so not even a signal to the
launcher's group reaches it (the strictest case: only its pid does).
"""

import os
import signal
import subprocess
import sys


def main() -> int:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # die at once, forward nothing
    own_group = os.environ.get("FAKE_LAUNCHER_OWN_GROUP") == "1"
    child = subprocess.Popen([sys.executable, *sys.argv[1:]], start_new_session=own_group)
    code = child.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
