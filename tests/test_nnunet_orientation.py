"""nnU-Net models get the slices they were trained on: nnU-Net's own for HU models, the reference code's for PNG
models, whatever order the scan is stored in.

- a model trained the plain nnU-Net way on HU NIfTI volumes (tests/plain_nnunet_fixture.py: nnU-Net's own
  commands) gives through `legsegnet segment` the labels of nnU-Net's own `nnUNetPredictor` on the same file
  (and the test first shows that a transposed slice would change them);
- the PNG-format model (tests/nnunet_fixtures.py) gives the labels of the published reference code's
  inference (nibabel, `vol[z]`, HU window, OpenCV resize, nnU-Net's predictor) on a scan stored LPS;
- storage orders that swap or reverse the in-plane axes (PIR, LIP, RAS, ...) give labels identical in physical
  space to the LPS run, for both formats, with a note;
- `--checkpoint`: a results folder with checkpoint_final only is served by default, best is refused with one
  `error:` line; the checkpoint used is recorded;
- HU models trained by an earlier LegSegNet (slices in the published order) get that order, with a note;
  a model whose 2D slices do not run along the slice axis is refused.

Real nnU-Net, real files, real subprocesses; CPU only.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nnunet_fixtures  # noqa: E402
import plain_nnunet_fixture as plain  # noqa: E402
from nnunet_fixtures import HELD_OUT_SEEDS, leg_slice  # noqa: E402
from writers import reorient, run_legsegnet, write_image  # noqa: E402

from LegSegNetLib.core.errors import InputError  # noqa: E402
from LegSegNetLib.core.progress import Progress  # noqa: E402
from LegSegNetLib.scan import volume_io  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("nnunetv2")

# storage orders of the same physical scan: in-plane axes swapped and/or reversed, the slice axis moved
STORAGE_ORDERS = ["PIR", "LIP", "RAS", "ASL", "IRP"]


# ====================================================================== fixtures and helpers
@pytest.fixture(scope="session")
def plain_model() -> Path:
    """The results folder of the model trained by plain nnU-Net on HU volumes."""
    return plain.get_model()


@pytest.fixture(scope="session")
def png_model() -> Path:
    return nnunet_fixtures.get_model("png")


@pytest.fixture(scope="session")
def hu_scan(tmp_path_factory) -> Path:
    """A held-out HU volume stored LPS, with in-plane pixels of unequal size (1.9 mm left-right, 2.6 mm front-back)
    and a non-square matrix, so that any mix-up of axes or spacings shows: nnU-Net resamples it to its plans."""
    spacing_yx = (2.6, 1.9)
    rows, cols = int(round(plain.FOV_MM / spacing_yx[0])), int(round(plain.FOV_MM / spacing_yx[1]))
    hu, _ = plain.volume_arrays(list(HELD_OUT_SEEDS)[:5], rows, cols, spacing_yx)
    return write_image(plain.lps_volume(hu, spacing_yx, slice_mm=5.0), tmp_path_factory.mktemp("hu") / "legs.nii.gz")


@pytest.fixture(scope="session")
def png_scan(tmp_path_factory) -> Path:
    """A held-out scan stored LPS, 256 x 256 (the PNG model's own grid, so its labels are the model's), whose
    nibabel `vol[z]` is a phantom slice as the PNG model was trained on it."""
    pairs = [leg_slice(seed, (256, 256), (300 / 256, 300 / 256)) for seed in list(HELD_OUT_SEEDS)[5:9]]
    hu_ij = np.stack([np.round(p[0]) for p in pairs]).astype(np.int16)  # (k, i, j): nibabel's vol[z]
    image = sitk.GetImageFromArray(np.ascontiguousarray(hu_ij.transpose(0, 2, 1)))  # SimpleITK order (k, j, i)
    image.SetSpacing((300 / 256, 300 / 256, 3.0))
    image.SetOrigin((-150.0, -150.0, -300.0))
    return write_image(image, tmp_path_factory.mktemp("png") / "legs.nii.gz")


def segment_cli(scan: Path, model: Path, out: Path, *extra: str) -> tuple[np.ndarray, dict, str]:
    """`legsegnet segment` on the CPU: (labels in SimpleITK order, metrics.json, stderr)."""
    result = run_legsegnet(
        "segment", scan, "-o", out, "--engine", "nnunet", "--model", model, "--device", "cpu", "--folds", "0", *extra
    )
    assert result.returncode == 0, result.stderr
    labels = sitk.ReadImage(str(out / "labels.nii.gz"))
    reference = sitk.ReadImage(str(scan))
    assert labels.GetSize() == reference.GetSize()
    np.testing.assert_allclose(labels.GetDirection(), reference.GetDirection(), atol=1e-6)
    return sitk.GetArrayFromImage(labels), json.loads((out / "metrics.json").read_text()), result.stderr


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(fraction of voxels with the same label, the same inside the body: where either says tissue)."""
    body = (a > 0) | (b > 0)
    return float((a == b).mean()), float((a[body] == b[body]).mean())


