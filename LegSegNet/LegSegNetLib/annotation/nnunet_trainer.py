"""nnU-Net's trainer, driven for LegSegNet: nnUNetTrainer's learning unchanged, with progress per iteration,
a stop between iterations that keeps a checkpoint (`--resume` continues at that iteration), atomic
checkpoints, the --from model's weights loaded (after checking they fit the network its plans describe), and
nnU-Net's environment variables pointed into the run folder while the run lasts."""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import CancelledError, InputError
from ..core.progress import Progress
from ..models.folder import CONFIGURATION
from .stopping import Stopped, StopRequest
from .training_runs import write_json

TRAINER_NAME = "nnUNetTrainer"  # what checkpoints record, so nnU-Net's own predictor can load them too
RESUME_FILE = "legsegnet-resume.json"
PLOT_INTERVAL_S = 60.0  # nnU-Net redraws progress.png every epoch; at most this often here


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
    paths = {
        "nnUNet_raw": run_dir / "nnUNet_raw",
        "nnUNet_preprocessed": run_dir / "nnUNet_preprocessed",
        "nnUNet_results": run_dir / "nnUNet_results",
    }
    # torch.compile costs minutes up front and fails on some CPUs
    with environment(**{k: str(v) for k, v in paths.items()}, nnUNet_compile="false"):
        yield paths


# ====================================================================== the trainer
@functools.cache
def trainer_class():
    """nnUNetTrainer with a loop that reports progress and can stop between iterations (created once, lazily:
    importing nnU-Net's trainer takes seconds and needs torch)."""
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
                            val_outputs = [
                                self.validation_step(next(self.dataloader_val))
                                for _ in range(self.num_val_iterations_per_epoch)
                            ]
                            self.on_validation_epoch_end(val_outputs)
                    except Stopped:
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
                        raise Stopped(self.current_epoch, 0)
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
            write_json(
                Path(self.output_folder) / RESUME_FILE,
                {
                    "epoch": self.current_epoch,
                    "iteration": next_iteration,
                    "checkpoint_size": stat.st_size,
                    "checkpoint_mtime_ns": stat.st_mtime_ns,
                },
            )
            raise Stopped(self.current_epoch, next_iteration)

        def _legsegnet_epoch_note(self) -> None:
            log = self.logger.get_value
            epoch = self.current_epoch  # already advanced by on_epoch_end
            try:
                dice = float(np.nanmean(log("dice_per_class_or_region", step=-1)))
                text = (
                    f"fold {self.fold} epoch {epoch}/{self.num_epochs}: train loss {float(log('train_losses', step=-1)):.3f}, "
                    f"validation loss {float(log('val_losses', step=-1)):.3f}, pseudo Dice {dice:.3f}"
                )
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
    return LegSegNetTrainer


