"""The Slicer logic on real MRML (slicer-core) with a real worker subprocess.

Covers slicer_io conversions (RAS/LPS, slabs, segmentations), process() and quantify() on the phantom,
agreement with the command line's metrics.json, edits, failures and cancel leaving nothing behind,
export, and (slow) the Visible Human calf CT.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

import mrml_helpers as h  # noqa: E402

from LegSegNetLib.core.errors import CancelledError, InputError  # noqa: E402
from LegSegNetLib.core.tissues import TISSUE_BY_KEY, TISSUE_KEYS, TISSUES  # noqa: E402
from LegSegNetLib.slicer_logic import scene as slicer_io  # noqa: E402
from LegSegNetLib.slicer_logic import selftest  # noqa: E402
from LegSegNetLib.slicer_logic import tables as slicer_tables  # noqa: E402
from LegSegNetLib.slicer_logic.logic import LegSegNetLogic  # noqa: E402
from LegSegNetLib.slicer_logic.run_handle import RunHandle  # noqa: E402
from LegSegNetLib.worker import launcher as worker_process  # noqa: E402

RANGE = (3, 12)


# ---------------------------------------------------------------------- helpers
def _phantom_node(scene, shape=(16, 112, 144), seed=5, name="calf"):
    return selftest.add_phantom_volume(scene, name, shape, seed)


_CHILDREN_BEFORE_TEST: set[int] = set()


@pytest.fixture(autouse=True)
def _children_before_test():
    # Earlier tests in the same pytest process may leave long-lived helpers of their own (e.g. the
    # multiprocessing resource tracker that nnU-Net's in-process code starts); a test here only answers for
    # the processes its own run started.
    _CHILDREN_BEFORE_TEST.clear()
    _CHILDREN_BEFORE_TEST.update(worker_process.descendants(os.getpid()))
    yield


def _descendant_pids() -> list[int]:
    """Processes started during this test that are still alive."""
    return h.new_descendants(_CHILDREN_BEFORE_TEST)


def _in_subject_hierarchy(scene, volume_node):
    """Put the volume under patient/study items, as Slicer's DICOM or Data module would."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient")
    study = sh.CreateStudyItem(patient, "Study")
    sh.CreateItem(study, volume_node)
    return sh, study


# ---------------------------------------------------------------------- conversions (no worker)
@pytest.mark.parametrize(
    "direction",
    [
        (1, 0, 0, 0, 1, 0, 0, 0, 1),  # LPS
        (-1, 0, 0, 0, -1, 0, 0, 0, 1),  # RAS-stored (NIfTI-like)
        (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0),  # the phantom's permuted axes, slices toward the feet
        (1, 0, 0, 0, 0, 1, 0, -1, 0),  # S/I along the second index axis (coronal-stored)
    ],
)
def test_volume_node_round_trip_keeps_voxels_and_lps_geometry(direction):
    scene = slicer.vtkMRMLScene()
    values = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7) - 100
    image = h.image(values, direction=direction)
    node = slicer_io.node_volume_from_image(scene, image, "v")
    back = slicer_io.image_from_node(node)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), values)
    assert np.allclose(back.GetOrigin(), image.GetOrigin()) and np.allclose(back.GetDirection(), image.GetDirection())
    assert np.allclose(back.GetSpacing(), image.GetSpacing())
    # the same voxel is at the same RAS point in Slicer as at the LPS point in SimpleITK
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ras = np.array(matrix.MultiplyPoint((3, 2, 4, 1))[:3])
    lps = np.array(image.TransformIndexToPhysicalPoint((3, 2, 4)))
    assert np.allclose(ras, lps * [-1, -1, 1])