def nnunet_predictor(model_folder: Path, checkpoint: str, monkeypatch):
    """nnU-Net's own predictor as the engine runs on a CPU: no mirroring, tile step 1.0."""
    import nnunetv2.inference.predict_from_raw_data as predict
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from LegSegNetLib.models.plans_names import find_trainer_class

    if not plain._torchvision_loads():
        # nnU-Net looks a trainer up by importing every trainer module, and one of them needs torchvision, which
        # does not load here (see plain_nnunet_fixture.py): the class is found by importing its own module only
        monkeypatch.setattr(predict, "recursive_find_trainer_class_by_name", find_trainer_class)

    predictor = nnUNetPredictor(
        tile_step_size=1.0,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(0,), checkpoint_name=checkpoint)
    return predictor


# ====================================================================== HU: nnU-Net's own inference
@pytest.mark.slow
def test_plain_nnunet_hu_model_gives_nnunets_own_labels(plain_model, hu_scan, tmp_path, monkeypatch):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    predictor = nnunet_predictor(plain_model, "checkpoint_final.pth", monkeypatch)  # what nnUNetv2_predict uses
    data, properties = SimpleITKIO().read_images([str(hu_scan)])
    theirs = predictor.predict_single_npy_array(data, properties, None, None, False)

    # the test can fail: this model labels a transposed slice differently (what the engine used to hand it)
    transposed = {**properties, "spacing": [properties["spacing"][i] for i in (0, 2, 1)]}
    swapped = predictor.predict_single_npy_array(
        np.ascontiguousarray(data.transpose(0, 1, 3, 2)), transposed, None, None, False
    ).transpose(0, 2, 1)
    overall, in_body = agreement(swapped, theirs)
    print(f"\nnnU-Net on the transposed slices vs on the slices: {overall:.4f} of voxels, {in_body:.4f} in the body")
    assert overall < 0.999  # below what this test demands of the engine

    ours, metrics, _ = segment_cli(hu_scan, plain_model, tmp_path / "out")
    assert metrics["input_format"] == "hu" and metrics["slice_axes"] == "nnunet" and metrics["checkpoint"] == "final"
    assert theirs.shape == ours.shape
    overall, in_body = agreement(ours, theirs)
    print(f"legsegnet vs nnUNetPredictor: {overall:.5f} of voxels, {in_body:.5f} in the body")
    assert overall >= 0.999 and in_body >= 0.999
    assert {2, 4} <= set(np.unique(ours).tolist())  # a model that labels tissue (one epoch: muscle and bone)


# ====================================================================== PNG: the published reference code
def reference_code_labels(scan: Path, model_folder: Path, tmp_path: Path, monkeypatch) -> np.ndarray:
    """The published reference inference (docs/method.md, the published input encoding), written as the reference
    code does it: nibabel, the S/I axis to the front, vol[z], HU window with truncation, OpenCV bicubic 256 x 256,
    nnU-Net's predictor on the model folder with its null spacings rewritten to 999. Masks (k, i, j) at 256 x 256."""
    import cv2
    import nibabel as nib

    model = tmp_path / "reference-model"
    shutil.copytree(model_folder, model)
    plans = json.loads((model / "plans.json").read_text())
    for config in plans["configurations"].values():
        if "spacing" in config:
            config["spacing"] = [999.0 if s is None else s for s in config["spacing"]]
    (model / "plans.json").write_text(json.dumps(plans))
    predictor = nnunet_predictor(model, "checkpoint_best.pth", monkeypatch)

    image = nib.load(str(scan))
    si_axis = [i for i, code in enumerate(nib.aff2axcodes(image.affine)) if code in "SI"][0]
    vol = np.moveaxis(np.asarray(image.get_fdata(), dtype=np.float32), si_axis, 0)
    masks = []
    for z in range(vol.shape[0]):
        window = ((np.clip(vol[z], -200, 200) + 200) / 400 * 255).astype(np.uint8)
        resized = cv2.resize(window, (256, 256), interpolation=cv2.INTER_CUBIC)
        seg = predictor.predict_single_npy_array(
            resized[None, None].astype(np.float32), {"spacing": [999, 1, 1]}, None, None, False
        )
        masks.append(seg[0])
    return np.stack(masks)


@pytest.mark.slow
def test_png_model_gives_the_reference_codes_labels_on_a_scan_stored_lps(png_model, png_scan, tmp_path, monkeypatch):
    theirs = reference_code_labels(png_scan, png_model, tmp_path, monkeypatch)  # (k, i, j)
    ours, metrics, _ = segment_cli(png_scan, png_model, tmp_path / "out")
    assert metrics["input_format"] == "png" and metrics["slice_axes"] == "published" and metrics["checkpoint"] == "best"
    ours_ij = ours.transpose(0, 2, 1)  # SimpleITK (k, j, i) -> (k, i, j)
    overall, in_body = agreement(ours_ij, theirs)
    print(f"\nlegsegnet vs the reference code: {overall:.5f} of voxels, {in_body:.5f} in the body")
    assert overall >= 0.999 and in_body >= 0.999
    assert {1, 2, 4} <= set(np.unique(ours).tolist())


