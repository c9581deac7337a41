"""The nnU-Net engine on tiny real models that the suite trains itself (tests/nnunet_fixtures.py).

- the published preprocessing, bit for bit, against implementations written here from the formulas;
- the models' Dice on held-out phantom slices, and the labels' geometry through the real CLI;
- fold ensembling (probabilities averaged), mirroring TTA (mean of the mirrored predictions), the
  reference code's fp16 sliding window reproduced, empty slices skipped, batch-size invariance;
- one clear error for a corrupt checkpoint, a missing fold, and plans that do not fit the checkpoint;
- devices: the CPU fallback note, a refused --device cuda without a GPU, and a CUDA run where one exists.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nnunet_fixtures  # noqa: E402
from nnunet_fixtures import HELD_OUT_SEEDS, leg_slice  # noqa: E402
from writers import reorient, run_legsegnet, truncate_file, write_image  # noqa: E402

from LegSegNetLib.core.errors import InputError  # noqa: E402
from LegSegNetLib.core.progress import Progress  # noqa: E402
from LegSegNetLib.engines import published_preprocessing as pp  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("nnunetv2")

HAS_CV2 = importlib.util.find_spec("cv2") is not None
HAS_CUDA = torch.cuda.is_available()
FOV_MM = 300.0


# ====================================================================== helpers
def dice(pred: np.ndarray, truth: np.ndarray, label: int) -> float:
    p, t = pred == label, truth == label
    return float(2 * (p & t).sum() / max(p.sum() + t.sum(), 1))


def held_out(n: int, size: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n held-out phantom slices (HU, labels) of size x size pixels over the training field of view."""
    pairs = [
        leg_slice(seed, (size, size), (FOV_MM / size, FOV_MM / size))
        for seed in list(HELD_OUT_SEEDS)[start : start + n]
    ]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def formula_hu_to_uint8(hu: np.ndarray) -> np.ndarray:
    """docs/method.md, the published input encoding, step 2, as written there."""
    return ((np.clip(hu.astype(np.float32), -200, 200) + 200) / 400 * 255).astype(np.uint8)


def _cubic_row(t: np.float32) -> list[np.float32]:
    """OpenCV's cubic weights for fraction t (Keys, a = -0.75), float32, the last one as 1 minus the rest."""
    a, one = np.float32(-0.75), np.float32(1)
    w0 = ((a * (t + one) - np.float32(5) * a) * (t + one) + np.float32(8) * a) * (t + one) - np.float32(4) * a
    w1 = ((a + np.float32(2)) * t - (a + np.float32(3))) * t * t + one
    w2 = ((a + np.float32(2)) * (one - t) - (a + np.float32(3))) * (one - t) * (one - t) + one
    return [w0, w1, w2, one - w0 - w1 - w2]


def formula_opencv_cubic(img: np.ndarray, out_rows: int, out_cols: int) -> np.ndarray:
    """cv2.resize(img, (out_cols, out_rows), interpolation=INTER_CUBIC) for uint8, written from OpenCV's
    description: half-pixel centres, 4 taps with replicated borders, weights x 2048 rounded half-even,
    exact integer horizontal sums, then per row S0*b0 + (S1*b1 + (S2*b2 + S3*b3)) in float32 with
    b = weight / 2^22, rounded half-even, on groups of 8 columns, and (sum + 2^21) >> 22 on the rest."""
    rows, cols = img.shape

    def taps(n_src: int, n_dst: int) -> list[tuple[list[int], list[int]]]:
        scale = 1.0 / (n_dst / n_src)
        out = []
        for d in range(n_dst):
            f = np.float32((d + 0.5) * scale - 0.5)
            s = int(np.floor(f))
            weights = [
                int(np.rint(np.float32(w) * np.float32(2048))) for w in _cubic_row(np.float32(f - np.float32(s)))
            ]
            out.append(([min(max(s - 1 + k, 0), n_src - 1) for k in range(4)], weights))
        return out

    horizontal = np.zeros((rows, out_cols), dtype=np.int64)
    for d, (index, weights) in enumerate(taps(cols, out_cols)):
        horizontal[:, d] = sum(img[:, i].astype(np.int64) * w for i, w in zip(index, weights))
    out = np.zeros((out_rows, out_cols), dtype=np.uint8)
    simd = out_cols // 8 * 8
    for d, (index, weights) in enumerate(taps(rows, out_rows)):
        s = [horizontal[i] for i in index]
        b = [np.float32(w) * np.float32(2.0**-22) for w in weights]
        sf = [v[:simd].astype(np.float32) for v in s]
        value = sf[0] * b[0] + (sf[1] * b[1] + (sf[2] * b[2] + sf[3] * b[3]))
        out[d, :simd] = np.clip(np.rint(value), 0, 255)
        exact = sum(v[simd:] * w for v, w in zip(s, weights))
        out[d, simd:] = np.clip((exact + (1 << 21)) >> 22, 0, 255)
    return out


