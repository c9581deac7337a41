"""Train the next round's model on a LegSegNet training set (model-in-the-loop annotation, docs/method.md).

    legsegnet train DATASET [--from MODEL] [--epochs N] [--device auto|cpu|cuda|mps] [--name NAME] [--folds 0]
                    [--resume]

One run, in a run folder (default DATASET/training-runs/NAME) that makes it resumable:

1. Snapshot: the cases the dataset's manifest lists are copied (checksums verified) into the run's private
   nnUNet_raw; later exports to the dataset do not change a run that has started.
2. nnU-Net v2 planning and preprocessing, with nnU-Net's own functions: the fingerprint, then
   - fine-tuning (`--from MODEL`, an installed name or a model folder): the model's own plans, so the
     network, patch size and intensity normalisation are those its weights were trained with, and its
     checkpoint's weights are loaded into the network (every layer: the labels are the same four tissues);
     a checkpoint that does not fit the plans is refused with a clear error before anything heavy runs;
   - from scratch: nnU-Net's default experiment planner.
   The dataset's format (png or hu) must be the model's input format.
3. A patient-level split (`make_patient_splits`, written as nnU-Net's splits_final.json): the patients are
   spread over up to five folds; no patient has slices on both sides of a fold's train/validation split.
4. nnU-Net's trainer (nnUNetTrainer, unchanged learning), driven by a loop that reports progress per
   iteration and stops between iterations: SIGTERM or Ctrl-C (or Slicer's Cancel) saves checkpoint_latest
   (written atomically) and the iteration reached, and exits; `--resume` continues from there. A checkpoint
   is also written after every epoch, so a crash (power cut, SIGKILL) loses at most one epoch.
5. The trained folder is installed in the model store as the next round (models.store.ModelStore.install with its
   round), with training.json (settings, split, timings, versions) and training-manifest.json (the exact
   cases it was trained on) next to it; its metadata gets a `training` summary.

The nnU-Net environment variables (nnUNet_raw, nnUNet_preprocessed, nnUNet_results) point into the run
folder only while the run lasts and are restored afterwards (`nnunet_environment`); Slicer runs training in
the worker process anyway, never in its own.

This module holds the options, the checks made before anything heavy runs, and the order of the steps;
the steps live beside it: `training_runs` (run folder and records), `preparation` (steps 1-3), `splits`
(the patient-level split), `nnunet_trainer` (step 4, the fine-tuning checks), `stopping` (signals and
the stop request), `time_estimate` (the CPU warning).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import InputError
from ..core.progress import Progress
from ..core.text import format_duration
from . import holdout
from . import manifest as manifest_module
from .holdout import DEFAULT_FRACTION as DEFAULT_HOLDOUT_FRACTION
from .nnunet_trainer import CONFIGURATION, TRAINER_NAME, check_fine_tunable, environment, nnunet_environment, train_fold
from .preparation import nnunet_dataset_name, prepare
from .splits import number_of_splits
from .stopping import StopRequest, forked_helpers_exit_quietly, stop_on_signals
from .time_estimate import estimate_seconds_per_iteration
from .training_runs import (
    RUN_FILE,
    clean_run,
    new_run,
    open_run_for_resume,
    record_training,
    training_record,
    write_json,
)

DEFAULT_EPOCHS = 1000  # nnU-Net's default; the published model was trained 1000 epochs
DEFAULT_FINE_TUNE_EPOCHS = 200
DEFAULT_ITERATIONS = 250  # nnU-Net's iterations per epoch
DEFAULT_VAL_ITERATIONS = 50
DEFAULT_LEARNING_RATE = 1e-2  # nnU-Net's
DEFAULT_FINE_TUNE_LEARNING_RATE = 1e-3  # smaller steps keep what the previous round learnt
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # the model store's rule for names
# plans keys of the 2D configuration that change the network; refused with --from (the weights would not fit)
_ARCHITECTURE_KEYS = {"architecture", "patch_size", "spacing", "normalization_schemes"}


# ====================================================================== options and results
@dataclass
class TrainOptions:
    """What `legsegnet train` accepts. None means the documented default."""

    from_model: str | None = None  # installed name or model folder to fine-tune; None trains from scratch
    epochs: int | None = None  # default: 1000 from scratch, 200 when fine-tuning
    iterations_per_epoch: int = DEFAULT_ITERATIONS
    val_iterations_per_epoch: int = DEFAULT_VAL_ITERATIONS
    device: str = "auto"
    name: str | None = None  # default: <dataset folder name>-round<N>
    folds: list[int] | str | None = None  # None: [0]; "all": train on every case without validation
    training_round: int | None = None  # default: the --from model's round + 1, else the dataset's highest round
    learning_rate: float | None = None  # default: 1e-2 from scratch, 1e-3 when fine-tuning
    batch_size: int | None = None  # default: the plans'
    seed: int = 0
    make_default: bool = False  # mark the new model as the one `--engine auto` uses
    workdir: str | None = None  # run folder; default DATASET/training-runs/NAME
    # Python API only: updates of the plans' 2D configuration for a from-scratch run (e.g. a tiny network in
    # tests): {"batch_size": 4, "architecture": {"arch_kwargs": {...}}}; nested dicts are merged.
    configuration_overrides: dict | None = None
    # share of patients held out from training (holdout.py): never trained on, the round's models are scored on them
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    model_name: str
    model_path: Path
    training_round: int
    run_dir: Path
    folds: list
    seconds: float
    notes: list[str] = field(default_factory=list)
    record: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "command": "train",
            "model": self.model_name,
            "path": str(self.model_path),
            "round": self.training_round,
            "run_dir": str(self.run_dir),
            "folds": [str(f) for f in self.folds],
            "seconds": round(self.seconds, 1),
            "notes": self.notes,
        }


# ====================================================================== the run


def train(
    dataset_dir: str | Path,
    options: TrainOptions | None = None,
    *,
    resume: bool = False,
    store=None,
    progress: Progress | None = None,
    stop: StopRequest | None = None,
) -> TrainResult:
    """Train (or with `resume`, continue training) the next round's model and install it in the store.

    `stop` lets a caller (or a test) ask for a stop between iterations, as SIGTERM does; the run then raises
    CancelledError and can be resumed.
    """
    from ..engines import nnunet_python_problem, use_passive_openmp_threads
    from ..models.store import ModelStore

    if nnunet_python_problem():  # nnU-Net's trainer needs Python 3.10: say so before anything is read
        raise InputError(nnunet_python_problem())
    use_passive_openmp_threads()  # before torch is first imported, which happens below
    options = copy.deepcopy(options) if options is not None else TrainOptions()
    progress = progress or Progress()
    stop = stop or StopRequest()
    folder = Path(dataset_dir).expanduser().resolve()
    store = store or ModelStore()
    progress.stage("checking")
    run_dir, run, options, manifest = _open_run(folder, options, resume, progress)
    base = _resolve_base_model(options.from_model, store, manifest)
    _note_axes_change(base, manifest, progress)
    training_round = _choose_round(options.training_round, base, manifest)
    all_patients = sorted(manifest.patients())
    if run is None:  # decided now (saved with the run below); a resumed run keeps its own
        held_patients = holdout.decide(
            folder, all_patients, options.holdout_fraction, holdout.trained_patients(base), write=False
        )
    else:
        held_patients = set(run.get("held_out_patients") or [])
    manifest, held_entries = holdout.split_manifest(manifest, held_patients)
    if run is not None and "held_out_entries" in run:
        held_entries = run["held_out_entries"]
    name = options.name or _default_name(folder, training_round)
    if not _NAME_RE.match(name):
        raise InputError(f"--name '{name}' is not a valid model name: use 1-64 letters, digits, '.', '_' or '-'")
    if any(info.name.lower() == name.lower() for info in store.list()):
        raise InputError(
            f"a model named '{name}' is already installed; choose another --name (or remove it: legsegnet models remove {name})"
        )
    if (
        options.configuration_overrides
        and base is not None
        and set(options.configuration_overrides) & _ARCHITECTURE_KEYS
    ):
        raise InputError("fine-tuning keeps the network of the --from model: only batch_size may be changed")
    folds = _check_folds(options.folds, manifest)
    epochs = int(options.epochs or (DEFAULT_FINE_TUNE_EPOCHS if base else DEFAULT_EPOCHS))
    _check_counts(epochs, options)
    if run is None:
        options.name = name
        run_dir, run = new_run(folder, options, name, training_round, epochs, folds, _describe_model(base))
        holdout.decide(folder, all_patients, options.holdout_fraction, holdout.trained_patients(base))
        run["held_out_patients"] = sorted(held_patients)
        run["held_out_entries"] = held_entries
        write_json(run_dir / RUN_FILE, run)
        if held_patients:
            progress.note(
                f"{len(held_entries)} slice(s) of patient(s) {', '.join(sorted(held_patients))} are held out: never "
                "trained on, the new model and the one it started from are scored on them"
            )

    device = _select_device(options.device, progress)
    if device.type == "cpu":
        _warn_cpu(base, options, epochs, folds, progress)
    started = time.monotonic()
    try:
        results = _prepare_and_train(
            run_dir, run, folder, manifest, base, options, folds, epochs, device, progress, stop
        )
    finally:
        run["training_seconds"] = round(run.get("training_seconds", 0.0) + time.monotonic() - started, 1)
        write_json(run_dir / RUN_FILE, run)

    held_out = _score_held_out(folder, held_entries, manifest.slice_axes, results, base, device, progress)
    progress.stage("registering")
    record = training_record(
        run,
        manifest_path=run_dir / "manifest.json",
        folds=folds,
        epochs=epochs,
        options=options,
        learning_rate=_learning_rate(options, base),
        device=str(device),
        fine_tuned=base is not None,
    )
    record["held_out"] = {"patients": sorted(held_patients), "fraction": options.holdout_fraction, **held_out}
    info = store.install(
        str(results), name=name, progress=progress, training_round=training_round, make_default=options.make_default
    )
    record_training(info.path, record, run_dir / "manifest.json", run_dir / "splits_final.json")
    run["status"] = "registered"
    run["model"] = info.name
    write_json(run_dir / RUN_FILE, run)
    clean_run(run_dir)
    progress.note(f"model '{info.name}' (round {training_round}) installed in {store.root}")
    return TrainResult(
        info.name, info.path, training_round, run_dir, folds, run["training_seconds"], list(progress.notes), record
    )


def _score_held_out(folder: Path, entries: list, slice_axes: str, results: Path, base, device, progress) -> dict:
    """Held-out Dice per tissue of the new model and of the --from model (holdout.score_models), and the change."""
    if not entries:
        return {"cases": 0, "note": "no patient is held out (too few patients, or --holdout 0)"}
    progress.stage("scoring held-out slices")
    models = {"model": results, **({"from_model": base} if base is not None else {})}
    scores = holdout.score_models(folder, entries, slice_axes, models, device.type)
    out = {"cases": len(entries), "metric": "Dice per tissue, pooled over the held-out slices", **scores}
    if base is not None:
        new, old = scores["model"]["dice"], scores["from_model"]["dice"]
        out["change"] = {k: None if new[k] is None or old[k] is None else round(new[k] - old[k], 4) for k in new}
    progress.note(
        "held-out Dice (SAT/SM/IAT/Bone): "
        + "/".join("-" if v is None else f"{v:.3f}" for v in scores["model"]["dice"].values())
        + (
            " (the --from model's: "
            + "/".join("-" if v is None else f"{v:.3f}" for v in scores["from_model"]["dice"].values())
            + ")"
            if base is not None
            else ""
        )
    )
    return out


def _open_run(folder: Path, options: TrainOptions, resume: bool, progress: Progress):
    """(run folder, run record, options, manifest): of the interrupted run with `resume`, else (None, None, ...)."""
    if not resume:
        return None, None, options, manifest_module.load_dataset(folder, verify=True)
    run_dir, run = open_run_for_resume(folder, options)
    # the run goes on with its own settings; only the device may change (e.g. a GPU became free)
    options = TrainOptions(
        **{**run["options"], "device": options.device, "name": run["name"], "training_round": run["round"]}
    )
    progress.note(f"resuming training run '{run['name']}' ({run_dir})")
    snapshot = run_dir / "manifest.json"
    if run.get("status") in ("prepared", "trained") and snapshot.is_file():
        # and with the slices it started with, whatever was exported since
        manifest = manifest_module.Manifest.from_dict(json.loads(snapshot.read_text(encoding="utf-8")), snapshot)
    else:
        manifest = manifest_module.load_dataset(folder, verify=True)
    return run_dir, run, options, manifest


def _prepare_and_train(
    run_dir: Path,
    run: dict,
    folder: Path,
    manifest,
    base,
    options: TrainOptions,
    folds: list,
    epochs: int,
    device,
    progress: Progress,
    stop: StopRequest,
) -> Path:
    """Steps 1-4 of the module docstring inside the run folder; returns the trained model folder."""
    # CPU: no augmentation worker processes unless asked for (the network is the bottleneck there); on a GPU
    # nnU-Net's default number of them
    augmentation = "0" if device.type == "cpu" and "nnUNet_n_proc_DA" not in os.environ else None
    log_path = run_dir / "nnunet-output.log"
    with (
        nnunet_environment(run_dir) as paths,
        open(log_path, "a", encoding="utf-8") as log,
        contextlib.redirect_stdout(log),
    ):  # nnU-Net's chatter goes to the run's log, not the terminal
        dataset_name = nnunet_dataset_name(folder)
        if run.get("status") not in ("prepared", "trained"):
            progress.stage("preparing")
            with forked_helpers_exit_quietly():
                run["plans_file"] = prepare(run_dir, folder, paths, dataset_name, manifest, base, options, folds)
            run["status"] = "prepared"
            write_json(run_dir / RUN_FILE, run)
        preprocessed = paths["nnUNet_preprocessed"] / dataset_name
        plans = json.loads((preprocessed / run["plans_file"]).read_text())
        dataset_json = json.loads((preprocessed / "dataset.json").read_text())
        # nnU-Net's planner needs nnUNet_n_proc_DA >= 1, so it is set for the training only
        with stop_on_signals(stop), environment(nnUNet_n_proc_DA=augmentation):
            for fold in folds:
                train_fold(
                    fold,
                    plans,
                    dataset_json,
                    device,
                    options,
                    epochs,
                    _learning_rate(options, base),
                    base,
                    progress,
                    stop,
                    folder,
                )
        run["status"] = "trained"
        return paths["nnUNet_results"] / dataset_name / f"{TRAINER_NAME}__{plans['plans_name']}__{CONFIGURATION}"


def _resolve_base_model(from_model: str | None, store, manifest: manifest_module.Manifest):
    """The model to fine-tune (a models.folder.ModelFolder) or None; its input format must be the dataset's."""
    if not from_model:
        return None
    from ..models.store import resolve_model

    base = resolve_model(from_model, store)
    if base.input_format != manifest.input_format:
        raise InputError(
            f"model '{base.name}' takes {base.input_format.upper()} input but the dataset holds "
            f"{manifest.input_format.upper()} slices; export the slices in the model's format "
            f"(legsegnet dataset add ... --format {base.input_format}) into another dataset folder"
        )
    check_fine_tunable(base)
    return base


