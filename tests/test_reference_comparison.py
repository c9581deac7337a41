"""Slicer's "Compare with reference" on real MRML (slicer-core): the table holds the numbers of `legsegnet evaluate`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")

from LegSegNetLib.core.errors import InputError  # noqa: E402
from LegSegNetLib.core.progress import Progress  # noqa: E402
from LegSegNetLib.core.tissues import TISSUE_BY_KEY, TISSUE_KEYS  # noqa: E402
from LegSegNetLib.engines import make_engine  # noqa: E402
from LegSegNetLib.evaluation.metrics import compare_labels  # noqa: E402
from LegSegNetLib.phantom import make_leg_phantom  # noqa: E402
from LegSegNetLib.slicer_logic import scene as slicer_io  # noqa: E402
from LegSegNetLib.slicer_logic import tables as slicer_tables  # noqa: E402
from LegSegNetLib.slicer_logic.logic import LegSegNetLogic  # noqa: E402
from LegSegNetLib.slicer_logic.reference_comparison import COMPARISON_COLUMNS  # noqa: E402

COLUMN_FIELDS = {name: field for name, field, _, _ in COMPARISON_COLUMNS}


@pytest.fixture(scope="module")
def phantom_case():
    """The phantom CT, its exact labels and the threshold engine's prediction, as slabs."""
    phantom = make_leg_phantom(shape=(8, 96, 128), seed=4)
    volume, _ = phantom.to_volume()
    pred = make_engine("threshold").segment(volume.slab(), volume.slab_spacing, Progress())
    return volume, phantom.labels, pred


def _kji(volume, slab: np.ndarray) -> np.ndarray:
    return sitk.GetArrayFromImage(volume.labels_to_image(slab))


def _scene_with(phantom_case):
    volume, truth, pred = phantom_case
    scene = slicer.vtkMRMLScene()
    node = slicer_io.node_volume_from_image(scene, volume.image, "calf")
    result = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "calf segmentation")
    slicer_io.fill_segmentation(result, node, _kji(volume, pred), 0)
    reference = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "calf reference")
    slicer_io.fill_segmentation(reference, node, _kji(volume, truth), 0)
    return scene, node, result, reference


def _node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _assert_table_equals(table, expected):
    rows = slicer_tables.table_rows(table)
    assert [r["Tissue"] for r in rows] == list(TISSUE_KEYS)
    for row in rows:
        want = expected.tissues[row["Tissue"]]
        for column, field in COLUMN_FIELDS.items():
            value = getattr(want, field)
            if math.isnan(value):
                assert math.isnan(row[column]), (row["Tissue"], column)
            else:
                assert row[column] == pytest.approx(value, rel=1e-9, abs=1e-12), (row["Tissue"], column)


def test_the_table_holds_the_evaluation_metrics_and_is_refilled(phantom_case):
    volume, truth, pred = phantom_case
    scene, node, result, reference = _scene_with(phantom_case)
    logic = LegSegNetLogic()
    before = _node_ids(scene)
    table = logic.compareWithReference(result, reference, node)
    assert len(_node_ids(scene) - before) == 1 and table.IsA("vtkMRMLTableNode")
    assert slicer_tables.column_names(table) == ["Tissue", *COLUMN_FIELDS]
    expected = compare_labels(pred, truth, volume.slab_spacing, hu=volume.slab())
    _assert_table_equals(table, expected)
    assert 0.8 < expected.tissues["SM"].dice < 1.0  # a real, imperfect prediction
    assert table.GetAttribute("LegSegNet.Reference") == "calf reference"
    assert table.GetAttribute("LegSegNet.Slices") == "0:7"
    assert table.GetColumnUnitLabel("ASSD (mm)") == "mm"
    assert result.GetNodeReference("LegSegNet.comparisonTable") is table
    # correcting the result and comparing again refills the same table
    slicer_io.fill_segmentation(result, node, _kji(volume, truth), 0)
    again = logic.compareWithReference(result, reference, node)
    assert again is table and len(_node_ids(scene) - before) == 1
    rows = {r["Tissue"]: r for r in slicer_tables.table_rows(table)}
    assert all(
        rows[k]["Dice"] == 1.0 and rows[k]["ASSD (mm)"] == 0.0 and rows[k]["HD95 (mm)"] == 0.0 for k in TISSUE_KEYS
    )