def test_slab_keeps_physical_positions_and_range_is_checked():
    scene = slicer.vtkMRMLScene()
    values = np.random.default_rng(0).integers(-1000, 1000, size=(4, 9, 20)).astype(np.int16)  # (k, j, i)
    # S/I runs along index axis 1 (j): a coronal-stored volume, slices counted along j
    image = h.image(values, direction=(1, 0, 0, 0, 0, 1, 0, -1, 0))
    node = slicer_io.node_volume_from_image(scene, image, "v")
    assert slicer_io.axial_axis_of_node(node) == 1 and slicer_io.slice_count(node) == 9
    slab = slicer_io.slab_image_from_node(node, 2, 5)
    assert slab.GetSize() == (20, 4, 4)
    for index in [(0, 0, 0), (19, 3, 3), (7, 1, 2)]:
        full_index = (index[0], index[1] + 2, index[2])
        assert np.allclose(slab.TransformIndexToPhysicalPoint(index), image.TransformIndexToPhysicalPoint(full_index))
        assert slab[index] == image[full_index]
    for bad in [(5, 2), (-1, 3), (0, 9)]:
        with pytest.raises(InputError):
            slicer_io.slab_image_from_node(node, *bad)
    # slice positions and the slice under a point agree
    for k in (0, 4, 8):
        ras = slicer_io.slice_position_ras(node, k)
        assert slicer_io.slice_index_at_ras(node, ras) == k


def test_bad_volume_nodes_are_refused_with_a_reason():
    scene = slicer.vtkMRMLScene()
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="holds no voxels"):
        slicer_io.slice_count(empty)
    labelmap = slicer_io.node_volume_from_image(scene, h.image(np.zeros((3, 4, 5), np.uint8)), "lm", labelmap=True)
    with pytest.raises(InputError, match="label map"):
        slicer_io.slice_count(labelmap)
    oblique = h.image(
        np.zeros((3, 4, 5), np.int16),
        direction=(1, 0, 0, 0, math.cos(0.6), -math.sin(0.6), 0, math.sin(0.6), math.cos(0.6)),
    )
    with pytest.raises(InputError, match="oblique"):
        slicer_io.slice_count(slicer_io.node_volume_from_image(scene, oblique, "oblique"))


def test_segmentation_round_trip_uses_tissue_values_not_segment_order():
    scene = slicer.vtkMRMLScene()
    rng = np.random.default_rng(1)
    node = slicer_io.node_volume_from_image(scene, h.image(np.zeros((10, 12, 14), np.int16)), "ct")
    slab = rng.integers(0, 5, size=(4, 12, 14)).astype(np.uint8)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    slicer_io.fill_segmentation(segmentation, node, slab, first=3)
    expected = np.zeros((10, 12, 14), np.uint8)
    expected[3:7] = slab
    assert np.array_equal(slicer_io.labels_from_segmentation(segmentation, node), expected)
    # a user segment added first, and a hidden tissue, must not shift or leak into the values
    segmentation.GetSegmentation().AddEmptySegment("notes", "notes", (1.0, 1.0, 1.0))
    segmentation.GetSegmentation().SetSegmentIndex("notes", 0)
    segmentation.GetDisplayNode().SetSegmentVisibility("IAT", False)
    visible = slicer_io.labels_from_segmentation(segmentation, node)
    assert np.array_equal(visible, np.where(expected == 3, 0, expected))
    assert np.array_equal(slicer_io.labels_from_segmentation(segmentation, node, visible_only=False), expected)


def test_segments_have_ids_names_colours_terminology_and_reference_geometry():
    scene = slicer.vtkMRMLScene()
    node = slicer_io.node_volume_from_image(scene, h.image(np.zeros((4, 5, 6), np.int16)), "ct")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    slicer_io.fill_segmentation(segmentation, node, np.ones((4, 5, 6), np.uint8), first=0)
    seg = segmentation.GetSegmentation()
    assert [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())] == list(TISSUE_KEYS)
    terminology = slicer.vtkSlicerTerminologiesModuleLogic()
    for tissue in TISSUES:
        segment = seg.GetSegment(tissue.key)
        assert segment.GetName() == tissue.key
        assert tuple(round(c * 255) for c in segment.GetColor()) == tissue.rgb
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminology.DeserializeTerminologyEntry(slicer_io.segment_terminology(segment), entry)
        assert entry.GetCategoryObject().GetCodeValue() == "85756007"  # SCT Tissue
        assert entry.GetTypeObject().GetCodingSchemeDesignator() == "SCT"
    codes = {slicer_io.segment_terminology(seg.GetSegment(k)).split("~")[2] for k in TISSUE_KEYS}
    assert len(codes) == 4
    assert segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole()) is node


