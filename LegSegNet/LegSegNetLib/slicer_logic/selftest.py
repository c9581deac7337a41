"""The module's self-test, shared by Slicer's `LegSegNetTest` and the pytest suite (slicer-core).

It needs no download: a synthetic leg phantom (phantom.make_leg_phantom) goes into the scene as a
volume, `process` segments part of it with the threshold engine in a real worker process, and the
checks cover segments, geometry, tables, the plot, an edit followed by `quantify`, and a failing run
that must leave the scene untouched. Every check raises AssertionError with a message (not `assert`,
which `python -O` would drop).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from ..core.errors import InputError
from ..core.tissues import TISSUE_BY_KEY, TISSUE_KEYS, TISSUES
from . import scene as slicer_io
from . import tables as slicer_tables
from .logic import LegSegNetLogic

PHANTOM_SHAPE = (14, 112, 144)  # small: the whole self-test takes a few seconds
RANGE = (2, 11)
MIN_DICE = {"SAT": 0.8, "SM": 0.8, "IAT": 0.4, "Bone": 0.85}  # loose: this checks wiring, not the engine


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def add_phantom_volume(scene, name: str = "LegSegNet phantom", shape=PHANTOM_SHAPE, seed: int = 3):
    """A phantom CT volume node and the phantom's exact labels (slab order, slices x rows x cols)."""
    from ..phantom import make_leg_phantom

    phantom = make_leg_phantom(shape=shape, seed=seed)
    volume, _labels_image = phantom.to_volume()
    node = slicer_io.node_volume_from_image(scene, volume.image, name)
    return node, phantom


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def run_selftest(scene=None, log: Callable[[str], None] = print, logic: LegSegNetLogic | None = None) -> dict:
    """Run every check on `scene` (a fresh vtkMRMLScene when None). Returns a few measured numbers."""
    import slicer

    scene = scene if scene is not None else slicer.vtkMRMLScene()
    logic = logic or LegSegNetLogic()
    started = time.monotonic()

    log("LegSegNet self-test: building a phantom volume")
    volume_node, phantom = add_phantom_volume(scene)
    first, last = RANGE

    log("running the threshold engine in a worker process")
    nodes_before = scene.GetNumberOfNodes()
    segmentation, table = logic.process(volume_node, first, last, engine="threshold", device="cpu")
    result = logic.lastResult
    _check(result is not None and result.segmentation is segmentation, "process() did not record its result")

    # --- segments: IDs, names, colours, terminology, geometry
    seg = segmentation.GetSegmentation()
    ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
    _check(ids == list(TISSUE_KEYS), f"segment IDs are {ids}, expected {list(TISSUE_KEYS)}")
    entries = slicer_io.terminology_entries()
    for key in TISSUE_KEYS:
        segment = seg.GetSegment(key)
        _check(segment.GetName() == key, f"segment {key} is named {segment.GetName()}")
        colour = tuple(round(c * 255) for c in segment.GetColor())
        _check(colour == TISSUE_BY_KEY[key].rgb, f"segment {key} colour {colour} != {TISSUE_BY_KEY[key].rgb}")
        tag = slicer_io.segment_terminology(segment)
        _check(tag == entries[key], f"segment {key} terminology {tag!r} != {entries[key]!r}")
    _check(
        segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole()) is volume_node,
        "the segmentation's reference geometry is not the input volume",
    )

    # --- labels: on the volume's grid, only inside the range, close to the phantom's truth
    labels_kji = slicer_io.labels_from_segmentation(segmentation, volume_node)
    truth = _phantom_labels_kji(volume_node, phantom)
    volume = slicer_io.ct_volume_from_node(volume_node)
    slab_labels = slicer_io.labels_slab(volume, labels_kji)
    outside = np.concatenate([slab_labels[:first], slab_labels[last + 1 :]])
    _check(not outside.any(), "labels found outside the chosen slice range")
    dices = {}
    for tissue in TISSUES:
        got = slab_labels[first : last + 1] == tissue.value
        expected = slicer_io.labels_slab(volume, truth, first, last) == tissue.value
        dices[tissue.key] = dice(got, expected)
        _check(
            dices[tissue.key] >= MIN_DICE[tissue.key],
            f"{tissue.key} Dice {dices[tissue.key]:.3f} vs the phantom is below {MIN_DICE[tissue.key]}",
        )

    # --- tissue table: columns and values recounted from the labels
    rows = slicer_tables.table_rows(table)
    columns = slicer_tables.column_names(table)
    _check(columns[:4] == ["Tissue", "Volume (cm3)", "Mean (HU)", "SD (HU)"], f"tissue table columns {columns}")
    _check([r["Tissue"] for r in rows] == list(TISSUE_KEYS), "tissue table rows are not SAT, SM, IAT, Bone")
    voxel_cm3 = float(np.prod(volume.image.GetSpacing())) / 1000.0
    hu = volume.slab(first, last).astype(np.float64)
    for row, tissue in zip(rows, TISSUES):
        mask = slab_labels[first : last + 1] == tissue.value
        n = int(mask.sum())
        _check(int(row["Voxels"]) == n, f"{tissue.key}: table says {row['Voxels']} voxels, labels hold {n}")
        _check(
            math.isclose(row["Volume (cm3)"], n * voxel_cm3, rel_tol=1e-9, abs_tol=1e-12),
            f"{tissue.key}: volume {row['Volume (cm3)']} != {n * voxel_cm3}",
        )
        if n:
            _check(
                math.isclose(row["Mean (HU)"], float(hu[mask].mean()), rel_tol=1e-9, abs_tol=1e-9),
                f"{tissue.key}: mean HU {row['Mean (HU)']} != {hu[mask].mean()}",
            )

    # --- derived table, profile table, plot
    derived = {r["Metric"]: r["Value"] for r in slicer_tables.table_rows(result.derivedTable)}
    v = {r["Tissue"]: r["Volume (cm3)"] for r in rows}
    _check(math.isclose(derived["V_Fat_cm3"], v["SAT"] + v["IAT"], rel_tol=1e-9), "V_Fat != V_SAT + V_IAT")
    profile = slicer_tables.table_rows(result.profileTable)
    _check(
        [int(r["slice_index"]) for r in profile] == list(range(first, last + 1)),
        "profile rows are not one per analysed slice",
    )
    chart = result.chart
    _check(chart.GetNumberOfPlotSeriesNodes() == len(TISSUE_KEYS), "the profile chart does not hold 4 series")
    for i in range(chart.GetNumberOfPlotSeriesNodes()):
        series = chart.GetNthPlotSeriesNode(i)
        _check(
            series.GetTableNode() is result.profileTable and series.GetXColumnName() == "z_mm",
            f"plot series {series.GetName()} is not drawn from the profile table",
        )

    # --- edit: turn a block of SM into IAT, then quantify must move exactly those voxels
    log("editing a segment and measuring again")
    moved = paint_block(segmentation, volume_node, from_key="SM", to_key="IAT", slice_range=(first + 1, first + 3))
    _check(moved > 0, "the edit found no SM voxels to move")
    table_after = logic.quantify(segmentation, volume_node)
    _check(table_after is table, "quantify() did not refresh the segmentation's tissue table")
    after = {r["Tissue"]: r for r in slicer_tables.table_rows(table)}
    before = {r["Tissue"]: r for r in rows}
    _check(int(after["SM"]["Voxels"]) == int(before["SM"]["Voxels"]) - moved, "SM did not lose the painted voxels")
    _check(int(after["IAT"]["Voxels"]) == int(before["IAT"]["Voxels"]) + moved, "IAT did not gain the painted voxels")
    for key in ("SAT", "Bone"):
        _check(after[key]["Voxels"] == before[key]["Voxels"], f"{key} changed although it was not edited")

    # --- a failing run leaves the scene as it was
    log("checking that a failing run leaves nothing behind")
    nodes_now = scene.GetNumberOfNodes()
    not_ct = slicer_io.node_volume_from_image(scene, _not_ct_image(), "not a CT")
    nodes_now += 1
    try:
        logic.process(not_ct, engine="threshold", device="cpu")
    except InputError as exc:
        message = str(exc)
        _check(
            "\n" not in message and "Traceback" not in message and len(message) > 20,
            f"the error should be the worker's one-line message, got {message!r}",
        )
    else:
        raise AssertionError("process() accepted a volume that is not CT")
    _check(scene.GetNumberOfNodes() == nodes_now, "a failed run left nodes in the scene")
    scene.RemoveNode(not_ct)

    seconds = time.monotonic() - started
    log(f"LegSegNet self-test passed in {seconds:.1f} s")
    return {"dice": dices, "moved_voxels": moved, "seconds": seconds, "nodes_added": nodes_now - nodes_before}


