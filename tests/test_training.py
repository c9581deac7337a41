"""Training the next round's model (`legsegnet train`, training.py) with real nnU-Net on the CPU.

- patient-level splits: no patient on both sides of any fold, every slice validated once, balanced folds;
- refusals before anything heavy runs: not a training set, one patient, a fold that does not exist, a model of
  the other input format, a model whose checkpoint does not fit its plans, a name in use, a run to resume
  that does not exist;
- (slow) one round end to end: the round-0 tiny model (tests/nnunet_fixtures.py) predicts phantom scans, the
  phantom's exact labels correct sampled slices, `legsegnet dataset add` exports them, `legsegnet train
  --from round0` fine-tunes, is interrupted with SIGTERM, resumed with --resume, and installs round 1, which
  scores a higher mean Dice than round 0 on held-out phantom scans;
- (slow) training from scratch on HU slices through the Python API;
- (slow) the Slicer logic: training in the worker process behind a PythonSlicer-like launcher that forwards no
  signals, with progress, Stop training keeping a checkpoint, no process left, resume, the new model listed.
"""

from __future__ import annotations

import json
import os

# Spinning OpenMP threads stall PyTorch on busy shared CPUs (see training.py); before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from LegSegNetLib.annotation import (  # noqa: E402
    dataset,  # noqa: E402
    nnunet_trainer,
    review,  # noqa: E402
    stopping,
    time_estimate,
    training_runs,
)
from LegSegNetLib.annotation import manifest as manifest_module  # noqa: E402
from LegSegNetLib.annotation.splits import make_patient_splits, number_of_splits  # noqa: E402
from LegSegNetLib.annotation.training import TrainOptions, train  # noqa: E402
from LegSegNetLib.core.errors import CancelledError, InputError  # noqa: E402
from LegSegNetLib.core.progress import Progress  # noqa: E402
from LegSegNetLib.core.text import format_duration  # noqa: E402
from LegSegNetLib.models.checkpoints import load_checkpoint  # noqa: E402
from LegSegNetLib.models.store import ModelStore  # noqa: E402
from LegSegNetLib.phantom import make_leg_phantom  # noqa: E402
from LegSegNetLib.pipeline import segment_slab  # noqa: E402 - the engine sees what `legsegnet segment` shows it

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from processes import DrainedProcess  # noqa: E402

PHANTOM_SHAPE = (12, 192, 256)  # slices, rows, columns: a 300 mm calf field of view
TRAIN_SEEDS = (21, 22, 23, 24, 25)  # one patient each; one of the five is held out (annotation/holdout.py)
HELD_OUT_SEEDS = (31, 32, 33)
SLICES_PER_SCAN = 4


# ---------------------------------------------------------------------- patient-level splits (no nnU-Net needed)
def _cases(counts: dict[str, int]) -> dict[str, str]:
    return {f"{patient}_s{i:03d}": patient for patient, n in counts.items() for i in range(n)}


@pytest.mark.parametrize(
    "counts, n_splits",
    [
        ({"A": 3, "B": 3, "C": 3, "D": 3, "E": 3}, 5),
        ({"A": 12, "B": 1, "C": 4, "D": 4, "E": 7, "F": 2, "G": 9}, 5),
        ({"A": 2, "B": 5}, 2),
        ({f"P{i}": 1 + i % 4 for i in range(40)}, 5),
    ],
)
def test_patient_level_splits_never_put_a_patient_on_both_sides(counts, n_splits):
    cases = _cases(counts)
    splits = make_patient_splits(cases, n_splits)
    assert len(splits) == n_splits
    validated = []
    for split in splits:
        train_patients = {cases[c] for c in split["train"]}
        val_patients = {cases[c] for c in split["val"]}
        assert split["val"] and split["train"]
        assert not train_patients & val_patients
        assert sorted(split["train"] + split["val"]) == sorted(cases)
        validated += split["val"]
    assert sorted(validated) == sorted(cases)  # every slice is validated exactly once
    sizes = [len(s["val"]) for s in splits]
    assert max(sizes) - min(sizes) <= max(counts.values())  # greedy balance: off by at most one patient
    assert make_patient_splits(cases, n_splits) == splits  # reproducible


