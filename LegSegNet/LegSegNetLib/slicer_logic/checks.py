"""The validation step of the Slicer logic: every entry point checks all its arguments here before it starts a
worker or touches a node, so a bad argument is one clear InputError and the scene stays as it was.

Slice numbers are whole numbers (a float that is one, as a spin box may give, is accepted; NaN, 3.7 or "3"
are not); seeds are whole numbers >= 0; nodes must be of the right kind and in the scene they are used with.
MRML only, no Qt.
"""

from __future__ import annotations

import math
import numbers

from ..core.errors import InputError
from . import scene as slicer_io


def _is_whole(value) -> bool:
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer()
    )


def whole_number(value, what: str, minimum: int | None = None) -> int:
    """`value` as an int when it is a whole number (an integral float included), else InputError."""
    if not _is_whole(value) or (minimum is not None and int(value) < minimum):
        bound = "" if minimum is None else f" of at least {minimum}"
        raise InputError(f"{what} must be a whole number{bound}, not {value!r}")
    return int(value)


def slice_number(value, what: str = "slice") -> int:
    """A slice index given by the user or a script: a whole slice number (range checks come with the volume)."""
    if not _is_whole(value):
        raise InputError(
            f"{what} {value!r} is not a whole slice number; slices are counted 0, 1, 2, ... along the "
            "volume's superior/inferior voxel axis"
        )
    return int(value)


def slice_range(volumeNode, first, last) -> tuple[int, int]:
    """(first, last) as whole slice numbers inside the volume (None: its first / last slice)."""
    n_slices = slicer_io.slice_count(volumeNode)  # also checks the volume
    first = 0 if first is None else slice_number(first, "first slice")
    last = n_slices - 1 if last is None else slice_number(last, "last slice")
    slicer_io.check_range(first, last, n_slices)
    return first, last


def seed(value) -> int:
    return whole_number(value, "the seed", minimum=0)


def volume(volumeNode):
    """A scalar CT volume node with voxels and a usable grid (positive spacing, not oblique), in a scene."""
    slicer_io.slice_count(volumeNode)
    if volumeNode.GetScene() is None:
        raise InputError(f"volume '{volumeNode.GetName()}' is not in the scene; load it (or add it) first")
    return volumeNode


def node_in_scene(node, scene, what: str, class_name: str, kind: str, optional: bool = True):
    """`node` is a `class_name` node of `scene` (None passes when `optional`)."""
    if node is None:
        if optional:
            return None
        raise InputError(f"no {what} selected; choose one")
    name = node.GetName() if hasattr(node, "GetName") else repr(node)
    if not (hasattr(node, "IsA") and node.IsA(class_name)):
        raise InputError(f"'{name}' is not {kind}; choose {kind} as the {what}")
    if scene is None or not scene.IsNodePresent(node):
        raise InputError(
            f"the {what} '{name}' is not in the scene of the CT volume; choose a node of that scene, "
            "or none to have one made"
        )
    return node


def segmentation(node, scene, what: str = "segmentation", optional: bool = False):
    return node_in_scene(node, scene, what, "vtkMRMLSegmentationNode", "a segmentation", optional)


def table(node, scene, what: str = "table"):
    return node_in_scene(node, scene, what, "vtkMRMLTableNode", "a table", optional=True)


__all__ = ["node_in_scene", "seed", "segmentation", "slice_number", "slice_range", "table", "volume", "whole_number"]
