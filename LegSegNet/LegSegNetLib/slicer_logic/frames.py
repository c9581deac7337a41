"""Where things are: the one place that maps between world coordinates, a node's own frame and slice indices.

A node's coordinates (a volume's IJK-to-RAS matrix, a segment's labelmap geometry) are in the node's own frame;
its parent transforms (Transforms module) place that frame in the world. Slice views, the mouse and every
other node live in world coordinates. So:

- points: `to_world` / `from_world`, through linear transforms and warps alike;
- slices of a volume as a view shows them: `slice_position_world`, `slice_index_at_world` (nearest slice,
  clamped: "From view"), `slice_index_in_view` (the slice a view shows, or InputError when it shows none or is
  tilted against the slices: "Mark reviewed");
- one node's voxels read on another's voxel grid (a segmentation on its CT): `volume_grid_in_frame_of` gives the
  CT's IJK-to-RAS matrix in the segmentation's frame. Two nodes under the same transform need nothing. When a
  transform lies between them it must be linear (a warp would bend the voxel grid) and must put voxels onto
  voxels (a whole-voxel move, a 90-degree turn, a flip: `moves_voxels_onto_voxels`); anything else would
  resample the labels, and is refused with what to do instead.

MRML and VTK only (no Qt), so it runs with the slicer-core wheel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..core.errors import InputError
from . import scene as slicer_io

ALIGNED_VIEW_TOLERANCE_DEG = 1.0  # a view tilted more than this against a volume's slices shows no single slice


# ---------------------------------------------------------------------- matrices
def as_array(matrix) -> np.ndarray:
    """A vtkMatrix4x4 as a 4x4 numpy array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def as_vtk_matrix(array: np.ndarray):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras(volumeNode) -> np.ndarray:
    """The volume's IJK-to-RAS matrix (its own frame) as a numpy array."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return as_array(matrix)


# ---------------------------------------------------------------------- points
def to_world(node, point: Sequence[float]) -> np.ndarray:
    """A point in `node`'s own frame, in world coordinates (RAS)."""
    out = [0.0, 0.0, 0.0]
    node.TransformPointToWorld([float(v) for v in point[:3]], out)
    return np.array(out)


def from_world(node, point: Sequence[float]) -> np.ndarray:
    """A world point (RAS) in `node`'s own frame."""
    out = [0.0, 0.0, 0.0]
    node.TransformPointFromWorld([float(v) for v in point[:3]], out)
    return np.array(out)


def same_frame(a, b) -> bool:
    """True when the two nodes hang under the same parent transform (or neither has one)."""
    return (a.GetTransformNodeID() or None) == (b.GetTransformNodeID() or None)


def matrix_between(from_node, to_node) -> np.ndarray | None:
    """The 4x4 matrix taking coordinates in `from_node`'s frame to `to_node`'s frame; None when a non-linear
    transform (a warp) lies between them."""
    import slicer
    import vtk

    if same_frame(from_node, to_node):
        return np.eye(4)
    general = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(
        from_node.GetParentTransformNode(), to_node.GetParentTransformNode(), general
    )
    linear = vtk.vtkTransform()
    if not slicer.vtkMRMLTransformNode.IsGeneralTransformLinear(general, linear):
        return None
    return as_array(linear.GetMatrix())


# ---------------------------------------------------------------------- slices in views
def slice_position_world(volumeNode, slice_index: float) -> np.ndarray:
    """World position (RAS, mm) of the centre of slice `slice_index` along the volume's S/I voxel axis."""
    return to_world(volumeNode, slicer_io.slice_position_ras(volumeNode, slice_index))


def slice_coordinate_at_world(volumeNode, ras) -> float:
    """The (fractional) slice index of a world point along the volume's S/I voxel axis."""
    return slicer_io.slice_coordinate_at_ras(volumeNode, from_world(volumeNode, ras))


def slice_index_at_world(volumeNode, ras) -> int:
    """The nearest slice to a world point, clamped to the volume (e.g. "From view")."""
    n = slicer_io.slice_count(volumeNode)
    return int(np.clip(np.rint(slice_coordinate_at_world(volumeNode, ras)), 0, n - 1))


def view_centre_and_normal(sliceNode) -> tuple[np.ndarray, np.ndarray]:
    matrix = as_array(sliceNode.GetSliceToRAS())
    normal = matrix[:3, 2]
    return matrix[:3, 3], normal / np.linalg.norm(normal)


