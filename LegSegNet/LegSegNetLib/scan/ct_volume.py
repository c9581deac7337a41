"""`CTVolume`: a CT in Hounsfield units with its geometry, seen the way the engines need it.

The engines work on a *slab*: a stack of axial slices, shape (n_slices, rows, cols). Its axes are voxel
axes of the input, never resampled:

- axis 0 is the voxel axis that runs superior/inferior (whatever its storage position or sign), so
  slice index k of the slab is slice k of the input counted in storage order along that axis;
- rows are the first remaining voxel axis in ITK/NIfTI index order (i, j, k), columns the second.
  This is exactly what the published LegSegNet reference code sees after nibabel's
  `np.moveaxis(vol, si_axis, 0)`.

The slab keeps the storage order; engines that need one orientation whatever the storage (nnU-Net) get the
slab turned to the standard in-plane orientation by `inplane_turn()` (orientation.py), a view as well.

The slab is a view into the image's buffer (no copy), so a 350 x 512 x 512 scan costs its int16
buffer once. Labels produced on the slab go back into the input's own grid with `labels_to_image`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError
from .orientation import InPlaneTurn, inplane_turn, orientation_code

if TYPE_CHECKING:
    from .dicom_series import DicomSeries


@dataclass
class CTVolume:
    image: sitk.Image  # the scan as read: 3D scalar, values in HU, geometry kept for the outputs
    axial_axis: int  # ITK index axis (0, 1 or 2) that runs superior/inferior
    source: str = ""
    modality: str | None = None  # from DICOM when known
    is_2d: bool = False  # read from a single 2D slice (a 1-slice volume)
    notes: list[str] = field(default_factory=list)  # things worth telling the user (e.g. flips)
    dicom: DicomSeries | None = None  # read from DICOM: the files' UIDs and shared header (dicom_series.py)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_array(
        cls,
        hu_zyx: np.ndarray,
        spacing_xyz=(1.0, 1.0, 1.0),
        origin_xyz=(0.0, 0.0, 0.0),
        direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
        source: str = "<array>",
    ) -> CTVolume:
        """A volume from a numpy array in SimpleITK order (k, j, i) and LPS geometry (tests, phantoms)."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(hu_zyx))
        image.SetSpacing([float(s) for s in spacing_xyz])
        image.SetOrigin([float(o) for o in origin_xyz])
        image.SetDirection([float(d) for d in direction])
        return cls(image=image, axial_axis=find_axial_axis(image.GetDirection()), source=source)

    # ------------------------------------------------------------------ geometry
    @property
    def size_ijk(self) -> tuple[int, int, int]:
        return tuple(self.image.GetSize())  # type: ignore[return-value]

    @property
    def inplane_axes(self) -> tuple[int, int]:
        """ITK index axes of the slab's rows and columns."""
        rest = [a for a in range(3) if a != self.axial_axis]
        return rest[0], rest[1]

    @property
    def n_slices(self) -> int:
        return self.size_ijk[self.axial_axis]

    @property
    def slab_spacing(self) -> tuple[float, float, float]:
        """(slice spacing, row spacing, column spacing) in mm."""
        sp = self.image.GetSpacing()
        r, c = self.inplane_axes
        return float(sp[self.axial_axis]), float(sp[r]), float(sp[c])

    def _numpy_axes(self) -> tuple[int, int, int]:
        # SimpleITK arrays are indexed (k, j, i): ITK axis a is numpy axis 2 - a.
        r, c = self.inplane_axes
        return 2 - self.axial_axis, 2 - r, 2 - c

    # ------------------------------------------------------------------ voxels
    def hu_array(self) -> np.ndarray:
        """The whole image as a read-only numpy view in SimpleITK order (k, j, i)."""
        return image_array_view(self.image)

    def slab(self, first: int = 0, last: int | None = None) -> np.ndarray:
        """Slices first..last (inclusive) as a (n, rows, cols) view of the image buffer (no copy)."""
        last = self.n_slices - 1 if last is None else last
        full = np.transpose(self.hu_array(), self._numpy_axes())
        return full[first : last + 1]

    def labels_to_image(self, slab_labels: np.ndarray, first: int = 0) -> sitk.Image:
        """A uint8 label image in the input's exact grid; slices outside the slab are 0."""
        n = slab_labels.shape[0]
        shape = self.hu_array().shape
        axes = self._numpy_axes()
        if tuple(shape[a] for a in axes[1:]) != slab_labels.shape[1:]:
            raise ValueError(f"label slab {slab_labels.shape} does not fit the volume's slab {shape}")
        # The slab turned back to SimpleITK's order is copied by numpy (SimpleITK copies a strided view element by
        # element, several times slower), and only the in-plane box holding labels: most of a scan is background.
        full = np.zeros(shape, dtype=np.uint8)
        labelled = np.asarray(slab_labels).max(axis=0, initial=0) > 0
        rows, cols = np.flatnonzero(labelled.any(axis=1)), np.flatnonzero(labelled.any(axis=0))
        if rows.size:
            box = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            np.transpose(full, axes)[first : first + n][box] = slab_labels[box]
        out = sitk.GetImageFromArray(full)
        out.CopyInformation(self.image)
        return out

    def slab_from_image(self, labels: sitk.Image, first: int = 0, last: int | None = None) -> np.ndarray:
        """The slab of another image on the same grid (e.g. corrected labels), as a view."""
        check_same_grid(self.image, labels)
        last = self.n_slices - 1 if last is None else last
        full = np.transpose(image_array_view(labels), self._numpy_axes())
        return full[first : last + 1]

    def slab_index_to_lps(self, z, r, c) -> np.ndarray:
        """Physical LPS position (mm) of slab voxel coordinates (arrays allowed); shape (..., 3)."""
        z, r, c = np.broadcast_arrays(np.asarray(z, float), np.asarray(r, float), np.asarray(c, float))
        index = np.zeros(z.shape + (3,))
        ra, ca = self.inplane_axes
        index[..., self.axial_axis] = z
        index[..., ra] = r
        index[..., ca] = c
        direction = np.array(self.image.GetDirection()).reshape(3, 3)
        scaled = index * np.array(self.image.GetSpacing())
        return np.array(self.image.GetOrigin()) + scaled @ direction.T

    def slice_z_mm(self, first: int = 0, last: int | None = None) -> np.ndarray:
        """Patient S/I coordinate (LPS z, mm; larger is more superior) of each slice's centre voxel."""
        last = self.n_slices - 1 if last is None else last
        idx = np.arange(first, last + 1)
        _, rows, cols = self.slab(0, 0).shape
        return self.slab_index_to_lps(idx, (rows - 1) / 2.0, (cols - 1) / 2.0)[:, 2]

    def inplane_turn(self) -> InPlaneTurn:
        """The swaps/reversals of the slab's rows and columns that give the standard in-plane orientation."""
        return inplane_turn(self.image.GetDirection(), *self.inplane_axes)

    def orientation_code(self) -> str:
        """Where the voxel axes point, e.g. 'LPS' (identity direction) or 'PIR'."""
        return orientation_code(self.image.GetDirection())