def paint_block(segmentationNode, volumeNode, from_key: str, to_key: str, slice_range: tuple[int, int]) -> int:
    """Relabel the `from_key` voxels of a few slices to `to_key` directly in the shared labelmap.

    This is what a Segment Editor paint with "overwrite other segments" does to a shared layer.
    Returns how many voxels changed.
    """
    import slicer
    from vtk.util import numpy_support

    segmentation = segmentationNode.GetSegmentation()
    segment = segmentation.GetSegment(from_key)
    labelmap = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    extent = labelmap.GetExtent()
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    voxels = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(shape)
    axis = slicer_io.axial_axis_of_node(volumeNode)
    index = [slice(None)] * 3
    offset = extent[2 * axis]
    index[2 - axis] = slice(slice_range[0] - offset, slice_range[1] - offset + 1)
    block = voxels[tuple(index)]
    mask = block == TISSUE_BY_KEY[from_key].value
    block[mask] = TISSUE_BY_KEY[to_key].value
    labelmap.Modified()
    segmentationNode.Modified()
    return int(mask.sum())


def _phantom_labels_kji(volumeNode, phantom) -> np.ndarray:
    """The phantom's exact labels in the node's (k, j, i) voxel order."""
    import SimpleITK as sitk

    _volume, labels_image = phantom.to_volume()
    return sitk.GetArrayFromImage(labels_image).astype(np.uint8)


def _not_ct_image():
    """An all-positive 0..4095 volume: what an MR or a raw detector image looks like to the reader."""
    import SimpleITK as sitk

    values = (np.arange(8 * 40 * 48, dtype=np.int32).reshape(8, 40, 48) % 4096).astype(np.int16)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((1.0, 1.0, 2.0))
    return image
