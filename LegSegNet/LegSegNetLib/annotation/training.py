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
5. The trained folder is installed in the model store as the next round (models.ModelStore.install with its
   round), with training.json (settings, split, timings, versions) and training-manifest.json (the exact
   cases it was trained on) next to it; its metadata gets a `training` summary.

The nnU-Net environment variables (nnUNet_raw, nnUNet_preprocessed, nnUNet_results) point into the run
folder only while the run lasts and are restored afterwards (`nnunet_environment`); Slicer runs training in
the worker process anyway, never in its own.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from .. import __version__
from . import dataset as dataset_module
from ..core.errors import CancelledError, InputError
from ..core.files import atomic_write_text, sha256_file
from ..core.progress import Progress
from ..core.text import format_duration, now_iso  # noqa: F401 - also training.format_duration for callers

CONFIGURATION = "2d"
TRAINER_NAME = "nnUNetTrainer"  # what checkpoints record, so nnU-Net's own predictor can load them too
RUNS_DIR = "training-runs"
RUN_FILE = "run.json"
RESUME_FILE = "legsegnet-resume.json"
DEFAULT_EPOCHS = 1000  # nnU-Net's default; the published model was trained 1000 epochs
DEFAULT_FINE_TUNE_EPOCHS = 200
DEFAULT_ITERATIONS = 250  # nnU-Net's iterations per epoch
DEFAULT_VAL_ITERATIONS = 50
DEFAULT_LEARNING_RATE = 1e-2  # nnU-Net's
DEFAULT_FINE_TUNE_LEARNING_RATE = 1e-3  # smaller steps keep what the previous round learnt
MAX_FOLDS = 5
SPLIT_SEED = 12345
PLOT_INTERVAL_S = 60.0  # nnU-Net redraws progress.png every epoch; at most this often here
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
        return {"command": "train", "model": self.model_name, "path": str(self.model_path), "round": self.training_round,
                "run_dir": str(self.run_dir), "folds": [str(f) for f in self.folds], "seconds": round(self.seconds, 1),
                "notes": self.notes}


# ====================================================================== patient-level splits
def make_patient_splits(case_patients: Mapping[str, str], n_splits: int = MAX_FOLDS, seed: int = SPLIT_SEED) -> list[dict]:
    """nnU-Net's splits_final.json content: [{"train": [...], "val": [...]}, ...], one per fold.

    Patients, not slices, are assigned to folds: every slice of a patient is validated in the same fold and
    never trained on in that fold. Patients are shuffled with `seed`, then placed largest first into the fold
    with the fewest cases so far, which keeps the folds' sizes close. Needs at least `n_splits` patients.
    """
    patients: dict[str, list[str]] = {}
    for case, patient in sorted(case_patients.items()):
        patients.setdefault(patient, []).append(case)
    if n_splits < 2:
        raise InputError(f"a train/validation split needs at least 2 folds, not {n_splits}")
    if len(patients) < n_splits:
        raise InputError(
            f"{len(patients)} patient(s) cannot fill {n_splits} folds: a patient-level split needs at least as many "
            "patients as folds"
        )
    order = sorted(patients)
    rng = np.random.default_rng(seed)
    shuffled = [order[i] for i in rng.permutation(len(order))]
    shuffled.sort(key=lambda p: -len(patients[p]))  # stable: equal sizes keep the random order
    fold_of: dict[str, int] = {}
    sizes = [0] * n_splits
    for patient in shuffled:
        fold = int(np.argmin(sizes))
        fold_of[patient] = fold
        sizes[fold] += len(patients[patient])
    splits = []
    for fold in range(n_splits):
        val = sorted(c for p, cases in patients.items() if fold_of[p] == fold for c in cases)
        train = sorted(c for p, cases in patients.items() if fold_of[p] != fold for c in cases)
        splits.append({"train": train, "val": val})
    return splits


def number_of_splits(n_patients: int) -> int:
    return min(MAX_FOLDS, n_patients)


