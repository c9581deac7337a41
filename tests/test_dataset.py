"""Export of corrected slices into an nnU-Net v2 training set (`legsegnet dataset add`, dataset.py).

- PNG format: each image is exactly what the published preprocessing feeds the network, read back with
  nnU-Net's own reader; labels are nearest-neighbour on the same 256 x 256 grid with half-pixel centres;
- HU format: the slice's HU and pixel spacing, as nnU-Net's SimpleITK reader reports them, and exactly the
  slice nnU-Net reads from the same scan stored LPS as a volume (so a model trained on the set and one trained
  by plain nnU-Net on the same slices take the same input); PNG format: the reference code's `vol[z]` encoded;
  both whatever the storage order of the scan (turned to the standard orientation first); a set started by an
  earlier LegSegNet keeps its order;
- the folder passes nnU-Net's own dataset integrity check;
- the manifest (source, scan hash, slice, patient, round, date, checksums) and de-duplication: unchanged
  slices are skipped, edited ones replaced with their history kept, nothing ever listed twice;
- refusals that leave the dataset untouched: label values outside 0-4, a label map off the CT's grid, slices
  that do not exist, a format change, a foreign folder; a crashed export's staging is cleaned up;
- the same through the real CLI (one `error:` line, exit 2) and the worker (a result event).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LegSegNetLib.annotation import dataset
from LegSegNetLib.annotation.manifest import load_dataset
from LegSegNetLib.annotation.slice_encoding import resize_labels_nearest
from LegSegNetLib.core.errors import InputError
from LegSegNetLib.engines import published_preprocessing as published
from LegSegNetLib.phantom import make_leg_phantom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from writers import leg_image, reorient  # noqa: E402

SHAPE = (8, 96, 128)  # slices, rows, columns


# ---------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A phantom CT and its exact labels as NIfTI files, plus the phantom itself."""
    folder = tmp_path_factory.mktemp("scan")
    phantom = make_leg_phantom(shape=SHAPE, seed=4)
    volume, labels = phantom.to_volume()
    sitk.WriteImage(volume.image, str(folder / "ct.nii.gz"))
    sitk.WriteImage(labels, str(folder / "labels.nii.gz"))
    return folder / "ct.nii.gz", folder / "labels.nii.gz", phantom, volume, labels


def _tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its SHA-256 (to prove a refused export changed nothing)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "LegSegNetLib.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def _read_nnunet(path: Path) -> tuple[np.ndarray, dict]:
    """An image as nnU-Net reads it for training (its reader for the file type)."""
    if path.suffix == ".png":
        from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

        return NaturalImage2DIO().read_images([str(path)])
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    return SimpleITKIO().read_images([str(path)])


def _formula_nearest(labels: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Nearest neighbour written out pixel by pixel: output pixel (r, c) takes the source pixel whose area holds
    the output pixel's centre, (r + 0.5) * src / dst."""
    src_rows, src_cols = labels.shape
    out = np.empty((rows, cols), labels.dtype)
    for r in range(rows):
        for c in range(cols):
            out[r, c] = labels[
                min(int((r + 0.5) * src_rows / rows), src_rows - 1), min(int((c + 0.5) * src_cols / cols), src_cols - 1)
            ]
    return out


# ---------------------------------------------------------------------- encodings
@pytest.mark.parametrize("src", [(96, 128), (512, 512), (300, 170)])
def test_label_resize_is_nearest_neighbour_with_half_pixel_centres(src):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(2, *src), dtype=np.uint8)
    resized = resize_labels_nearest(labels, (256, 256))
    assert resized.shape == (2, 256, 256) and resized.dtype == np.uint8
    assert np.array_equal(resized[1], _formula_nearest(labels[1], 256, 256))
    assert set(np.unique(resized)) <= set(np.unique(labels))  # no invented label values