def test_the_range_the_run_analysed_is_compared(phantom_case):
    volume, truth, pred = phantom_case
    scene, node, result, reference = _scene_with(phantom_case)
    result.SetAttribute("LegSegNet.Slices", "2:5")  # what process() stores
    table = LegSegNetLogic().compareWithReference(result, reference, node)
    assert table.GetAttribute("LegSegNet.Slices") == "2:5"
    _assert_table_equals(table, compare_labels(pred[2:6], truth[2:6], volume.slab_spacing, hu=volume.slab(2, 5)))
    explicit = LegSegNetLogic().compareWithReference(result, reference, node, firstSlice=0, lastSlice=7)
    assert explicit.GetAttribute("LegSegNet.Slices") == "0:7"


def test_a_hand_made_reference_is_read_by_segment_names_and_a_missing_tissue_is_infinitely_far(phantom_case):
    volume, truth, pred = phantom_case
    scene, node, result, _ = _scene_with(phantom_case)
    reference = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn")
    reference.SetReferenceImageGeometryParameterFromVolumeNode(node)
    truth_kji = _kji(volume, truth)
    # segment IDs as Segment Editor makes them; only the names say which tissue; no SAT and no IAT drawn
    for segment_id, name in (("Segment_1", "SM"), ("Segment_2", "Bone")):
        mask = (truth_kji == TISSUE_BY_KEY[name].value).astype(np.uint8)
        reference.GetSegmentation().AddEmptySegment(segment_id, name)
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            slicer_io.oriented_labels(node, mask, first=0), reference, segment_id
        )
    table = LegSegNetLogic().compareWithReference(result, reference, node)
    partial = np.where(np.isin(truth, [TISSUE_BY_KEY["SM"].value, TISSUE_BY_KEY["Bone"].value]), truth, 0)
    _assert_table_equals(table, compare_labels(pred, partial, volume.slab_spacing, hu=volume.slab()))
    rows = {r["Tissue"]: r for r in slicer_tables.table_rows(table)}
    assert rows["SAT"]["Dice"] == 0.0 and rows["SAT"]["ASSD (mm)"] == math.inf and rows["SAT"]["HD95 (mm)"] == math.inf
    assert math.isnan(rows["IAT"]["Volume difference (%)"])  # relative to an empty reference


def test_refusals_say_why_and_leave_the_scene_as_it_was(phantom_case):
    volume, truth, _ = phantom_case
    scene, node, result, reference = _scene_with(phantom_case)
    liver = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "liver")
    liver.SetReferenceImageGeometryParameterFromVolumeNode(node)
    slicer_io.ensure_segmentation_converters()
    liver.GetSegmentation().AddEmptySegment("Liver", "Liver")
    coarse_image = sitk.Image(volume.image)
    coarse_image.SetSpacing([2 * s for s in volume.image.GetSpacing()])
    coarse = slicer_io.node_volume_from_image(scene, coarse_image, "coarse")
    elsewhere = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "on another grid")
    slicer_io.fill_segmentation(elsewhere, coarse, _kji(volume, truth), 0)
    logic = LegSegNetLogic()
    before = _node_ids(scene)
    cases = [
        (result, None, "no reference segmentation selected"),
        (None, reference, "no segmentation selected"),
        (result, result, "the reference is the segmentation itself"),
        (result, liver, "has no segment named SAT, SM, IAT or Bone"),
        (result, elsewhere, "holds SAT, SM, IAT, Bone on another voxel grid than 'calf'"),
    ]
    for segmentation, ref, message in cases:
        with pytest.raises(InputError, match=message):
            logic.compareWithReference(segmentation, ref, node)
    assert _node_ids(scene) == before
