"""The Slicer logic driven the way a busy user drives it, on real MRML (slicer-core) and a real worker.

One test per way of going wrong: volumes and segmentations under transforms (measured through the transforms,
slice helpers in world coordinates), Apply again over reviewed slices, a segmentation measured on another
volume, Export after edits without Update, renamed segments, a volume changed while the worker runs, Sample
slices pressed again, output nodes removed mid-run or never in the scene, bad arguments caught before any
node is touched, runs that are never polled, an export that cannot be written, negative spacing, bad export
folders, fractional slice numbers. Numbers are checked against numpy counts x voxel volume.

Every test that starts a worker ends it in a `finally`, whatever its assertions do.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

import mrml_helpers as h  # noqa: E402
import writers as w  # noqa: E402

from LegSegNetLib.annotation.manifest import load_dataset  # noqa: E402
from LegSegNetLib.core.errors import InputError, LegSegNetError  # noqa: E402
from LegSegNetLib.core.tissues import TISSUE_BY_KEY, TISSUES  # noqa: E402
from LegSegNetLib.phantom import make_leg_phantom  # noqa: E402
from LegSegNetLib.slicer_logic import scene as slicer_io  # noqa: E402
from LegSegNetLib.slicer_logic import selftest  # noqa: E402
from LegSegNetLib.slicer_logic import tables as slicer_tables  # noqa: E402
from LegSegNetLib.slicer_logic.annotation_logic import AnnotationLogic  # noqa: E402
from LegSegNetLib.slicer_logic.logic import LegSegNetLogic  # noqa: E402
from LegSegNetLib.slicer_logic.run_handle import RunHandle  # noqa: E402
from LegSegNetLib.worker import launcher as worker_process  # noqa: E402

SPACING = (0.8, 0.8, 2.0)  # (i, j, k) in mm: a 4 mm move along S is two whole slices
VOXEL_CM3 = SPACING[0] * SPACING[1] * SPACING[2] / 1000.0
FIRST, LAST = 3, 12
SM, IAT, BONE = (TISSUE_BY_KEY[k].value for k in ("SM", "IAT", "Bone"))


# ---------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def children_before():
    """The processes that were there before the test (a test answers only for those it started)."""
    return set(worker_process.descendants(os.getpid()))


def _calf(scene, name="calf", seed=5, shape=(16, 96, 128)):
    """The phantom's HU in a volume with identity LPS axes (k runs S), and its exact labels (k, j, i)."""
    phantom = make_leg_phantom(shape=shape, seed=seed)
    node = slicer_io.node_volume_from_image(scene, h.image(phantom.hu, spacing=SPACING, origin=(0.0, 0.0, 0.0)), name)
    return node, phantom.hu.astype(np.float64), phantom.labels


def _segmented(scene, node, labels, first=FIRST, last=LAST, name=None):
    """A segmentation holding `labels` on slices first..last, as a run of process() leaves it."""
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or f"{node.GetName()} segmentation")
    slicer_io.fill_segmentation(segmentation, node, np.ascontiguousarray(labels[first : last + 1]), first)
    segmentation.SetAttribute("LegSegNet.Slices", f"{first}:{last}")
    return segmentation


def _segmented_calf():
    """A new scene with the calf and a segmentation of its slices FIRST..LAST: (scene, node, hu, labels, segmentation)."""
    scene = slicer.vtkMRMLScene()
    node, hu, labels = _calf(scene)
    return scene, node, hu, labels, _segmented(scene, node, labels)


def _on_slices(labels, first=FIRST, last=LAST):
    kept = np.zeros_like(labels)
    kept[first : last + 1] = labels[first : last + 1]
    return kept


def _linear_transform(scene, rotation_deg_about_s=0.0, translation=(0.0, 0.0, 0.0), rotation_deg_about_r=0.0):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform = vtk.vtkTransform()
    transform.Translate(*translation)
    transform.RotateZ(rotation_deg_about_s)
    transform.RotateX(rotation_deg_about_r)
    node.SetMatrixTransformToParent(transform.GetMatrix())
    return node


def _warp_transform(scene):
    """A non-linear (grid) transform that moves points by up to 3 mm."""
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    grid = vtk.vtkImageData()
    grid.SetDimensions(4, 4, 4)
    grid.SetSpacing(100.0, 100.0, 100.0)
    grid.SetOrigin(-150.0, -150.0, -150.0)
    grid.AllocateScalars(vtk.VTK_DOUBLE, 3)
    from vtk.util import numpy_support

    displacement = numpy_support.vtk_to_numpy(grid.GetPointData().GetScalars())
    displacement[:] = 0.0
    displacement[::5, 2] = 3.0
    warp = slicer.vtkOrientedGridTransform()
    warp.SetDisplacementGridData(grid)
    node.SetAndObserveTransformToParent(warp)
    return node