# ---------------------------------------------------------------------- helpers
class _ImageBuffer:
    """Owns the image whose pixel buffer a numpy view points into.

    SimpleITK's GetArrayViewFromImage does not keep the image alive: a view that outlives its image
    reads freed memory (a segfault, seen with `volume.slab_from_image(sitk.ReadImage(...))`). A numpy
    array built from this object keeps it, and so the image, as its `base`.
    """

    def __init__(self, image: sitk.Image) -> None:
        self.image = image
        self.__array_interface__ = sitk.GetArrayViewFromImage(image).__array_interface__


def image_array_view(image: sitk.Image) -> np.ndarray:
    """A read-only numpy view (k, j, i) of the image's pixels that keeps the image alive. No copy."""
    return np.asarray(_ImageBuffer(image))


AXIAL_TOLERANCE_DEG = 10.0


def find_axial_axis(direction, tolerance_deg: float = AXIAL_TOLERANCE_DEG) -> int:
    """The ITK index axis whose direction runs superior/inferior, within `tolerance_deg`.

    Raises InputError for oblique acquisitions: the engines segment voxel slices, and an area measured
    on a slice tilted by more than the tolerance would overstate the cross-section.
    """
    d = np.array(direction, dtype=float).reshape(3, 3)
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-3):
        raise InputError(
            "the image's direction cosines are not orthonormal (sheared grid, e.g. gantry tilt); "
            "resample it to an orthogonal grid first (e.g. Slicer's Resample Scalar Volume)"
        )
    z_component = np.abs(d[2, :])  # |cos| between each voxel axis and the patient S/I axis
    axis = int(np.argmax(z_component))
    angle = float(np.degrees(np.arccos(min(1.0, z_component[axis]))))
    if angle > tolerance_deg:
        raise InputError(
            f"oblique acquisition: no voxel axis within {tolerance_deg:g} degrees of the "
            f"superior/inferior axis (closest is {angle:.1f} degrees); resample the scan to axial slices "
            "first (e.g. Slicer's Resample Scalar Volume or Crop Volume with an axial ROI)"
        )
    return axis


def check_same_grid(reference: sitk.Image, other: sitk.Image, what: str = "label map") -> None:
    """Raise InputError unless `other` has the reference's size, spacing, origin and direction."""
    problems = grid_differences(reference, other)
    if problems:
        raise InputError(
            f"the {what} does not lie on the CT's voxel grid ({'; '.join(problems)}); "
            "export it on the CT's geometry (in Slicer: reference volume = the CT)"
        )


def grid_differences(reference: sitk.Image, other: sitk.Image) -> list[str]:
    """How `other`'s grid differs from the reference's, beyond the tolerances (empty: the same grid).

    Tolerances: spacing 1e-4 (relative or mm), origin 0.01 mm, direction cosines 1e-4.
    """
    problems = []
    if reference.GetSize() != other.GetSize():
        problems.append(f"size {other.GetSize()} vs {reference.GetSize()}")
    if not np.allclose(reference.GetSpacing(), other.GetSpacing(), rtol=1e-4, atol=1e-4):
        problems.append(f"spacing {other.GetSpacing()} vs {reference.GetSpacing()}")
    if not np.allclose(reference.GetOrigin(), other.GetOrigin(), atol=1e-2):
        problems.append(f"origin {other.GetOrigin()} vs {reference.GetOrigin()}")
    if not np.allclose(reference.GetDirection(), other.GetDirection(), atol=1e-4):
        problems.append("direction differs")
    return problems