def test_range_roi_encloses_exactly_the_chosen_slices():
    scene = slicer.vtkMRMLScene()
    node, _ = _phantom_node(scene, shape=(10, 40, 48))
    logic = LegSegNetLogic()
    roi = logic.updateRangeROI(node, 2, 6)
    bounds = [0.0] * 6
    roi.GetRASBounds(bounds)
    centres = np.array([slicer_io.slice_position_ras(node, k) for k in (2, 6)])
    spacing = slicer_io.node_geometry(node).spacing[slicer_io.axial_axis_of_node(node)]
    assert math.isclose(bounds[4], centres[:, 2].min() - spacing / 2, abs_tol=1e-6)
    assert math.isclose(bounds[5], centres[:, 2].max() + spacing / 2, abs_tol=1e-6)
    assert roi.GetLocked()
    same = logic.updateRangeROI(node, 0, 9, roi)
    assert same is roi
    roi.GetRASBounds(bounds)
    assert math.isclose(bounds[5] - bounds[4], 10 * spacing, abs_tol=1e-6)


# ---------------------------------------------------------------------- process() on the phantom
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One real run of process() on the phantom, with the worker's files kept for comparison."""
    scene = slicer.vtkMRMLScene()
    node, phantom = _phantom_node(scene)
    sh, study = _in_subject_hierarchy(scene, node)
    outdir = tmp_path_factory.mktemp("worker-output")
    logic = LegSegNetLogic()
    events = []
    started = time.monotonic()
    handle = logic.processAsync(
        node,
        *RANGE,
        engine="threshold",
        device="cpu",
        outputFolder=outdir,
        onProgress=lambda h: events.append(dict(h.progress)),
        onFinished=lambda h: events.append("finished"),
    )
    try:
        result = handle.wait(timeout=120)
    finally:
        handle.cancel()
    seconds = time.monotonic() - started
    return {
        "scene": scene,
        "node": node,
        "phantom": phantom,
        "logic": logic,
        "handle": handle,
        "result": result,
        "outdir": outdir,
        "events": events,
        "sh": sh,
        "study": study,
        "seconds": seconds,
    }


def test_process_returns_segmentation_and_tissue_table(run):
    result = run["result"]
    assert run["handle"].state == "succeeded"
    assert result.segmentation.GetName() == "calf segmentation" and result.tissueTable.GetName() == "calf tissues"
    assert result.segmentation.GetNodeReference("LegSegNet.tissueTable") is result.tissueTable
    assert result.segmentation.GetAttribute("LegSegNet.Slices") == f"{RANGE[0]}:{RANGE[1]}"
    assert result.segmentation.GetAttribute("LegSegNet.Engine") == "threshold"
    assert result.metrics["slices"] == list(RANGE)
    print(f"process() on a {run['phantom'].hu.shape} phantom slab {RANGE}: {run['seconds']:.2f} s")


def test_progress_is_reported_and_finish_called_once(run):
    events = run["events"]
    assert events[-1] == "finished" and events.count("finished") == 1
    fractions = [e["fraction"] for e in events if isinstance(e, dict)]
    assert fractions and fractions == sorted(fractions)
    assert any(isinstance(e, dict) and e["stage"] == "segmenting" for e in events)


