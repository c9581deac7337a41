"""Slicer's "Compare with reference": a segmentation against a reference segmentation of the same CT, as a table.

    table, agreement = compare_with_reference(segmentationNode, referenceNode, volumeNode)

Both segmentations are read as label maps on the CT's voxel grid (tissue segments found by ID, else by name,
hidden ones included), and compared with the metrics of `legsegnet evaluate` (evaluation/metrics.py), so the
numbers equal those the command line writes for the same label maps. The table has one row per tissue:
`Tissue`, Dice, IoU, ASSD and HD95 (mm), the two volumes and their difference (cm3 and %), and the mean HU
difference (prediction minus reference). By default the slices compared are the range the segmentation run
analysed (stored on the segmentation), else the whole volume.

Like the command line, nothing is resampled: a segmentation whose labelmap lies on another voxel lattice
than the CT is refused (Slicer would otherwise resample it silently). MRML and VTK only, no Qt.
"""

from __future__ import annotations

from ..core.errors import InputError
from ..core.tissues import TISSUE_KEYS
from ..evaluation.metrics import ScanAgreement, compare_labels
from . import frames
from . import scene as slicer_io
from .tables import ROLE_ATTRIBUTE, _add_number_column, _add_string_column, _reset

REFERENCE_ATTRIBUTE = "LegSegNet.Reference"
COMPARISON_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    # (column name, TissueAgreement field, unit, description)
    ("Dice", "dice", "", "2|A&B| / (|A|+|B|); empty: the tissue is in neither segmentation"),
    ("IoU", "iou", "", "|A&B| / |A|B|"),
    ("ASSD (mm)", "assd_mm", "mm", "average symmetric surface distance; inf: the tissue is missing from one"),
    ("HD95 (mm)", "hd95_mm", "mm", "95th-percentile Hausdorff distance (max of both directions)"),
    ("Volume (cm3)", "volume_pred_cm3", "cm3", "volume in the compared segmentation"),
    ("Reference volume (cm3)", "volume_ref_cm3", "cm3", "volume in the reference"),
    ("Volume difference (cm3)", "volume_diff_cm3", "cm3", "volume minus reference volume"),
    ("Volume difference (%)", "rel_volume_diff_pct", "%", "relative to the reference volume"),
    ("Mean HU difference", "mean_hu_diff", "HU", "mean HU over the segment minus over the reference segment"),
)


def compare_with_reference(
    segmentationNode, referenceNode, volumeNode, tableNode=None, slice_range: tuple[int, int] | None = None
) -> tuple[object, ScanAgreement]:
    """Fill (or add) a table comparing the two segmentations on `volumeNode`'s grid; see the module docstring."""
    _check_nodes(segmentationNode, referenceNode, volumeNode)
    n_slices = slicer_io.slice_count(volumeNode)
    first, last = slice_range if slice_range is not None else (0, n_slices - 1)
    slicer_io.check_range(first, last, n_slices)
    volume = slicer_io.ct_volume_from_node(volumeNode)
    pred = slicer_io.labels_slab(
        volume, slicer_io.labels_from_segmentation(segmentationNode, volumeNode, False), first, last
    )
    ref = slicer_io.labels_slab(
        volume, slicer_io.labels_from_segmentation(referenceNode, volumeNode, False), first, last
    )
    agreement = compare_labels(pred, ref, volume.slab_spacing, hu=volume.slab(first, last))
    if tableNode is None:
        tableNode = volumeNode.GetScene().AddNewNodeByClass(
            "vtkMRMLTableNode", f"{segmentationNode.GetName()} vs {referenceNode.GetName()}"
        )
    fill_comparison_table(tableNode, agreement)
    tableNode.SetAttribute(REFERENCE_ATTRIBUTE, referenceNode.GetName())
    tableNode.SetAttribute("LegSegNet.Slices", f"{first}:{last}")
    return tableNode, agreement


def fill_comparison_table(tableNode, agreement: ScanAgreement) -> None:
    """One row per tissue (`Tissue` first), the columns of COMPARISON_COLUMNS; NaN where undefined."""
    was = tableNode.StartModify()
    try:
        _reset(tableNode)
        _add_string_column(tableNode, "Tissue", TISSUE_KEYS)
        for name, field, unit, description in COMPARISON_COLUMNS:
            values = [getattr(agreement.tissues[key], field) for key in TISSUE_KEYS]
            _add_number_column(tableNode, name, values, unit, description)
        tableNode.SetAttribute(ROLE_ATTRIBUTE, "comparison")
    finally:
        tableNode.EndModify(was)


def _check_nodes(segmentationNode, referenceNode, volumeNode) -> None:
    if segmentationNode is None:
        raise InputError("no segmentation selected; run the segmentation first or choose one")
    if referenceNode is None:
        raise InputError("no reference segmentation selected; choose the segmentation to compare with")
    if referenceNode is segmentationNode:
        raise InputError("the reference is the segmentation itself; choose another segmentation as the reference")
    slicer_io.node_geometry(volumeNode)  # a scalar CT volume with voxels
    for node, what in ((segmentationNode, "segmentation"), (referenceNode, "reference segmentation")):
        if not node.IsA("vtkMRMLSegmentationNode"):
            raise InputError(f"'{node.GetName()}' is not a segmentation; choose a segmentation as the {what}")
        ids = slicer_io.tissue_segment_ids(node)
        if not ids:
            raise InputError(
                f"the {what} '{node.GetName()}' has no segment named SAT, SM, IAT or Bone; name its segments so "
                "and compare again"
            )
        off_grid = frames.labelmaps_off_the_grid(node, ids, frames.volume_grid_in_frame_of(volumeNode, node))
        if off_grid:
            raise InputError(
                f"the {what} '{node.GetName()}' holds {', '.join(off_grid)} on another voxel grid than "
                f"'{volumeNode.GetName()}', and comparing would resample them; set its geometry to the CT "
                "(Segment Editor: Specify geometry) or segment on the CT"
            )