def test_label_grid_is_aligned_with_the_bicubic_image_grid():
    """A sharp vertical edge lands on the same column in the resized image and the resized labels."""
    hu = np.full((1, 96, 128), -100.0, np.float32)
    labels = np.ones((1, 96, 128), np.uint8)
    hu[:, :, 53:] = 100.0  # edge between columns 52 and 53
    labels[:, :, 53:] = 2
    image = published.published_input_images(hu)[0].astype(float)
    resized = resize_labels_nearest(labels, (256, 256))[0]
    image_edge = np.argmax(np.diff(image[50]))  # steepest rise of the bicubic image
    label_edge = np.flatnonzero(np.diff(resized[50].astype(int)))[0]
    assert abs(int(image_edge) - int(label_edge)) <= 1  # 53 * 2 = 106 on both (half-pixel centres)
    assert label_edge in (105, 106)


def test_png_export_is_the_published_network_input_and_passes_nnunets_integrity_check(scan, tmp_path):
    pytest.importorskip("nnunetv2")
    ct, labels_path, phantom, volume, _ = scan
    result = dataset.add_files(tmp_path / "set", ct, labels_path, "1,4,6", patient="P1", training_round=2)
    assert result.added == [1, 4, 6] and result.input_format == "png" and result.total_cases == 3
    manifest = load_dataset(tmp_path / "set")
    # the phantom is stored with rows toward posterior: its standard slab (rows toward the left) is the transpose
    assert volume.inplane_turn().transpose and manifest.slice_axes == "published"
    for entry in manifest.entries:
        k = entry["slice_index"]
        image, properties = _read_nnunet(tmp_path / "set" / entry["image"])
        expected = published.published_input_images(volume.slab(k, k).transpose(0, 2, 1))[0]
        assert image.shape == (1, 1, 256, 256) and np.array_equal(image[0, 0], expected)
        assert tuple(properties["spacing"]) == published.SPACING  # what the engine tells nnU-Net at inference
        label, _ = _read_nnunet(tmp_path / "set" / entry["label"])
        assert np.array_equal(label[0, 0], _formula_nearest(phantom.labels[k].T, 256, 256))
    dataset_json = json.loads((tmp_path / "set" / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "SAT": 1, "SM": 2, "IAT": 3, "Bone": 4}
    assert dataset_json["numTraining"] == 3 and dataset_json["file_ending"] == ".png"
    assert dataset_json["channel_names"] == {"0": "grey"} and dataset_json["legsegnet_slice_axes"] == "published"

    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(tmp_path / "set"), num_processes=1)  # raises on any problem


def test_hu_export_keeps_values_and_spacing_as_nnunet_reads_them(tmp_path):
    pytest.importorskip("nnunetv2")
    phantom = make_leg_phantom(shape=(4, 200, 280), spacing=(3.0, 1.0, 1.1), seed=1)
    volume, labels = phantom.to_volume()
    result = dataset.add_slices(tmp_path / "set", volume, labels, [0, 3], patient="P9", input_format="hu")
    assert result.added == [0, 3]
    manifest = load_dataset(tmp_path / "set")
    assert manifest.input_format == "hu"
    for entry in manifest.entries:
        k = entry["slice_index"]
        image, properties = _read_nnunet(tmp_path / "set" / entry["image"])
        # rows front-back, columns left-right: for this phantom (stored with rows toward posterior) its own slab
        assert np.array_equal(image[0, 0], volume.slab(k, k)[0].astype(np.float32))
        # nnU-Net's reader: 999 x the largest in-plane spacing, then (row, column) spacing
        assert tuple(properties["spacing"]) == pytest.approx((999 * 1.1, 1.0, 1.1))
        label, _ = _read_nnunet(tmp_path / "set" / entry["label"])
        assert np.array_equal(label[0, 0], phantom.labels[k])
        assert entry["spacing_mm"] == pytest.approx([1.0, 1.1])
    assert sitk.ReadImage(str(tmp_path / "set" / manifest.entries[0]["image"])).GetPixelID() == sitk.sitkInt16