def test_a_split_needs_as_many_patients_as_folds():
    with pytest.raises(InputError, match="2 patient"):
        make_patient_splits(_cases({"A": 3, "B": 3}), 5)
    assert number_of_splits(3) == 3 and number_of_splits(40) == 5


def test_held_out_patients_are_decided_once_and_never_after_training_on_them(tmp_path):
    from LegSegNetLib.annotation import holdout

    assert holdout.decide(tmp_path, ["A", "B"]) == set()  # too few patients: none held out
    held = holdout.decide(tmp_path, ["A", "B", "C"])
    assert len(held) == 1 and held <= {"C"}  # A and B were decided (trained) already
    more = holdout.decide(tmp_path, [f"P{i}" for i in range(20)] + ["A", "B", "C"])
    assert held <= more and not more & {"A", "B"}
    assert len(more) == 5  # 23 decided patients at most 20% (rounded half up) held out: 5
    again = holdout.decide(tmp_path, ["C", "P3", "A"])
    assert again == more & {"C", "P3", "A"}  # the decisions stand
    saved = json.loads((tmp_path / holdout.HOLDOUT_FILE).read_text())
    assert set(saved["held_out"]) == more and len(saved["train"]) == 18
    # patients a --from model was trained on are never held out; a fraction of 0 holds out no new patient
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    names = [f"Q{i}" for i in range(10)]
    assert not holdout.decide(fresh, names, trained_before=names, write=False)
    assert not holdout.decide(fresh, names, fraction=0.0, write=False)
    (tmp_path / holdout.HOLDOUT_FILE).write_text("{")
    with pytest.raises(InputError, match="damaged"):
        holdout.decide(tmp_path, ["A"])


def test_training_time_estimate_scales_with_the_network():
    tiny = {
        "patch_size": [112, 256],
        "batch_size": 8,
        "architecture": {
            "arch_kwargs": {
                "features_per_stage": [8, 16, 32, 64],
                "strides": [[1, 1]] + [[2, 2]] * 3,
                "kernel_sizes": [[3, 3]] * 4,
                "n_conv_per_stage": [2] * 4,
                "n_conv_per_stage_decoder": [2] * 3,
            }
        },
    }
    published_like = {
        "patch_size": [160, 256],
        "batch_size": 12,
        "architecture": {
            "arch_kwargs": {
                "features_per_stage": [32, 64, 128, 256, 512, 512],
                "strides": [[1, 1]] + [[2, 2]] * 5,
                "kernel_sizes": [[3, 3]] * 6,
                "n_conv_per_stage": [2] * 6,
                "n_conv_per_stage_decoder": [2] * 5,
            }
        },
    }
    # data.md measured 17.8 GFLOP per 160 x 256 crop for the default 2D U-Net; this count is within 15 %
    assert time_estimate.network_gflop_per_patch(published_like) == pytest.approx(17.8, rel=0.15)
    cpu = time_estimate.estimate_seconds_per_iteration(published_like, "cpu", cpu_cores=2)
    assert cpu > 20 * time_estimate.estimate_seconds_per_iteration(tiny, "cpu", cpu_cores=2)
    assert cpu > 20 * time_estimate.estimate_seconds_per_iteration(published_like, "cuda")
    assert (
        format_duration(5400) == "1.5 h" and format_duration(40) == "40 s" and format_duration(3 * 86400) == "3.0 days"
    )


# ---------------------------------------------------------------------- fixtures with nnU-Net
torch = pytest.importorskip("torch")
pytest.importorskip("nnunetv2")


@pytest.fixture(scope="module")
def round0_model() -> Path:
    """The round-0 model: the suite's tiny PNG-format nnU-Net (trained once and cached by nnunet_fixtures)."""
    import nnunet_fixtures

    return nnunet_fixtures.get_model("png")


@pytest.fixture()
def store(tmp_path, round0_model, monkeypatch) -> ModelStore:
    root = tmp_path / "store"
    monkeypatch.setenv("LEGSEGNET_MODELS_DIR", str(root))  # the CLI and worker subprocesses use it too
    models = ModelStore(root)
    models.install(str(round0_model), name="round0", training_round=0)
    return models