def _labels(segmentation, node, visible_only=False):
    return slicer_io.labels_from_segmentation(segmentation, node, visible_only=visible_only)


def _rows(table):
    return {r["Tissue"]: r for r in slicer_tables.table_rows(table)}


def _wait(handle, timeout=180):
    """Wait for a run; end it in any case (the caller's finally also does)."""
    try:
        return handle.wait(timeout=timeout)
    finally:
        handle.cancel()


def _refused(start, match):
    """`start()` must be refused with an InputError matching `match`; a run it started anyway is ended."""
    started = []
    try:
        with pytest.raises(InputError, match=match):
            started.append(start())
    finally:
        for result in started:
            if isinstance(result, RunHandle):
                result.cancel()


def _world_slice_z(node, k):
    """S (world, mm) of slice k's centre, computed here from the node's matrices (not by the logic)."""
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    dims = node.GetImageData().GetDimensions()
    local = ijk_to_ras.MultiplyPoint(((dims[0] - 1) / 2.0, (dims[1] - 1) / 2.0, float(k), 1.0))
    to_world = vtk.vtkMatrix4x4()
    if node.GetParentTransformNode() is not None:
        node.GetParentTransformNode().GetMatrixTransformToWorld(to_world)
    return to_world.MultiplyPoint(local)[2]


def _slice_centre(slice_node):
    matrix = slice_node.GetSliceToRAS()
    return [matrix.GetElement(r, 3) for r in range(3)]


# ---------------------------------------------------------------------- 1: quantify through parent transforms
def test_quantify_measures_through_parent_transforms_or_refuses():
    logic = LegSegNetLogic()
    # (a) volume and segmentation under one transform (as process() leaves them), then the volume's hardened
    scene, node, hu, labels, segmentation = _segmented_calf()
    expected = _on_slices(labels)
    moved = _linear_transform(scene, rotation_deg_about_s=90.0, translation=(5.0, -7.0, 20.0))
    node.SetAndObserveTransformNodeID(moved.GetID())
    segmentation.SetAndObserveTransformNodeID(moved.GetID())
    table = logic.quantify(segmentation, node)
    h.assert_table_matches(table, expected[FIRST : LAST + 1], hu[FIRST : LAST + 1], VOXEL_CM3)
    node.HardenTransform()
    assert node.GetParentTransformNode() is None and segmentation.GetParentTransformNode() is moved
    logic.quantify(segmentation, node)
    h.assert_table_matches(table, expected[FIRST : LAST + 1], hu[FIRST : LAST + 1], VOXEL_CM3)

    # (b) the segmentation moved by its own transform, two slices up: it now lies over other CT voxels
    scene, node, hu, labels, segmentation = _segmented_calf()
    segmentation.SetAndObserveTransformNodeID(_linear_transform(scene, translation=(0.0, 0.0, 4.0)).GetID())
    shifted = np.zeros_like(labels)
    shifted[FIRST + 2 : LAST + 3] = labels[FIRST : LAST + 1]
    table = logic.quantify(segmentation, node)
    # the stored range 3:12, widened to the slices that now hold labels (5..14)
    h.assert_table_matches(table, shifted[FIRST : LAST + 3], hu[FIRST : LAST + 3], VOXEL_CM3)

    # (b') turned by 180 degrees about S around a point that puts voxel centres onto voxel centres: i, j mirrored
    dims = node.GetImageData().GetDimensions()
    centre = (-SPACING[0] * (dims[0] - 1) / 2.0, -SPACING[1] * (dims[1] - 1) / 2.0, 0.0)  # RAS of the axis
    turn = vtk.vtkTransform()
    turn.Translate(*centre)
    turn.RotateZ(180.0)
    turn.Translate(*(-c for c in centre))
    turned = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    turned.SetMatrixTransformToParent(turn.GetMatrix())
    segmentation.SetAndObserveTransformNodeID(turned.GetID())
    mirrored = np.ascontiguousarray(_on_slices(labels)[:, ::-1, ::-1])
    logic.quantify(segmentation, node)
    h.assert_table_matches(table, mirrored[FIRST : LAST + 1], hu[FIRST : LAST + 1], VOXEL_CM3)

    # (c) moves that would need resampling (half a slice, a warp) are refused, and nothing is added
    for transform in (_linear_transform(scene, translation=(0.0, 0.0, 1.0)), _warp_transform(scene)):
        segmentation.SetAndObserveTransformNodeID(transform.GetID())
        before = h.node_ids(scene)
        with pytest.raises(InputError, match="transform"):
            logic.quantify(segmentation, node)
        assert h.node_ids(scene) == before
    # (d) one warp over both: nothing moves between them, so it is measured
    warp = _warp_transform(scene)
    node.SetAndObserveTransformNodeID(warp.GetID())
    segmentation.SetAndObserveTransformNodeID(warp.GetID())
    logic.quantify(segmentation, node)
    h.assert_table_matches(table, _on_slices(labels)[FIRST : LAST + 1], hu[FIRST : LAST + 1], VOXEL_CM3)