def _lps_scan_and_labels(folder: Path, code: str = "LPS") -> tuple[Path, Path]:
    """The synthetic legs (writers.leg_image: stored LPS, pixels 1.8 x 1.6 mm) and a label map of them, both
    stored as `code` says."""
    ct = leg_image()
    labels = sitk.Cast(sitk.BinaryThreshold(ct, -500, 5000, 1, 0), sitk.sitkUInt8) + sitk.Cast(
        sitk.BinaryThreshold(ct, 600, 5000, 3, 0), sitk.sitkUInt8
    )  # 1 body, 4 bone: labels that show the axes
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(reorient(ct, code), str(folder / "ct.nii.gz"))
    sitk.WriteImage(reorient(labels, code), str(folder / "labels.nii.gz"))
    return folder / "ct.nii.gz", folder / "labels.nii.gz"


def _exported(folder: Path) -> list[tuple[np.ndarray, np.ndarray, tuple]]:
    """Each case of a set as nnU-Net reads it for training: (image, labels, spacing), in slice order."""
    manifest = load_dataset(folder)
    out = []
    for entry in sorted(manifest.entries, key=lambda e: e["z_mm"]):
        image, properties = _read_nnunet(folder / entry["image"])
        label, _ = _read_nnunet(folder / entry["label"])
        out.append((image[0, 0], label[0, 0], tuple(properties["spacing"])))
    return out


def test_hu_export_is_the_slice_plain_nnunet_reads_from_the_volume_in_any_storage_order(tmp_path):
    """A model trained on this set and one trained by plain nnU-Net on the same slices of the volumes see the same
    arrays: each exported slice is what nnU-Net's reader gives for that slice of the scan stored LPS (values, axis
    order, in-plane spacing), and a copy of the scan stored otherwise exports the same slices."""
    pytest.importorskip("nnunetv2")
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    ct, labels = _lps_scan_and_labels(tmp_path / "lps")
    dataset.add_files(tmp_path / "set", ct, labels, "2,5,9", patient="P1", input_format="hu")
    volume, properties = SimpleITKIO().read_images([str(ct)])
    label_volume, _ = SimpleITKIO().read_seg(str(labels))
    exported = _exported(tmp_path / "set")
    for (image, label, spacing), k in zip(exported, (2, 5, 9)):
        assert image.shape == volume.shape[2:] != volume.shape[2:][::-1]  # (front-back, left-right) = (72, 128)
        assert np.array_equal(image, volume[0, k]) and np.array_equal(label, label_volume[0, k])
        assert spacing[1:] == pytest.approx(properties["spacing"][1:])  # (1.6, 1.8): front-back, left-right
    assert load_dataset(tmp_path / "set").slice_axes == "nnunet"
    assert json.loads((tmp_path / "set" / "dataset.json").read_text())["legsegnet_slice_axes"] == "nnunet"

    for code in ("PIR", "RAS", "LIP"):
        ct_other, labels_other = _lps_scan_and_labels(tmp_path / code, code)
        other = dataset.add_files(
            tmp_path / f"set-{code}",
            ct_other,
            labels_other,
            _same_slices(ct_other, (2, 5, 9)),
            patient="P1",
            input_format="hu",
        )
        assert len(other.added) == 3
        for (image, label, spacing), (want_image, want_label, want_spacing) in zip(
            _exported(tmp_path / f"set-{code}"), exported
        ):
            assert np.array_equal(image, want_image) and np.array_equal(label, want_label), code
            assert spacing[1:] == pytest.approx(want_spacing[1:])


def _same_slices(ct: Path, lps_indices) -> str:
    """The slice indices, in a copy stored in another order, of slices `lps_indices` of the LPS scan."""
    from LegSegNetLib.scan import volume_io

    volume = volume_io.read_ct(ct)
    z = volume.slice_z_mm()
    order = np.argsort(z)  # slice index by height; the LPS scan counts from the lowest slice up
    return ",".join(str(int(order[k])) for k in lps_indices)


def test_png_export_is_the_reference_codes_slice_in_any_storage_order(tmp_path):
    """The PNG image is the published encoding of the reference code's vol[z] (nibabel, the S/I axis to the front)
    of the scan stored LPS, also when the scan is stored otherwise."""
    nib = pytest.importorskip("nibabel")
    ct, labels = _lps_scan_and_labels(tmp_path / "lps")
    vol = np.moveaxis(np.asarray(nib.load(str(ct)).get_fdata(), dtype=np.float32), 2, 0)  # (k, i, j)
    for code in ("LPS", "PIR", "ASL"):
        ct_code, labels_code = _lps_scan_and_labels(tmp_path / code, code) if code != "LPS" else (ct, labels)
        dataset.add_files(tmp_path / f"set-{code}", ct_code, labels_code, _same_slices(ct_code, (3, 7)), patient="P1")
        for (image, _, _), k in zip(_exported(tmp_path / f"set-{code}"), (3, 7)):
            assert np.array_equal(image, published.published_input_images(vol[k][None])[0]), code