def formula_crop_and_zscore(image: np.ndarray, use_mask: bool) -> np.ndarray:
    """nnU-Net's crop to the non-zero box, then z-score normalisation (inside the non-zero mask if asked)."""
    nonzero = np.argwhere(image != 0)
    (r0, c0), (r1, c1) = nonzero.min(0), nonzero.max(0) + 1
    crop = image[r0:r1, c0:c1].astype(np.float32)
    if use_mask:
        mask = crop != 0
        mean, std = crop[mask].mean(), crop[mask].std()
        crop[mask] = (crop[mask] - mean) / max(std, 1e-8)
        return crop
    return (crop - crop.mean()) / max(crop.std(), 1e-8)


# ====================================================================== fixtures
@pytest.fixture(scope="session")
def png_model() -> Path:
    """The tiny model in the published layout, trained on PNG slices (folds 0 and 1)."""
    return nnunet_fixtures.get_model("png")


@pytest.fixture(scope="session")
def hu_model() -> Path:
    """The tiny model as an nnU-Net results folder, trained on HU NIfTI slices (fold 0)."""
    return nnunet_fixtures.get_model("hu")


@pytest.fixture(scope="session")
def png_engine(png_model):
    from LegSegNetLib.engines.nnunet import NnUNetEngine

    return NnUNetEngine(png_model, device="cpu", folds=[0])


# ====================================================================== published preprocessing (fast)
def test_hu_window_is_the_published_formula_with_truncation():
    rng = np.random.default_rng(0)
    hu = np.concatenate(
        [
            rng.uniform(-1500, 1500, 5000),
            np.arange(-210, 211, 1.0),  # integers around the window edges
            np.arange(-200, 200, 0.0625),  # exact binary fractions: truncation points
            [-200.0, 200.0, -199.99999, 199.99999, -1024.0, 3071.0],
        ]
    ).astype(np.float32)
    assert np.array_equal(pp.hu_to_uint8(hu), formula_hu_to_uint8(hu))
    # truncation, not rounding: 0.99 of a grey level stays 0
    assert pp.hu_to_uint8(np.array([-200 + 400 * 0.99 / 255], np.float32))[0] == 0
    assert pp.hu_to_uint8(np.array([200.0, 5000.0, -5000.0], np.float32)).tolist() == [255, 255, 0]