# ---------------------------------------------------------------------- 2: slice helpers in world coordinates
def test_from_view_next_unreviewed_and_mark_reviewed_work_under_a_parent_transform():
    scene = slicer.vtkMRMLScene()
    node, _, labels = _calf(scene)
    segmentation = _segmented(scene, node, labels, 0, 15)
    transform = _linear_transform(scene, rotation_deg_about_s=30.0, translation=(5.0, -7.0, 50.0))
    node.SetAndObserveTransformNodeID(transform.GetID())
    segmentation.SetAndObserveTransformNodeID(transform.GetID())
    view = scene.AddNewNodeByClass("vtkMRMLSliceNode")  # an axial slice view
    logic, annotation = LegSegNetLogic(), AnnotationLogic(python=["unused"])
    for k in (0, 3, 7, 15):
        annotation.jumpToSlice(node, k, view)
        assert _slice_centre(view)[2] == pytest.approx(_world_slice_z(node, k)), k  # the view shows slice k
        assert logic.slicePositionMm(node, k) == pytest.approx(_world_slice_z(node, k))
        assert logic.sliceIndexAtRAS(node, _slice_centre(view)) == k  # "From view"
        assert logic.sliceIndexInView(node, view) == k
    annotation.startReview(segmentation, node, slicesPerScan=3, seed=1)
    annotation.jumpToSlice(node, 3, view)
    annotation.markReviewed(segmentation, logic.sliceIndexInView(node, view))  # "Mark reviewed"
    assert annotation.reviewState(segmentation).reviewed == (3,)
    # "Next unreviewed" counts on from the slice in view
    state = annotation.reviewState(segmentation)
    expected_next = next((s for s in state.unreviewed() if s > 3), state.unreviewed()[0])
    assert annotation.nextUnreviewedSlice(segmentation, logic.sliceIndexInView(node, view)) == expected_next
    # a view beyond the volume, or tilted against its slices, shows no slice to mark
    view.JumpSliceByOffsetting(0.0, 0.0, _world_slice_z(node, 15) + 40.0)
    with pytest.raises(InputError, match="shows no slice"):
        logic.sliceIndexInView(node, view)
    assert logic.sliceIndexAtRAS(node, _slice_centre(view)) == 15  # "From view" takes the nearest
    transform.SetMatrixTransformToParent(
        _linear_transform(scene, rotation_deg_about_r=20.0).GetMatrixTransformToParent()
    )
    annotation.jumpToSlice(node, 7, view)
    with pytest.raises(InputError, match="tilted"):
        logic.sliceIndexInView(node, view)