def test_labels_overlay_the_volume_exactly(run):
    """The segmentation, exported on the volume's grid, equals the worker's label file in physical space."""
    node, result = run["node"], run["result"]
    exported = slicer_io.labels_image(slicer_io.labels_from_segmentation(result.segmentation, node), node)
    worker_labels = sitk.ReadImage(str(run["outdir"] / "labels.nii.gz"))  # on the slab's grid
    resampled = sitk.Resample(worker_labels, exported, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    assert np.array_equal(sitk.GetArrayViewFromImage(resampled), sitk.GetArrayViewFromImage(exported))
    volume = slicer_io.ct_volume_from_node(node)
    slab = volume.slab_from_image(exported)
    first, last = RANGE
    assert not slab[:first].any() and not slab[last + 1 :].any()
    # and the labels sit on the anatomy: bone where the phantom has bone
    truth = run["phantom"].labels[first : last + 1] == TISSUE_BY_KEY["Bone"].value
    assert selftest.dice(slab[first : last + 1] == TISSUE_BY_KEY["Bone"].value, truth) > 0.9


def test_tables_chart_and_subject_hierarchy(run):
    result, sh, study = run["result"], run["sh"], run["study"]
    columns = slicer_tables.column_names(result.tissueTable)
    assert columns[:5] == ["Tissue", "Volume (cm3)", "Mean (HU)", "SD (HU)", "Voxels"]
    assert {"Left Volume (cm3)", "Right Volume (cm3)", "Left Mean (HU)", "Right SD (HU)"} <= set(columns)
    assert [r["Tissue"] for r in slicer_tables.table_rows(result.tissueTable)] == list(TISSUE_KEYS)
    derived = slicer_tables.table_rows(result.derivedTable)
    assert [r["Metric"] for r in derived] == ["V_Fat_cm3", "R_IAT_SAT", "R_SM_Fat", "mu_SM_hu", "mu_Fat_hu"]
    profile = slicer_tables.table_rows(result.profileTable)
    assert [int(r["slice_index"]) for r in profile] == list(range(RANGE[0], RANGE[1] + 1))
    assert slicer_tables.column_names(result.profileTable) == list(slicer_tables.PROFILE_COLUMNS)
    chart = result.chart
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    assert [s.GetYColumnName() for s in series] == [f"A_{k}_cm2" for k in TISSUE_KEYS]
    assert all(s.GetTableNode() is result.profileTable and s.GetXColumnName() == "z_mm" for s in series)
    assert [tuple(round(c * 255) for c in s.GetColor()) for s in series] == [t.rgb for t in TISSUES]
    for node in (result.segmentation, result.tissueTable, result.derivedTable, result.profileTable, chart):
        item = sh.GetItemByDataNode(node)
        assert item and sh.GetItemParent(item) == study, f"{node.GetName()} is not beside the volume"


def test_table_values_equal_the_command_line_metrics(run, tmp_path):
    """The same volume written to disk, measured by the real CLI with --slices: identical numbers."""
    node, result = run["node"], run["result"]
    path = tmp_path / "calf.nrrd"
    sitk.WriteImage(slicer_io.image_from_node(node), str(path))
    outdir = tmp_path / "cli"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "LegSegNetLib.cli",
            "segment",
            str(path),
            "-o",
            str(outdir),
            "--engine",
            "threshold",
            "--slices",
            f"{RANGE[0]}:{RANGE[1]}",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=worker_process.worker_environment(),
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    metrics = json.loads((outdir / "metrics.json").read_text())
    assert metrics["slices"] == list(RANGE)

    def same(a, b):
        return (a is None and math.isnan(b)) or (a is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12))

    for row in slicer_tables.table_rows(result.tissueTable):
        expected = metrics["tissues"][row["Tissue"]]
        assert row["Voxels"] == expected["voxels"]
        for column, key in (("Volume (cm3)", "volume_cm3"), ("Mean (HU)", "mean_hu"), ("SD (HU)", "sd_hu")):
            assert same(expected[key], row[column]), (row["Tissue"], column, expected[key], row[column])
        for side in ("left", "right"):
            leg = metrics["legs"][side]["tissues"][row["Tissue"]]
            assert same(leg["volume_cm3"], row[f"{side.capitalize()} Volume (cm3)"])
            assert same(leg["mean_hu"], row[f"{side.capitalize()} Mean (HU)"])
    for row in slicer_tables.table_rows(result.derivedTable):
        assert same(metrics["derived"][row["Metric"]], row["Value"])
        assert same(metrics["legs"]["left"]["derived"][row["Metric"]], row["Left"])
    cli_profile = slicer_tables.read_profile_csv(outdir / "profile.csv")
    table_profile = slicer_tables.table_rows(result.profileTable)
    assert len(cli_profile) == len(table_profile)
    for a, b in zip(cli_profile, table_profile):
        assert all(math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-9) for k in slicer_tables.PROFILE_COLUMNS)