def _learning_rate(options: TrainOptions, base) -> float:
    return float(options.learning_rate or (DEFAULT_FINE_TUNE_LEARNING_RATE if base else DEFAULT_LEARNING_RATE))


def _choose_round(requested: int | None, base, manifest: manifest_module.Manifest) -> int:
    if requested is not None:
        if int(requested) != requested or requested < 0:
            raise InputError(f"--round must be a whole number 0 or more, not {requested}")
        return int(requested)
    data_round = max(manifest.rounds(), default=0)
    base_round = base.metadata.get("round") if base is not None else None
    if isinstance(base_round, int):
        return max(base_round + 1, data_round)
    return max(data_round, 1 if base is not None else 0)


def _default_name(folder: Path, training_round: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.name).strip("-._") or "legsegnet"
    return f"{stem[:50]}-round{training_round}"


def _check_folds(requested, manifest: manifest_module.Manifest) -> list:
    n_patients = len(manifest.patients())
    if requested == "all" or requested == ["all"]:
        return ["all"]
    folds = [0] if not requested else sorted({int(f) for f in requested})
    if n_patients < 2:
        raise InputError(
            "the dataset holds slices of one patient only; a patient-level validation split needs at least two: "
            "add another patient's slices, or train on everything without validation with --folds all"
        )
    n_splits = number_of_splits(n_patients)
    bad = [f for f in folds if not 0 <= f < n_splits]
    if bad:
        raise InputError(
            f"fold {bad[0]} does not exist: {n_patients} patients give {n_splits} patient-level folds (0-{n_splits - 1})"
        )
    return folds