# ---------------------------------------------------------------------- 3: Apply again over reviewed slices
def test_apply_again_keeps_the_corrections_of_reviewed_slices(tmp_path, children_before):

    scene = slicer.vtkMRMLScene()
    node, _ = selftest.add_phantom_volume(scene, "calf", (16, 112, 144), seed=8)
    logic, annotation = LegSegNetLogic(), AnnotationLogic(python=["unused"])
    options = dict(engine="threshold", device="cpu")
    result = _wait(logic.processAsync(node, FIRST, LAST, **options))
    segmentation = result.segmentation
    volume = slicer_io.ct_volume_from_node(node)
    engine = slicer_io.labels_slab(volume, _labels(segmentation, node))
    state = annotation.startReview(segmentation, node, slicesPerScan=3, seed=0)
    reviewed, unreviewed = state.slices[0], state.slices[1]
    assert selftest.paint_block(segmentation, node, "SM", "IAT", (reviewed, reviewed)) > 0
    assert selftest.paint_block(segmentation, node, "SM", "IAT", (unreviewed, unreviewed)) > 0
    annotation.markReviewed(segmentation, reviewed)
    corrected = slicer_io.labels_slab(volume, _labels(segmentation, node))

    again = _wait(logic.processAsync(node, FIRST, LAST, segmentation=segmentation, **options))  # Apply again
    assert again.segmentation is segmentation
    after = slicer_io.labels_slab(volume, _labels(segmentation, node))
    assert np.array_equal(after[reviewed], corrected[reviewed])  # the correction stays
    others = [k for k in range(after.shape[0]) if k != reviewed]
    assert np.array_equal(after[others], engine[others])  # the rest is the new run's (the unreviewed edit is gone)
    assert annotation.reviewState(segmentation).reviewed == (reviewed,)
    # the tables measure what the segmentation holds now
    hu = volume.slab().astype(np.float64)
    spacing = volume.slab_spacing
    h.assert_table_matches(
        again.tissueTable, after[FIRST : LAST + 1], hu[FIRST : LAST + 1], spacing[0] * spacing[1] * spacing[2] / 1000.0
    )
    # and the training set receives the corrected slice
    added = annotation.addReviewedSlices(segmentation, node, tmp_path / "set", inputFormat="hu")
    entry = load_dataset(tmp_path / "set").entries[0]
    assert added.added == [reviewed]
    assert np.array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "set" / entry["label"]))), corrected[reviewed]
    )
    # a segmentation under review belongs to its volume: segmenting another volume into it is refused
    other, _ = selftest.add_phantom_volume(scene, "other calf", (16, 112, 144), seed=9)
    runs = h.temp_runs()
    _refused(lambda: logic.processAsync(other, FIRST, LAST, segmentation=segmentation, **options), "review")
    assert h.temp_runs() == runs and h.new_descendants(children_before) == []


# ---------------------------------------------------------------------- 4: a segmentation measured on another volume
def test_quantify_refuses_a_volume_that_is_not_the_segmentations_input(tmp_path):
    scene = slicer.vtkMRMLScene()
    node_a, hu, labels = _calf(scene, "calf A")
    node_b, _, _ = _calf(scene, "calf B", seed=6)
    segmentation = _segmented(scene, node_a, labels)
    logic = LegSegNetLogic()
    table = logic.quantify(segmentation, node_a)
    before = slicer_tables.table_rows(table)
    with pytest.raises(InputError, match="calf A"):
        logic.quantify(segmentation, node_b)
    assert slicer_tables.table_rows(table) == before
    assert segmentation.GetNodeReference("LegSegNet.inputVolume") is node_a
    with pytest.raises(InputError, match="calf A"):
        logic.exportResults(segmentation, node_b, tmp_path / "export")
    assert not (tmp_path / "export").exists()
    h.assert_table_matches(table, _on_slices(labels)[FIRST : LAST + 1], hu[FIRST : LAST + 1], VOXEL_CM3)


# ---------------------------------------------------------------------- 5: Export after edits without Update
def test_export_after_edits_without_update_writes_one_fresh_measurement(tmp_path):
    scene, node, hu, labels, segmentation = _segmented_calf()
    logic = LegSegNetLogic()
    logic.quantify(segmentation, node)
    out = tmp_path / "export"
    logic.exportResults(segmentation, node, out)
    (out / "my notes.txt").write_text("mine")

    # edits after the last Update: muscle painted as IAT, Bone hidden, the profile table deleted
    assert selftest.paint_block(segmentation, node, "SM", "IAT", (5, 7)) > 0
    segmentation.GetDisplayNode().SetSegmentVisibility("Bone", False)
    scene.RemoveNode(segmentation.GetNodeReference("LegSegNet.profileTable"))
    written = logic.exportResults(segmentation, node, out)

    now = _on_slices(labels)
    block = now[5:8]
    block[block == SM] = IAT
    now[now == BONE] = 0  # hidden: left out of every file alike
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in written] + ["my notes.txt"])
    assert sorted(p.name for p in written) == [
        "derived.csv",
        "labels.nii.gz",
        "metrics.json",
        "profile.csv",
        "tissues.csv",
    ]
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz"))), now)
    metrics = json.loads((out / "metrics.json").read_text())
    tissues_csv = {row["Tissue"]: row for row in _csv_rows(out / "tissues.csv")}
    for tissue in TISSUES:
        count = int((now[FIRST : LAST + 1] == tissue.value).sum())
        assert metrics["tissues"][tissue.key]["voxels"] == count
        assert int(float(tissues_csv[tissue.key]["Voxels"])) == count
        assert math.isclose(float(tissues_csv[tissue.key]["Volume (cm3)"]), count * VOXEL_CM3, rel_tol=1e-9)
    derived = {row["Metric"]: row for row in _csv_rows(out / "derived.csv")}
    assert math.isclose(float(derived["V_Fat_cm3"]["Value"]), metrics["derived"]["V_Fat_cm3"], rel_tol=1e-9)
    profile = _csv_rows(out / "profile.csv")
    assert [int(float(r["slice_index"])) for r in profile] == list(range(FIRST, LAST + 1))
    for row in profile:
        k = int(float(row["slice_index"]))
        area = (now[k] == IAT).sum() * SPACING[0] * SPACING[1] / 100.0
        assert math.isclose(float(row["A_IAT_cm2"]), area, rel_tol=1e-9)
    assert (out / "my notes.txt").read_text() == "mine"