def test_a_set_started_before_the_axis_record_keeps_its_order(tmp_path):
    """An HU set written by an earlier LegSegNet (no slice_axes in its manifest) holds the published order; new
    slices join in that order, with a note, and dataset.json says so, so the model trained on it is served right."""
    ct, labels = _lps_scan_and_labels(tmp_path / "lps")
    folder = tmp_path / "set"
    dataset.add_files(folder, ct, labels, "2", patient="P1", input_format="hu")
    manifest_file = folder / dataset.MANIFEST_FILE
    old = json.loads(manifest_file.read_text())
    del old["slice_axes"]  # as an earlier LegSegNet wrote it
    manifest_file.write_text(json.dumps(old))
    result = dataset.add_files(folder, ct, labels, "5", patient="P1")
    assert any("earlier LegSegNet" in note and "new --dataset" in note for note in result.notes)
    assert load_dataset(folder).slice_axes == "published"
    assert json.loads((folder / "dataset.json").read_text())["legsegnet_slice_axes"] == "published"
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    volume, _ = SimpleITKIO().read_images([str(ct)])
    image = _exported(folder)[1][0]
    assert np.array_equal(image, volume[0, 5].T)  # rows left-right: the storage slab of an LPS scan


# ---------------------------------------------------------------------- manifest and de-duplication
def test_manifest_records_provenance_and_checksums(scan, tmp_path):
    ct, labels_path, _, volume, _ = scan
    dataset.add_files(tmp_path / "set", ct, labels_path, "2:3", patient="P7", training_round=1)
    manifest = load_dataset(tmp_path / "set")
    assert [e["slice_index"] for e in manifest.entries] == [2, 3]
    entry = manifest.entries[0]
    assert entry["source"] == str(ct.resolve()) and entry["patient"] == "P7" and entry["round"] == 1
    assert entry["ct_sha256"] == dataset.scan_sha256(volume) and len(entry["ct_sha256"]) == 64
    assert entry["added_at"].endswith("+00:00")
    for key in ("image", "label"):
        assert entry[f"{key}_sha256"] == hashlib.sha256((tmp_path / "set" / entry[key]).read_bytes()).hexdigest()
    assert manifest.summary() == {"input_format": "png", "cases": 2, "scans": 1, "patients": 1, "rounds": {"1": 2}}


def test_the_same_scan_in_another_file_format_is_the_same_scan(scan, tmp_path):
    ct, labels_path, _, volume, labels = scan
    sitk.WriteImage(volume.image, str(tmp_path / "ct.nrrd"))
    dataset.add_files(tmp_path / "set", ct, labels_path, "5", patient="P1")
    again = dataset.add_files(tmp_path / "set", tmp_path / "ct.nrrd", labels_path, "5", patient="P1")
    assert again.unchanged == [5] and again.added == [] and again.total_cases == 1