# ====================================================================== time estimate
def network_gflop_per_patch(configuration: Mapping[str, Any], num_classes: int = 5) -> float:
    """Forward GFLOP of nnU-Net's plain 2D U-Net for one patch (convolutions only; multiply-add = 2 FLOP)."""
    arch = configuration["architecture"]["arch_kwargs"]
    features = list(arch["features_per_stage"])
    strides = [list(s) for s in arch["strides"]]
    kernels = [list(k) for k in arch["kernel_sizes"]]
    n_conv = list(arch["n_conv_per_stage"])
    n_conv_decoder = list(arch["n_conv_per_stage_decoder"])
    size = [int(p) for p in configuration["patch_size"]]
    areas, channels, flop = [], 1, 0.0
    for stage, f in enumerate(features):
        size = [max(1, s // st) for s, st in zip(size, strides[stage])]
        area = math.prod(size)
        areas.append(area)
        k = math.prod(kernels[stage])
        flop += 2 * k * channels * f * area + (n_conv[stage] - 1) * 2 * k * f * f * area
        channels = f
    for stage in range(len(features) - 2, -1, -1):
        f, area, k = features[stage], areas[stage], math.prod(kernels[stage])
        flop += 2 * math.prod(strides[stage + 1]) * features[stage + 1] * f * area  # transposed convolution
        flop += 2 * k * 2 * f * f * area + (n_conv_decoder[stage] - 1) * 2 * k * f * f * area
        flop += 2 * f * num_classes * area  # segmentation head
    return flop / 1e9


# Effective training throughput (forward + backward + augmentation), GFLOP/s. Calibrated roughly: the
# 20.6 M-parameter default network runs ~130 GFLOP/s forward on 2 AVX-512 cores; training is ~3x the forward
# cost and less efficient. GPUs: a mid-range CUDA card with mixed precision.
_CPU_GFLOPS_PER_CORE = 25.0
_GPU_GFLOPS = 8000.0
_AUGMENTATION_S_PER_SAMPLE = 0.03  # CPU time of nnU-Net's spatial and intensity augmentation per 2D sample (measured)


def estimate_seconds_per_iteration(configuration: Mapping[str, Any], device_type: str, cpu_cores: int = 1,
                                   batch_size: int | None = None) -> float:
    """A rough estimate of one training iteration's time (the progress bar measures the real one)."""
    batch = int(batch_size or configuration.get("batch_size") or 2)
    work = 3.0 * network_gflop_per_patch(configuration) * batch  # forward + backward ~ 3 forwards
    if device_type == "cpu":
        return work / (_CPU_GFLOPS_PER_CORE * max(1, cpu_cores)) + _AUGMENTATION_S_PER_SAMPLE * batch
    return work / _GPU_GFLOPS + _AUGMENTATION_S_PER_SAMPLE * batch / 8  # augmentation in worker processes


# ====================================================================== the nnU-Net environment
@contextlib.contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Environment variables set (or, for None, left as they are) for the block, restored afterwards."""
    values = {k: v for k, v in values.items() if v is not None}
    previous = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in previous.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextlib.contextmanager
def nnunet_environment(run_dir: Path) -> Iterator[dict[str, Path]]:
    """nnU-Net's folders inside `run_dir` for the duration of the block; the previous values come back after."""
    paths = {"nnUNet_raw": run_dir / "nnUNet_raw", "nnUNet_preprocessed": run_dir / "nnUNet_preprocessed",
             "nnUNet_results": run_dir / "nnUNet_results"}
    # torch.compile costs minutes up front and fails on some CPUs
    with environment(**{k: str(v) for k, v in paths.items()}, nnUNet_compile="false"):
        yield paths


class StopRequest:
    """Set by SIGTERM/SIGINT (or by a caller, e.g. a test); the trainer checks it between iterations."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name = ""

    def set(self, why: str = "request") -> None:
        self.signal_name = why
        self.event.set()

    @property
    def requested(self) -> bool:
        return self.event.is_set()


@contextlib.contextmanager
def _stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """SIGTERM and SIGINT ask the training to stop after the current iteration (a second Ctrl-C stops at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    owner = os.getpid()

    def handler(signum, _frame):
        if os.getpid() != owner:  # a forked augmentation worker: the default action, as its pool expects
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set(signal.Signals(signum).name)

    previous_hook = threading.excepthook
    held_back: list = []

    def loader_thread_hook(hook_args):
        # The augmentation loader's result thread fails loudly when its workers got the stop signal too, often
        # before this process has handled it: held back, and shown only if the training did not stop.
        thread = getattr(hook_args, "thread", None)
        if thread is not None and "results_loop" in thread.name:
            if not stop.requested:
                held_back.append(hook_args)
            return
        previous_hook(hook_args)

    for sig in previous:
        signal.signal(sig, handler)
    threading.excepthook = loader_thread_hook
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        if not stop.requested:
            threading.excepthook = previous_hook
            for hook_args in held_back:
                previous_hook(hook_args)


@contextlib.contextmanager
def _forked_helpers_exit_quietly() -> Iterator[None]:
    """nnU-Net lists files with a forked multiprocessing pool and ends it with SIGTERM; forked helpers inherit
    this process's SIGTERM handler (the worker's raises CancelledError, printing a traceback per helper).
    Here a helper exits silently, while this process itself keeps its previous handling of SIGTERM."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        if os.getpid() != owner:
            os._exit(0)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(owner, signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Stopped(Exception):
    def __init__(self, epoch: int, iteration: int) -> None:
        super().__init__(f"stopped at epoch {epoch}, iteration {iteration}")
        self.epoch, self.iteration = epoch, iteration


# ====================================================================== the trainer
_TRAINER_CLASS = None


def trainer_class():
    """nnUNetTrainer with a loop that reports progress and can stop between iterations (created lazily:
    importing nnU-Net's trainer takes seconds and needs torch)."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is not None:
        return _TRAINER_CLASS
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class LegSegNetTrainer(nnUNetTrainer):
        """Learns exactly as nnUNetTrainer; adds progress, cancellation between iterations and atomic checkpoints."""

        legsegnet_progress: Progress
        legsegnet_stop: StopRequest
        legsegnet_first_iteration = 0
        legsegnet_last_plot = 0.0

        def run_training(self):
            self.on_train_start()
            first = self.legsegnet_first_iteration
            last = self.num_iterations_per_epoch - 1
            try:
                for _epoch in range(self.current_epoch, self.num_epochs):
                    next_iteration = first
                    try:
                        self.on_epoch_start()
                        self.on_train_epoch_start()
                        outputs = []
                        for iteration in range(first, self.num_iterations_per_epoch):
                            outputs.append(self.train_step(next(self.dataloader_train)))
                            next_iteration = iteration + 1
                            self.legsegnet_progress.advance()
                            if self.legsegnet_stop.requested and next_iteration <= last:
                                self._legsegnet_stop_mid_epoch(next_iteration)
                        first = 0
                        self.on_train_epoch_end(outputs)
                        with torch.no_grad():
                            self.on_validation_epoch_start()
                            val_outputs = [self.validation_step(next(self.dataloader_val))
                                           for _ in range(self.num_val_iterations_per_epoch)]
                            self.on_validation_epoch_end(val_outputs)
                    except _Stopped:
                        raise
                    except Exception:
                        if self.legsegnet_stop.requested:
                            # the signal reached the augmentation workers too, and their loader gave up; the
                            # weights are those after `next_iteration` iterations (at least one is redone, so
                            # the resumed epoch has a training loss)
                            self._legsegnet_stop_mid_epoch(min(next_iteration, last))
                        raise
                    self.on_epoch_end()  # checkpoint_latest after every epoch but the last (save_every = 1)
                    self._legsegnet_epoch_note()
                    if self.legsegnet_stop.requested and self.current_epoch < self.num_epochs:
                        raise _Stopped(self.current_epoch, 0)
            except BaseException:
                self._legsegnet_shutdown_loaders()
                raise
            self.on_train_end()

        def _legsegnet_stop_mid_epoch(self, next_iteration: int) -> None:
            latest = Path(self.output_folder) / "checkpoint_latest.pth"
            self.current_epoch -= 1  # save_checkpoint records current_epoch + 1; resume must redo this epoch
            try:
                self.save_checkpoint(str(latest))
            finally:
                self.current_epoch += 1
            stat = latest.stat()
            _write_json(Path(self.output_folder) / RESUME_FILE, {
                "epoch": self.current_epoch, "iteration": next_iteration,
                "checkpoint_size": stat.st_size, "checkpoint_mtime_ns": stat.st_mtime_ns,
            })
            raise _Stopped(self.current_epoch, next_iteration)

        def _legsegnet_epoch_note(self) -> None:
            log = self.logger.get_value
            epoch = self.current_epoch  # already advanced by on_epoch_end
            try:
                dice = float(np.nanmean(log("dice_per_class_or_region", step=-1)))
                text = (f"fold {self.fold} epoch {epoch}/{self.num_epochs}: train loss {float(log('train_losses', step=-1)):.3f}, "
                        f"validation loss {float(log('val_losses', step=-1)):.3f}, pseudo Dice {dice:.3f}")
            except (IndexError, KeyError, TypeError, ValueError):
                text = f"fold {self.fold} epoch {epoch}/{self.num_epochs} done"
            self.legsegnet_progress.note(text)

        def save_checkpoint(self, filename: str) -> None:
            # written beside the target and renamed: a crash while saving cannot destroy the previous checkpoint
            temporary = f"{filename}.partial"
            super().save_checkpoint(temporary)
            if os.path.exists(temporary):
                os.replace(temporary, filename)

        def _legsegnet_shutdown_loaders(self) -> None:
            for loader in (self.dataloader_train, self.dataloader_val):
                finish = getattr(loader, "_finish", None)
                if callable(finish):
                    with contextlib.suppress(Exception):
                        finish()

        def _legsegnet_plot(self, output_folder) -> None:
            now = time.monotonic()
            if now - self.legsegnet_last_plot >= PLOT_INTERVAL_S or self.current_epoch + 1 >= self.num_epochs:
                self.legsegnet_last_plot = now
                with contextlib.suppress(Exception):  # a plot must never stop a training
                    type(self.logger).plot_progress_png(self.logger, output_folder)

    # The checkpoints must name a trainer nnU-Net knows (its predictor looks the class up by name); the
    # learning is nnUNetTrainer's, so that is the honest name.
    LegSegNetTrainer.__name__ = LegSegNetTrainer.__qualname__ = TRAINER_NAME
    _TRAINER_CLASS = LegSegNetTrainer
    return LegSegNetTrainer


# ====================================================================== the run
def default_run_dir(dataset_dir: Path, name: str) -> Path:
    return dataset_dir / RUNS_DIR / name


def train(dataset_dir: str | Path, options: TrainOptions | None = None, *, resume: bool = False, store=None,
          progress: Progress | None = None, stop: StopRequest | None = None) -> TrainResult:
    """Train (or with `resume`, continue training) the next round's model and install it in the store.

    `stop` lets a caller (or a test) ask for a stop between iterations, as SIGTERM does; the run then raises
    CancelledError and can be resumed.
    """
    from ..models import store as models

    from ..engines import use_passive_openmp_threads

    use_passive_openmp_threads()  # before torch is first imported, which happens below
    options = copy.deepcopy(options) if options is not None else TrainOptions()
    progress = progress or Progress()
    stop = stop or StopRequest()
    folder = Path(dataset_dir).expanduser().resolve()
    store = store or models.ModelStore()
    progress.stage("checking")
    run_dir, run, options, manifest = _open_run(folder, options, resume, progress)
    base = _resolve_base_model(options.from_model, store, manifest)
    _note_axes_change(base, manifest, progress)
    training_round = _choose_round(options.training_round, base, manifest)
    name = options.name or _default_name(folder, training_round)
    if not _NAME_RE.match(name):
        raise InputError(f"--name '{name}' is not a valid model name: use 1-64 letters, digits, '.', '_' or '-'")
    if any(info.name.lower() == name.lower() for info in store.list()):
        raise InputError(
            f"a model named '{name}' is already installed; choose another --name (or remove it: legsegnet models remove {name})"
        )
    if options.configuration_overrides and base is not None and set(options.configuration_overrides) & _ARCHITECTURE_KEYS:
        raise InputError("fine-tuning keeps the network of the --from model: only batch_size may be changed")
    folds = _check_folds(options.folds, manifest)
    epochs = int(options.epochs or (DEFAULT_FINE_TUNE_EPOCHS if base else DEFAULT_EPOCHS))
    _check_counts(epochs, options)
    if run is None:
        options.name = name
        run_dir, run = _new_run(folder, options, name, training_round, epochs, folds, base)

    device = _select_device(options.device, progress)
    if device.type == "cpu":
        _warn_cpu(base, options, epochs, folds, progress)
    started = time.monotonic()
    try:
        results = _prepare_and_train(run_dir, run, folder, manifest, base, options, folds, epochs, device, progress, stop)
    finally:
        run["training_seconds"] = round(run.get("training_seconds", 0.0) + time.monotonic() - started, 1)
        _write_json(run_dir / RUN_FILE, run)

    progress.stage("registering")
    record = _training_record(run, manifest_path=run_dir / "manifest.json", folds=folds, epochs=epochs,
                              options=options, device=str(device), base=base)
    info = store.install(str(results), name=name, progress=progress, training_round=training_round,
                         make_default=options.make_default)
    _record_training(info.path, record, run_dir / "manifest.json", run_dir / "splits_final.json")
    run["status"] = "registered"
    run["model"] = info.name
    _write_json(run_dir / RUN_FILE, run)
    _clean_run(run_dir)
    progress.note(f"model '{info.name}' (round {training_round}) installed in {store.root}")
    return TrainResult(info.name, info.path, training_round, run_dir, folds, run["training_seconds"],
                       list(progress.notes), record)


def _open_run(folder: Path, options: TrainOptions, resume: bool, progress: Progress):
    """(run folder, run record, options, manifest): of the interrupted run with `resume`, else (None, None, ...)."""
    if not resume:
        return None, None, options, dataset_module.load_dataset(folder, verify=True)
    run_dir, run = _open_run_for_resume(folder, options)
    # the run goes on with its own settings; only the device may change (e.g. a GPU became free)
    options = TrainOptions(**{**run["options"], "device": options.device, "name": run["name"],
                              "training_round": run["round"]})
    progress.note(f"resuming training run '{run['name']}' ({run_dir})")
    snapshot = run_dir / "manifest.json"
    if run.get("status") in ("prepared", "trained") and snapshot.is_file():
        # and with the slices it started with, whatever was exported since
        manifest = dataset_module.Manifest.from_dict(json.loads(snapshot.read_text(encoding="utf-8")), snapshot)
    else:
        manifest = dataset_module.load_dataset(folder, verify=True)
    return run_dir, run, options, manifest


def _new_run(folder: Path, options: TrainOptions, name: str, training_round: int, epochs: int, folds: list,
             base) -> tuple[Path, dict]:
    run_dir = Path(options.workdir).expanduser().resolve() if options.workdir else default_run_dir(folder, name)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise InputError(
            f"a training run named '{name}' already exists in {run_dir}; continue it with --resume, or choose "
            "another --name"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    run = {
        "format_version": 1, "name": name, "status": "started", "created_at": now_iso(), "dataset": str(folder),
        "round": training_round, "options": options.to_dict(), "epochs": epochs, "folds": [str(f) for f in folds],
        "from_model": _describe_model(base), "legsegnet": __version__,
    }
    _write_json(run_dir / RUN_FILE, run)
    return run_dir, run


def _prepare_and_train(run_dir: Path, run: dict, folder: Path, manifest, base, options: TrainOptions, folds: list,
                       epochs: int, device, progress: Progress, stop: StopRequest) -> Path:
    """Steps 1-4 of the module docstring inside the run folder; returns the trained model folder."""
    # CPU: no augmentation worker processes unless asked for (the network is the bottleneck there); on a GPU
    # nnU-Net's default number of them
    augmentation = "0" if device.type == "cpu" and "nnUNet_n_proc_DA" not in os.environ else None
    log_path = run_dir / "nnunet-output.log"
    with nnunet_environment(run_dir) as paths, open(log_path, "a", encoding="utf-8") as log, \
            contextlib.redirect_stdout(log):  # nnU-Net's chatter goes to the run's log, not the terminal
        dataset_name = _nnunet_dataset_name(folder)
        if run.get("status") not in ("prepared", "trained"):
            progress.stage("preparing")
            with _forked_helpers_exit_quietly():
                run["plans_file"] = _prepare(run_dir, folder, paths, dataset_name, manifest, base, options, folds)
            run["status"] = "prepared"
            _write_json(run_dir / RUN_FILE, run)
        preprocessed = paths["nnUNet_preprocessed"] / dataset_name
        plans = json.loads((preprocessed / run["plans_file"]).read_text())
        dataset_json = json.loads((preprocessed / "dataset.json").read_text())
        # nnU-Net's planner needs nnUNet_n_proc_DA >= 1, so it is set for the training only
        with _stop_on_signals(stop), environment(nnUNet_n_proc_DA=augmentation):
            for fold in folds:
                _train_fold(fold, plans, dataset_json, device, options, epochs, base, progress, stop, folder)
        run["status"] = "trained"
        return paths["nnUNet_results"] / dataset_name / f"{TRAINER_NAME}__{plans['plans_name']}__{CONFIGURATION}"


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def _open_run_for_resume(folder: Path, options: TrainOptions) -> tuple[Path, dict]:
    if not options.name and not options.workdir:
        raise InputError("--resume needs the --name of the interrupted run (see DATASET/training-runs/)")
    run_dir = Path(options.workdir).expanduser().resolve() if options.workdir else default_run_dir(folder, options.name)
    try:
        run = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        runs = sorted(p.name for p in (folder / RUNS_DIR).iterdir() if (p / RUN_FILE).is_file()) \
            if (folder / RUNS_DIR).is_dir() else []
        hint = f"runs in this dataset: {', '.join(runs)}" if runs else "this dataset has no training runs"
        raise InputError(f"no training run to resume in {run_dir} ({hint})") from None
    if run.get("status") == "registered":
        raise InputError(f"training run '{run.get('name')}' has finished and is installed as model '{run.get('model')}'")
    return run_dir, run


def _resolve_base_model(from_model: str | None, store, manifest: dataset_module.Manifest):
    """The model to fine-tune (a models.ModelFolder) or None; its input format must be the dataset's."""
    if not from_model:
        return None
    from ..models import store as models

    base = models.resolve_model(from_model, store)
    if base.input_format != manifest.input_format:
        raise InputError(
            f"model '{base.name}' takes {base.input_format.upper()} input but the dataset holds "
            f"{manifest.input_format.upper()} slices; export the slices in the model's format "
            f"(legsegnet dataset add ... --format {base.input_format}) into another dataset folder"
        )
    check_fine_tunable(base)
    return base


def _note_axes_change(base, manifest: dataset_module.Manifest, progress: Progress) -> None:
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


def check_fine_tunable(base) -> None:
    """InputError unless the model's checkpoints fit the network its plans describe (cheap: no data needed)."""
    from ..models import store as models
    from ..engines.nnunet import _import_torch

    _import_torch()
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = base.plans()
    try:
        configuration = PlansManager(plans).get_configuration(CONFIGURATION)
        network = get_network_from_plans(
            configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
            configuration.network_arch_init_kwargs_req_import, base.num_input_channels,
            len(base.labels), allow_init=False, deep_supervision=True,
        )
    except Exception as exc:  # noqa: BLE001 - any failure means plans nnU-Net cannot build
        raise InputError(f"model '{base.name}': nnU-Net cannot build the network of its plans.json ({exc})") from None
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    for fold, path in base.checkpoints(None, None):
        weights = models.load_checkpoint(path)["network_weights"]
        _compare_weights(expected, weights, f"model '{base.name}' ({path.parent.name}/{path.name})")


def _compare_weights(expected: Mapping[str, tuple], weights: Mapping[str, Any], what: str) -> None:
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if tuple(weights[k].shape) != expected[k])
    if missing or extra or wrong:
        detail = (f"{wrong[0]} is {tuple(weights[wrong[0]].shape)} in the checkpoint but {expected[wrong[0]]} in the "
                  "network" if wrong else f"{(missing or extra)[0]} is {'missing from' if missing else 'extra in'} the checkpoint")
        raise InputError(
            f"{what}: its weights do not fit the network its plans.json describes ({detail}); it cannot be fine-tuned "
            "- copy plans.json and the checkpoints from the same training run, or train from scratch without --from"
        )


def _choose_round(requested: int | None, base, manifest: dataset_module.Manifest) -> int:
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


def _check_folds(requested, manifest: dataset_module.Manifest) -> list:
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
    for label, value in (("--epochs", epochs), ("--iterations", options.iterations_per_epoch),
                         ("validation iterations", options.val_iterations_per_epoch)):
        if int(value) != value or value < 1:
            raise InputError(f"{label} must be a whole number of at least 1, not {value}")
    if options.batch_size is not None and (int(options.batch_size) != options.batch_size or options.batch_size < 1):
        raise InputError(f"--batch-size must be a whole number of at least 1, not {options.batch_size}")
    if options.learning_rate is not None and not (0 < options.learning_rate < 1):
        raise InputError(f"--learning-rate must lie between 0 and 1, not {options.learning_rate}")


def _describe_model(base) -> dict | None:
    if base is None:
        return None
    return {"name": base.name, "path": str(base.path), "round": base.metadata.get("round"),
            "sha256": base.metadata.get("files_sha256") or base.metadata.get("sha256"), "input_format": base.input_format}


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
        progress.note("training on the CPU is slow (the progress bar shows the time left after the first iterations); "
                      "a CUDA GPU is typically 20-50x faster")


def _nnunet_dataset_name(folder: Path) -> str:
    match = re.match(r"^Dataset(\d{3})_([A-Za-z0-9_-]+)$", folder.name)
    if match:
        return folder.name
    stem = re.sub(r"[^A-Za-z0-9]+", "", folder.name) or "LegSegNet"
    return f"Dataset990_{stem[:40]}"


def _dataset_id(dataset_name: str) -> int:
    return int(dataset_name[len("Dataset"):len("Dataset") + 3])


def _prepare(run_dir: Path, folder: Path, paths: dict[str, Path], dataset_name: str, manifest: dataset_module.Manifest,
             base, options: TrainOptions, folds: list) -> str:
    """Snapshot, fingerprint, plans, preprocessing and the patient-level split (redone from scratch if it was
    interrupted). Returns the plans file name."""
    for key in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.rmtree(paths[key], ignore_errors=True)
    raw = paths["nnUNet_raw"] / dataset_name
    preprocessed = paths["nnUNet_preprocessed"] / dataset_name
    # 1. snapshot of exactly the manifest's cases, checksums verified on the copies
    (raw / dataset_module.IMAGES_DIR).mkdir(parents=True)
    (raw / dataset_module.LABELS_DIR).mkdir(parents=True)
    for entry in manifest.entries:
        for key in ("image", "label"):
            target = raw / entry[key]
            shutil.copyfile(folder / entry[key], target)
            if sha256_file(target) != entry[f"{key}_sha256"]:
                raise InputError(f"dataset file {entry[key]} changed while it was copied; run the training again")
    _write_json(raw / "dataset.json", dataset_module.dataset_json(manifest, dataset_name))
    _write_json(run_dir / "manifest.json", manifest.to_dict())

    # 2. fingerprint and plans
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_id = _dataset_id(dataset_name)
    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=False, clean=True, verbose=False,
                         show_progress_bar=False)
    if base is not None:
        plans = base.plans()  # null spacings already replaced by 999 (models.load_plans)
        plans["dataset_name"] = dataset_name
        plans_identifier = str(plans.get("plans_name") or "nnUNetPlans")
        plans["plans_name"] = plans_identifier
        if CONFIGURATION not in plans.get("configurations", {}):
            raise InputError(f"model '{base.name}' has no '2d' configuration in its plans.json")
        preprocessed.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(raw / "dataset.json", preprocessed / "dataset.json")
    else:
        plans_identifier = plan_experiments([dataset_id]) or "nnUNetPlans"
        plans = json.loads((preprocessed / f"{plans_identifier}.json").read_text())
    configuration = plans["configurations"][CONFIGURATION]
    if options.configuration_overrides:
        _merge(configuration, options.configuration_overrides)
    if options.batch_size:
        configuration["batch_size"] = int(options.batch_size)
    _write_json(preprocessed / f"{plans_identifier}.json", plans)

    # 3. preprocessing with nnU-Net's own preprocessor (one worker process)
    manager = PlansManager(plans)
    preprocessor = manager.get_configuration(CONFIGURATION).preprocessor_class(verbose=False)
    preprocessor.show_progress_bar = False
    preprocessor.run(dataset_id, CONFIGURATION, plans_identifier, num_processes=1)

    # 4. the patient-level split nnU-Net's trainer reads
    if folds != ["all"]:
        case_patients = {e["case"]: e["patient"] for e in manifest.entries}
        splits = make_patient_splits(case_patients, number_of_splits(len(manifest.patients())))
        _write_json(preprocessed / "splits_final.json", splits)
        _write_json(run_dir / "splits_final.json", splits)
    return f"{plans_identifier}.json"


def _merge(target: dict, updates: Mapping) -> None:
    for key, value in updates.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _train_fold(fold, plans: dict, dataset_json: dict, device, options: TrainOptions, epochs: int, base,
                progress: Progress, stop: StopRequest, dataset_dir: Path) -> None:
    import torch

    from ..models import store as models

    trainer_type = trainer_class()
    output_probe = Path(os.environ["nnUNet_results"]) / plans["dataset_name"] / \
        f"{TRAINER_NAME}__{plans['plans_name']}__{CONFIGURATION}" / f"fold_{fold}"
    if (output_probe / "checkpoint_final.pth").is_file():
        progress.note(f"fold {fold} was already trained")
        return
    latest = output_probe / "checkpoint_latest.pth"
    resuming = latest.is_file()
    torch.manual_seed(options.seed + (fold if isinstance(fold, int) else 0))
    np.random.seed(options.seed + (fold if isinstance(fold, int) else 0))
    trainer = trainer_type(dict(copy.deepcopy(plans), continue_training=resuming), CONFIGURATION, fold,
                           dataset_json, device=device)
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = int(options.iterations_per_epoch)
    trainer.num_val_iterations_per_epoch = int(options.val_iterations_per_epoch)
    trainer.initial_lr = float(options.learning_rate or (DEFAULT_FINE_TUNE_LEARNING_RATE if base else DEFAULT_LEARNING_RATE))
    trainer.save_every = 1
    trainer.legsegnet_progress = progress
    trainer.legsegnet_stop = stop
    trainer.logger.plot_progress_png = trainer._legsegnet_plot
    trainer.initialize()
    if resuming:
        if models.unsafe_checkpoint_globals(latest):
            raise InputError(f"{latest} holds Python objects beyond tensors and numbers; it was not written by "
                             "LegSegNet - delete the run folder and train again")
        trainer.load_checkpoint(str(latest))
        trainer.legsegnet_first_iteration = _resume_iteration(latest, trainer.current_epoch)
        progress.note(f"fold {fold}: resuming at epoch {trainer.current_epoch}, iteration "
                      f"{trainer.legsegnet_first_iteration} of {trainer.num_iterations_per_epoch}")
    elif base is not None:
        _load_base_weights(trainer, base, fold)
    done = trainer.current_epoch * trainer.num_iterations_per_epoch + trainer.legsegnet_first_iteration
    total = epochs * trainer.num_iterations_per_epoch
    progress.stage(f"training fold {fold}", total=total - done)
    try:
        trainer.run_training()
    except _Stopped as stopped:
        raise CancelledError(
            f"training stopped ({stop.signal_name or 'cancelled'}) at fold {fold}, epoch {stopped.epoch}, iteration "
            f"{stopped.iteration}; a checkpoint was kept - continue with: legsegnet train "
            f"{dataset_dir} --name {options.name} --resume"
        ) from None
    finally:
        trainer.legsegnet_first_iteration = 0
    with contextlib.suppress(OSError):
        (output_probe / RESUME_FILE).unlink()


def _resume_iteration(latest: Path, epoch: int) -> int:
    """The iteration an interrupted epoch stopped at, if the marker belongs to this very checkpoint; else 0."""
    try:
        marker = json.loads((latest.parent / RESUME_FILE).read_text())
        stat = latest.stat()
    except (OSError, ValueError):
        return 0
    if (marker.get("epoch") == epoch and marker.get("checkpoint_size") == stat.st_size
            and marker.get("checkpoint_mtime_ns") == stat.st_mtime_ns):
        return int(marker.get("iteration", 0))
    return 0


def _load_base_weights(trainer, base, fold) -> None:
    """Every weight of the --from model's checkpoint (its fold with the same number, else its first fold)."""
    from ..models import store as models

    fold_choice = fold if fold in base.folds else base.fold_ids[0]
    path = base.checkpoint_path(fold_choice, None)
    weights = models.load_checkpoint(path)["network_weights"]
    network = trainer.network
    module = getattr(network, "_orig_mod", network)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    _compare_weights(expected, weights, f"model '{base.name}' ({path.parent.name}/{path.name})")
    module.load_state_dict(weights)
    trainer.print_to_log_file(f"fine-tuning from {path}", also_print_to_console=False)


def _training_record(run: dict, *, manifest_path: Path, folds: list, epochs: int, options: TrainOptions, device: str,
                     base) -> dict:
    from importlib.metadata import version as _version

    import torch

    manifest = json.loads(manifest_path.read_text())
    entries = manifest["entries"]
    patients = sorted({e["patient"] for e in entries})

    return {
        "name": run["name"], "round": run["round"], "trained_at": now_iso(), "dataset": run["dataset"],
        "dataset_manifest_sha256": sha256_file(manifest_path),
        "input_format": manifest["input_format"], "cases": len(entries), "patients": len(patients),
        # the axis order of the slices (engines/slice_axes.py); also in the model's dataset.json, which the engine reads
        "slice_axes": dataset_module.Manifest.from_dict(manifest, manifest_path).slice_axes,
        "scans": len({e["ct_sha256"] for e in entries}),
        "data_rounds": sorted({int(e["round"]) for e in entries}),
        "from_model": run.get("from_model"), "fine_tuned": base is not None,
        "epochs": epochs, "iterations_per_epoch": options.iterations_per_epoch,
        "val_iterations_per_epoch": options.val_iterations_per_epoch,
        "learning_rate": options.learning_rate or (DEFAULT_FINE_TUNE_LEARNING_RATE if base else DEFAULT_LEARNING_RATE),
        "batch_size": options.batch_size, "folds": [str(f) for f in folds], "split": "patient-level (splits_final.json)",
        "device": device, "training_seconds": run.get("training_seconds"),
        "versions": {"legsegnet": __version__, "nnunetv2": _version("nnunetv2"), "torch": torch.__version__,
                     "python": sys.version.split()[0]},
    }


def _record_training(model_dir: Path, record: dict, manifest_file: Path, splits_file: Path) -> None:
    """training.json and training-manifest.json beside the installed model, and a summary in its metadata."""
    from ..models import store as models

    shutil.copyfile(manifest_file, model_dir / "training-manifest.json")
    if splits_file.is_file():
        shutil.copyfile(splits_file, model_dir / "training-splits.json")
    _write_json(model_dir / "training.json", record)
    metadata_path = model_dir / models.METADATA_FILE
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    metadata["training"] = {k: record[k] for k in ("name", "round", "trained_at", "dataset", "dataset_manifest_sha256",
                                                   "cases", "patients", "from_model", "epochs", "folds")}
    metadata["training"]["manifest"] = "training-manifest.json"
    # the folder it was installed from is the run's, removed after installation; say where it came from instead
    metadata["source"] = f"trained on {record['dataset']} (run {record['name']})"
    _write_json(metadata_path, metadata)


def _clean_run(run_dir: Path) -> None:
    """After installation: drop the bulky copies (snapshot, preprocessed arrays, checkpoints); keep the logs."""
    for sub in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.rmtree(run_dir / sub, ignore_errors=True)
    for checkpoint in (run_dir / "nnUNet_results").rglob("*.pth"):
        with contextlib.suppress(OSError):
            checkpoint.unlink()