def train_fold(
    fold,
    plans: dict,
    dataset_json: dict,
    device,
    options,
    epochs: int,
    learning_rate: float,
    base,
    progress: Progress,
    stop: StopRequest,
    dataset_dir: Path,
) -> None:
    """Train one fold (or 'all') to the end, from its latest checkpoint if there is one; CancelledError on a stop."""
    import torch

    from ..models.checkpoints import unsafe_checkpoint_globals

    trainer_type = trainer_class()
    output_probe = (
        Path(os.environ["nnUNet_results"])
        / plans["dataset_name"]
        / f"{TRAINER_NAME}__{plans['plans_name']}__{CONFIGURATION}"
        / f"fold_{fold}"
    )
    if (output_probe / "checkpoint_final.pth").is_file():
        progress.note(f"fold {fold} was already trained")
        return
    latest = output_probe / "checkpoint_latest.pth"
    resuming = latest.is_file()
    torch.manual_seed(options.seed + (fold if isinstance(fold, int) else 0))
    np.random.seed(options.seed + (fold if isinstance(fold, int) else 0))
    trainer = trainer_type(
        dict(copy.deepcopy(plans), continue_training=resuming), CONFIGURATION, fold, dataset_json, device=device
    )
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = int(options.iterations_per_epoch)
    trainer.num_val_iterations_per_epoch = int(options.val_iterations_per_epoch)
    trainer.initial_lr = float(learning_rate)
    trainer.save_every = 1
    trainer.legsegnet_progress = progress
    trainer.legsegnet_stop = stop
    trainer.logger.plot_progress_png = trainer._legsegnet_plot
    trainer.initialize()
    if resuming:
        if unsafe_checkpoint_globals(latest):
            raise InputError(
                f"{latest} holds Python objects beyond tensors and numbers; it was not written by "
                "LegSegNet - delete the run folder and train again"
            )
        trainer.load_checkpoint(str(latest))
        trainer.legsegnet_first_iteration = _resume_iteration(latest, trainer.current_epoch)
        progress.note(
            f"fold {fold}: resuming at epoch {trainer.current_epoch}, iteration "
            f"{trainer.legsegnet_first_iteration} of {trainer.num_iterations_per_epoch}"
        )
    elif base is not None:
        _load_base_weights(trainer, base, fold)
    done = trainer.current_epoch * trainer.num_iterations_per_epoch + trainer.legsegnet_first_iteration
    total = epochs * trainer.num_iterations_per_epoch
    progress.stage(f"training fold {fold}", total=total - done)
    try:
        trainer.run_training()
    except Stopped as stopped:
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
    if (
        marker.get("epoch") == epoch
        and marker.get("checkpoint_size") == stat.st_size
        and marker.get("checkpoint_mtime_ns") == stat.st_mtime_ns
    ):
        return int(marker.get("iteration", 0))
    return 0


def _load_base_weights(trainer, base, fold) -> None:
    """Every weight of the --from model's checkpoint (its fold with the same number, else its first fold)."""
    from ..models.checkpoints import load_checkpoint

    fold_choice = fold if fold in base.folds else base.fold_ids[0]
    path = base.checkpoint_path(fold_choice, None)
    weights = load_checkpoint(path)["network_weights"]
    network = trainer.network
    module = getattr(network, "_orig_mod", network)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    _compare_weights(expected, weights, f"model '{base.name}' ({path.parent.name}/{path.name})")
    module.load_state_dict(weights)
    trainer.print_to_log_file(f"fine-tuning from {path}", also_print_to_console=False)


def check_fine_tunable(base) -> None:
    """InputError unless the model's checkpoints fit the network its plans describe (cheap: no data needed)."""
    from ..models.checkpoints import import_torch_for_nnunet, load_checkpoint

    import_torch_for_nnunet()
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = base.plans()
    try:
        configuration = PlansManager(plans).get_configuration(CONFIGURATION)
        network = get_network_from_plans(
            configuration.network_arch_class_name,
            configuration.network_arch_init_kwargs,
            configuration.network_arch_init_kwargs_req_import,
            base.num_input_channels,
            len(base.labels),
            allow_init=False,
            deep_supervision=True,
        )
    except Exception as exc:  # noqa: BLE001 - any failure means plans nnU-Net cannot build
        raise InputError(f"model '{base.name}': nnU-Net cannot build the network of its plans.json ({exc})") from None
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    for _fold, path in base.checkpoints(None, None):
        weights = load_checkpoint(path)["network_weights"]
        _compare_weights(expected, weights, f"model '{base.name}' ({path.parent.name}/{path.name})")


def _compare_weights(expected: Mapping[str, tuple], weights: Mapping[str, Any], what: str) -> None:
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if tuple(weights[k].shape) != expected[k])
    if missing or extra or wrong:
        detail = (
            f"{wrong[0]} is {tuple(weights[wrong[0]].shape)} in the checkpoint but {expected[wrong[0]]} in the network"
            if wrong
            else f"{(missing or extra)[0]} is {'missing from' if missing else 'extra in'} the checkpoint"
        )
        raise InputError(
            f"{what}: its weights do not fit the network its plans.json describes ({detail}); it cannot be fine-tuned "
            "- copy plans.json and the checkpoints from the same training run, or train from scratch without --from"
        )