@pytest.mark.parametrize(
    "shape, out",
    [
        ((512, 512), (256, 256)),
        ((300, 517), (256, 256)),
        ((37, 41), (256, 256)),
        ((256, 256), (256, 256)),
        ((61, 70), (29, 43)),
        ((90, 200), (133, 101)),
    ],
)
def test_cubic_resize_matches_opencv_written_from_the_formula(shape, out):
    rng = np.random.default_rng(sum(shape))
    noise = rng.integers(0, 256, shape, dtype=np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    edges = np.where((yy // 7 + xx // 5) % 2 == 0, 255, 0).astype(np.uint8)  # saturating overshoot
    for image in (noise, edges):
        expected = image.copy() if shape == out else formula_opencv_cubic(image, *out)
        assert np.array_equal(pp.resize_cubic_uint8(image, out), expected)
    stack = np.stack([noise, edges])
    assert np.array_equal(pp.resize_cubic_uint8(stack, out)[1], pp.resize_cubic_uint8(edges, out))


@pytest.mark.skipif(not HAS_CV2, reason="OpenCV (opencv-python-headless) is not installed")
def test_cubic_resize_is_opencv_itself_when_installed():
    import cv2

    rng = np.random.default_rng(5)
    for shape in ((512, 512), (300, 517), (77, 90)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        # the engine calls OpenCV itself when it is there: the reference code's exact result on this machine
        assert np.array_equal(
            pp.resize_to_model(image[None])[0], cv2.resize(image, (256, 256), interpolation=cv2.INTER_CUBIC)
        )
        use_ipp = cv2.ipp.useIPP()
        cv2.ipp.setUseIPP(False)  # OpenCV's own code, which the numpy port reproduces
        try:
            assert np.array_equal(
                pp.resize_cubic_uint8(image), cv2.resize(image, (256, 256), interpolation=cv2.INTER_CUBIC)
            )
        finally:
            cv2.ipp.setUseIPP(use_ipp)


# ====================================================================== the tiny models (trained once, cached)
@pytest.mark.slow
def test_png_model_network_input_is_the_published_preprocessing_bit_for_bit(png_engine):
    hu, _ = held_out(3, 384)
    prepared = png_engine.prepare(hu, (1.0, FOV_MM / 384, FOV_MM / 384))
    use_mask = png_engine.configuration.use_mask_for_norm[0]
    assert png_engine.configuration.normalization_schemes == ["ZScoreNormalization"]
    for k, item in enumerate(prepared):
        image = formula_opencv_cubic(formula_hu_to_uint8(hu[k]), 256, 256)
        expected = formula_crop_and_zscore(image.astype(np.float32), use_mask)
        assert item.data.shape == (1, 1, *expected.shape)
        assert np.array_equal(item.data[0, 0], expected)
        assert item.properties["shape_before_cropping"] == (1, 256, 256)


@pytest.mark.slow
def test_hu_model_network_input_is_nnunet_ct_normalisation(hu_model):
    from LegSegNetLib.engines.nnunet import NnUNetEngine

    engine = NnUNetEngine(hu_model, device="cpu")
    assert engine.input_format == "hu"
    target = engine.configuration.spacing  # slices already at the plans' spacing: no resampling
    size = int(round(FOV_MM / target[0]))
    hu, _ = leg_slice(HELD_OUT_SEEDS[0], (size, size), (target[0], target[1]))  # rows front-back, as nnU-Net's
    props = engine.plans_manager.foreground_intensity_properties_per_channel["0"]
    # the engine takes standard slabs (rows left-right) and hands HU models their transpose: nnU-Net's order
    (item,) = engine.prepare(hu.T[None], (2.0, target[1], target[0]))
    expected = np.clip(hu.astype(np.float32), props["percentile_00_5"], props["percentile_99_5"])
    expected = (expected - props["mean"]) / max(props["std"], 1e-8)
    (r0, r1), (c0, c1) = item.properties["bbox_used_for_cropping"][1:]
    np.testing.assert_allclose(item.data[0, 0], expected[r0:r1, c0:c1], rtol=0, atol=1e-5)
    # a slice at another spacing is resampled to the plans' spacing, as nnU-Net does
    (coarse,) = engine.prepare(hu.T[None, ::2, ::2], (2.0, 2 * target[1], 2 * target[0]))
    assert abs(coarse.data.shape[2] - item.data.shape[2]) <= 2


@pytest.mark.slow
def test_png_model_segments_held_out_slices_at_any_matrix_size(png_engine):
    for size in (256, 384, 200):
        hu, truth = held_out(6, size)
        labels = png_engine.segment(hu, (2.0, FOV_MM / size, FOV_MM / size), Progress())
        assert labels.shape == hu.shape and labels.dtype == np.uint8
        scores = {name: dice(labels, truth, value) for name, value in (("SAT", 1), ("SM", 2), ("Bone", 4))}
        assert min(scores.values()) > 0.8, (size, scores)


@pytest.mark.slow
def test_hu_model_segments_held_out_slices(hu_model):
    from LegSegNetLib.engines.nnunet import NnUNetEngine

    engine = NnUNetEngine(hu_model, device="cpu")
    for spacing in (0.8, 1.25):
        size = int(round(FOV_MM / spacing))
        pairs = [leg_slice(seed, (size, size), (spacing, spacing)) for seed in list(HELD_OUT_SEEDS)[:5]]
        hu, truth = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
        # phantom slices have rows front-back (nnU-Net's order); the standard slab is their transpose
        standard = hu.astype(np.int16).transpose(0, 2, 1)
        labels = engine.segment(standard, (3.0, spacing, spacing), Progress()).transpose(0, 2, 1)
        scores = {name: dice(labels, truth, value) for name, value in (("SAT", 1), ("SM", 2), ("Bone", 4))}
        assert min(scores.values()) > 0.8, (spacing, scores)


@pytest.mark.slow
def test_sliding_window_matches_nnunet_predictor(png_model, png_engine):
    """Batched tiles give nnU-Net's own predictor's logits (same tiles, Gaussian and fp16 accumulation)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=1.0,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        png_engine.networks[0],
        png_engine.plans_manager,
        png_engine.configuration,
        None,
        png_engine.dataset_json,
        "nnUNetTrainer",
        png_engine.mirror_axes,
    )
    hu, _ = held_out(4, 320)
    prepared = png_engine.prepare(hu, (1.0, 1.0, 1.0))
    ours = png_engine.predict_logits(prepared, png_engine.networks[0])
    for item, logits in zip(prepared, ours):
        theirs = predictor.predict_sliding_window_return_logits(torch.from_numpy(item.data))
        assert logits.shape == theirs.shape
        assert torch.allclose(logits.float(), theirs.float(), atol=2e-2, rtol=2e-3)
        assert (logits.argmax(0) == theirs.argmax(0)).float().mean() > 0.999


@pytest.mark.slow
def test_export_matches_nnunet_and_probabilities_go_back_to_the_native_grid(png_engine):
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    hu, _ = held_out(2, 300)
    prepared = png_engine.prepare(hu, (1.0, 1.0, 1.0))
    logits = png_engine.predict_logits(prepared, png_engine.networks[0])
    ours = png_engine.export_probabilities(prepared, logits).cpu().numpy()
    for k, item in enumerate(prepared):
        _, theirs = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits[k],
            png_engine.plans_manager,
            png_engine.configuration,
            png_engine.label_manager,
            item.properties,
            return_probabilities=True,
        )
        np.testing.assert_allclose(ours[k], theirs[:, 0], atol=1e-6)
    assert ours.shape == (2, 5, 256, 256)
    np.testing.assert_allclose(ours.sum(1), 1.0, atol=1e-5)
    # native labels = argmax of the probabilities interpolated to 300 x 300 (not an upscaled label image)
    native = png_engine.segment_slices(hu, (1.0, 1.0, 1.0))
    upsampled = torch.nn.functional.interpolate(
        torch.from_numpy(ours), size=(300, 300), mode="bilinear", align_corners=False, antialias=False
    )
    assert np.array_equal(native, upsampled.argmax(1).numpy().astype(np.uint8))


@pytest.mark.slow
def test_fold_ensemble_averages_probabilities(png_model):
    from LegSegNetLib.engines.nnunet import NnUNetEngine

    hu, truth = held_out(3, 256, start=3)
    spacing = (1.0, 1.0, 1.0)
    both = NnUNetEngine(png_model, device="cpu", folds=[0, 1])
    assert both.info()["folds"] == [0, 1]
    p0 = NnUNetEngine(png_model, device="cpu", folds=[0]).model_grid_probabilities(hu, spacing)
    p1 = NnUNetEngine(png_model, device="cpu", folds=[1]).model_grid_probabilities(hu, spacing)
    p01 = both.model_grid_probabilities(hu, spacing)
    assert np.abs(p0 - p1).max() > 0.1  # two really different folds
    np.testing.assert_allclose(p01, (p0 + p1) / 2, atol=1e-6)
    assert np.array_equal(both.segment_model_grid(hu, spacing), p01.argmax(1))
    # default: every fold of the model
    assert NnUNetEngine(png_model, device="cpu").info()["folds"] == [0, 1]


@pytest.mark.slow
def test_tta_is_the_mean_of_the_mirrored_predictions(png_model):
    from LegSegNetLib.engines.nnunet import NnUNetEngine

    # PyTorch's kernels on both sides: the mirroring itself, to float rounding (the runtimes: test_nnunet_runtimes.py)
    plain = NnUNetEngine(png_model, device="cpu", folds=[0], tta=False, runtime="torch")
    mirrored = NnUNetEngine(png_model, device="cpu", folds=[0], tta=True, runtime="torch")
    assert mirrored.info()["tta"] is True and plain.info()["tta"] is False
    assert mirrored.mirror_axes == (0, 1)
    hu, truth = held_out(2, 256, start=6)
    prepared = plain.prepare(hu, (1.0, 1.0, 1.0))
    p0, p1 = plain.patch_size
    tiles = []
    for item in prepared:  # one patch-sized tile per slice, as the sliding window cuts them
        image, _ = plain._pad(item)
        tiles.append(image[:, :p0, :p1])
    x = torch.stack(tiles)  # (k, 1, p0, p1)
    net = plain.networks[0]
    with torch.inference_mode():
        expected = (net(x) + net(x.flip(2)).flip(2) + net(x.flip(3)).flip(3) + net(x.flip(2, 3)).flip(2, 3)) / 4
        got = mirrored._forward(mirrored.networks[0], x)
        unmirrored = plain._forward(plain.networks[0], x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert (got - unmirrored).abs().max() > 1e-3  # mirroring changes the logits
    labels = mirrored.segment(hu, (1.0, FOV_MM / 256, FOV_MM / 256), Progress())
    assert min(dice(labels, truth, v) for v in (1, 2, 4)) > 0.8


@pytest.mark.slow
def test_cpu_worker_threads_give_pytorchs_own_numbers(png_model):
    """Tiles shared out to single-threaded forwards, one per core, give PyTorch's own multi-threaded
    forward's numbers up to float rounding (its kernels may split sums by thread count)."""
    from LegSegNetLib.engines.nnunet import NnUNetEngine

    png_engine = NnUNetEngine(png_model, device="cpu", folds=[0], runtime="torch")
    if png_engine._workers is None:
        pytest.skip("one CPU core: no worker threads")
    x = torch.randn(5, 1, *png_engine.patch_size, generator=torch.Generator().manual_seed(0))
    net = png_engine.networks[0]
    with torch.inference_mode():
        shared_out = png_engine._forward(net, x)
        assert torch.get_num_threads() == png_engine.threads  # the main thread keeps its threads
        torch.testing.assert_close(shared_out, torch.cat([net(tile[None]) for tile in x]), atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(shared_out, net(x), atol=1e-3, rtol=1e-4)


@pytest.mark.slow
def test_slices_without_body_never_reach_the_network(png_engine, monkeypatch):
    hu, truth = held_out(2, 256)
    slab = np.concatenate(
        [np.full((1, 256, 256), -1000, np.int16), hu.astype(np.int16), np.full((1, 256, 256), -600, np.int16)]
    )
    seen = []
    forward_tiles = png_engine._forward_tiles  # where every runtime gets its tiles

    def counted(network, batch):
        seen.append(batch.shape[0])
        return forward_tiles(network, batch)

    monkeypatch.setattr(png_engine, "_forward_tiles", counted)
    progress = Progress()
    labels = png_engine.segment(slab, (1.0, FOV_MM / 256, FOV_MM / 256), progress)
    monkeypatch.undo()
    assert not labels[0].any() and not labels[-1].any()
    assert progress.done == progress.total == 4
    prepared = png_engine.prepare(hu, (1.0, 1.0, 1.0))
    assert sum(seen) == sum(len(png_engine._tiles(p)) for p in prepared)  # only the two body slices' tiles


@pytest.mark.slow
def test_batch_size_does_not_change_the_labels(png_model):
    from LegSegNetLib.engines.nnunet import NnUNetEngine

    hu, _ = held_out(5, 256)
    spacing = (1.0, FOV_MM / 256, FOV_MM / 256)
    one = NnUNetEngine(png_model, device="cpu", folds=[0], batch_size=1).segment(hu, spacing, Progress())
    many = NnUNetEngine(png_model, device="cpu", folds=[0], batch_size=16).segment(hu, spacing, Progress())
    assert (one != many).mean() < 1e-4
    # the GPU's schedule (next chunk prepared in a thread while this one runs), here on the CPU
    overlapped = NnUNetEngine(png_model, device="cpu", folds=[0], batch_size=2)
    overlapped.prefetch = True
    assert np.array_equal(
        overlapped.segment(hu, spacing, Progress()),
        NnUNetEngine(png_model, device="cpu", folds=[0], batch_size=2).segment(hu, spacing, Progress()),
    )


# ====================================================================== through the real command line
def _phantom_volume(n: int = 4, size: int = 256) -> tuple[sitk.Image, sitk.Image]:
    """An LPS CT whose slab (see ct_volume.py) is n held-out phantom slices, and its true labels."""
    hu, truth = held_out(n, size)

    def image(slab: np.ndarray) -> sitk.Image:
        out = sitk.GetImageFromArray(np.ascontiguousarray(slab.transpose(0, 2, 1)))  # slab rows = ITK i
        out.SetSpacing((FOV_MM / size, FOV_MM / size, 2.5))
        out.SetOrigin((-150.0, -140.0, -420.0))
        return out

    return image(hu.astype(np.int16)), image(truth)


@pytest.mark.slow
@pytest.mark.parametrize("orientation", ["LPS", "RAI", "SLP", "LSP", "PIR"])
def test_cli_labels_land_in_the_input_geometry(tmp_path, png_model, orientation):
    """The S/I axis stored first, second or third, flipped or not, in-plane axes swapped: labels come back on
    the input's grid (the engine sees every storage order turned to the standard; test_nnunet_orientation.py
    shows the labels are then identical in physical space)."""
    ct, truth = _phantom_volume()
    ct, truth = reorient(ct, orientation), reorient(truth, orientation)
    path = write_image(ct, tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    result = run_legsegnet(
        "segment",
        path,
        "-o",
        out,
        "--engine",
        "nnunet",
        "--model",
        png_model,
        "--folds",
        "0",
        "--device",
        "cpu",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    labels = sitk.ReadImage(str(out / "labels.nii.gz"))
    assert labels.GetSize() == ct.GetSize()
    np.testing.assert_allclose(labels.GetSpacing(), ct.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(labels.GetOrigin(), ct.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(labels.GetDirection(), ct.GetDirection(), atol=1e-6)
    got, want = sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(truth)
    scores = {v: dice(got, want, v) for v in (1, 2, 4)}
    assert min(scores.values()) > 0.8, scores
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["engine"] == "nnunet" and metrics["folds"] == [0] and metrics["input_format"] == "png"


@pytest.mark.slow
def test_cli_uses_an_installed_model_with_engine_auto(tmp_path, png_model):
    from LegSegNetLib.engines import make_engine
    from LegSegNetLib.engines.nnunet import NnUNetEngine
    from LegSegNetLib.models.store import ModelStore

    store = ModelStore(tmp_path / "store")
    assert make_engine("auto", store=store).name == "threshold"
    store.install(str(png_model), name="tiny-png")
    engine = make_engine("auto", store=store, device="cpu")
    assert isinstance(engine, NnUNetEngine) and engine.info()["model"] == "tiny-png"

    ct, _ = _phantom_volume(n=2)
    path = write_image(ct, tmp_path / "ct.nii.gz")
    env = dict(os.environ, LEGSEGNET_MODELS_DIR=str(tmp_path / "store"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "LegSegNetLib.cli",
            "segment",
            str(path),
            "-o",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["engine"] == "nnunet" and metrics["model"] == "tiny-png"
    assert "engine: nnunet" in result.stderr


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.slow
def test_cli_refuses_a_corrupt_checkpoint_a_missing_fold_and_mismatched_plans(tmp_path, png_model):
    ct, _ = _phantom_volume(n=1)
    path = write_image(ct, tmp_path / "ct.nii.gz")

    def run(model: Path, *extra: str) -> str:
        return _one_error_line(
            run_legsegnet(
                "segment",
                path,
                "-o",
                tmp_path / "out",
                "--engine",
                "nnunet",
                "--model",
                model,
                "--device",
                "cpu",
                "--quiet",
                *extra,
            )
        )

    corrupt = _copy_model(png_model, tmp_path / "corrupt")
    truncate_file(corrupt / "fold_0" / "checkpoint_best.pth", 0.5)
    assert "checkpoint" in run(corrupt, "--folds", "0")

    line = run(png_model, "--folds", "0,7")
    assert "fold 7" in line and "0, 1" in line

    mismatch = _copy_model(png_model, tmp_path / "mismatch")
    plans = json.loads((mismatch / "plans.json").read_text())
    plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"] = [16, 32, 64, 128]
    (mismatch / "plans.json").write_text(json.dumps(plans))
    assert "plans" in run(mismatch, "--folds", "0")
    assert not (tmp_path / "out" / "labels.nii.gz").exists()


def test_engine_refuses_a_missing_model_folder(tmp_path):
    from LegSegNetLib.engines.nnunet import NnUNetEngine

    with pytest.raises(InputError, match="neither an existing model folder"):
        NnUNetEngine(tmp_path / "nowhere", device="cpu")


# ====================================================================== devices
@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
def test_device_auto_falls_back_to_cpu_with_a_note_and_cuda_is_refused():
    from LegSegNetLib.engines.nnunet import select_device

    progress = Progress()
    assert select_device("auto", progress).type in ("cpu", "mps")
    if not getattr(torch.backends, "mps", None) or not torch.backends.mps.is_available():
        assert any("CPU" in note for note in progress.notes)
    with pytest.raises(InputError, match="--device cuda"):
        select_device("cuda")
    with pytest.raises(InputError, match="unknown device"):
        select_device("tpu")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_CUDA, reason="no GPU on this machine")
def test_cuda_gives_the_cpu_labels(png_model):
    from LegSegNetLib.engines.nnunet import NnUNetEngine

    hu, truth = held_out(6, 384)
    spacing = (1.0, FOV_MM / 384, FOV_MM / 384)
    gpu = NnUNetEngine(png_model, device="cuda", folds=[0], tta=False, tile_step_size=1.0)
    cpu = NnUNetEngine(png_model, device="cpu", folds=[0], tta=False)
    assert gpu.info()["device"].startswith("cuda")
    on_gpu = gpu.segment(hu, spacing, Progress())
    assert (on_gpu != cpu.segment(hu, spacing, Progress())).mean() < 1e-3
    assert min(dice(on_gpu, truth, v) for v in (1, 2, 4)) > 0.8