def _check_counts(epochs: int, options: TrainOptions) -> None:
    for label, value in (
        ("--epochs", epochs),
        ("--iterations", options.iterations_per_epoch),
        ("validation iterations", options.val_iterations_per_epoch),
    ):
        if int(value) != value or value < 1:
            raise InputError(f"{label} must be a whole number of at least 1, not {value}")
    if options.batch_size is not None and (int(options.batch_size) != options.batch_size or options.batch_size < 1):
        raise InputError(f"--batch-size must be a whole number of at least 1, not {options.batch_size}")
    if options.learning_rate is not None and not (0 < options.learning_rate < 1):
        raise InputError(f"--learning-rate must lie between 0 and 1, not {options.learning_rate}")


def _describe_model(base) -> dict | None:
    if base is None:
        return None
    return {
        "name": base.name,
        "path": str(base.path),
        "round": base.metadata.get("round"),
        "sha256": base.metadata.get("files_sha256") or base.metadata.get("sha256"),
        "input_format": base.input_format,
    }


def _select_device(requested: str, progress: Progress):
    from ..engines.nnunet import cpu_threads, select_device

    device = select_device(requested, progress)
    if device.type == "cpu":
        import torch

        torch.set_num_threads(cpu_threads())
    return device


def _warn_cpu(base, options: TrainOptions, epochs: int, folds: list, progress: Progress) -> None:
    from ..engines.nnunet import cpu_threads

    if base is not None:
        configuration = base.plans()["configurations"][CONFIGURATION]
        per_iteration = estimate_seconds_per_iteration(configuration, "cpu", cpu_threads(), options.batch_size)
        expected = per_iteration * options.iterations_per_epoch * epochs * len(folds)
        progress.note(
            f"training on the CPU is slow: expect about {format_duration(expected)} for {epochs} epochs x "
            f"{options.iterations_per_epoch} iterations ({len(folds)} fold(s)); a CUDA GPU is typically 20-50x faster"
        )
    else:
        progress.note(
            "training on the CPU is slow (the progress bar shows the time left after the first iterations); "
            "a CUDA GPU is typically 20-50x faster"
        )


def _note_axes_change(base, manifest, progress: Progress) -> None:
    """Fine-tuning a model on slices in another axis order (an older LegSegNet's HU model on a new set) works,
    but starts from weights that learnt the slices transposed: say so."""
    if base is None:
        return
    from ..engines import slice_axes

    learnt, _ = slice_axes.for_model(base)
    if learnt != manifest.slice_axes:
        progress.note(
            f"model '{base.name}' learnt slices with {slice_axes.DESCRIPTIONS[learnt]}; this training set holds them "
            f"with {slice_axes.DESCRIPTIONS[manifest.slice_axes]}, which the new model learns (it may need more epochs)"
        )
