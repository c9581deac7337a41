"""The standard in-plane orientation (scan/orientation.py): whatever order a scan is stored in, its slab turned
to the standard holds the same voxels at the same places, and labels made on it go back exactly.

Real files: the same physical scan is written in many storage orders with SimpleITK (tests/writers.py) and
read back with LegSegNet's reader. No model is needed here; the nnU-Net engine's orientation tests are in
test_nnunet_orientation.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))

from writers import leg_image, reorient, write_image  # noqa: E402

from LegSegNetLib import pipeline  # noqa: E402
from LegSegNetLib.core.progress import Progress  # noqa: E402
from LegSegNetLib.scan import volume_io  # noqa: E402
from LegSegNetLib.scan.orientation import InPlaneTurn, inplane_turn, orientation_code  # noqa: E402

# storage orders: the S/I axis first, second or third, in-plane axes swapped and/or reversed
CODES = ["LPS", "LPI", "RAS", "RPS", "LAI", "PLS", "PRI", "ALS", "PIR", "LIP", "RIA", "SLP", "IPL", "SAR"]


def _standard(image: sitk.Image, folder: Path) -> tuple[np.ndarray, tuple[float, float, float], str]:
    """The standard slab (slices inferior to superior), its spacing and the storage code of `image` read from a file."""
    volume = volume_io.read_ct(write_image(image, folder / f"{orientation_code(image.GetDirection())}.nii.gz"))
    turn = volume.inplane_turn()
    slab = turn.to_standard(volume.slab())
    # slices counted from inferior to superior, so that every storage order can be compared slice by slice
    z = volume.slice_z_mm()
    if z[0] > z[-1]:
        slab = slab[::-1]
    return slab, turn.spacing_to_standard(volume.slab_spacing), volume.orientation_code()


@pytest.mark.parametrize("code", CODES)
def test_every_storage_order_gives_the_same_standard_slab(code, tmp_path):
    reference, reference_spacing, reference_code = _standard(leg_image(), tmp_path / "lps")
    assert reference_code == "LPS"
    slab, spacing, read_code = _standard(reorient(leg_image(), code), tmp_path)
    assert read_code == code
    assert np.array_equal(slab, reference)
    assert spacing == pytest.approx(reference_spacing)


def test_standard_rows_run_toward_the_left_and_columns_toward_posterior():
    # PIR: i -> posterior, j -> inferior, k -> right. The slab's rows are i (front-back), its columns k.
    turn = inplane_turn(reorient(leg_image(), "PIR").GetDirection(), 0, 2)
    assert turn == InPlaneTurn(transpose=True, flip_rows=True, flip_cols=False)
    assert turn.describe() == "rows and columns swapped, left-right reversed"
    assert inplane_turn(np.eye(3).ravel(), 0, 1).is_identity
    # a slice rotated in-plane by 30 degrees keeps its rows and columns
    t = np.radians(30)
    rotated = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    assert inplane_turn(rotated.ravel(), 0, 1).is_identity


@pytest.mark.parametrize(
    "turn", [InPlaneTurn(t, r, c) for t in (False, True) for r in (False, True) for c in (False, True)]
)
def test_labels_go_back_to_the_storage_order_exactly(turn):
    slab = np.arange(2 * 5 * 7).reshape(2, 5, 7)
    standard = turn.to_standard(slab)
    assert standard.shape == ((2, 7, 5) if turn.transpose else (2, 5, 7))
    assert np.array_equal(turn.from_standard(standard), slab)
    assert np.shares_memory(standard, slab)  # a view, no copy


def test_engines_that_ask_for_it_get_the_standard_slab_and_their_labels_go_back(tmp_path):
    """pipeline.segment_slab with an engine that records what it was given: the standard slab of a PIR scan
    is the LPS scan's; its labels (here: a copy of the input's sign) come back on the PIR grid, with a note."""

    class Recorder:
        name = "recorder"
        standard_orientation = True

        def segment(self, slab, spacing, progress):
            self.seen, self.spacing = np.array(slab), spacing
            return (np.asarray(slab) > 0).astype(np.uint8)

    lps = volume_io.read_ct(write_image(leg_image(), tmp_path / "lps.nii.gz"))
    pir = volume_io.read_ct(write_image(reorient(leg_image(), "PIR"), tmp_path / "pir.nii.gz"))
    seen = {}
    for name, volume in (("lps", lps), ("pir", pir)):
        engine, progress = Recorder(), Progress()
        labels = pipeline.segment_slab(engine, volume, 0, volume.n_slices - 1, progress)
        assert np.array_equal(labels, (volume.slab() > 0).astype(np.uint8))  # back on the storage slab
        seen[name] = (engine.seen, engine.spacing, progress.notes)
    assert np.array_equal(seen["pir"][0], seen["lps"][0][::-1])  # PIR counts slices from the top
    assert seen["pir"][1] == pytest.approx(seen["lps"][1])
    assert seen["lps"][2] == []
    assert any("stored PIR" in note and "rows and columns swapped" in note for note in seen["pir"][2])
