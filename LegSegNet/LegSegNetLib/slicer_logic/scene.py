"""Conversions between Slicer MRML nodes and the library's SimpleITK / `CTVolume` world.

Slicer stores a volume as voxels in ITK index order (i, j, k) plus an IJK-to-RAS matrix; SimpleITK and
every file the worker reads or writes use LPS. RAS and LPS differ by the sign of the first two axes, so
direction_LPS = diag(-1, -1, 1) @ direction_RAS and likewise for the origin. The voxel index is the same
in both worlds, which is why a label array can go back and forth without resampling.

Only MRML and VTK are used here (no Qt), so all of it runs with the `slicer-core` wheel.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from ..core.errors import InputError
from ..core.terminology import TERMINOLOGY_FILE  # noqa: F401 - also imported from here by LegSegNet.py
from ..core.tissues import TISSUE_BY_KEY, TISSUE_KEYS, TISSUES
from ..scan.ct_volume import CTVolume, find_axial_axis

_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


# ---------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class LPSGeometry:
    """A volume node's grid in SimpleITK terms."""

    size_ijk: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]  # LPS, mm
    direction: tuple[float, ...]  # 3x3 row-major, columns = voxel axes in LPS

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.array(self.direction, dtype=float).reshape(3, 3)

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def _require_scalar_volume(volumeNode) -> vtk.vtkImageData:
    if volumeNode is None:
        raise InputError("no input volume selected; choose a CT volume first")
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"'{volumeNode.GetName()}' is not a scalar volume; choose a CT volume")
    if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"'{volumeNode.GetName()}' is a label map, not a CT; choose the CT volume")
    image = volumeNode.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"volume '{volumeNode.GetName()}' holds no voxels; load the CT again")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(
            f"volume '{volumeNode.GetName()}' has {image.GetNumberOfScalarComponents()} components per voxel "
            "(colour or vector image); choose a single-component CT volume"
        )
    return image


def node_geometry(volumeNode) -> LPSGeometry:
    """The node's voxel grid in LPS (its own frame: a parent transform is not applied; frames.py does that).

    InputError for a spacing that is not a positive number (SimpleITK and every measurement need one).
    """
    image = _require_scalar_volume(volumeNode)
    spacing = tuple(float(s) for s in volumeNode.GetSpacing())
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(
            f"volume '{volumeNode.GetName()}' has the voxel spacing ({', '.join(f'{s:g}' for s in spacing)}) mm, and a "
            "negative, zero or missing spacing gives no voxel size to measure with; set positive spacing in the "
            "Volumes module (Volume Information; a flipped axis belongs in the IJK to RAS direction matrix), or "
            "load the file again"
        )
    directions = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASDirectionMatrix(directions)
    direction_ras = np.array([[directions.GetElement(r, c) for c in range(3)] for r in range(3)])
    direction_lps = _RAS_FROM_LPS @ direction_ras
    origin_lps = _RAS_FROM_LPS @ np.array(volumeNode.GetOrigin(), dtype=float)
    return LPSGeometry(
        size_ijk=tuple(int(d) for d in image.GetDimensions()),  # type: ignore[arg-type]
        spacing=spacing,  # type: ignore[arg-type]
        origin=tuple(float(o) for o in origin_lps),  # type: ignore[arg-type]
        direction=tuple(float(d) for d in direction_lps.ravel()),
    )


def set_node_geometry(volumeNode, geometry: LPSGeometry) -> None:
    """Give a volume node the LPS grid of a SimpleITK image (spacing, origin, direction)."""
    direction_ras = _RAS_FROM_LPS @ geometry.direction_matrix
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, float(direction_ras[r, c]))
    volumeNode.SetIJKToRASDirectionMatrix(matrix)
    volumeNode.SetSpacing(*geometry.spacing)
    volumeNode.SetOrigin(*(_RAS_FROM_LPS @ np.array(geometry.origin)))


def geometry_of_image(image: sitk.Image) -> LPSGeometry:
    return LPSGeometry(
        size_ijk=tuple(image.GetSize()),  # type: ignore[arg-type]
        spacing=tuple(image.GetSpacing()),  # type: ignore[arg-type]
        origin=tuple(image.GetOrigin()),  # type: ignore[arg-type]
        direction=tuple(image.GetDirection()),
    )