def _csv_rows(path):
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------- 6: names, not segment IDs
def test_the_segment_names_the_user_sees_decide_not_segment_ids():
    scene, node, hu, labels, segmentation = _segmented_calf()
    logic = LegSegNetLogic()
    segments = segmentation.GetSegmentation()
    segments.GetSegment("SM").SetName("SM old")  # renamed: no longer muscle, whatever its ID says
    table = logic.quantify(segmentation, node)
    expected = _on_slices(labels)
    expected[expected == SM] = 0
    h.assert_table_matches(table, expected[FIRST : LAST + 1], hu[FIRST : LAST + 1], VOXEL_CM3)
    # a new segment given the tissue's name is that tissue
    new_muscle = np.zeros_like(labels)
    new_muscle[4:6, 40:50, 30:60] = 1
    segments.AddEmptySegment("Segment_7", "SM")
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        slicer_io.oriented_labels(node, new_muscle, first=0), segmentation, "Segment_7"
    )
    logic.quantify(segmentation, node)
    expected[new_muscle == 1] = SM  # the later tissue wins where segments overlap: SM over SAT, not over IAT/Bone
    now = _on_slices(labels)
    now[now == SM] = 0
    for value in (IAT, BONE):
        expected[(new_muscle == 1) & (now == value)] = value
    h.assert_table_matches(table, expected[FIRST : LAST + 1], hu[FIRST : LAST + 1], VOXEL_CM3)
    # two visible segments with one tissue name: which one is meant cannot be guessed
    segments.GetSegment("SM").SetName("SM")
    with pytest.raises(InputError, match="two segments named 'SM'"):
        logic.quantify(segmentation, node)


# ---------------------------------------------------------------------- 7: the volume changed during the run
@pytest.mark.parametrize("change", ["spacing", "size", "voxels"])
def test_a_volume_changed_while_the_worker_runs_cancels_the_run(change, children_before):
    scene = slicer.vtkMRMLScene()
    node, phantom = selftest.add_phantom_volume(scene, "calf", (16, 112, 144), seed=3)
    before = h.node_ids(scene)
    handle = LegSegNetLogic().processAsync(node, engine="threshold", device="cpu")
    pid, workdir = handle.worker.pid, handle.worker.workdir
    try:
        if change == "spacing":
            node.SetSpacing(*(2 * s for s in node.GetSpacing()))
        elif change == "size":
            slicer_io.update_node_from_array(node, np.zeros((16, 112, 288), np.int16))
        else:  # the voxels edited in place (e.g. a Volumes module filter), as slicer.util.arrayFromVolumeModified does
            slicer_io.array_from_node(node)[:] = -1000
            node.GetImageData().GetPointData().GetScalars().Modified()
            node.Modified()
        with pytest.raises(LegSegNetError, match="changed while"):
            handle.wait(timeout=180)
        assert "calf" in handle.errorMessage and "Apply again" in handle.errorMessage
        assert h.node_ids(scene) == before
        assert not worker_process.is_alive(pid) and not workdir.exists()
        assert h.new_descendants(children_before) == []
    finally:
        handle.cancel()


