"""The output files: contents that agree with each other and with the CT, radiological display, atomic writes."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import writers as w
from PIL import Image

from LegSegNetLib.core.errors import InputError, LegSegNetError
from LegSegNetLib.core.progress import Progress
from LegSegNetLib.measurement.quantify import quantify
from LegSegNetLib.measurement.report import (
    OUTPUT_FILES,
    OverlayAhead,
    display_orientation,
    orient_for_display,
    write_label_image,
    write_outputs,
)
from LegSegNetLib.scan.ct_volume import CTVolume, check_same_grid, find_axial_axis

SAT, SM, IAT, BONE = 1, 2, 3, 4
RUN_INFO = {"input": "/data/calf.nii.gz", "engine": "threshold", "model": None}
FLIP_X = (-1, 0, 0, 0, 1, 0, 0, 0, 1)
FIGURES = ("overlay.png", "profile.png")
# Slicer's Python (where the worker runs) ships no matplotlib: there the set is written without the figures.
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
WRITTEN_FILES = OUTPUT_FILES if HAVE_MATPLOTLIB else tuple(n for n in OUTPUT_FILES if n not in FIGURES)
needs_matplotlib = pytest.mark.figures  # left out of the runs under Slicer's Python versions (see Makefile)


def _two_leg_scan(direction=FLIP_X):
    """8 slices of 48 x 24 voxels of 2 x 2.5 x 5 mm (slab rows = index i); labels on slices 2..6.

    Two leg-sized blocks (16 x 16 voxels, 12.8 cm^2), HU 40 (+ 0..4 by slice in one leg), no IAT: the leg at low
    index i is a SAT ring around a Bone core, the one at high i a SAT ring around an SM core.
    """
    n, rows, cols = 8, 48, 24
    hu_slab = np.full((n, rows, cols), -1000, np.int16)
    labels = np.zeros((5, rows, cols), np.uint8)
    for low, core in ((4, BONE), (28, SM)):
        hu_slab[2:7, low : low + 16, 4:20] = 40
        labels[:, low : low + 16, 4:20] = SAT
        labels[:, low + 4 : low + 12, 8:16] = core
    hu_slab[2:7, 4:20, 4:20] += np.arange(5, dtype=np.int16)[:, None, None]  # some spread of HU
    hu_zyx = np.ascontiguousarray(hu_slab.transpose(0, 2, 1))
    geometry = {"spacing_xyz": (2.0, 2.5, 5.0), "origin_xyz": (12.0, -30.0, -400.0), "direction": direction}
    volume = CTVolume.from_array(hu_zyx, **geometry)
    return volume, labels, 2, 6


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("written")
    volume, labels, first, last = _two_leg_scan()
    measurements = quantify(volume, labels, first, last)
    progress = Progress()
    outdir = tmp_path / "results" / "case1"  # neither folder exists yet
    metrics = write_outputs(outdir, volume, labels, first, last, measurements, RUN_INFO, progress)
    return outdir, volume, labels, first, last, metrics, progress


def _strict_json(path: Path) -> dict:
    def refuse(constant):
        raise AssertionError(f"metrics.json holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# ---------------------------------------------------------------------------------------------- contents
def test_all_files_written_and_nothing_else(written):
    outdir, *_, progress = written
    assert sorted(p.name for p in outdir.iterdir()) == sorted(WRITTEN_FILES)
    assert sorted(p.name for p in outdir.parent.iterdir()) == ["case1"]  # no staging folder left behind
    assert progress.stage_name == "writing" and progress.done == len(WRITTEN_FILES)


def test_metrics_json_agrees_with_labels_file_read_back(written):
    outdir, volume, labels, first, last, metrics, _ = written
    on_disk = _strict_json(outdir / "metrics.json")
    assert on_disk == metrics
    assert {k: on_disk[k] for k in RUN_INFO} == RUN_INFO
    assert on_disk["slices"] == [first, last]

    image = sitk.ReadImage(str(outdir / "labels.nii.gz"))
    assert image.GetPixelID() == sitk.sitkUInt8
    check_same_grid(volume.image, image)  # size, spacing, origin, direction of the input
    read_labels = sitk.GetArrayFromImage(image)
    ct = sitk.GetArrayFromImage(volume.image).astype(np.float64)
    k_outside = [k for k in range(read_labels.shape[0]) if not first <= k <= last]
    assert not read_labels[k_outside].any()  # slices outside the range are 0
    voxel_cm3 = 2.0 * 2.5 * 5.0 / 1000
    for key, value in (("SAT", SAT), ("SM", SM), ("Bone", BONE)):
        voxels = ct[read_labels == value]
        entry = on_disk["tissues"][key]
        assert entry["voxels"] == voxels.size > 0
        assert entry["volume_cm3"] == pytest.approx(voxels.size * voxel_cm3)
        assert entry["mean_hu"] == pytest.approx(voxels.mean())
        assert entry["sd_hu"] == pytest.approx(voxels.std(ddof=1))
    assert on_disk["tissues"]["IAT"] == {"voxels": 0, "volume_cm3": 0.0, "mean_hu": None, "sd_hu": None}
    fat = ct[(read_labels == SAT) | (read_labels == IAT)]
    assert on_disk["derived"]["mu_Fat_hu"] == pytest.approx(fat.mean())
    # x is flipped: index i grows toward the patient's right, so the low-index leg (Bone core) is the left one
    assert on_disk["legs"]["left"]["tissues"]["Bone"]["voxels"] == on_disk["tissues"]["Bone"]["voxels"]
    assert on_disk["legs"]["right"]["tissues"]["SM"]["voxels"] == on_disk["tissues"]["SM"]["voxels"]
    assert on_disk["legs"]["right"]["tissues"]["Bone"]["voxels"] == 0


def test_labels_nifti_affine_is_the_ct_geometry(written):
    outdir, volume, *_ = written
    affine = nib.load(str(outdir / "labels.nii.gz")).affine
    d = np.array(volume.image.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = d * np.array(volume.image.GetSpacing())
    lps[:3, 3] = volume.image.GetOrigin()
    assert np.allclose(affine, np.diag([-1, -1, 1, 1]) @ lps, atol=1e-4)  # NIfTI is RAS


def test_metrics_csv_is_one_header_and_one_row(written):
    outdir, *_, metrics, _ = written
    with open(outdir / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 2
    row = dict(zip(*rows))
    assert row["input"] == "/data/calf.nii.gz" and row["engine"] == "threshold" and row["model"] == ""
    for key in ("SAT", "SM", "Bone"):
        assert float(row[f"V_{key}_cm3"]) == pytest.approx(metrics["tissues"][key]["volume_cm3"])
        assert float(row[f"mu_{key}_hu"]) == pytest.approx(metrics["tissues"][key]["mean_hu"])
        assert float(row[f"sd_{key}_hu"]) == pytest.approx(metrics["tissues"][key]["sd_hu"])
    assert row["mu_IAT_hu"] == "" and row["sd_IAT_hu"] == ""  # undefined: empty, not "nan"
    for key in ("V_Fat_cm3", "R_IAT_SAT", "R_SM_Fat", "mu_SM_hu", "mu_Fat_hu"):
        assert float(row[key]) == pytest.approx(metrics["derived"][key])
    assert float(row["left_V_SM_cm3"]) == pytest.approx(metrics["legs"]["left"]["tissues"]["SM"]["volume_cm3"])


def test_profile_csv_rows_sum_to_the_volumes(written):
    outdir, volume, labels, first, last, metrics, _ = written
    lines = (outdir / "profile.csv").read_text().splitlines()
    assert lines[0] == "slice_index,z_mm,A_SAT_cm2,A_SM_cm2,A_IAT_cm2,A_Bone_cm2"
    with open(outdir / "profile.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["slice_index"]) for r in rows] == list(range(first, last + 1))
    assert [float(r["z_mm"]) for r in rows] == pytest.approx([-400.0 + 5.0 * k for k in range(first, last + 1)])
    for key in ("SAT", "SM", "IAT", "Bone"):
        volume_cm3 = sum(float(r[f"A_{key}_cm2"]) * 0.5 for r in rows)  # A (cm^2) * dz (0.5 cm)
        assert volume_cm3 == pytest.approx(metrics["tissues"][key]["volume_cm3"])


@needs_matplotlib
def test_pngs_are_images(written):
    outdir, *_ = written
    for name in ("overlay.png", "profile.png"):
        with Image.open(outdir / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200


# ---------------------------------------------------------------------------------------------- radiological view
def _directions():
    """Proper and improper axial directions: x/y flips and in-plane axes swapped."""
    out = []
    for swap, fx, fy in itertools.product([False, True], [1, -1], [1, -1]):
        d = np.zeros((3, 3))
        i_axis, j_axis = (1, 0) if swap else (0, 1)  # which LPS axis index i and j run along
        d[i_axis, 0] = fx if i_axis == 0 else fy
        d[j_axis, 1] = fy if j_axis == 1 else fx
        d[2, 2] = 1
        out.append(d)
    return out


@pytest.mark.parametrize("direction", _directions(), ids=lambda d: "".join(str(int(v)) for v in d[:2, :2].ravel()))
def test_display_puts_patient_right_on_the_left_and_anterior_up(direction):
    hu = np.zeros((2, 5, 7), np.int16)
    volume = CTVolume.from_array(hu, spacing_xyz=(0.7, 0.9, 2.0), direction=direction.ravel())
    _, rows, cols = volume.slab().shape
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    lps = volume.slab_index_to_lps(np.zeros_like(r), r, c)
    orientation = display_orientation(volume)
    x = orient_for_display(lps[..., 0], orientation)
    y = orient_for_display(lps[..., 1], orientation)
    assert (np.diff(x, axis=1) > 0).all()  # screen rightwards = toward the patient's left (LPS +x)
    assert (np.diff(y, axis=0) > 0).all()  # screen downwards = toward posterior (LPS +y)
    assert np.allclose(np.diff(x, axis=1), orientation[4]) and np.allclose(np.diff(y, axis=0), orientation[3])


@needs_matplotlib
@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), FLIP_X])
def test_overlay_png_shows_the_patients_right_leg_on_the_left(tmp_path, direction):
    volume, labels, first, last = _two_leg_scan(direction)
    labels[labels == SAT] = 0  # only the cores: Bone in the low-index leg, SM in the high-index leg
    measurements = quantify(volume, labels, first, last)
    write_outputs(tmp_path / "out", volume, labels, first, last, measurements, RUN_INFO)
    pixels = np.asarray(Image.open(tmp_path / "out" / "overlay.png").convert("RGB")).astype(float)

    def mean_column(rgb):  # tissue colour blended at alpha 0.45 over HU 40 (grey 127.5 in the window)
        blended = 0.45 * np.array(rgb) + 0.55 * 127.5
        return np.nonzero(np.abs(pixels - blended).max(axis=2) < 8)[1].mean()

    bone_column, sm_column = mean_column((240, 210, 120)), mean_column((70, 105, 150))
    right_leg_is_bone = direction != FLIP_X  # low index i is the patient's right unless x is flipped
    assert (bone_column < sm_column) == right_leg_is_bone


@needs_matplotlib
def test_overlay_drawn_ahead_on_a_thread_is_the_overlay_drawn_in_place(tmp_path):
    """The pipeline draws overlay.png on a worker thread while it measures: the file is the one drawn in place."""
    volume, labels, first, last = _two_leg_scan()
    measurements = quantify(volume, labels, first, last)
    write_outputs(tmp_path / "in_place", volume, labels, first, last, measurements, RUN_INFO)
    with OverlayAhead(volume, labels, first) as overlay:
        assert overlay.drawing
        write_outputs(tmp_path / "ahead", volume, labels, first, last, measurements, RUN_INFO, overlay=overlay)
    for name in OUTPUT_FILES:
        if name != "labels.nii.gz":  # (gzip stores a time)
            assert (tmp_path / "ahead" / name).read_bytes() == (tmp_path / "in_place" / name).read_bytes(), name


@needs_matplotlib
def test_a_failed_overlay_drawing_fails_the_set(tmp_path, monkeypatch):
    """What the overlay's thread raises is raised where the file is written, and no set is written (the drawing's
    failure is simulated: matplotlib gives no real way to make it fail)."""
    import LegSegNetLib.measurement.report as report

    def broken(*args, **kwargs):
        raise MemoryError("no memory for the figure")

    monkeypatch.setattr(report, "write_overlay_png", broken)
    volume, labels, first, last = _two_leg_scan()
    measurements = quantify(volume, labels, first, last)
    with pytest.raises(MemoryError), OverlayAhead(volume, labels, first) as overlay:
        write_outputs(tmp_path / "out", volume, labels, first, last, measurements, RUN_INFO, overlay=overlay)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- atomic writes
def _inputs():
    volume, labels, first, last = _two_leg_scan()
    return volume, labels, first, last, quantify(volume, labels, first, last)


def test_failure_after_some_files_leaves_no_new_folder(tmp_path):
    volume, labels, first, last, measurements = _inputs()
    outdir = tmp_path / "a" / "b" / "out"
    bad_info = {**RUN_INFO, "model": object()}  # labels.nii.gz is written, then metrics.json cannot be
    with pytest.raises(TypeError):
        write_outputs(outdir, volume, labels, first, last, measurements, bad_info)
    assert list(tmp_path.iterdir()) == []  # not OUTDIR, nor the parents this call created


def test_failure_in_an_existing_folder_keeps_its_old_files(tmp_path):
    volume, labels, first, last, measurements = _inputs()
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "metrics.json").write_text("old")
    (outdir / "notes.txt").write_text("mine")
    with pytest.raises(TypeError):
        write_outputs(outdir, volume, labels, first, last, measurements, {**RUN_INFO, "model": object()})
    assert sorted(p.name for p in outdir.iterdir()) == ["metrics.json", "notes.txt"]
    assert (outdir / "metrics.json").read_text() == "old"
    # and a good run replaces the outputs but leaves the user's other files
    write_outputs(outdir, volume, labels, first, last, measurements, RUN_INFO)
    assert sorted(p.name for p in outdir.iterdir()) == sorted(WRITTEN_FILES + ("notes.txt",))
    assert _strict_json(outdir / "metrics.json")["engine"] == "threshold"


def test_a_labels_file_cut_off_by_a_full_disk_is_an_error(tmp_path):
    # SimpleITK reports success for a compressed file it could not write to the end
    labels = np.random.default_rng(0).integers(0, 5, size=(6, 64, 64)).astype(np.uint8)  # hardly compressible
    image = sitk.GetImageFromArray(labels)
    whole = tmp_path / "whole.nii.gz"
    write_label_image(whole, image)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(whole))), labels)
    with w.file_size_limit(whole.stat().st_size // 2):
        with pytest.raises(OSError, match="labels.nii.gz failed: the file was cut off"):
            write_label_image(tmp_path / "labels.nii.gz", image)


def test_a_disk_full_before_the_first_file_fails_cleanly_and_leaves_nothing(tmp_path):
    volume, labels, first, last, measurements = _inputs()
    outdir = tmp_path / "out"
    write_outputs(outdir, volume, labels, first, last, measurements, RUN_INFO)
    before = {p.name: p.read_bytes() for p in outdir.iterdir()}
    with w.file_size_limit(8):  # not even the staging folder's marker can be written
        with pytest.raises(LegSegNetError, match="could not write"):
            write_outputs(outdir, volume, labels, first, last, measurements, RUN_INFO)
    assert {p.name: p.read_bytes() for p in outdir.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unwritable_target_is_an_input_error_and_leaves_nothing(tmp_path):
    volume, labels, first, last, measurements = _inputs()
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(InputError, match="file.txt"):
        write_outputs(blocker / "sub" / "out", volume, labels, first, last, measurements, RUN_INFO)
    with pytest.raises(InputError, match="is a file"):
        write_outputs(blocker, volume, labels, first, last, measurements, RUN_INFO)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_labels_that_do_not_fit_the_range_are_refused_before_writing(tmp_path):
    volume, labels, first, last, measurements = _inputs()
    with pytest.raises(ValueError):
        write_outputs(tmp_path / "out", volume, labels[1:], first, last, measurements, RUN_INFO)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- real CT
@pytest.mark.slow
def test_real_calf_ct_outputs_are_fast(visible_human_dir, tmp_path):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(visible_human_dir)))
    image = reader.Execute()
    volume = CTVolume(image=image, axial_axis=find_axial_axis(image.GetDirection()))
    hu = volume.slab()
    labels = np.zeros(hu.shape, np.uint8)  # classical HU windows stand in for a segmentation
    labels[(hu >= -190) & (hu <= -30)] = SAT
    labels[(hu >= -29) & (hu <= 150)] = SM
    labels[hu > 250] = BONE
    last = volume.n_slices - 1
    measurements = quantify(volume, labels, 0, last)
    metrics = write_outputs(tmp_path / "out", volume, labels, 0, last, measurements, RUN_INFO)
    read_back = sitk.ReadImage(str(tmp_path / "out" / "labels.nii.gz"))
    check_same_grid(volume.image, read_back)
    assert int((sitk.GetArrayViewFromImage(read_back) == SM).sum()) == metrics["tissues"]["SM"]["voxels"]


def test_without_matplotlib_the_numbers_are_still_written(tmp_path):
    # Slicer's Python ships no matplotlib: a run there must still give labels and measurements.
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import numpy as np\n"
        "from LegSegNetLib.phantom import make_leg_phantom\n"
        "from LegSegNetLib.measurement.quantify import quantify\n"
        "from LegSegNetLib.measurement.report import write_outputs\n"
        "from LegSegNetLib.core.progress import Progress\n"
        "p = make_leg_phantom(shape=(4, 96, 128), seed=1)\n"
        "volume, _ = p.to_volume()\n"
        "progress = Progress()\n"
        "m = quantify(volume, p.labels, 0, 3)\n"
        f"write_outputs({str(tmp_path / 'out')!r}, volume, p.labels, 0, 3, m, {{'input': 'x'}}, progress)\n"
        "print(progress.notes)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "matplotlib is not installed" in done.stdout
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["labels.nii.gz", "metrics.csv", "metrics.json", "profile.csv"]