def axial_axis_of_node(volumeNode) -> int:
    """ITK index axis of the node that runs superior/inferior (InputError for oblique volumes)."""
    return find_axial_axis(node_geometry(volumeNode).direction)


def slice_count(volumeNode) -> int:
    geometry = node_geometry(volumeNode)
    return geometry.size_ijk[find_axial_axis(geometry.direction)]


# ---------------------------------------------------------------------- voxels
def array_from_node(volumeNode) -> np.ndarray:
    """The node's voxels as a numpy view in (k, j, i) order (no copy; do not keep it past node edits)."""
    image = _require_scalar_volume(volumeNode)
    dims = image.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return flat.reshape(dims[2], dims[1], dims[0])


def update_node_from_array(volumeNode, array_kji: np.ndarray, geometry: LPSGeometry | None = None) -> None:
    """Replace the node's voxels (and optionally its geometry) with a (k, j, i) array (copied)."""
    array_kji = np.ascontiguousarray(array_kji)
    image = vtk.vtkImageData()
    image.SetDimensions(array_kji.shape[2], array_kji.shape[1], array_kji.shape[0])
    scalars = numpy_support.numpy_to_vtk(array_kji.ravel(), deep=1)
    image.GetPointData().SetScalars(scalars)
    if geometry is not None:
        set_node_geometry(volumeNode, geometry)
    volumeNode.SetAndObserveImageData(image)


def image_from_node(volumeNode) -> sitk.Image:
    """The whole volume as a SimpleITK image in LPS (voxels copied)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_from_node(volumeNode)))
    return node_geometry(volumeNode).apply_to(image)


def ct_volume_from_node(volumeNode) -> CTVolume:
    """The node as a `CTVolume` (voxels copied once; the slab axis convention of ct_volume.py)."""
    image = image_from_node(volumeNode)
    return CTVolume(
        image=image,
        axial_axis=find_axial_axis(image.GetDirection()),
        source=volumeNode.GetName(),
        modality=volumeNode.GetAttribute("DICOM.Modality"),
        is_2d=image.GetSize()[find_axial_axis(image.GetDirection())] == 1,
    )


def node_volume_from_image(scene, image: sitk.Image, name: str, labelmap: bool = False):
    """Add a scalar (or label map) volume node holding a SimpleITK image (tests, the self-test)."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    update_node_from_array(node, sitk.GetArrayViewFromImage(image), geometry_of_image(image))
    return node


def slab_image_from_node(volumeNode, first: int, last: int) -> sitk.Image:
    """Slices first..last (inclusive, counted along the S/I voxel axis) as an image with exact geometry.

    Only the chosen slices are copied; the origin moves to the first slice so every voxel keeps its
    physical position.
    """
    geometry = node_geometry(volumeNode)
    axis = find_axial_axis(geometry.direction)
    check_range(first, last, geometry.size_ijk[axis])
    index = [slice(None)] * 3
    index[2 - axis] = slice(first, last + 1)  # numpy axis of ITK axis a is 2 - a
    slab = sitk.GetImageFromArray(np.ascontiguousarray(array_from_node(volumeNode)[tuple(index)]))
    origin = np.array(geometry.origin) + first * geometry.spacing[axis] * geometry.direction_matrix[:, axis]
    slab.SetSpacing(geometry.spacing)
    slab.SetOrigin(tuple(float(o) for o in origin))
    slab.SetDirection(geometry.direction)
    return slab


def check_range(first: int, last: int, n_slices: int) -> None:
    """InputError unless 0 <= first <= last < n_slices."""
    if not (isinstance(first, (int, np.integer)) and isinstance(last, (int, np.integer))):
        raise InputError(f"slice range {first}:{last} must be whole slice numbers")
    if first < 0 or last >= n_slices:
        raise InputError(
            f"slice range {first}:{last} lies outside the volume's slices 0:{n_slices - 1}; choose a range inside it"
        )
    if first > last:
        raise InputError(f"slice range {first}:{last} is reversed; the first slice must not come after the last")