def test_export_writes_labels_on_the_volume_grid_and_the_tables(run, tmp_path):
    node, result, logic = run["node"], run["result"], run["logic"]
    written = logic.exportResults(result.segmentation, node, tmp_path / "export")
    assert sorted(p.name for p in written) == [
        "derived.csv",
        "labels.nii.gz",
        "metrics.json",
        "profile.csv",
        "tissues.csv",
    ]
    labels = sitk.ReadImage(str(tmp_path / "export" / "labels.nii.gz"))
    reference = slicer_io.image_from_node(node)
    assert labels.GetSize() == reference.GetSize()
    assert np.allclose(labels.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    assert np.allclose(labels.GetDirection(), reference.GetDirection(), atol=1e-5)
    assert np.array_equal(
        sitk.GetArrayViewFromImage(labels), slicer_io.labels_from_segmentation(result.segmentation, node)
    )
    metrics = json.loads((tmp_path / "export" / "metrics.json").read_text())
    table = {r["Tissue"]: r for r in slicer_tables.table_rows(result.tissueTable)}
    assert all(metrics["tissues"][k]["voxels"] == table[k]["Voxels"] for k in TISSUE_KEYS)
    header = (tmp_path / "export" / "tissues.csv").read_text().splitlines()[0]
    assert header.startswith("Tissue,Volume (cm3),Mean (HU),SD (HU)")
    assert not list((tmp_path / "export").glob(".legsegnet-export-*"))


def test_processing_again_into_the_same_nodes_adds_nothing(run):
    scene, node, logic, result = run["scene"], run["node"], run["logic"], run["result"]
    before = h.node_ids(scene)
    segmentation, table = logic.process(
        node, *RANGE, engine="threshold", device="cpu", segmentation=result.segmentation, table=result.tissueTable
    )
    assert segmentation is result.segmentation and table is result.tissueTable
    assert h.node_ids(scene) == before


# ---------------------------------------------------------------------- edits and quantify()
def test_editing_voxels_changes_exactly_the_expected_numbers():
    scene = slicer.vtkMRMLScene()
    node, _ = _phantom_node(scene, seed=8)
    logic = LegSegNetLogic()
    segmentation, table = logic.process(node, *RANGE, engine="threshold", device="cpu")
    labels = slicer_io.labels_from_segmentation(segmentation, node)
    volume = slicer_io.ct_volume_from_node(node)
    slab_before = slicer_io.labels_slab(volume, labels)
    hu = volume.slab().astype(np.float64)
    voxel_cm3 = float(np.prod(volume.image.GetSpacing())) / 1000.0

    moved = selftest.paint_block(segmentation, node, "SM", "IAT", slice_range=(5, 7))
    expected = slab_before.copy()
    block = expected[5:8]
    n_moved = int((block == TISSUE_BY_KEY["SM"].value).sum())
    block[block == TISSUE_BY_KEY["SM"].value] = TISSUE_BY_KEY["IAT"].value
    assert moved == n_moved > 0

    logic.quantify(segmentation, node)
    rows = {r["Tissue"]: r for r in slicer_tables.table_rows(table)}
    first, last = RANGE
    for tissue in TISSUES:
        mask = expected[first : last + 1] == tissue.value
        assert rows[tissue.key]["Voxels"] == mask.sum()
        assert math.isclose(rows[tissue.key]["Volume (cm3)"], mask.sum() * voxel_cm3, rel_tol=1e-12)
        assert math.isclose(rows[tissue.key]["Mean (HU)"], hu[first : last + 1][mask].mean(), rel_tol=1e-9)
        assert math.isclose(rows[tissue.key]["SD (HU)"], hu[first : last + 1][mask].std(ddof=1), rel_tol=1e-7)
    fat = np.isin(expected[first : last + 1], [TISSUE_BY_KEY["SAT"].value, TISSUE_BY_KEY["IAT"].value])
    derived = {
        r["Metric"]: r["Value"]
        for r in slicer_tables.table_rows(segmentation.GetNodeReference("LegSegNet.derivedTable"))
    }
    assert math.isclose(derived["mu_Fat_hu"], hu[first : last + 1][fat].mean(), rel_tol=1e-9)
    profile = slicer_tables.table_rows(segmentation.GetNodeReference("LegSegNet.profileTable"))
    area = float(np.prod(volume.slab_spacing[1:])) / 100.0
    for row in profile:
        k = int(row["slice_index"])
        assert math.isclose(row["A_IAT_cm2"], (expected[k] == TISSUE_BY_KEY["IAT"].value).sum() * area, rel_tol=1e-12)


def test_quantify_a_hand_made_segmentation_uses_names_and_labelled_slices():
    scene = slicer.vtkMRMLScene()
    values = np.full((8, 20, 24), -1000, np.int16)
    values[2:5, 4:16, 4:20] = 40  # "muscle"
    values[2:5, 8:12, 8:12] = -100  # "fat"
    node = slicer_io.node_volume_from_image(scene, h.image(values, spacing=(1.0, 1.0, 2.0)), "hand")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "hand-made")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(node)
    slicer_io.ensure_segmentation_converters()
    muscle = (values == 40).astype(np.uint8)
    fat = (values == -100).astype(np.uint8)
    # segment IDs as Segment Editor makes them; only the names say which tissue they are
    for segment_id, name, mask in (("Segment_1", "SM", muscle), ("Segment_2", "IAT", fat)):
        segmentation.GetSegmentation().AddEmptySegment(segment_id, name)
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            slicer_io.oriented_labels(node, mask, first=0), segmentation, segment_id
        )
    logic = LegSegNetLogic()
    before = h.node_ids(scene)
    table = logic.quantify(segmentation, node)
    rows = {r["Tissue"]: r for r in slicer_tables.table_rows(table)}
    assert rows["SM"]["Voxels"] == muscle.sum() and rows["IAT"]["Voxels"] == fat.sum()
    assert rows["SAT"]["Voxels"] == 0 and math.isnan(rows["SAT"]["Mean (HU)"])
    assert rows["SM"]["Mean (HU)"] == 40.0 and rows["IAT"]["Mean (HU)"] == -100.0
    profile = slicer_tables.table_rows(segmentation.GetNodeReference("LegSegNet.profileTable"))
    assert [int(r["slice_index"]) for r in profile] == [2, 3, 4]  # the slices that hold labels
    added = sorted(scene.GetNodeByID(i).GetClassName() for i in h.node_ids(scene) - before)
    assert added == ["vtkMRMLPlotChartNode"] + ["vtkMRMLPlotSeriesNode"] * 4 + ["vtkMRMLTableNode"] * 3, added
    with pytest.raises(InputError, match="no visible segment"):
        for segment_id in ("Segment_1", "Segment_2"):
            segmentation.GetDisplayNode().SetSegmentVisibility(segment_id, False)
        logic.quantify(segmentation, node)