def test_reexport_skips_unchanged_slices_and_replaces_edited_ones(scan, tmp_path):
    ct, labels_path, phantom, volume, labels = scan
    folder = tmp_path / "set"
    first = dataset.add_files(folder, ct, labels_path, "1,4", patient="P1", training_round=1)
    before = _tree(folder)
    second = dataset.add_files(folder, ct, labels_path, "1,4", patient="P1", training_round=1)
    assert second.unchanged == [1, 4] and second.added == second.replaced == []
    assert _tree(folder) == before  # nothing rewritten

    assert (phantom.labels[4] == 3).any()  # slice 4 holds IAT to edit
    edited = sitk.GetArrayFromImage(labels)
    slab_view = np.transpose(edited, (2 - volume.axial_axis, 2 - volume.inplane_axes[0], 2 - volume.inplane_axes[1]))
    slab_view[4][slab_view[4] == 3] = 2  # the annotator turns IAT into muscle on slice 4
    edited_image = sitk.GetImageFromArray(edited)
    edited_image.CopyInformation(labels)
    sitk.WriteImage(edited_image, str(tmp_path / "edited.nii.gz"))
    third = dataset.add_files(folder, ct, tmp_path / "edited.nii.gz", "1,4,6", patient="P1", training_round=2)
    assert third.unchanged == [1] and third.replaced == [4] and third.added == [6] and third.total_cases == 3

    manifest = load_dataset(folder)
    by_slice = {e["slice_index"]: e for e in manifest.entries}
    assert sorted(by_slice) == [1, 4, 6] and len(manifest.entries) == 3  # never twice
    replaced = by_slice[4]
    assert replaced["version"] == 2 and replaced["round"] == 2 and replaced["case"].endswith("_v2")
    old_case = first.cases[1]
    assert replaced["history"][0]["case"] == old_case and replaced["history"][0]["round"] == 1
    assert not (folder / "imagesTr" / f"{old_case}_0000.png").exists()  # the old files are gone
    assert not (folder / "labelsTr" / f"{old_case}.png").exists()
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / replaced["label"])))
    assert np.array_equal(label, _formula_nearest(slab_view[4].T, 256, 256)) and not (label == 3).any()
    files = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert len(files) == 3 and json.loads((folder / "dataset.json").read_text())["numTraining"] == 3