# ---------------------------------------------------------------------- 8: Sample slices pressed again
def test_sampling_again_keeps_review_progress_unless_told_to_replace_it():
    scene = slicer.vtkMRMLScene()
    node, _, labels = _calf(scene)
    segmentation = _segmented(scene, node, labels, 0, 15)
    annotation = AnnotationLogic(python=["unused"])
    state = annotation.startReview(segmentation, node, slicesPerScan=3, seed=4)
    annotation.markReviewed(segmentation, state.slices[0])
    annotation.markReviewed(segmentation, state.slices[1])
    assert annotation.reviewSummary(segmentation).startswith("2 of 3")
    # the same sample asked for again: nothing changes (and the module need not ask)
    assert annotation.startReview(segmentation, node, slicesPerScan=3, seed=4).reviewed == state.slices[:2]
    assert annotation.progressAStartWouldDrop(segmentation, node, slicesPerScan=3, seed=4) is None
    assert annotation.progressAStartWouldDrop(segmentation, node, slicesPerScan=5, seed=4).done == 2  # it asks
    # another sample would drop the progress: refused unless replace=True
    with pytest.raises(InputError, match="2 of 3"):
        annotation.startReview(segmentation, node, slicesPerScan=5, seed=4)
    assert annotation.reviewSummary(segmentation).startswith("2 of 3")
    fresh = annotation.startReview(segmentation, node, slicesPerScan=5, seed=4, replace=True)
    assert fresh.total == 5 and fresh.done == 0


# ---------------------------------------------------------------------- 9: output nodes removed or never added
def test_output_nodes_not_in_the_scene_are_refused_and_removing_them_mid_run_cancels(children_before):
    scene = slicer.vtkMRMLScene()
    node, _ = selftest.add_phantom_volume(scene, "calf", (16, 112, 144), seed=4)
    logic = LegSegNetLogic()
    options = dict(engine="threshold", device="cpu")
    runs = h.temp_runs()
    never_added = slicer.vtkMRMLSegmentationNode()
    other_scene_table = slicer.vtkMRMLScene().AddNewNodeByClass("vtkMRMLTableNode", "elsewhere")
    _refused(lambda: logic.processAsync(node, segmentation=never_added, **options), "not in the scene")
    _refused(lambda: logic.processAsync(node, table=other_scene_table, **options), "not in the scene")
    assert h.temp_runs() == runs and h.new_descendants(children_before) == []

    for removed in ("segmentation", "table"):
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "chosen output")
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", "chosen table")
        before = h.node_ids(scene)
        handle = logic.processAsync(node, segmentation=segmentation, table=table, **options)
        try:
            pid = handle.worker.pid
            gone = segmentation if removed == "segmentation" else table
            scene.RemoveNode(gone)
            assert handle.state == "cancelled", removed
            assert f"'chosen {'output' if removed == 'segmentation' else 'table'}'" in handle.errorMessage
            assert "removed" in handle.errorMessage
            assert h.node_ids(scene) == before - {gone.GetID()}
            assert not worker_process.is_alive(pid) and h.new_descendants(children_before) == []
        finally:
            handle.cancel()


# ---------------------------------------------------------------------- 10: validate before touching, restore on failure
def test_a_bad_argument_is_refused_before_any_node_is_touched_and_a_failure_restores(monkeypatch, children_before):
    scene, node, hu, labels, segmentation = _segmented_calf()
    logic = LegSegNetLogic()
    table = logic.quantify(segmentation, node)
    labels_before, rows_before = _labels(segmentation, node), slicer_tables.table_rows(table)
    nodes_before, runs = h.node_ids(scene), h.temp_runs()
    for bad in (dict(table=node), dict(segmentation=table)):  # a volume as the table, a table as the segmentation
        _refused(
            lambda bad=bad: logic.processAsync(
                node,
                FIRST,
                LAST,
                engine="threshold",
                device="cpu",
                **{"segmentation": segmentation, "table": table, **bad},
            ),
            "choose",
        )
    with pytest.raises(InputError, match="not a table"):
        logic.quantify(segmentation, node, table=node)
    assert np.array_equal(_labels(segmentation, node), labels_before)
    assert slicer_tables.table_rows(table) == rows_before and h.node_ids(scene) == nodes_before
    assert h.temp_runs() == runs and h.new_descendants(children_before) == []

    # a failure half-way through the import (simulated: the chart cannot be filled) puts everything back
    def broken_chart(*args, **kwargs):
        raise RuntimeError("simulated failure while filling the chart")

    monkeypatch.setattr(slicer_tables, "fill_profile_chart", broken_chart)
    attributes = {name: segmentation.GetAttribute(name) for name in segmentation.GetAttributeNames()}
    handle = logic.processAsync(node, 0, 15, engine="threshold", device="cpu", segmentation=segmentation)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            handle.wait(timeout=180)
    finally:
        handle.cancel()
    assert np.array_equal(_labels(segmentation, node), labels_before)
    assert {name: segmentation.GetAttribute(name) for name in segmentation.GetAttributeNames()} == attributes
    assert slicer_tables.table_rows(table) == rows_before and h.node_ids(scene) == nodes_before
    assert segmentation.GetNodeReference("LegSegNet.tissueTable") is table


