"""The nnU-Net engine's runtimes keep the masks (tiny real models that the suite trains, tests/nnunet_fixtures.py).

- OpenVINO, the CPU's default when installed, gives PyTorch fp32's labels on >= 99.9 % of the voxels of
  Visible Human calf slices and of held-out phantom slices, for the PNG-format and the HU-format model;
  a second engine compiles the cached export and gives the same labels again;
- bf16 runs only when asked for, is recorded in metrics.json, and its labels are measured against fp32;
- a runtime or precision that cannot run here is one clear error.
(The agreement of the default runtime with nnU-Net's own predictor, which the reference code calls, is
tests/test_nnunet_engine.py::test_sliding_window_matches_nnunet_predictor.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nnunet_fixtures  # noqa: E402
from nnunet_fixtures import HELD_OUT_SEEDS, leg_slice  # noqa: E402

from LegSegNetLib.core.errors import InputError  # noqa: E402
from LegSegNetLib.core.progress import Progress  # noqa: E402
from LegSegNetLib.scan import volume_io  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("nnunetv2")
pytest.importorskip("openvino", reason="OpenVINO (the nnunet extra) is not installed")
pytest.importorskip("onnx", reason="onnx (the nnunet extra) is not installed")

FOV_MM = 300.0
AGREEMENT = 0.999  # labels identical to PyTorch fp32 on at least this fraction of voxels


@pytest.fixture(scope="module")
def calves(visible_human_dir):
    """Two dozen slices from the middle of the Visible Human calf CT, as the pipeline reads them."""
    volume = volume_io.read_ct(visible_human_dir)
    middle = volume.n_slices // 2
    return volume, middle - 12, middle + 11


def phantom(size: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    slices = np.stack(
        [leg_slice(seed, (size, size), (FOV_MM / size, FOV_MM / size))[0] for seed in list(HELD_OUT_SEEDS)[:6]]
    )
    return slices.astype(np.int16), (1.0, FOV_MM / size, FOV_MM / size)


def labelled(engine, calves) -> list[np.ndarray]:
    """The engine's labels of the calf slices (through the pipeline's orientation step) and of phantoms."""
    from LegSegNetLib.pipeline import segment_slab

    volume, first, last = calves
    out = [segment_slab(engine, volume, first, last, Progress())]
    for size in (256, 384):
        slices, spacing = phantom(size)
        out.append(engine.segment(slices, spacing, Progress()))
    return out


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> list[float]:
    return [float((x == y).mean()) for x, y in zip(a, b)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["png", "hu"])
def test_openvino_gives_pytorch_fp32_labels(kind, calves):
    from LegSegNetLib.engines.nnunet import NnUNetEngine

    model = nnunet_fixtures.get_model(kind)
    reference = NnUNetEngine(model, device="cpu", folds=[0], runtime="torch")
    default = NnUNetEngine(model, device="cpu", folds=[0])
    assert reference.info()["runtime"] == "torch"
    assert (default.info()["runtime"], default.info()["precision"]) == ("openvino", "fp32")
    expected = labelled(reference, calves)
    got = labelled(default, calves)
    for labels in expected:
        assert (labels > 0).mean() > 0.02 and len(np.unique(labels)) >= 4  # tissue to agree on
    assert min(agreement(got, expected)) >= AGREEMENT, agreement(got, expected)
    # a second engine compiles the cached export: the very same labels
    again = NnUNetEngine(model, device="cpu", folds=[0])
    assert again._runners[id(again.networks[0])].cached
    assert all(np.array_equal(x, y) for x, y in zip(labelled(again, calves), got))
    if kind == "png":  # a damaged cache file: exported afresh, same labels, and the cache is whole again
        from LegSegNetLib.engines.openvino_network import cache_dir

        for path in cache_dir().glob("*.bin"):
            path.write_bytes(b"not a network")
        repaired = NnUNetEngine(model, device="cpu", folds=[0])
        assert all(np.array_equal(x, y) for x, y in zip(labelled(repaired, calves), got))
        for expected in (False, True):  # exported into the cache again, then used from it
            engine = NnUNetEngine(model, device="cpu", folds=[0])
            assert engine._runners[id(engine.networks[0])].cached is expected


@pytest.mark.slow
def test_bf16_only_when_asked_for_and_recorded(tmp_path, calves):
    from LegSegNetLib.engines.nnunet import NnUNetEngine

    model = nnunet_fixtures.get_model("png")
    fp32 = NnUNetEngine(model, device="cpu", folds=[0], runtime="torch")
    bf16 = NnUNetEngine(model, device="cpu", folds=[0], precision="bf16")
    assert bf16.info()["precision"] == "bf16"
    measured = agreement(labelled(bf16, calves), labelled(fp32, calves))
    assert min(measured) >= AGREEMENT, measured
    # through the CLI: asked for by --precision or the environment, written into metrics.json; never by default
    image = phantom_file(tmp_path)
    command = [sys.executable, "-m", "LegSegNetLib.cli", "segment", str(image), "--engine", "nnunet"]
    command += ["--model", str(model), "--device", "cpu", "--quiet", "-o"]
    env = {k: v for k, v in os.environ.items() if k != "LEGSEGNET_NNUNET_PRECISION"}
    for out, extra, extra_env, expected in [
        ("flag", ["--precision", "bf16"], {}, "bf16"),
        ("env", [], {"LEGSEGNET_NNUNET_PRECISION": "bf16"}, "bf16"),
        ("default", [], {}, "fp32"),
    ]:
        done = subprocess.run(
            [*command, str(tmp_path / out), *extra],
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        metrics = json.loads((tmp_path / out / "metrics.json").read_text())
        assert (metrics["runtime"], metrics["precision"]) == ("openvino", expected)


def phantom_file(tmp_path: Path) -> Path:
    """Two phantom slices as a NIfTI file."""
    import SimpleITK as sitk

    slices, spacing = phantom(256)
    image = sitk.GetImageFromArray(slices[:2])
    image.SetSpacing((spacing[2], spacing[1], spacing[0]))
    path = tmp_path / "phantom.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def test_runtime_and_precision_refusals(monkeypatch):
    from LegSegNetLib.engines.nnunet import _runtime_and_precision

    torch = pytest.importorskip("torch")
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert _runtime_and_precision(None, None, cpu) == ("openvino", "fp32")
    assert _runtime_and_precision("torch", "bf16", cpu) == ("torch", "bf16")
    assert _runtime_and_precision("auto", None, cuda) == ("torch", "fp16-autocast")
    monkeypatch.setenv("LEGSEGNET_NNUNET_RUNTIME", "torch")
    assert _runtime_and_precision(None, None, cpu) == ("torch", "fp32")
    for runtime, precision, device, message in [
        ("tensorrt", None, cpu, "unknown nnU-Net runtime"),
        ("torch", "int8", cpu, "unknown precision"),
        ("openvino", None, cuda, "OpenVINO runtime runs nnU-Net on the CPU"),
        ("torch", "bf16", cuda, "bf16 precision is for the CPU"),
    ]:
        with pytest.raises(InputError, match=message):
            _runtime_and_precision(runtime, precision, device)
