"""Helpers shared by the tests that drive the Slicer logic on real MRML (slicer-core): phantom volume nodes,
what a scene holds, and which run folders and processes a test left behind."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LegSegNetLib.core.tissues import TISSUES
from LegSegNetLib.slicer_logic import tables as slicer_tables
from LegSegNetLib.worker import launcher as worker_process


def image(array_kji, spacing=(0.8, 0.9, 2.5), origin=(10.0, -20.0, 30.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    """A SimpleITK image of a (k, j, i) array with the given LPS geometry."""
    result = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    result.SetSpacing(spacing)
    result.SetOrigin(origin)
    result.SetDirection([float(d) for d in direction])
    return result


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def temp_runs() -> set[str]:
    """The run folders in the temporary folder (another pytest process's test model store is not one)."""
    return {p.name for p in Path(tempfile.gettempdir()).glob("legsegnet-*") if not p.name.startswith("legsegnet-test-")}


def new_descendants(before: set[int]) -> list[int]:
    """Processes this test process started since `before` that are still alive."""
    return [p for p in worker_process.descendants(os.getpid()) if p not in before and worker_process.is_alive(p)]


def kill_group(pid: int | None) -> None:
    """Test clean-up for a worker that outlived its test: its session's group is its pid."""
    if pid and worker_process.is_alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def assert_table_matches(table_node, labels_slab: np.ndarray, hu_slab: np.ndarray, voxel_cm3: float) -> None:
    """The tissue table holds numpy's counts x voxel volume, mean and sample SD of HU for each tissue."""
    rows = {r["Tissue"]: r for r in slicer_tables.table_rows(table_node)}
    for tissue in TISSUES:
        mask = labels_slab == tissue.value
        count = int(mask.sum())
        row = rows[tissue.key]
        assert row["Voxels"] == count, (tissue.key, row["Voxels"], count)
        assert math.isclose(row["Volume (cm3)"], count * voxel_cm3, rel_tol=1e-12), tissue.key
        if count:
            assert math.isclose(row["Mean (HU)"], float(hu_slab[mask].mean()), rel_tol=1e-9, abs_tol=1e-9), tissue.key
        else:
            assert math.isnan(row["Mean (HU)"]), tissue.key
