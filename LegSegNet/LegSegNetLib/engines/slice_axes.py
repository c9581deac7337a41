"""Which way round a 2D model gets its slices: the axis order each kind of model was trained on.

Both orders start from the standard slab (scan/orientation.py: rows toward the patient's left, columns
toward posterior; for a scan stored LPS, as DICOM stores axial images, that is the storage slab itself):

- `PUBLISHED`: the standard slab as it is, rows along the left-right axis. The published weights' reference
  code takes `vol[z]` of a nibabel array with the superior/inferior axis moved to the front, so for a scan
  stored LPS its rows are voxel axis i (left-right) and its columns j (front-back); the published PNG
  training slices were made that way. PNG-format models (the published weights, and PNG training sets that
  `dataset add --format png` writes) get this order.
- `NNUNET`: the standard slab transposed, rows along the front-back axis and columns left-right, with the
  spacing in the same order: what nnU-Net's own SimpleITK reader makes of a scan stored LPS
  (`GetArrayFromImage` gives (k, j, i), so a slice is (j, i), spacing (k, j, i)), and so what a model
  trained by plain nnU-Net on HU NIfTI volumes or slices has learnt. HU-format models get this order, and
  `dataset add --format hu` writes its slices so that nnU-Net reads them back in it.

The order a model was trained in is recorded in its dataset.json (`legsegnet_slice_axes`; nnU-Net copies
dataset.json from the training set to the model and ignores keys it does not know). HU models trained by
LegSegNet before that record existed were trained on the storage slab, i.e. in the published order: they
are recognised by LegSegNet's description in their dataset.json without the record, and get that order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..core.errors import InputError

if TYPE_CHECKING:
    from ..models.store import ModelFolder

PUBLISHED = "published"
NNUNET = "nnunet"
AXES = (PUBLISHED, NNUNET)
DATASET_JSON_KEY = (
    "legsegnet_slice_axes"  # in dataset.json of LegSegNet training sets and of the models trained on them
)
# dataset.json's description in every training set LegSegNet has written (also before the record existed)
LEGSEGNET_DESCRIPTION = "LegSegNet model-in-the-loop annotations"

DESCRIPTIONS = {
    PUBLISHED: "rows along the patient's left-right axis (the published reference code's vol[z])",
    NNUNET: "rows along the front-back axis (nnU-Net's SimpleITK reader)",
}


def to_model_order(slices: np.ndarray, spacing: tuple[float, float, float], axes: str):
    """Standard slices (k, rows, cols) and their (slice, row, column) spacing in the model's order (views)."""
    if axes == NNUNET:
        return slices.transpose(0, 2, 1), (spacing[0], spacing[2], spacing[1])
    return slices, tuple(spacing)


def from_model_order(array, axes: str):
    """An array whose last two axes are the model's (rows, cols) -> the standard slab's order (numpy or torch)."""
    if axes == NNUNET:
        return array.swapaxes(-1, -2) if isinstance(array, np.ndarray) else array.transpose(-1, -2)
    return array


def for_model(model: ModelFolder) -> tuple[str, str | None]:
    """(the slice axes `model` was trained in, a note for the user or None)."""
    if model.natural_image:
        return PUBLISHED, None
    dataset = model.dataset()
    recorded = dataset.get(DATASET_JSON_KEY)
    if recorded is not None:
        if recorded not in AXES:
            raise InputError(
                f"model '{model.name}': dataset.json says {DATASET_JSON_KEY} = {recorded!r}, which this LegSegNet does "
                f"not know ({', '.join(AXES)}); update LegSegNet"
            )
        return recorded, None
    if str(dataset.get("description", "")).startswith(LEGSEGNET_DESCRIPTION):
        return PUBLISHED, (
            f"model '{model.name}' was trained by an earlier LegSegNet on HU slices with rows along the patient's "
            "left-right axis; it is given its slices that way. Models trained by plain nnU-Net take them the other "
            "way round: to make it interchangeable with those, add its slices to a new training set and train again"
        )
    return NNUNET, None


def written_order(input_format: str) -> str:
    """The order `dataset add` writes a new training set of this format in (png or hu)."""
    return PUBLISHED if input_format == "png" else NNUNET