def slice_position_ras(volumeNode, slice_index: float) -> np.ndarray:
    """RAS position (mm, node frame) of the centre of slice `slice_index` along the S/I voxel axis
    (frames.slice_position_world gives it in the world, where views show it)."""
    geometry = node_geometry(volumeNode)
    axis = find_axial_axis(geometry.direction)
    index = (np.array(geometry.size_ijk, dtype=float) - 1.0) / 2.0
    index[axis] = slice_index
    lps = np.array(geometry.origin) + geometry.direction_matrix @ (index * np.array(geometry.spacing))
    return _RAS_FROM_LPS @ lps


def slice_coordinate_at_ras(volumeNode, ras) -> float:
    """The (fractional) slice index of a RAS point in the node's frame, along the S/I voxel axis."""
    geometry = node_geometry(volumeNode)
    axis = find_axial_axis(geometry.direction)
    lps = _RAS_FROM_LPS @ np.asarray(ras, dtype=float)
    index = np.linalg.solve(geometry.direction_matrix * np.array(geometry.spacing), lps - np.array(geometry.origin))
    return float(index[axis])


def slice_index_at_ras(volumeNode, ras) -> int:
    """Nearest slice index (along the S/I voxel axis) of a RAS point in the node's frame, clamped to the volume.
    For a point in world coordinates (a view, the mouse) use frames.slice_index_at_world."""
    n = slice_count(volumeNode)
    return int(np.clip(np.rint(slice_coordinate_at_ras(volumeNode, ras)), 0, n - 1))


