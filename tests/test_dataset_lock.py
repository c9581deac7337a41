"""The training set's lock (an flock on LOCK_FILE, taken here with `filelock`, which uses the same flock): a second `dataset add` into the same set waits for the export that holds
the lock, through the real `legsegnet` command, and then adds its slices to what that export committed."""

from __future__ import annotations

import json
import sys
import time

import writers as w
from filelock import FileLock
from processes import DrainedProcess

from LegSegNetLib.annotation.dataset import LOCK_FILE
from LegSegNetLib.annotation.manifest import MANIFEST_FILE

# The real CLI, saying on stdout when it reaches the lock (the moment cannot be seen from outside otherwise)
_ANNOUNCE_THE_LOCK = """
import sys
from LegSegNetLib import cli
from LegSegNetLib.annotation import dataset
real = dataset.dataset_lock
def announced(folder):
    print("at the lock", flush=True)
    return real(folder)
dataset.dataset_lock = announced
sys.exit(cli.main(sys.argv[1:]))
"""
HELD_S = 3.0  # how long the lock stays held after the second export reached it (it needs well under 1 s to finish)


def test_a_second_dataset_add_waits_for_the_lock_and_keeps_the_first_ones_slices(tmp_path):
    ct_path, labels_path, data = w.phantom_training_set(tmp_path, slices="1")
    with FileLock(data / LOCK_FILE):  # another export holds the set
        second = DrainedProcess(
            [
                sys.executable,
                "-c",
                _ANNOUNCE_THE_LOCK,
                "dataset",
                "add",
                str(ct_path),
                str(labels_path),
                "--dataset",
                str(data),
                "--slices",
                "5,6",
                "--quiet",
            ]
        )
        try:
            deadline = time.monotonic() + 120  # reading the CT comes first: seconds, more on a busy CI machine
            while "at the lock" not in second.stdout:
                assert second.poll() is None, f"ended before the lock: {second.stderr}"
                assert time.monotonic() < deadline, "the second export never reached the lock"
                time.sleep(0.05)
            held_until = time.monotonic() + HELD_S
            while time.monotonic() < held_until:
                assert second.poll() is None, f"did not wait for the lock: {second.stderr}"
                time.sleep(0.05)
            entries = json.loads((data / MANIFEST_FILE).read_text())["entries"]
            assert [e["slice_index"] for e in entries] == [1]  # nothing written while the lock was held
        except BaseException:
            second.stop()
            raise
    assert second.wait(timeout=120) == 0, second.stderr
    entries = json.loads((data / MANIFEST_FILE).read_text())["entries"]
    assert sorted(e["slice_index"] for e in entries) == [1, 5, 6]