# ====================================================================== storage order
def _labels_in_lps(labels_kji: np.ndarray, scan: Path) -> np.ndarray:
    image = sitk.GetImageFromArray(labels_kji)
    image.CopyInformation(sitk.ReadImage(str(scan)))
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hu", "png"])
def test_storage_order_does_not_change_the_labels_in_physical_space(kind, request, tmp_path):
    model = request.getfixturevalue("plain_model" if kind == "hu" else "png_model")
    scan = request.getfixturevalue(f"{kind}_scan")
    standard, _, stderr = segment_cli(scan, model, tmp_path / "lps")
    assert "stored" not in stderr  # no turn, no note
    for code in STORAGE_ORDERS:
        stored = write_image(reorient(sitk.ReadImage(str(scan)), code), tmp_path / f"{code}.nii.gz")
        labels, _, stderr = segment_cli(stored, model, tmp_path / code)
        assert np.array_equal(_labels_in_lps(labels, stored), standard), code
        turned = not volume_io.read_ct(stored).inplane_turn().is_identity  # LIP: in-plane as LPS, nothing to turn
        assert (f"the scan is stored {code}" in stderr) == turned, stderr


# ====================================================================== --checkpoint
@pytest.mark.slow
def test_checkpoint_option_and_a_results_folder_holding_only_the_final_checkpoint(
    plain_model, png_model, hu_scan, png_scan, tmp_path
):
    final_only = tmp_path / "Dataset903_X" / plain_model.name
    shutil.copytree(plain_model, final_only)
    (final_only / "fold_0" / "checkpoint_best.pth").unlink()
    _, metrics, _ = segment_cli(hu_scan, final_only, tmp_path / "default", "--slices", "0:0")
    assert metrics["checkpoint"] == "final"
    refused = run_legsegnet(
        "segment",
        hu_scan,
        "-o",
        tmp_path / "best",
        "--engine",
        "nnunet",
        "--model",
        final_only,
        "--device",
        "cpu",
        "--checkpoint",
        "best",
        "--quiet",
    )
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "checkpoint_best.pth" in lines[0], refused.stderr
    assert "--checkpoint" in lines[0] and not (tmp_path / "best").exists()
    # the published layout's default is best; final on request
    _, metrics, _ = segment_cli(png_scan, png_model, tmp_path / "final", "--slices", "0:0", "--checkpoint", "final")
    assert metrics["checkpoint"] == "final"


# ====================================================================== models of an earlier LegSegNet
@pytest.mark.slow  # the first run trains the plain nnU-Net model
def test_hu_model_of_an_earlier_legsegnet_gets_the_order_it_learnt(plain_model, tmp_path):
    """An HU model trained by LegSegNet before the axis order was recorded learnt the storage slab (the published
    order): recognised by LegSegNet's description in its dataset.json, it is given its slices that way."""
    from LegSegNetLib.engines.nnunet import NnUNetEngine

    old = tmp_path / "old" / plain_model.name
    shutil.copytree(plain_model, old)
    dataset_json = json.loads((old / "dataset.json").read_text())
    dataset_json["description"] = "LegSegNet model-in-the-loop annotations (see legsegnet-manifest.json for provenance)"
    (old / "dataset.json").write_text(json.dumps(dataset_json))
    progress = Progress()
    old_engine = NnUNetEngine(old, device="cpu", progress=progress)
    plain_engine = NnUNetEngine(plain_model, device="cpu")
    assert (old_engine.slice_axes, plain_engine.slice_axes) == ("published", "nnunet")
    assert any("earlier LegSegNet" in note and "train again" in note for note in progress.notes)

    # the old model is handed a standard slab as it is, the plain one transposed: both networks see `slab`
    slab, _ = plain.volume_arrays(list(HELD_OUT_SEEDS)[:2], 128, 120, (2.3, 2.4))
    old_labels = old_engine.segment(slab, (4.0, 2.3, 2.4), Progress())
    plain_labels = plain_engine.segment(slab.transpose(0, 2, 1), (4.0, 2.4, 2.3), Progress())
    assert np.array_equal(old_labels, plain_labels.transpose(0, 2, 1)) and old_labels.any()

    # a recorded order is taken as recorded
    dataset_json["legsegnet_slice_axes"] = "nnunet"
    (old / "dataset.json").write_text(json.dumps(dataset_json))
    assert NnUNetEngine(old, device="cpu").slice_axes == "nnunet"


@pytest.mark.slow  # the first run trains the plain nnU-Net model
def test_a_model_that_slices_along_another_axis_is_refused(plain_model, tmp_path):
    from LegSegNetLib.engines.nnunet import NnUNetEngine

    sideways = tmp_path / "Dataset903_S" / plain_model.name
    shutil.copytree(plain_model, sideways)
    plans = json.loads((sideways / "plans.json").read_text())
    plans.update(transpose_forward=[1, 0, 2], transpose_backward=[1, 0, 2])
    (sideways / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(InputError, match=r"2D slices along voxel axis 1 .*transpose_forward"):
        NnUNetEngine(sideways, device="cpu")
