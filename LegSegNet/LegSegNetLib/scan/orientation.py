"""The standard in-plane orientation of a slab, and the turn that brings any storage order to it and back.

A 2D model learns slices in one orientation. The slab (ct_volume.py) keeps the storage order of the file, so
the same leg stored with its in-plane voxel axes swapped or reversed (e.g. stored PIR or RAS instead of LPS)
would reach a model transposed or mirrored, and its labels would change in physical space. Engines that
care (the nnU-Net engine) are therefore given the slab turned to one *standard* orientation:

    rows run toward the patient's left (LPS +x), columns toward posterior (LPS +y),

which is exactly the slab of a scan stored as DICOM stores axial images (direction cosines LPS: voxel axis i
toward the left, j toward posterior), so for such scans, the common case, the turn does nothing. The turn
only swaps and reverses the two in-plane axes (no resampling, no interpolation): a view of the same voxels,
and labels made on it go back to the storage order exactly (`InPlaneTurn.from_standard`). Which axis is
which is decided by the larger component of each in-plane axis's direction cosine, so a slice rotated
in-plane by less than 45 degrees keeps its rows and columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STANDARD_DESCRIPTION = (
    "rows toward the patient's left, columns toward posterior (a scan stored LPS, as DICOM stores it)"
)


@dataclass(frozen=True)
class InPlaneTurn:
    """Swaps and reversals of a slab's rows and columns that give the standard orientation.

    Applied in this order: transpose (swap rows and columns), then reverse rows, then reverse columns
    (both on the transposed axes). `from_standard` undoes them in the opposite order.
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @property
    def is_identity(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_cols)

    def to_standard(self, slab: np.ndarray) -> np.ndarray:
        """(n, rows, cols) in storage order -> a view in the standard orientation."""
        out = slab.transpose(0, 2, 1) if self.transpose else slab
        if self.flip_rows:
            out = out[:, ::-1, :]
        if self.flip_cols:
            out = out[:, :, ::-1]
        return out

    def from_standard(self, slab: np.ndarray) -> np.ndarray:
        """(n, rows, cols) in the standard orientation -> a view in storage order (the inverse turn)."""
        out = slab
        if self.flip_cols:
            out = out[:, :, ::-1]
        if self.flip_rows:
            out = out[:, ::-1, :]
        return out.transpose(0, 2, 1) if self.transpose else out

    def spacing_to_standard(self, spacing: tuple[float, float, float]) -> tuple[float, float, float]:
        """(slice, row, column) spacing of the storage slab -> that of the standard slab."""
        return (spacing[0], spacing[2], spacing[1]) if self.transpose else tuple(spacing)  # type: ignore[return-value]

    def describe(self) -> str:
        """What the turn does, in words (for the run's notes)."""
        parts = []
        if self.transpose:
            parts.append("rows and columns swapped")
        if self.flip_rows:
            parts.append("left-right reversed")
        if self.flip_cols:
            parts.append("front-back reversed")
        return ", ".join(parts) or "unchanged"


def inplane_turn(direction, row_axis: int, col_axis: int) -> InPlaneTurn:
    """The turn for a slab whose rows and columns are the ITK voxel axes `row_axis` and `col_axis` of an
    image with these direction cosines (row-major 3x3, columns = voxel axes in LPS)."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    row_dir, col_dir = d[:, row_axis], d[:, col_axis]
    transpose = abs(row_dir[1]) > abs(row_dir[0])  # the rows run front-back: swap them with the columns
    if transpose:
        row_dir, col_dir = col_dir, row_dir
    return InPlaneTurn(transpose=bool(transpose), flip_rows=bool(row_dir[0] < 0), flip_cols=bool(col_dir[1] < 0))


def orientation_code(direction) -> str:
    """The 3-letter code of where each voxel axis points (DICOM/ITK style: 'LPS' = identity direction)."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    letters = (("R", "L"), ("A", "P"), ("I", "S"))
    code = ""
    for axis in range(3):
        patient = int(np.argmax(np.abs(d[:, axis])))
        code += letters[patient][int(d[patient, axis] > 0)]
    return code