# ---------------------------------------------------------------------- failures leave nothing behind
def test_a_failed_worker_leaves_no_nodes_no_process_no_files():
    scene = slicer.vtkMRMLScene()
    not_ct = slicer_io.node_volume_from_image(scene, selftest._not_ct_image(), "not CT")
    before, runs_before = h.node_ids(scene), h.temp_runs()
    with pytest.raises(InputError) as caught:
        LegSegNetLogic().process(not_ct, engine="threshold", device="cpu")
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message and "internal error" not in message
    assert "volume 'not CT'" in message and "input.nrrd" not in message  # names what the user chose
    assert h.node_ids(scene) == before
    assert h.temp_runs() == runs_before
    assert _descendant_pids() == []


def test_a_bad_range_is_refused_before_any_worker_starts():
    scene = slicer.vtkMRMLScene()
    node, _ = _phantom_node(scene, shape=(6, 40, 48))
    runs_before = h.temp_runs()
    for first, last in ((4, 2), (0, 6), (-1, 3)):
        with pytest.raises(InputError):
            LegSegNetLogic().processAsync(node, first, last, engine="threshold")
    assert h.temp_runs() == runs_before and _descendant_pids() == []


def test_cancel_kills_the_worker_and_leaves_the_scene_as_it_was():
    scene = slicer.vtkMRMLScene()
    node, _ = _phantom_node(scene, shape=(40, 160, 192), seed=2)
    before = h.node_ids(scene)
    finished = []
    handle: RunHandle = LegSegNetLogic().processAsync(
        node, engine="threshold", device="cpu", onFinished=lambda h: finished.append(h.state)
    )
    workdir = handle.worker.workdir
    try:
        deadline = time.monotonic() + 60
        while handle.poll() and handle.progress["stage"] in ("starting", "reading") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert handle.running, f"the worker finished before it could be cancelled ({handle.state})"
        pids = [handle.worker.pid] + worker_process.descendants(handle.worker.pid)
    finally:
        handle.cancel()
    assert handle.state == "cancelled" and finished == ["cancelled"]
    assert isinstance(handle.error, CancelledError)
    with pytest.raises(CancelledError):
        handle.wait()
    assert h.node_ids(scene) == before
    assert not workdir.exists()
    assert not any(worker_process.is_alive(p) for p in pids) and _descendant_pids() == []