def test_stale_staging_is_removed_and_tampering_is_detected(scan, tmp_path):
    # (files of an export killed before its commit: test_hostile_inputs.py, with a real kill)
    ct, labels_path, _, _, _ = scan
    folder = tmp_path / "set"
    dataset.add_files(folder, ct, labels_path, "1", patient="P1")
    (folder / f"{dataset.STAGING_PREFIX}dead").mkdir()  # the staging folder of an export that was killed
    (folder / f"{dataset.STAGING_PREFIX}dead" / "x.png").write_bytes(b"partial")
    dataset.add_files(folder, ct, labels_path, "2", patient="P1")
    assert not (folder / f"{dataset.STAGING_PREFIX}dead").exists()
    assert len(list((folder / "imagesTr").iterdir())) == 2
    label = next((folder / "labelsTr").iterdir())
    label.write_bytes(label.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(InputError, match="changed after export"):
        load_dataset(folder)


def test_no_patient_means_the_scan_is_its_own_patient(scan, tmp_path):
    ct, labels_path, _, volume, _ = scan
    result = dataset.add_files(tmp_path / "set", ct, labels_path, "3")
    assert result.patient == f"scan-{dataset.scan_sha256(volume)[:12]}"
    assert any("own patient" in n for n in result.notes)


# ---------------------------------------------------------------------- refusals
def test_labels_outside_0_to_4_are_refused_and_nothing_is_written(scan, tmp_path):
    ct, labels_path, phantom, volume, labels = scan
    folder = tmp_path / "set"
    dataset.add_slices(folder, volume, labels, [0], patient="P1")
    before = _tree(folder)
    slab = phantom.labels.copy()
    slab[5, 40, 40] = 7
    with pytest.raises(InputError, match=r"slice 5 holds 7.*Nothing was added"):
        dataset.add_slices(folder, volume, slab, [1, 5], patient="P1")
    assert _tree(folder) == before
    slab[5] = phantom.labels[5]
    slab[2, 10, 10] = 255
    with pytest.raises(InputError, match="slice 2 holds 255"):
        dataset.add_slices(folder, volume, slab, "2", patient="P1")
    floats = phantom.labels.astype(np.float32)
    floats[3, 0, 0] = 1.5
    with pytest.raises(InputError, match="fractional"):
        dataset.add_slices(folder, volume, floats, "3", patient="P1")
    assert _tree(folder) == before
    dataset.add_slices(folder, volume, slab, [6], patient="P1")  # bad values on other slices do not matter


def test_geometry_mismatch_bad_slices_format_change_and_foreign_folders_are_refused(scan, tmp_path):
    ct, labels_path, phantom, volume, labels = scan
    folder = tmp_path / "set"
    dataset.add_slices(folder, volume, labels, [0], patient="P1")
    before = _tree(folder)
    shifted = sitk.Image(labels)
    shifted.SetOrigin([o + 5.0 for o in labels.GetOrigin()])
    with pytest.raises(InputError, match="does not lie on the CT's voxel grid"):
        dataset.add_slices(folder, volume, shifted, [1], patient="P1")
    with pytest.raises(InputError, match="shape"):
        dataset.add_slices(folder, volume, phantom.labels[:, :, :-1], [1], patient="P1")
    with pytest.raises(InputError, match="slice 8 does not exist"):
        dataset.add_slices(folder, volume, labels, "1,8", patient="P1")
    with pytest.raises(InputError, match="separated by commas"):
        dataset.add_slices(folder, volume, labels, "1;2", patient="P1")
    with pytest.raises(InputError, match="no slices given"):
        dataset.add_slices(folder, volume, labels, "", patient="P1")
    with pytest.raises(InputError, match="holds PNG-format slices"):
        dataset.add_slices(folder, volume, labels, [1], patient="P1", input_format="hu")
    with pytest.raises(InputError, match="not a usable identifier"):
        dataset.add_slices(folder, volume, labels, [1], patient="P1\nDOE^JOHN")
    assert _tree(folder) == before
    foreign = tmp_path / "foreign"
    (foreign / "imagesTr").mkdir(parents=True)
    (foreign / "imagesTr" / "case_0000.png").write_bytes(b"x")
    with pytest.raises(InputError, match="no legsegnet-manifest.json"):
        dataset.add_slices(foreign, volume, labels, [1], patient="P1")


# ---------------------------------------------------------------------- command line and worker
def test_cli_adds_slices_and_refuses_bad_labels_with_one_error_line(scan, tmp_path):
    ct, labels_path, phantom, volume, labels = scan
    folder = tmp_path / "set"
    done = _cli(
        "dataset",
        "add",
        str(ct),
        str(labels_path),
        "--dataset",
        str(folder),
        "--slices",
        "1,3",
        "--patient",
        "P2",
        "--round",
        "1",
        "--format",
        "hu",
    )
    assert done.returncode == 0, done.stderr
    assert "2 added" in done.stdout and "holds 2 slices (hu format)" in done.stdout
    before = _tree(folder)

    bad = sitk.GetArrayFromImage(labels)
    bad[0, 0, 0] = 9
    bad_image = sitk.GetImageFromArray(bad)
    bad_image.CopyInformation(labels)
    sitk.WriteImage(bad_image, str(tmp_path / "bad.nii.gz"))
    shifted = sitk.Image(labels)
    shifted.SetSpacing([s * 1.5 for s in labels.GetSpacing()])
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nii.gz"))
    for labels_file, message in (("bad.nii.gz", "values 9"), ("shifted.nii.gz", "voxel grid")):
        refused = _cli(
            "dataset",
            "add",
            str(ct),
            str(tmp_path / labels_file),
            "--dataset",
            str(folder),
            "--slices",
            "2",
            "--patient",
            "P2",
        )
        assert refused.returncode == 2
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert lines[-1].startswith("error: ") and message in lines[-1] and "Traceback" not in refused.stderr
    refused = _cli(
        "dataset", "add", str(ct), str(labels_path), "--dataset", str(folder), "--slices", "2", "--round", "-1"
    )
    assert refused.returncode == 2 and "--round" in refused.stderr
    assert _tree(folder) == before


def test_worker_reports_the_export_as_a_result_event(scan, tmp_path):
    ct, labels_path, _, _, _ = scan
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "LegSegNetLib.worker",
            "dataset",
            "add",
            str(ct),
            str(labels_path),
            "--dataset",
            str(tmp_path / "set"),
            "--slices",
            "0,7",
            "--patient",
            "P3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    result = [e for e in events if e["event"] == "result"]
    assert len(result) == 1 and result[0]["value"]["added"] == [0, 7] and result[0]["value"]["total_cases"] == 2