def slab_corners_ras(volumeNode, first: int, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, size along each voxel axis, 3x3 axis directions in RAS) of the box covering the slab voxels."""
    geometry = node_geometry(volumeNode)
    axis = find_axial_axis(geometry.direction)
    check_range(first, last, geometry.size_ijk[axis])
    low = np.full(3, -0.5)
    high = np.array(geometry.size_ijk, dtype=float) - 0.5
    low[axis], high[axis] = first - 0.5, last + 0.5
    spacing = np.array(geometry.spacing)
    centre_lps = np.array(geometry.origin) + geometry.direction_matrix @ ((low + high) / 2.0 * spacing)
    size = (high - low) * spacing
    return _RAS_FROM_LPS @ centre_lps, size, _RAS_FROM_LPS @ geometry.direction_matrix


# ---------------------------------------------------------------------- segmentations
def _ijk_to_ras_matrix(volumeNode) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return matrix


def oriented_labels(volumeNode, labels_kji: np.ndarray, first: int) -> vtk.vtkObject:
    """A vtkOrientedImageData on the volume's grid that covers only the slab (extent starts at `first`).

    `labels_kji` is the slab in the node's (k, j, i) array order; keeping the extent to the slab avoids
    allocating the whole volume for a short range.
    """
    import slicer  # slicer-core or Slicer: vtkOrientedImageData lives there

    geometry = node_geometry(volumeNode)
    axis = find_axial_axis(geometry.direction)
    extent = [0, geometry.size_ijk[0] - 1, 0, geometry.size_ijk[1] - 1, 0, geometry.size_ijk[2] - 1]
    extent[2 * axis] = first
    extent[2 * axis + 1] = first + labels_kji.shape[2 - axis] - 1
    expected = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    if labels_kji.shape != expected:
        raise ValueError(f"labels of shape {labels_kji.shape} do not fit the slab {expected} of the volume")
    image = slicer.vtkOrientedImageData()
    image.SetExtent(extent)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.ascontiguousarray(
        labels_kji, dtype=np.uint8
    ).ravel()
    image.SetImageToWorldMatrix(_ijk_to_ras_matrix(volumeNode))
    return image


def ensure_segmentation_converters() -> None:
    """Register the labelmap <-> surface conversion rules that Slicer's Segmentations module registers.

    The Slicer application has them; a bare slicer-core process does not, and without them a segment
    cannot even get an empty labelmap (e.g. `AddEmptySegment`). Registering is skipped when present.
    """
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    present = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for rule_class in (
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
        slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
    ):
        if rule_class.__name__ not in present:
            factory.RegisterConverterRule(rule_class())


def terminology_entries(path: Path = TERMINOLOGY_FILE) -> dict[str, str]:
    """Serialized Slicer terminology entry for each tissue key, read from the shipped .term.json."""
    import slicer

    context = json.loads(Path(path).read_text(encoding="utf-8"))
    context_name = context["SegmentationCategoryTypeContextName"]
    entries: dict[str, str] = {}
    for category in context["SegmentationCodes"]["Category"]:
        for type_ in category.get("Type", []):
            key = type_.get("3dSlicerLabel")
            if key is None:
                continue
            entries[key] = slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
                context_name,
                category["CodeValue"], category["CodingSchemeDesignator"], category["CodeMeaning"],
                type_["CodeValue"], type_["CodingSchemeDesignator"], type_["CodeMeaning"],
                "", "", "",
                "", "", "", "", "", "", "",
            )  # fmt: skip
    return entries


def fill_segmentation(segmentationNode, volumeNode, labels_kji: np.ndarray, first: int) -> None:
    """Replace the segmentation's content with the four tissue segments of a slab label array.

    Segment IDs and names are the tissue keys, colours and terminology from tissues.py and the .term.json;
    all four share one labelmap layer (label value = tissue value), as Slicer's own import does; the
    reference geometry is the volume, so Segment Editor edits happen on the CT's voxels.
    """
    import slicer

    ensure_segmentation_converters()
    entries = terminology_entries()
    labelmap = oriented_labels(volumeNode, labels_kji, first)
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    segmentation = segmentationNode.GetSegmentation()
    was_modifying = segmentationNode.StartModify()
    try:
        segmentation.RemoveAllSegments()
        segmentation.SetSourceRepresentationName(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
        for tissue in TISSUES:
            segment = slicer.vtkSegment()
            segment.SetName(tissue.key)
            segment.SetColor(*tissue.rgb_float)
            segment.SetLabelValue(tissue.value)
            segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entries[tissue.key])
            segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), labelmap)
            segmentation.AddSegment(segment, tissue.key)
    finally:
        segmentationNode.EndModify(was_modifying)
    if segmentationNode.GetDisplayNode() is None:
        segmentationNode.CreateDefaultDisplayNodes()


def segment_terminology(segment) -> str:
    """The serialized terminology entry of a segment ('' when it has none)."""
    if hasattr(segment, "GetTerminology"):  # Slicer >= 5.2
        return segment.GetTerminology()
    value = vtk.reference("")
    segment.GetTag(segment.GetTerminologyEntryTagName(), value)
    return str(value)


def tissue_segment_ids(segmentationNode, visible_only: bool = False) -> dict[str, str]:
    """Tissue key -> segment ID, by the segment names the user sees (SAT, SM, IAT, Bone; spaces around them
    ignored). IDs do not count: Slicer keeps a segment's ID when it is renamed, so a segment renamed "SM old" is
    no longer muscle, and a new segment named "SM" is. With `visible_only`, segments hidden in the
    segmentation's display are left out. InputError when two of the considered segments carry one tissue's name.
    """
    segmentation = segmentationNode.GetSegmentation()
    display = segmentationNode.GetDisplayNode() if visible_only else None
    found: dict[str, list[str]] = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        key = (segmentation.GetNthSegment(index).GetName() or "").strip()
        if key in TISSUE_KEYS and (display is None or display.GetSegmentVisibility(segment_id)):
            found.setdefault(key, []).append(segment_id)
    for key, ids in found.items():
        if len(ids) > 1:
            count = {2: "two", 3: "three"}.get(len(ids), str(len(ids)))
            raise InputError(
                f"'{segmentationNode.GetName()}' has {count} segments named '{key}' (IDs {', '.join(ids)}), so which "
                f"one is {key} cannot be told; rename the extra ones (or merge them in Segment Editor: Logical "
                "operators, Add) and try again"
            )
    return {key: found[key][0] for key in TISSUE_KEYS if key in found}  # in tissue order: later tissues win


def visible_tissue_segment_ids(segmentationNode) -> dict[str, str]:
    """Like `tissue_segment_ids`, without the segments hidden in the segmentation's display."""
    return tissue_segment_ids(segmentationNode, visible_only=True)