def _phantom_files(folder: Path, seed: int, shape=PHANTOM_SHAPE):
    phantom = make_leg_phantom(shape=shape, seed=seed)
    volume, labels = phantom.to_volume()
    ct = folder / f"ct{seed}.nii.gz"
    sitk.WriteImage(volume.image, str(ct))
    labels_path = folder / f"labels{seed}.nii.gz"
    sitk.WriteImage(labels, str(labels_path))
    return phantom, volume, ct, labels_path


def _small_dataset(folder: Path, seeds=(41, 42), input_format: str = "png", slices=(2, 5, 8)) -> Path:
    data = folder / "legs"
    for i, seed in enumerate(seeds):
        phantom = make_leg_phantom(shape=(10, 192, 256), seed=seed)
        volume, labels = phantom.to_volume()
        dataset.add_slices(
            data, volume, labels, list(slices), patient=f"P{i}", training_round=1, input_format=input_format
        )
    return data


def _cli(*args: str, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "LegSegNetLib.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def _all_gone(pids, within_s: float = 10.0) -> bool:
    from LegSegNetLib.worker.launcher import is_alive

    deadline = time.monotonic() + within_s
    while any(is_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(is_alive(p) for p in pids)


def _mean_dice(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, list[float]]:
    per_tissue = []
    for value in (1, 2, 3, 4):
        p, t = predicted == value, truth == value
        per_tissue.append(float(2 * (p & t).sum() / max(p.sum() + t.sum(), 1)))
    return float(np.mean(per_tissue)), per_tissue


# ---------------------------------------------------------------------- refusals
def test_bad_training_requests_are_refused_before_anything_heavy(tmp_path, store):
    data = _small_dataset(tmp_path, seeds=(41, 42))
    with pytest.raises(InputError, match="holds no legsegnet-manifest.json"):
        train(tmp_path / "store", TrainOptions(), store=store)
    with pytest.raises(InputError, match="fold 2 does not exist: 2 patients give 2"):
        train(data, TrainOptions(from_model="round0", folds=[2]), store=store)
    with pytest.raises(InputError, match="'round0' is already installed"):
        train(data, TrainOptions(from_model="round0", name="round0"), store=store)
    with pytest.raises(InputError, match="no training run to resume"):
        train(data, TrainOptions(name="nothing"), resume=True, store=store)
    one_patient = _small_dataset(tmp_path / "one", seeds=(43,))
    with pytest.raises(InputError, match="one patient only.*--folds all"):
        train(one_patient, TrainOptions(from_model="round0"), store=store)
    hu = _small_dataset(tmp_path / "hu", seeds=(44, 45), input_format="hu")
    with pytest.raises(InputError, match="takes PNG input but the dataset holds HU"):
        train(hu, TrainOptions(from_model="round0"), store=store)
    assert [i.name for i in store.list()] == ["round0"]
    assert not (data / training_runs.RUNS_DIR).exists()  # nothing was started

    refused = _cli("train", str(data), "--from", "round0", "--folds", "x", env=dict(os.environ))
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_model_whose_checkpoint_does_not_fit_its_plans_cannot_be_fine_tuned(tmp_path, round0_model):
    broken = tmp_path / "broken"
    shutil.copytree(round0_model, broken)
    plans = json.loads((broken / "plans.json").read_text())
    plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"] = [8, 16, 32, 96]
    (broken / "plans.json").write_text(json.dumps(plans))
    from LegSegNetLib.models.folder import inspect_model_folder

    with pytest.raises(InputError, match=r"do not fit the network its plans.json describes \(.* is \(64,"):
        nnunet_trainer.check_fine_tunable(inspect_model_folder(broken))
    nnunet_trainer.check_fine_tunable(inspect_model_folder(round0_model))  # the intact model passes


# ---------------------------------------------------------------------- one round, end to end (CLI)
def _run_dir_checkpoint(run_dir: Path, name: str) -> Path | None:
    found = list(run_dir.glob(f"nnUNet_results/*/nnUNetTrainer__*__2d/fold_0/{name}"))
    return found[0] if found else None


@pytest.mark.slow
def test_one_annotation_round_fine_tunes_a_better_model_and_survives_an_interruption(tmp_path, store, round0_model):
    from LegSegNetLib.engines.nnunet import NnUNetEngine

    env = dict(os.environ)
    data = tmp_path / "legs"
    round0 = NnUNetEngine("round0", device="cpu", store=store)
    corrected_dice = []
    for patient, seed in enumerate(TRAIN_SEEDS):
        phantom, volume, ct, _ = _phantom_files(tmp_path, seed)
        predicted = segment_slab(round0, volume, 0, volume.n_slices - 1, Progress())  # round 0's pseudo-masks
        sampled = review.sample_slices(0, volume.n_slices - 1, SLICES_PER_SCAN, seed=seed)
        corrected = predicted.copy()
        corrected[sampled] = phantom.labels[sampled]  # the annotator's corrections: the exact anatomy
        corrected_dice.append(_mean_dice(predicted[sampled], phantom.labels[sampled])[0])
        labels_path = tmp_path / f"corrected{seed}.nii.gz"
        sitk.WriteImage(volume.labels_to_image(corrected), str(labels_path))
        added = _cli(
            "dataset",
            "add",
            str(ct),
            str(labels_path),
            "--dataset",
            str(data),
            "--slices",
            ",".join(map(str, sampled)),
            "--patient",
            f"P{patient}",
            "--round",
            "1",
            env=env,
        )
        assert added.returncode == 0, added.stderr
    assert max(corrected_dice) < 0.95  # there was something to correct
    manifest = manifest_module.load_dataset(data)
    assert len(manifest.entries) == len(TRAIN_SEEDS) * SLICES_PER_SCAN and len(manifest.patients()) == 5

    # training, interrupted by SIGTERM in the middle of an epoch
    command = [
        sys.executable,
        "-m",
        "LegSegNetLib.cli",
        "train",
        str(data),
        "--from",
        "round0",
        "--epochs",
        "5",
        "--iterations",
        "12",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--name",
        "round1",
    ]
    run_dir = data / training_runs.RUNS_DIR / "round1"
    # its progress bar is read all the time: a full stderr pipe would stall the training (and the test)
    process = DrainedProcess(command, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 400
        while _run_dir_checkpoint(run_dir, "checkpoint_latest.pth") is None:  # the first epoch is done
            assert process.poll() is None, process.stderr[-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 400 s"
            time.sleep(0.2)
        time.sleep(1.0)  # into the second epoch
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=300)
        stderr = process.stderr
    finally:
        process.stop()
    assert returncode == 1, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: training stopped (SIGTERM) at fold 0, epoch ") and "--resume" in last, last
    assert "round1" not in [i.name for i in store.list()]
    assert _run_dir_checkpoint(run_dir, "checkpoint_latest.pth") is not None
    assert _run_dir_checkpoint(run_dir, "checkpoint_final.pth") is None

    resumed = _cli("train", str(data), "--name", "round1", "--resume", "--device", "cpu", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at epoch" in resumed.stderr and "preparing" not in resumed.stderr  # no second preprocessing
    assert "model 'round1' (round 1)" in resumed.stdout

    # the new model is registered as round 1 with its training data
    info = store.get("round1")
    assert info.round == 1 and info.input_format == "png" and info.metadata["training"]["cases"] == 16
    assert info.metadata["training"]["from_model"]["name"] == "round0"
    # one patient held out: never trained on, decided once and kept in the dataset folder
    decided = json.loads((data / "legsegnet-holdout.json").read_text())
    assert len(decided["held_out"]) == 1 and len(decided["train"]) == 4
    (held_patient,) = decided["held_out"]
    trained_on = json.loads((info.path / "training-manifest.json").read_text())["entries"]
    assert sorted(e["case"] for e in trained_on) == sorted(
        e["case"] for e in manifest.entries if e["patient"] != held_patient
    )
    # the round's held-out Dice of both models, in training.json and in `models list`
    held_out = json.loads((info.path / "training.json").read_text())["held_out"]
    assert held_out["patients"] == [held_patient] and held_out["cases"] == SLICES_PER_SCAN
    new, old = held_out["model"]["dice"], held_out["from_model"]["dice"]
    assert set(new) == set(old) == {"SAT", "SM", "IAT", "Bone"}
    assert held_out["change"] == {k: round(new[k] - old[k], 4) for k in new}
    print(f"\nheld-out slices of {held_patient}: round 0 Dice {old}, round 1 Dice {new}")
    assert held_out["model"]["mean_dice"] > held_out["from_model"]["mean_dice"]
    listing = _cli("models", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith("round1 "))
    assert "/".join(f"{new[k]:.3f}" for k in ("SAT", "SM", "IAT", "Bone")) in row
    assert "/".join(f"{held_out['change'][k]:+.3f}" for k in ("SAT", "SM", "IAT", "Bone")) in row
    listed = json.loads(_cli("models", "list", "--json", env=env).stdout)["models"]
    assert next(m for m in listed if m["name"] == "round1")["held_out"] == held_out
    splits = json.loads((info.path / "training-splits.json").read_text())
    patient_of = {e["case"]: e["patient"] for e in trained_on}
    for split in splits:
        assert not {patient_of[c] for c in split["train"]} & {patient_of[c] for c in split["val"]}
    final = load_checkpoint(info.path / "fold_0" / "checkpoint_final.pth")
    assert final["current_epoch"] == 5 and len(final["logging"]["train_losses"]) == 5  # every epoch, once
    assert final["trainer_name"] == "nnUNetTrainer"

    # round 1 against round 0 on held-out phantom scans
    round1 = NnUNetEngine("round1", device="cpu", store=store)
    scores = {"round0": [], "round1": []}
    for seed in HELD_OUT_SEEDS:
        phantom = make_leg_phantom(shape=(6, 192, 256), seed=seed)
        volume, _ = phantom.to_volume()
        for name, engine in (("round0", round0), ("round1", round1)):
            labels = segment_slab(engine, volume, 0, volume.n_slices - 1, Progress())
            scores[name].append(_mean_dice(labels, phantom.labels)[1])
    mean0, mean1 = (float(np.mean(scores[n])) for n in ("round0", "round1"))
    print(
        f"\nheld-out mean Dice: round 0 {mean0:.4f}, round 1 {mean1:.4f} (+{mean1 - mean0:.4f}); per tissue "
        f"round 0 {np.round(np.mean(scores['round0'], 0), 3)}, round 1 {np.round(np.mean(scores['round1'], 0), 3)}"
    )
    assert mean1 > mean0 + 0.02


# ---------------------------------------------------------------------- from scratch (Python API, HU slices)
TINY_NETWORK = {
    "batch_size": 2,
    "architecture": {
        "arch_kwargs": {
            "n_stages": 4,
            "features_per_stage": [8, 16, 32, 64],
            "kernel_sizes": [[3, 3]] * 4,
            "strides": [[1, 1]] + [[2, 2]] * 3,
            "n_conv_per_stage": [2] * 4,
            "n_conv_per_stage_decoder": [2] * 3,
        }
    },
}


@pytest.mark.slow
def test_training_from_scratch_on_hu_slices_with_an_in_process_stop_and_resume(tmp_path, store):
    data = _small_dataset(tmp_path, seeds=(51, 52, 53), input_format="hu", slices=(1, 4, 7))
    stop = stopping.StopRequest()

    class StopAfterTwo(Progress):
        def advance(self, n: int = 1) -> None:
            super().advance(n)
            if self.stage_name.startswith("training") and self.done >= 2:
                stop.set("test")

    options = TrainOptions(
        epochs=2,
        iterations_per_epoch=4,
        val_iterations_per_epoch=1,
        device="cpu",
        name="scratch",
        configuration_overrides=TINY_NETWORK,
    )
    with pytest.raises(CancelledError, match="stopped \\(test\\) at fold 0, epoch 0, iteration 2"):
        train(data, options, store=store, progress=StopAfterTwo(), stop=stop)
    run_dir = data / training_runs.RUNS_DIR / "scratch"
    marker = json.loads(next(run_dir.rglob(nnunet_trainer.RESUME_FILE)).read_text())
    assert (marker["epoch"], marker["iteration"]) == (0, 2)
    splits = json.loads((run_dir / "splits_final.json").read_text())
    held = json.loads((run_dir / training_runs.RUN_FILE).read_text())["held_out_patients"]
    assert len(splits) == 2 and len(held) == 1  # three patients, one held out by default: two patient-level folds
    assert len({case.rsplit("_s", 1)[0] for fold in splits for case in fold["train"] + fold["val"]}) == 2

    progress = Progress()
    result = train(data, TrainOptions(name="scratch", device="cpu"), resume=True, store=store, progress=progress)
    assert any("resuming at epoch 0, iteration 2 of 4" in n for n in progress.notes)
    info = store.get("scratch")
    assert info.input_format == "hu" and info.round == 1 and result.training_round == 1
    record = json.loads((info.path / "training.json").read_text())
    assert record["fine_tuned"] is False and record["epochs"] == 2 and len(record["held_out"]["patients"]) == 1
    plans = json.loads((info.path / "plans.json").read_text())
    assert plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"] == [8, 16, 32, 64]
    assert not (run_dir / "nnUNet_preprocessed").exists()  # bulky copies removed after installation

    from LegSegNetLib.engines.nnunet import NnUNetEngine

    phantom = make_leg_phantom(shape=(2, 192, 256), seed=60)
    volume, _ = phantom.to_volume()
    engine = NnUNetEngine("scratch", device="cpu", store=store)
    assert engine.slice_axes == "nnunet" and record["slice_axes"] == "nnunet"  # written and served in nnU-Net's order
    labels = segment_slab(engine, volume, 0, volume.n_slices - 1, Progress())
    assert labels.shape == volume.slab().shape and labels.max() <= 4  # an installed, usable HU-format model


# ---------------------------------------------------------------------- in Slicer: the worker process
FAKE_PYTHON_SLICER = [sys.executable, str(Path(__file__).resolve().parent / "fake_python_slicer.py")]


@pytest.mark.slow
def test_slicer_logic_trains_behind_a_pythonslicer_launcher_with_progress_stop_and_resume(tmp_path, store, monkeypatch):
    """Training as inside Slicer: the worker behind a launcher that forwards no signals (fake_python_slicer.py).
    Stop training ends it after the iteration with its checkpoint kept, no process is left, and resume
    finishes and installs the model."""
    pytest.importorskip("slicer")
    from LegSegNetLib.slicer_logic.annotation_logic import AnnotationLogic
    from LegSegNetLib.slicer_logic.logic import LegSegNetLogic
    from LegSegNetLib.worker.launcher import descendants

    # augmentation in worker processes, as on a GPU: the stop must reach them through the trainer
    monkeypatch.setenv("nnUNet_n_proc_DA", "2")

    data = _small_dataset(tmp_path, seeds=(61, 62))
    logic = AnnotationLogic(python=FAKE_PYTHON_SLICER, store=store)
    seconds = logic.expectedTrainingSeconds("round0", epochs=3, iterations=10)
    assert seconds is not None and seconds > 0
    events = []
    handle = logic.trainAsync(
        data,
        fromModel="round0",
        epochs=3,
        iterations=10,
        batchSize=2,
        device="cpu",
        name="slicer-round1",
        onProgress=lambda h: events.append(dict(h.progress)),
    )
    run_dir = data / training_runs.RUNS_DIR / "slicer-round1"
    try:
        deadline = time.monotonic() + 400
        pids: list[int] = []
        while handle.poll():
            if (
                handle.state == "running"
                and handle.progress["stage"].startswith("training fold 0")
                and handle.progress["done"] >= 3
            ):
                pids = [handle.worker.pid, handle.workerPid] + descendants(handle.worker.pid)
                assert handle.workerPid not in (None, handle.worker.pid)  # the launcher sits in between
                handle.stop()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert handle.state == "cancelled", handle.errorMessage
        assert "--resume" in handle.errorMessage and "Traceback" not in "\n".join(handle.worker.log)
        assert pids and _all_gone(pids)  # the launcher, the real worker, its augmentation workers
        assert _run_dir_checkpoint(run_dir, "checkpoint_latest.pth") is not None
        assert logic.interruptedRuns(data) == ["slicer-round1"]
        assert any(e["stage"] == "preparing" for e in events)
        assert any(e["stage"] == "training fold 0" and e["seconds_left"] is not None for e in events)
    finally:
        handle.cancel()

    handle = logic.trainAsync(data, device="cpu", name="slicer-round1", resume=True)
    try:
        result = handle.wait(timeout=400)
    finally:
        handle.cancel()
    assert handle.state == "succeeded" and result["model"] == "slicer-round1" and result["round"] == 1
    assert any("resuming at epoch 0" in n for n in handle.notes)
    assert "slicer-round1" in LegSegNetLogic().installedModels()  # the model list the widget shows
    assert logic.interruptedRuns(data) == []