# ---------------------------------------------------------------------- 11: runs never polled
def test_a_run_never_polled_ends_when_its_handle_is_collected(children_before):
    scene = slicer.vtkMRMLScene()
    node, _ = selftest.add_phantom_volume(scene, "calf", (30, 128, 160), seed=4)
    handle = LegSegNetLogic().processAsync(node, engine="threshold", device="cpu")
    pid, workdir = handle.worker.pid, handle.worker.workdir
    try:
        del handle
        gc.collect()
        assert not worker_process.is_alive(pid), "the worker outlived its handle"
        assert not workdir.exists(), "the run folder outlived its handle"
        assert h.new_descendants(children_before) == []
    finally:
        h.kill_group(pid)
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_run_never_polled_ends_when_the_script_exits():
    script = textwrap.dedent("""
        import slicer
        from LegSegNetLib.slicer_logic import selftest
        from LegSegNetLib.slicer_logic.logic import LegSegNetLogic

        scene = slicer.vtkMRMLScene()
        node, _ = selftest.add_phantom_volume(scene, shape=(30, 128, 160))
        handle = LegSegNetLogic().processAsync(node, engine="threshold", device="cpu")
        print(handle.worker.pid, handle.worker.workdir, flush=True)
    """)  # and the script ends without ever polling
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=worker_process.worker_environment(),
    )
    pid, workdir = None, None
    try:
        assert done.returncode == 0, done.stderr[-2000:]
        pid_text, workdir_text = done.stdout.split()
        pid, workdir = int(pid_text), Path(workdir_text)
        assert not worker_process.is_alive(pid), "the worker outlived the script"
        assert not workdir.exists(), "the run folder outlived the script"
    finally:
        h.kill_group(pid)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------- 12: export is all or nothing