def labels_from_segmentation(segmentationNode, volumeNode, visible_only: bool = True) -> np.ndarray:
    """The tissue segments as one uint8 label array (0-4) in the volume's (k, j, i) voxel grid.

    Label values come from tissues.py, not from segment order, so added or reordered segments cannot
    shift them; segments are tissues by their names (`tissue_segment_ids`), others are left out, and hidden
    ones too when `visible_only`. Where segments overlap, a voxel is counted once: the later tissue in the
    order SAT < SM < IAT < Bone wins. The voxels are those that lie over the volume's voxels in the world:
    parent transforms of either node are applied (frames.py), and a move that would resample the labels (a
    warp, a turn or a shift that does not put voxels onto voxels) is refused.
    """
    import slicer

    from . import frames  # frames builds on this module

    _require_scalar_volume(volumeNode)
    ensure_segmentation_converters()
    ids = tissue_segment_ids(segmentationNode, visible_only=visible_only)
    grid = frames.volume_grid_in_frame_of(volumeNode, segmentationNode)
    if not frames.same_frame(volumeNode, segmentationNode):
        off = frames.labelmaps_off_the_grid(segmentationNode, ids, grid)
        if off:
            raise InputError(
                f"a transform moves '{segmentationNode.GetName()}' against '{volumeNode.GetName()}' so that the "
                f"voxels of {', '.join(off)} no longer lie on the CT's voxels (a turn, or a move by part of a "
                "voxel), and measuring would resample them; put the segmentation under the volume's transform, "
                "or harden both transforms and align them again"
            )
    geometry = slicer.vtkOrientedImageData()
    geometry.SetExtent(volumeNode.GetImageData().GetExtent())
    geometry.SetImageToWorldMatrix(frames.as_vtk_matrix(grid))
    dims = volumeNode.GetImageData().GetDimensions()
    if not ids:
        return np.zeros((dims[2], dims[1], dims[0]), dtype=np.uint8)
    segment_ids = vtk.vtkStringArray()
    label_values = vtk.vtkIntArray()
    for key, sid in ids.items():  # tissue order: a later segment is painted over an earlier one
        segment_ids.InsertNextValue(sid)
        label_values.InsertNextValue(TISSUE_BY_KEY[key].value)
    merged = slicer.vtkOrientedImageData()
    ok = segmentationNode.GenerateMergedLabelmapForAllSegments(
        merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, geometry, segment_ids, label_values
    )
    if not ok:
        raise InputError(
            f"could not read the segments of '{segmentationNode.GetName()}' as a label map; "
            "make sure they have a binary labelmap representation"
        )
    array = numpy_support.vtk_to_numpy(merged.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    return array.astype(np.uint8)


def labels_image(labels_kji: np.ndarray, volumeNode) -> sitk.Image:
    """A (k, j, i) label array as a uint8 SimpleITK image on the volume's LPS grid."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels_kji, dtype=np.uint8))
    return node_geometry(volumeNode).apply_to(image)


def labels_slab(volume: CTVolume, labels_kji: np.ndarray, first: int = 0, last: int | None = None) -> np.ndarray:
    """Slices first..last of a (k, j, i) label array on the volume's grid, in the slab convention (a copy).

    A copy on purpose: a slab *view* of a temporary SimpleITK image would outlive the image's buffer.
    """
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels_kji, dtype=np.uint8))
    image.CopyInformation(volume.image)
    return np.array(volume.slab_from_image(image, first, last))


__all__ = [
    "LPSGeometry",
    "array_from_node",
    "axial_axis_of_node",
    "check_range",
    "ensure_segmentation_converters",
    "ct_volume_from_node",
    "fill_segmentation",
    "geometry_of_image",
    "image_from_node",
    "labels_from_segmentation",
    "labels_image",
    "labels_slab",
    "node_geometry",
    "node_volume_from_image",
    "oriented_labels",
    "segment_terminology",
    "set_node_geometry",
    "slab_corners_ras",
    "slab_image_from_node",
    "slice_coordinate_at_ras",
    "slice_count",
    "slice_index_at_ras",
    "slice_position_ras",
    "terminology_entries",
    "tissue_segment_ids",
    "update_node_from_array",
    "visible_tissue_segment_ids",
]