def slice_index_in_view(volumeNode, sliceNode) -> int:
    """The slice of the volume a slice view shows (world coordinates, transforms included).

    InputError when the view's plane lies outside the volume or is tilted against the volume's slices by more
    than ALIGNED_VIEW_TOLERANCE_DEG (then it shows parts of several slices, none of which could be meant).
    """
    centre, normal = view_centre_and_normal(sliceNode)
    name = volumeNode.GetName()
    n = slicer_io.slice_count(volumeNode)
    coordinate = slice_coordinate_at_world(volumeNode, centre)
    if not -0.5 <= coordinate <= n - 0.5:
        raise InputError(
            f"the view shows no slice of '{name}': its plane lies {_slices_outside(coordinate, n):.1f} slices beyond "
            f"the volume's slices 0:{n - 1}; move the view onto the volume (or jump to a slice) first"
        )
    # the volume's slice normal in the world, where the view is (a warp turns it locally)
    step = slicer_io.slice_position_ras(volumeNode, coordinate + 0.5) - slicer_io.slice_position_ras(
        volumeNode, coordinate - 0.5
    )
    local = from_world(volumeNode, centre)
    axis = to_world(volumeNode, local + step / 2.0) - to_world(volumeNode, local - step / 2.0)
    cosine = abs(float(np.dot(axis / np.linalg.norm(axis), normal)))
    angle = math.degrees(math.acos(min(1.0, cosine)))
    if angle > ALIGNED_VIEW_TOLERANCE_DEG:
        raise InputError(
            f"the view is tilted by {angle:.1f} degrees against the slices of '{name}' (e.g. the volume is turned by a "
            "transform), so it shows no single slice; align the view with the volume (the view's 'Rotate to volume "
            "plane') and try again"
        )
    return int(np.clip(np.rint(coordinate), 0, n - 1))


def _slices_outside(coordinate: float, n: int) -> float:
    return -coordinate if coordinate < 0 else coordinate - (n - 1)


# ---------------------------------------------------------------------- one node's voxels on another's grid
def moves_voxels_onto_voxels(relative: np.ndarray, atol_axes: float = 1e-4, atol_shift: float = 1e-3) -> bool:
    """True when a voxel-index-to-voxel-index matrix maps every voxel centre onto a voxel centre: a signed
    permutation of the axes (turns by 90 degrees, flips) and a whole-voxel shift."""
    axes = relative[:3, :3]
    rounded = np.round(axes)
    if not np.allclose(axes, rounded, atol=atol_axes):
        return False
    if not (np.all(np.abs(rounded).sum(axis=0) == 1) and np.all(np.abs(rounded).sum(axis=1) == 1)):
        return False
    shift = relative[:3, 3]
    return bool(np.allclose(shift, np.round(shift), atol=atol_shift))


def volume_grid_in_frame_of(volumeNode, node) -> np.ndarray:
    """The volume's IJK-to-RAS matrix expressed in `node`'s frame (the volume's own when both share a frame).

    InputError when a warp lies between them. Whether the node's voxels land on the volume's voxels is the
    caller's question (`labelmaps_off_the_grid`): only the caller knows which voxels matter.
    """
    between = matrix_between(volumeNode, node)
    if between is None:
        raise InputError(
            f"'{node.GetName()}' and '{volumeNode.GetName()}' are placed by different transforms with a warp "
            "(non-linear transform) between them, and reading one on the other's voxels would resample it; put both "
            "under the same transform, or harden the transforms (Data module: right-click, Harden transform)"
        )
    return between @ ijk_to_ras(volumeNode)


def labelmaps_off_the_grid(segmentationNode, segment_ids: dict[str, str], grid_ijk_to_frame: np.ndarray) -> list[str]:
    """The keys of `segment_ids` whose binary labelmap's voxels do not land on the voxels of the grid
    (`grid_ijk_to_frame`: a grid's IJK-to-RAS in the segmentation's frame, e.g. from volume_grid_in_frame_of)."""
    import slicer

    representation = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    off = []
    for key, segment_id in segment_ids.items():
        segment = segmentationNode.GetSegmentation().GetSegment(segment_id)
        labelmap = segment.GetRepresentation(representation) if segment is not None else None
        if labelmap is None:
            continue  # e.g. only a closed surface: converted onto the grid, nothing to resample
        extent = labelmap.GetExtent()
        if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
            continue  # an empty segment has no voxels to misplace
        import vtk

        matrix = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(matrix)
        if not moves_voxels_onto_voxels(np.linalg.solve(grid_ijk_to_frame, as_array(matrix))):
            off.append(key)
    return off


__all__ = [
    "ALIGNED_VIEW_TOLERANCE_DEG",
    "as_array",
    "as_vtk_matrix",
    "from_world",
    "ijk_to_ras",
    "labelmaps_off_the_grid",
    "matrix_between",
    "moves_voxels_onto_voxels",
    "same_frame",
    "slice_coordinate_at_world",
    "slice_index_at_world",
    "slice_index_in_view",
    "slice_position_world",
    "to_world",
    "view_centre_and_normal",
    "volume_grid_in_frame_of",
]
