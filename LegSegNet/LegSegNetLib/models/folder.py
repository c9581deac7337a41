"""nnU-Net model folders: finding the model in a folder given by the user, validating it, reading its plans.

`inspect_model_folder` understands an nnU-Net v2 model folder: the published LegSegNet layout (`plans.json`,
`dataset.json`, `fold_N/checkpoint_best.pth`) or a standard nnU-Net results folder
(`Trainer__Plans__2d/fold_N/...`, or the dataset folder above several `Trainer__Plans__config` folders, where
the `2d` one is chosen). It validates the folder against the four LegSegNet tissues and says whether the
model's input is the published natural-image PNG format or HU. It never writes to the folder.

`load_plans` is the one way plans.json is read (install, --model FOLDER, the engine, training): every name
in it that nnU-Net would import must be one nnU-Net ships (plans_names.check_plans_names), and the published
file's `null` spacings are replaced in memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..core.tissues import TISSUE_BY_VALUE
from .plans_names import check_plans_names

CONFIGURATION = "2d"  # LegSegNet is a 2D nnU-Net
INPUT_PNG = "png"  # trained on 8-bit natural images (the published weights)
INPUT_HU = "hu"  # trained on HU slices (NIfTI datasets, e.g. our own retrained models)
CHECKPOINT_ALIASES = {"best": "checkpoint_best.pth", "final": "checkpoint_final.pth"}
METADATA_FILE = "legsegnet-model.json"  # the store's record beside an installed model's files
MAX_JSON_BYTES = 64 * 1024**2  # plans.json, dataset.json: a few kB in practice

FOLD_RE = re.compile(r"^fold_(\d+|all)$")
CHECKPOINT_RE = re.compile(r"^checkpoint_[A-Za-z0-9_.-]+\.pth$")
MODEL_TOP_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
_NATURAL_IMAGE_ENDINGS = {".png", ".bmp", ".jpg", ".jpeg"}
_NATURAL_IMAGE_CHANNEL_HINTS = {"png", "naturalimage", "grayscale", "gray", "grey", "uint8", "8bit"}

# dataset.json label names (lower case, letters and digits only) -> LegSegNet label value.
_LABEL_ALIASES: dict[str, int] = {
    "background": 0,
    "bg": 0,
    "sat": 1,
    "scat": 1,
    "subcutaneous": 1,
    "subcutaneousfat": 1,
    "subcutaneousadiposetissue": 1,
    "sm": 2,
    "muscle": 2,
    "muscles": 2,
    "skeletalmuscle": 2,
    "iat": 3,
    "imat": 3,
    "intermuscularfat": 3,
    "intramuscularfat": 3,
    "intermuscularadiposetissue": 3,
    "intramuscularadiposetissue": 3,
    "interintramuscularadiposetissue": 3,
    "bone": 4,
    "bones": 4,
}


@dataclass(frozen=True)
class ModelFolder:
    """A validated nnU-Net model folder, ready for the engine. Never modified by LegSegNet."""

    path: Path  # the folder holding plans.json, dataset.json and fold_N/
    name: str  # installed name, or a name derived from the folder
    configuration: str  # always "2d"
    trainer: str | None  # from a `Trainer__Plans__config` folder name (the checkpoint also names it)
    plans_identifier: str | None
    folds: Mapping[int | str, tuple[str, ...]]  # fold (int, or "all") -> checkpoint file names in it
    input_format: str  # INPUT_PNG or INPUT_HU
    labels: Mapping[str, int]  # dataset.json's labels as given
    file_ending: str  # dataset.json's file_ending (".png", ".nii.gz", ...)
    num_input_channels: int
    metadata: Mapping[str, Any] = field(default_factory=dict)  # the store's record, {} for a plain folder
    warnings: tuple[str, ...] = ()

    @property
    def natural_image(self) -> bool:
        """True for models trained on 8-bit PNG slices: the published preprocessing applies."""
        return self.input_format == INPUT_PNG

    @property
    def fold_ids(self) -> list[int | str]:
        return list(self.folds)

    @property
    def licence(self) -> str | None:
        return self.metadata.get("licence")

    def plans(self) -> dict:
        """plans.json, its imported names checked, null spacings replaced by 999.0 (in memory only)."""
        return load_plans(self.path, self.name)

    def dataset(self) -> dict:
        return _read_json(self.path / "dataset.json", self.name)

    def checkpoints(
        self, folds: Sequence[int | str] | None = None, checkpoint: str | None = None
    ) -> list[tuple[int | str, Path]]:
        """The (fold, checkpoint path) pairs to load. `folds` None: every numbered fold (nnU-Net's own
        choice), else fold_all. `checkpoint`: "best", "final", a file name, or None/"auto": the layout's default
        where every chosen fold has it (an nnU-Net results folder: final, as nnUNetv2_predict; the published
        layout: best), else the other one. InputError names what is missing and what exists."""
        chosen = self._choose_folds(folds)
        file_name = self._choose_checkpoint(chosen, checkpoint)
        return [(fold, self.path / fold_dir(fold) / file_name) for fold in chosen]

    def checkpoint_path(self, fold: int | str, checkpoint: str | None = None) -> Path:
        return self.checkpoints([fold], checkpoint)[0][1]

    def describe(self) -> dict:
        """What metrics.json records about the model."""
        return {
            "name": self.name,
            "path": str(self.path),
            "configuration": self.configuration,
            "input_format": self.input_format,
            "folds": [str(f) for f in self.folds],
            "source": self.metadata.get("source"),
            "sha256": self.metadata.get("sha256"),
            "licence": self.licence,
            "round": self.metadata.get("round"),
        }

    # ---------------------------------------------------------------- helpers
    def _choose_folds(self, folds: Sequence[int | str] | None) -> list[int | str]:
        if folds is None:
            numbered = [f for f in self.folds if isinstance(f, int)]
            return numbered or list(self.folds)
        chosen: list[int | str] = []
        for fold in folds:
            key: int | str = fold if fold == "all" else _as_fold_number(fold)
            if key not in self.folds:
                raise InputError(
                    f"model '{self.name}' has no fold {key} (it has folds {_fold_list(self.folds)}); "
                    f"choose existing folds with --folds, e.g. --folds {_fold_list(self.folds, sep=',')}"
                )
            if key not in chosen:
                chosen.append(key)
        if not chosen:
            raise InputError(f"no folds chosen for model '{self.name}'; it has folds {_fold_list(self.folds)}")
        return chosen

    def _choose_checkpoint(self, folds: list[int | str], checkpoint: str | None) -> str:
        if checkpoint in (None, "auto"):
            preferred = ("checkpoint_final.pth", "checkpoint_best.pth")
            for candidate in preferred if self.trainer else preferred[::-1]:  # trainer: a Trainer__Plans__2d folder
                if all(candidate in self.folds[f] for f in folds):
                    return candidate
            raise InputError(
                f"model '{self.name}': folds {_fold_list(folds)} do not all hold checkpoint_final.pth or "
                f"checkpoint_best.pth ({self._checkpoint_summary(folds)}); choose other folds with --folds"
            )
        file_name = CHECKPOINT_ALIASES.get(checkpoint, checkpoint)
        missing = [f for f in folds if file_name not in self.folds[f]]
        if missing:
            raise InputError(
                f"model '{self.name}': fold {missing[0]} has no {file_name} ({self._checkpoint_summary(folds)}); "
                "choose the other checkpoint with --checkpoint best|final, or other folds with --folds"
            )
        return file_name

    def _checkpoint_summary(self, folds: Sequence[int | str]) -> str:
        return "; ".join(f"fold {f}: {', '.join(self.folds[f]) or 'none'}" for f in folds)


def _as_fold_number(fold: int | str) -> int:
    try:
        number = int(fold)
    except (TypeError, ValueError):
        raise InputError(f"'{fold}' is not a fold number; folds are 0, 1, 2, ... or 'all'") from None
    if number < 0:
        raise InputError(f"fold numbers are 0 or more, not {number}")
    return number


def fold_dir(fold: int | str) -> str:
    return f"fold_{fold}"


def _fold_list(folds: Any, sep: str = ", ") -> str:
    return sep.join(str(f) for f in folds)


def load_plans(folder: str | Path, model: str | None = None) -> dict:
    """plans.json of a model folder, checked and with each `null` in a configuration's `spacing`
    replaced by 999.0. The one way LegSegNet reads plans (install, --model FOLDER, the engine, training).

    Every name in it that nnU-Net would import (network class, layers, preprocessing functions) must be
    one nnU-Net ships (plans_names.check_plans_names), else InputError: a model file cannot run code.
    The published plans.json carries null spacings (2D natural images have no spacing); nnU-Net refuses
    them, and the reference code rewrites the user's file. We never write it: the fix is in memory.
    """
    folder = Path(folder)
    model = model or folder.name
    plans = _read_json(folder / "plans.json", model)
    check_plans_names(plans, model)
    for config in (plans.get("configurations") or {}).values():
        if isinstance(config, dict) and isinstance(config.get("spacing"), list):
            config["spacing"] = [999.0 if s is None else s for s in config["spacing"]]
    return plans


def inspect_model_folder(
    path: str | Path,
    folds: Sequence[int | str] | None = None,
    checkpoint: str | None = None,
    *,
    name: str | None = None,
) -> ModelFolder:
    """Find and validate the nnU-Net 2D model at `path` (see the module docstring for the layouts).

    Checks: plans.json and dataset.json parse; dataset.json's labels are background 0 and the four
    tissues 1-4 (names that LegSegNet recognises must carry their LegSegNet value); plans hold a `2d`
    configuration whose channel count matches dataset.json; at least one fold_N holds a checkpoint;
    the requested folds and checkpoint exist. Raises InputError saying what is wrong and what to do.
    """
    given = Path(path).expanduser()
    if not given.exists():
        raise InputError(
            f"model folder '{given}' does not exist; give a folder holding plans.json, or an installed model name"
        )
    if given.is_file():
        if given.suffix.lower() == ".zip":
            raise InputError(f"'{given}' is an archive; install it first: legsegnet models install {given}")
        raise InputError(
            f"'{given}' is a file; --model wants an nnU-Net model folder (holding plans.json) or an installed model name"
        )
    model_dir, trainer, plans_id, config_from_name = locate_model_dir(given)
    metadata = read_metadata(model_dir) or {}
    display = name or metadata.get("name") or name_from_folder(model_dir)
    trainer = trainer or metadata.get("trainer")
    plans_id = plans_id or metadata.get("plans_identifier")
    if config_from_name is not None and config_from_name != CONFIGURATION:
        raise InputError(
            f"'{model_dir}' is nnU-Net's '{config_from_name}' configuration; LegSegNet runs the 2D nnU-Net: "
            f"give the {trainer}__{plans_id}__2d folder"
        )

    dataset = _read_json(model_dir / "dataset.json", display)
    plans = load_plans(model_dir, display)
    warnings: list[str] = []
    labels = _check_labels(dataset, display, warnings)
    config = _check_plans(plans, display)
    channels = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise InputError(
            f"dataset.json of model '{display}' has no channel_names; it is not an nnU-Net v2 dataset.json"
        )
    schemes = config.get("normalization_schemes")
    if isinstance(schemes, list) and len(schemes) != len(channels):
        raise InputError(
            f"plans.json and dataset.json of model '{display}' disagree: the plans normalise {len(schemes)} "
            f"input channel(s), dataset.json names {len(channels)}; they come from different models — "
            "copy both from the same training run"
        )
    if len(channels) != 1:
        raise InputError(
            f"model '{display}' takes {len(channels)} input channels ({', '.join(map(str, channels.values()))}); "
            "LegSegNet feeds one CT channel"
        )
    file_ending = dataset.get("file_ending")
    if not isinstance(file_ending, str):
        warnings.append("dataset.json has no file_ending; input format guessed from the plans")
        file_ending = ""
    input_format = _input_format(file_ending, plans, channels)
    fold_map = scan_folds(model_dir)
    if not fold_map or not any(fold_map.values()):
        found = ", ".join(f"fold_{f}" for f in fold_map) or "no fold_N folders"
        raise InputError(
            f"model '{display}' has no checkpoint: expected fold_N/checkpoint_best.pth or "
            f"fold_N/checkpoint_final.pth in '{model_dir}' (found {found}); the model is incomplete — "
            "download or copy it again"
        )
    fold_map = {f: c for f, c in fold_map.items() if c}
    folder = ModelFolder(
        path=model_dir,
        name=display,
        configuration=CONFIGURATION,
        trainer=trainer,
        plans_identifier=plans_id,
        folds=fold_map,
        input_format=input_format,
        labels=labels,
        file_ending=file_ending,
        num_input_channels=len(channels),
        metadata=metadata,
        warnings=tuple(warnings),
    )
    if folds is not None or checkpoint is not None:
        folder.checkpoints(folds, checkpoint)  # raises on a missing fold or checkpoint
    return folder


def locate_model_dir(path: Path, depth: int = 0) -> tuple[Path, str | None, str | None, str | None]:
    """(model folder, trainer, plans identifier, configuration) for a path given by the user."""
    if (path / "plans.json").is_file():
        return (path, *split_config_name(path.name))
    if FOLD_RE.match(path.name) and (path.parent / "plans.json").is_file():
        raise InputError(
            f"'{path}' is one fold of a model; give the model folder '{path.parent}' and choose folds with --folds"
        )
    children = [c for c in sorted_dirs(path) if not c.name.startswith(".") and c.name != "__MACOSX"]
    configs = [c for c in children if split_config_name(c.name)[2] is not None and (c / "plans.json").is_file()]
    if configs:
        two_d = [c for c in configs if split_config_name(c.name)[2] == CONFIGURATION]
        if not two_d:
            raise InputError(
                f"'{path}' holds nnU-Net configurations {', '.join(c.name for c in configs)} but no 2d one; "
                "LegSegNet runs the 2D nnU-Net (train the 2d configuration)"
            )
        if len(two_d) > 1:
            standard = [c for c in two_d if c.name == "nnUNetTrainer__nnUNetPlans__2d"]
            if len(standard) != 1:
                raise InputError(
                    f"'{path}' holds several 2d models ({', '.join(c.name for c in two_d)}); give the one to use"
                )
            two_d = standard
        return (two_d[0], *split_config_name(two_d[0].name))
    if len(children) == 1 and depth < 3:  # an archive's or download's wrapping folder
        return locate_model_dir(children[0], depth + 1)
    raise InputError(
        f"'{path}' is not an nnU-Net model folder: no plans.json in it; give the folder that holds plans.json, "
        "dataset.json and fold_N/ (the published 'model' folder, or nnUNetTrainer__nnUNetPlans__2d)"
    )


def sorted_dirs(path: Path) -> list[Path]:
    try:
        return sorted(c for c in path.iterdir() if c.is_dir())
    except OSError as exc:
        raise InputError(f"cannot read the folder '{path}': {exc.strerror or exc}") from None


def split_config_name(name: str) -> tuple[str | None, str | None, str | None]:
    parts = name.split("__")
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    return None, None, None


def name_from_folder(model_dir: Path) -> str:
    """A readable name: the dataset folder for `Trainer__Plans__2d`, the parent for a generic 'model'."""
    folder = model_dir.resolve()
    while folder.parent != folder and (
        split_config_name(folder.name)[2] is not None or folder.name.lower() in {"model", "models"}
    ):
        folder = folder.parent
    return folder.name or "model"


def _read_json(path: Path, model: str) -> dict:
    if not path.is_file():
        raise InputError(
            f"{path.name} is missing in '{path.parent}' (model '{model}'); the model is incomplete — copy or download it again"
        )
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror or exc}); check the file") from None
    if size > MAX_JSON_BYTES:
        raise InputError(
            f"{path.name} of model '{model}' is {size / 1e6:.0f} MB; an nnU-Net {path.name} is a few kB — not a model file"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path.name} of model '{model}' is not valid JSON (line {exc.lineno}: {exc.msg}); the file is damaged"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path} ({exc}); check the file") from None
    if not isinstance(data, dict):
        raise InputError(f"{path.name} of model '{model}' does not hold a JSON object; it is not an nnU-Net file")
    return data


def _normalise_label_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _check_labels(dataset: dict, model: str, warnings: list[str]) -> dict[str, int]:
    labels = dataset.get("labels")
    expected = "background 0, SAT 1, SM 2, IAT 3, Bone 4"
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"dataset.json of model '{model}' has no labels; LegSegNet needs {expected}")
    values: dict[str, int] = {}
    for label_name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(
                f"dataset.json of model '{model}' uses region-based or non-integer labels ({label_name}: {value}); "
                f"LegSegNet needs plain labels {expected}"
            )
        values[str(label_name)] = value
    ignore = [n for n in values if _normalise_label_name(n) == "ignore"]
    if ignore and values[ignore[0]] != max(values.values()):
        raise InputError(f"dataset.json of model '{model}': the 'ignore' label must have the highest value")
    tissues = {n: v for n, v in values.items() if n not in ignore}
    if 0 not in tissues.values():
        raise InputError(f"dataset.json of model '{model}' has no background label 0; LegSegNet needs {expected}")
    classes = sorted(v for v in tissues.values() if v != 0)
    if classes != [1, 2, 3, 4]:
        shown = ", ".join(f"{n} {v}" for n, v in sorted(tissues.items(), key=lambda kv: kv[1]))
        raise InputError(
            f"dataset.json of model '{model}' labels {shown}; LegSegNet needs exactly {expected} — "
            "this model was trained for another task"
        )
    unknown = []
    for label_name, value in tissues.items():
        meant = _LABEL_ALIASES.get(_normalise_label_name(label_name))
        if meant is None:
            unknown.append(label_name)
        elif meant != value:
            meant_name = "background" if meant == 0 else TISSUE_BY_VALUE[meant].key
            raise InputError(
                f"dataset.json of model '{model}' gives '{label_name}' the value {value}, but LegSegNet's "
                f"{meant_name} is {meant}; LegSegNet needs {expected} (retrain or relabel the model)"
            )
    if unknown:
        warnings.append(f"label names {', '.join(unknown)} not recognised; values taken as LegSegNet's ({expected})")
    return dict(values)


def _check_plans(plans: dict, model: str) -> dict:
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or not configurations:
        raise InputError(f"plans.json of model '{model}' has no configurations; it is not an nnU-Net v2 plans file")
    if CONFIGURATION not in configurations:
        raise InputError(
            f"plans.json of model '{model}' has no '2d' configuration (it has {', '.join(configurations)}); "
            "LegSegNet runs the 2D nnU-Net"
        )
    config = _resolve_configuration(configurations, CONFIGURATION, model)
    if "patch_size" not in config:
        raise InputError(
            f"the 2d configuration in plans.json of model '{model}' has no patch_size; the file is incomplete"
        )
    return config


def _resolve_configuration(configurations: dict, name: str, model: str, seen: tuple[str, ...] = ()) -> dict:
    config = configurations.get(name)
    if not isinstance(config, dict):
        raise InputError(f"plans.json of model '{model}': configuration '{name}' is missing or not an object")
    parent = config.get("inherits_from")
    if parent is None:
        return dict(config)
    if parent in seen or len(seen) > 10:
        raise InputError(f"plans.json of model '{model}': configuration '{name}' inherits from itself")
    merged = _resolve_configuration(configurations, parent, model, (*seen, name))
    merged.update(config)
    return merged


def _input_format(file_ending: str, plans: dict, channels: dict) -> str:
    if file_ending.lower() in _NATURAL_IMAGE_ENDINGS or plans.get("image_reader_writer") == "NaturalImage2DIO":
        return INPUT_PNG
    if any(_normalise_label_name(str(c)) in _NATURAL_IMAGE_CHANNEL_HINTS for c in channels.values()):
        return INPUT_PNG
    return INPUT_HU


def scan_folds(model_dir: Path) -> dict[int | str, tuple[str, ...]]:
    found: list[tuple[int | str, tuple[str, ...]]] = []
    for child in sorted_dirs(model_dir):
        match = FOLD_RE.match(child.name)
        if not match:
            continue
        fold: int | str = match.group(1) if match.group(1) == "all" else int(match.group(1))
        names = tuple(sorted(f.name for f in child.iterdir() if f.is_file() and CHECKPOINT_RE.match(f.name)))
        found.append((fold, names))
    found.sort(key=lambda item: (isinstance(item[0], str), item[0] if isinstance(item[0], int) else 0))
    return dict(found)


def read_metadata(folder: Path) -> dict | None:
    """The store's record of an installed model (METADATA_FILE), None for a plain folder or a damaged record."""
    try:
        data = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def guess_input_format(folder: Path) -> str:
    """INPUT_PNG or INPUT_HU from a folder's files without validating them ('unknown' if unreadable)."""
    try:
        dataset = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
        return _input_format(str(dataset.get("file_ending", "")), plans, dataset.get("channel_names") or {})
    except (OSError, ValueError, AttributeError):
        return "unknown"