def test_an_export_that_cannot_be_written_leaves_the_previous_export_whole(tmp_path):
    scene, node, _, labels, segmentation = _segmented_calf()
    logic = LegSegNetLogic()
    out = tmp_path / "export"
    logic.exportResults(segmentation, node, out)
    (out / "my notes.txt").write_text("mine")
    previous = {p.name: p.read_bytes() for p in out.iterdir()}
    assert selftest.paint_block(segmentation, node, "SM", "IAT", (4, 9)) > 0
    with w.file_size_limit(3000):  # the CSVs fit, labels.nii.gz and metrics.json do not
        with pytest.raises(LegSegNetError, match="could not write"):
            logic.exportResults(segmentation, node, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging left beside it


# ---------------------------------------------------------------------- 13: negative spacing
def test_negative_spacing_is_refused_with_advice(children_before):
    scene, node, _, labels, segmentation = _segmented_calf()
    node.SetSpacing(-SPACING[0], SPACING[1], SPACING[2])
    logic, runs = LegSegNetLogic(), h.temp_runs()
    for call in (
        lambda: logic.processAsync(node, engine="threshold", device="cpu"),
        lambda: logic.quantify(segmentation, node),
        lambda: logic.sliceCount(node),
    ):
        _refused(call, r"spacing .*negative.*Volume Information")
    assert h.temp_runs() == runs and h.new_descendants(children_before) == []


# ---------------------------------------------------------------------- 14: bad export folders
@contextlib.contextmanager
def _read_only(folder: Path):
    """`folder` cannot be written to: by its mode for a normal user, by a read-only bind mount for root
    (whom modes do not stop)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"running as root and a read-only bind mount is not allowed here: {mounted.stderr.strip()}")
    try:
        remounted = subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True, text=True, timeout=30
        )
        assert remounted.returncode == 0, remounted.stderr
        yield
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True, text=True, timeout=30)


def test_bad_export_folders_are_refused_with_a_clear_message(tmp_path):
    scene, node, _, labels, segmentation = _segmented_calf()
    logic = LegSegNetLogic()
    a_file = tmp_path / "a file"
    a_file.write_text("x")
    locked = tmp_path / "locked"
    (locked / "existing").mkdir(parents=True)
    cases = [
        ("", "no export folder"),
        ("   ", "no export folder"),
        (a_file, "is a file"),
        (a_file / "below", "is a file"),
    ]
    for folder, message in cases:
        with pytest.raises(InputError, match=message):
            logic.exportResults(segmentation, node, folder)
    with _read_only(locked):
        for folder in (locked / "existing", locked / "new"):
            with pytest.raises(InputError) as caught:
                logic.exportResults(segmentation, node, folder)
            assert ("not writable" in str(caught.value) or "read-only" in str(caught.value)) and ".lsn-" not in str(
                caught.value
            )
            assert "-o" not in str(caught.value).split()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a file", "locked"]
    assert [p.name for p in locked.iterdir()] == ["existing"] and not list((locked / "existing").iterdir())


# ---------------------------------------------------------------------- 15: fractional slices, bad seeds
def test_fractional_or_missing_slice_numbers_and_bad_seeds_are_refused(children_before):
    scene, node, _, labels, segmentation = _segmented_calf()
    logic, annotation, runs = LegSegNetLogic(), AnnotationLogic(python=["unused"]), h.temp_runs()
    for first, last in ((math.nan, 5), (3.7, 6.2), (2, math.inf), ("3", 5), (True, 5)):
        _refused(
            lambda first=first, last=last: logic.processAsync(node, first, last, engine="threshold", device="cpu"),
            "whole slice number",
        )
        with pytest.raises(InputError, match="whole slice number"):
            logic.updateRangeROI(node, first, last)
    assert h.temp_runs() == runs and h.new_descendants(children_before) == []
    # a whole number given as a float (e.g. from a spin box) is that slice
    roi = logic.updateRangeROI(node, 3.0, 6.0)
    assert roi is not None
    for kwargs, message in (
        (dict(seed=-1), "seed"),
        (dict(seed=2.5), "seed"),
        (dict(slicesPerScan=2.5), "slices"),
        (dict(firstSlice=3.7), "whole slice number"),
    ):
        with pytest.raises(InputError, match=message):
            annotation.startReview(segmentation, node, **kwargs)
    assert annotation.reviewState(segmentation) is None
    annotation.startReview(segmentation, node, slicesPerScan=3, seed=0)
    for bad in (math.nan, 4.5):
        with pytest.raises(InputError, match="whole slice number"):
            annotation.markReviewed(segmentation, bad)
        with pytest.raises(InputError, match="whole slice number"):
            annotation.jumpToSlice(node, bad, scene.AddNewNodeByClass("vtkMRMLSliceNode"))
    assert annotation.reviewState(segmentation).done == 0


# ---------------------------------------------------------------------- the overlap rule, where users read it
def test_overlapping_segments_count_a_voxel_once_for_the_later_tissue_and_say_so():
    scene = slicer.vtkMRMLScene()
    node, hu, labels = _calf(scene)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "painted")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(node)
    slicer_io.ensure_segmentation_converters()
    masks = {key: np.zeros_like(labels) for key in ("SAT", "SM", "IAT", "Bone")}
    masks["SAT"][4:8, 10:60, 10:60] = 1
    masks["SM"][5:9, 30:80, 30:80] = 1  # overlaps SAT
    masks["IAT"][6:7, 40:50, 40:90] = 1  # inside SM and SAT
    masks["Bone"][4:10, 45:47, 20:100] = 1  # crosses all three
    for key in ("Bone", "SM", "SAT", "IAT"):  # segment order must not matter
        segmentation.GetSegmentation().AddEmptySegment(f"Segment_{key}", key)
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            slicer_io.oriented_labels(node, masks[key], first=0), segmentation, f"Segment_{key}"
        )
    expected = np.zeros_like(labels)
    for tissue in TISSUES:  # SAT < SM < IAT < Bone: the later one wins
        expected[masks[tissue.key] == 1] = tissue.value
    table = LegSegNetLogic().quantify(segmentation, node)
    first, last = 4, 9  # the slices that hold labels
    h.assert_table_matches(table, expected[first : last + 1], hu[first : last + 1], VOXEL_CM3)
    rule = "counted once"
    assert rule in table.GetColumnDescription("Volume (cm3)") and "SAT < SM < IAT < Bone" in table.GetDescription()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "SAT < SM < IAT < Bone" in readme and rule in readme