def test_closing_the_scene_or_removing_the_volume_cancels_the_run():
    for action in ("close", "remove"):
        scene = slicer.vtkMRMLScene()
        node, _ = _phantom_node(scene, shape=(30, 128, 160), seed=4)
        handle = LegSegNetLogic().processAsync(node, engine="threshold", device="cpu")
        try:
            pid, workdir = handle.worker.pid, handle.worker.workdir
            handle.poll()
            unrelated = scene.AddNewNodeByClass("vtkMRMLTableNode", "unrelated")
            scene.RemoveNode(unrelated)
            assert handle.running  # removing another node changes nothing
            if action == "close":
                scene.Clear(0)
            else:
                scene.RemoveNode(node)
            state = handle.state
        finally:
            handle.cancel()
        assert state == "cancelled", action
        assert not worker_process.is_alive(pid) and not workdir.exists() and _descendant_pids() == []
        assert scene.GetFirstNodeByClass("vtkMRMLSegmentationNode") is None


def test_a_single_slice_volume_is_processed():
    scene = slicer.vtkMRMLScene()
    node, phantom = _phantom_node(scene, shape=(1, 112, 144), seed=6, name="one slice")
    assert slicer_io.slice_count(node) == 1
    segmentation, table = LegSegNetLogic().process(node, engine="threshold", device="cpu")
    rows = {r["Tissue"]: r for r in slicer_tables.table_rows(table)}
    assert all(rows[k]["Voxels"] > 0 for k in TISSUE_KEYS)
    profile = slicer_tables.table_rows(segmentation.GetNodeReference("LegSegNet.profileTable"))
    assert [int(r["slice_index"]) for r in profile] == [0]
    labels = slicer_io.labels_from_segmentation(segmentation, node)
    truth = phantom.labels[0] == TISSUE_BY_KEY["SM"].value
    volume = slicer_io.ct_volume_from_node(node)
    assert selftest.dice(slicer_io.labels_slab(volume, labels)[0] == TISSUE_BY_KEY["SM"].value, truth) > 0.9


def test_model_store_commands_run_in_the_worker_interpreter(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGSEGNET_MODELS_DIR", str(tmp_path / "store"))
    logic = LegSegNetLogic()
    assert logic.installedModels() == []
    listed = logic.runModelsCommand(["list"])
    assert listed["models"] == [] and listed["store"] == str(tmp_path / "store")
    with pytest.raises(InputError) as caught:
        logic.runModelsCommand(["remove", "nonexistent"])
    assert "nonexistent" in str(caught.value) and "\n" not in str(caught.value)


# ---------------------------------------------------------------------- the module's self-test
def test_selftest_passes_on_slicer_core():
    summary = selftest.run_selftest(slicer.vtkMRMLScene(), log=lambda text: None)
    assert summary["moved_voxels"] > 0
    print(f"self-test: {summary['seconds']:.1f} s, Dice {summary['dice']}")


# ---------------------------------------------------------------------- real data
@pytest.mark.slow
def test_visible_human_calf_in_a_scene(visible_human_dir):
    from LegSegNetLib.scan import volume_io

    volume = volume_io.read_ct(visible_human_dir)
    scene = slicer.vtkMRMLScene()
    node = slicer_io.node_volume_from_image(scene, volume.image, "VHF calf")
    assert slicer_io.slice_count(node) == volume.n_slices == 350
    logic = LegSegNetLogic()
    started = time.monotonic()
    segmentation, table = logic.process(node, engine="threshold", device="cpu")
    seconds = time.monotonic() - started
    rows = {r["Tissue"]: r for r in slicer_tables.table_rows(table)}
    assert 20 <= rows["SM"]["Mean (HU)"] <= 70 and -130 <= rows["SAT"]["Mean (HU)"] <= -60
    assert rows["Bone"]["Voxels"] > 0
    # every voxel survived the import: measuring the segmentation in Slicer gives the worker's numbers
    started = time.monotonic()
    logic.quantify(segmentation, node)
    quantify_seconds = time.monotonic() - started
    again = {r["Tissue"]: r for r in slicer_tables.table_rows(table)}
    for key in TISSUE_KEYS:
        assert again[key]["Voxels"] == rows[key]["Voxels"]
        assert math.isclose(again[key]["Mean (HU)"], rows[key]["Mean (HU)"], rel_tol=1e-9)
    print(
        f"Visible Human calf: process {seconds:.1f} s, quantify {quantify_seconds:.1f} s; "
        + ", ".join(f"{k} {rows[k]['Volume (cm3)']:.0f} cm3 {rows[k]['Mean (HU)']:.0f} HU" for k in TISSUE_KEYS)
    )
