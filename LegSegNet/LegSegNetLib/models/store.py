"""nnU-Net model folders and the per-user model store (install, verify, list, remove).

Two things live here:

- `inspect_model_folder` understands an nnU-Net v2 model folder — the published LegSegNet layout
  (`plans.json`, `dataset.json`, `fold_N/checkpoint_best.pth`) or a standard nnU-Net results folder
  (`Trainer__Plans__2d/fold_N/...`, or the dataset folder above several `Trainer__Plans__config`
  folders, where the `2d` one is chosen) — validates it against the four LegSegNet tissues and says
  whether its input is the published natural-image PNG format or HU. It never writes to the folder;
  `load_plans` returns the plans with the published file's `null` spacings replaced in memory.
- `ModelStore` is the folder shared by the CLI and Slicer (env `LEGSEGNET_MODELS_DIR`, else a
  per-user data folder). `install` accepts a model folder, a `.zip`, an `https://` URL of a zip, or
  `hf:OWNER/REPO[@REVISION]` (the published weights: `hf:GogoChen/LegSegNet`).

Everything that arrives from outside is untrusted: archive members may not escape the target folder
(absolute paths, `..`, drive letters, symlinks, device files are refused), only the files a model is
made of are extracted and their total expanded size is bounded (declared sizes before anything is
written, actual bytes while writing), `--sha256` is verified before anything is extracted, every name
in plans.json that nnU-Net would import must be one nnU-Net ships (`load_plans`, at install and at every
load), the model folder is validated and every
checkpoint is checked to load with `torch.load(weights_only=True)` (tensors, numbers, strings and
numeric numpy scalars only — never arbitrary pickled objects) before it is registered, and the install
is atomic: files are staged in a hidden folder inside the store and renamed into place at the end, so
on any failure the store is unchanged. Plain `http://` is accepted only to this computer (loopback),
for local mirrors; everything else must be `https://`, and a redirect may not downgrade it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import http.client
import ipaddress
import json
import math
import os
import re
import shutil
import socket
import ssl
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

from .. import __version__
from ..core.errors import InputError, LegSegNetError
from ..core.progress import Progress
from .plans_names import check_plans_names

MODELS_DIR_ENV = "LEGSEGNET_MODELS_DIR"
HF_ENDPOINT_ENV = "HF_ENDPOINT"  # the variable huggingface_hub itself honours (mirrors, tests)
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
PUBLISHED_REPO = "GogoChen/LegSegNet"
PUBLISHED_SOURCE = f"hf:{PUBLISHED_REPO}"
PUBLISHED_LICENCE = "CC BY-NC 4.0"
LICENCE_URLS = {"CC BY-NC 4.0": "https://creativecommons.org/licenses/by-nc/4.0/"}
# Hub licence ids (model card `license:`) to their usual names.
_HF_LICENCE_NAMES = {
    "cc-by-nc-4.0": "CC BY-NC 4.0",
    "cc-by-4.0": "CC BY 4.0",
    "cc-by-sa-4.0": "CC BY-SA 4.0",
    "cc-by-nc-sa-4.0": "CC BY-NC-SA 4.0",
    "cc-by-nc-nd-4.0": "CC BY-NC-ND 4.0",
    "apache-2.0": "Apache-2.0",
    "mit": "MIT",
}

METADATA_FILE = "legsegnet-model.json"
METADATA_VERSION = 1
DEFAULT_MARKER = ".default"  # holds the name of the model marked default
STAGING_PREFIX = ".install-"
TRASH_PREFIX = ".remove-"
STALE_STAGING_S = 24 * 3600  # leftovers of a crashed install older than this are removed

CONFIGURATION = "2d"  # LegSegNet is a 2D nnU-Net
INPUT_PNG = "png"  # trained on 8-bit natural images (the published weights)
INPUT_HU = "hu"  # trained on HU slices (NIfTI datasets, e.g. our own retrained models)
CHECKPOINT_ALIASES = {"best": "checkpoint_best.pth", "final": "checkpoint_final.pth"}

MAX_DOWNLOAD_BYTES = 8 * 1024**3
MAX_UNCOMPRESSED_BYTES = 8 * 1024**3
MAX_ARCHIVE_MEMBERS = 10_000
MAX_JSON_BYTES = 64 * 1024**2  # plans.json, dataset.json: a few kB in practice
DEFAULT_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_MIB = 1 << 20

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_FOLD_RE = re.compile(r"^fold_(\d+|all)$")
_CHECKPOINT_RE = re.compile(r"^checkpoint_[A-Za-z0-9_.-]+\.pth$")
_HF_SOURCE_RE = re.compile(r"^hf:([A-Za-z0-9][A-Za-z0-9._-]*)/([A-Za-z0-9][A-Za-z0-9._-]*)(?:@([A-Za-z0-9._/-]+))?$")
_MODEL_TOP_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
_NATURAL_IMAGE_ENDINGS = {".png", ".bmp", ".jpg", ".jpeg"}
_NATURAL_IMAGE_CHANNEL_HINTS = {"png", "naturalimage", "grayscale", "gray", "grey", "uint8", "8bit"}

# dataset.json label names (lower case, letters and digits only) -> LegSegNet label value.
_LABEL_ALIASES: dict[str, int] = {
    "background": 0, "bg": 0,
    "sat": 1, "scat": 1, "subcutaneous": 1, "subcutaneousfat": 1, "subcutaneousadiposetissue": 1,
    "sm": 2, "muscle": 2, "muscles": 2, "skeletalmuscle": 2,
    "iat": 3, "imat": 3, "intermuscularfat": 3, "intramuscularfat": 3, "intermuscularadiposetissue": 3,
    "intramuscularadiposetissue": 3, "interintramuscularadiposetissue": 3,
    "bone": 4, "bones": 4,
}
_TISSUE_NAMES = {1: "SAT", 2: "SM", 3: "IAT", 4: "Bone"}


# ====================================================================== model folders
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
        return [(fold, self.path / _fold_dir(fold) / file_name) for fold in chosen]

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


def _fold_dir(fold: int | str) -> str:
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
        raise InputError(f"model folder '{given}' does not exist; give a folder holding plans.json, or an installed model name")
    if given.is_file():
        if given.suffix.lower() == ".zip":
            raise InputError(f"'{given}' is an archive; install it first: legsegnet models install {given}")
        raise InputError(f"'{given}' is a file; --model wants an nnU-Net model folder (holding plans.json) or an installed model name")
    model_dir, trainer, plans_id, config_from_name = _locate_model_dir(given)
    metadata = _read_metadata(model_dir) or {}
    display = name or metadata.get("name") or _name_from_folder(model_dir)
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
        raise InputError(f"dataset.json of model '{display}' has no channel_names; it is not an nnU-Net v2 dataset.json")
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
    fold_map = _scan_folds(model_dir)
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


def _locate_model_dir(path: Path, depth: int = 0) -> tuple[Path, str | None, str | None, str | None]:
    """(model folder, trainer, plans identifier, configuration) for a path given by the user."""
    if (path / "plans.json").is_file():
        return (path, *_split_config_name(path.name))
    if _FOLD_RE.match(path.name) and (path.parent / "plans.json").is_file():
        raise InputError(
            f"'{path}' is one fold of a model; give the model folder '{path.parent}' and choose folds with --folds"
        )
    children = [c for c in _sorted_dirs(path) if not c.name.startswith(".") and c.name != "__MACOSX"]
    configs = [c for c in children if _split_config_name(c.name)[2] is not None and (c / "plans.json").is_file()]
    if configs:
        two_d = [c for c in configs if _split_config_name(c.name)[2] == CONFIGURATION]
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
        return (two_d[0], *_split_config_name(two_d[0].name))
    if len(children) == 1 and depth < 3:  # an archive's or download's wrapping folder
        return _locate_model_dir(children[0], depth + 1)
    raise InputError(
        f"'{path}' is not an nnU-Net model folder: no plans.json in it; give the folder that holds plans.json, "
        "dataset.json and fold_N/ (the published 'model' folder, or nnUNetTrainer__nnUNetPlans__2d)"
    )


def _sorted_dirs(path: Path) -> list[Path]:
    try:
        return sorted(c for c in path.iterdir() if c.is_dir())
    except OSError as exc:
        raise InputError(f"cannot read the folder '{path}': {exc.strerror or exc}") from None


def _split_config_name(name: str) -> tuple[str | None, str | None, str | None]:
    parts = name.split("__")
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    return None, None, None


def _name_from_folder(model_dir: Path) -> str:
    """A readable name: the dataset folder for `Trainer__Plans__2d`, the parent for a generic 'model'."""
    folder = model_dir.resolve()
    while folder.parent != folder and (
        _split_config_name(folder.name)[2] is not None or folder.name.lower() in {"model", "models"}
    ):
        folder = folder.parent
    return folder.name or "model"


def _read_json(path: Path, model: str) -> dict:
    if not path.is_file():
        raise InputError(f"{path.name} is missing in '{path.parent}' (model '{model}'); the model is incomplete — copy or download it again")
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
        raise InputError(f"{path.name} of model '{model}' is not valid JSON (line {exc.lineno}: {exc.msg}); the file is damaged") from None
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
            meant_name = "background" if meant == 0 else _TISSUE_NAMES[meant]
            raise InputError(
                f"dataset.json of model '{model}' gives '{label_name}' the value {value}, but LegSegNet's "
                f"{meant_name} is {meant}; LegSegNet needs {expected} (retrain or relabel the model)"
            )
    if unknown:
        warnings.append(
            f"label names {', '.join(unknown)} not recognised; values taken as LegSegNet's ({expected})"
        )
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
        raise InputError(f"the 2d configuration in plans.json of model '{model}' has no patch_size; the file is incomplete")
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


def _scan_folds(model_dir: Path) -> dict[int | str, tuple[str, ...]]:
    found: list[tuple[int | str, tuple[str, ...]]] = []
    for child in _sorted_dirs(model_dir):
        match = _FOLD_RE.match(child.name)
        if not match:
            continue
        fold: int | str = match.group(1) if match.group(1) == "all" else int(match.group(1))
        names = tuple(sorted(f.name for f in child.iterdir() if f.is_file() and _CHECKPOINT_RE.match(f.name)))
        found.append((fold, names))
    found.sort(key=lambda item: (isinstance(item[0], str), item[0] if isinstance(item[0], int) else 0))
    return dict(found)


# ====================================================================== checkpoints
def _safe_globals() -> list:
    """numpy scalars/arrays of numeric dtypes and their dtypes: what nnU-Net's checkpoints hold besides
    tensors and plain Python values (its logger stores numpy floats). Rebuilding them runs no code;
    object arrays stay refused. Names from numpy 1 pickles (`numpy.core.*`) are mapped too."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    numeric = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
               np.float16, np.float32, np.float64, np.complex64, np.complex128)
    allowed: list = [np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct]
    allowed += [(multiarray.scalar, "numpy.core.multiarray.scalar"),
                (multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    allowed += sorted({type(np.dtype(t)) for t in numeric} - {np.dtype}, key=lambda c: c.__name__)
    return allowed


def _safe_global_names(allowed: list) -> set[str]:
    names = set()
    for entry in allowed:
        if isinstance(entry, tuple):
            names.add(entry[1])
        else:
            names.add(f"{entry.__module__}.{entry.__qualname__}")
    return names


def _import_torch():
    try:
        import torch
    except ImportError:
        raise LegSegNetError(
            "PyTorch is not installed, so checkpoints cannot be read; install the nnU-Net extra: "
            "pip install 'legsegnet[nnunet]'"
        ) from None
    return torch


def _check_checkpoint_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"checkpoint '{path}' is missing; the model is incomplete — install it again")
    try:
        with zipfile.ZipFile(path) as archive:  # torch.save's format since PyTorch 1.6
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error):
        raise InputError(
            f"checkpoint '{path}' is damaged or not a PyTorch checkpoint (torch.save zip format); "
            "download or copy the model again"
        ) from None
    if bad is not None:
        raise InputError(f"checkpoint '{path}' is damaged (entry {bad} fails its checksum); download or copy the model again")


def unsafe_checkpoint_globals(path: str | Path) -> list[str]:
    """The Python globals that loading `path` would need beyond tensors, plain values and numeric numpy.
    Reads the pickle without running it. Empty for a normal nnU-Net checkpoint."""
    torch = _import_torch()
    path = Path(path)
    _check_checkpoint_file(path)
    allowed = _safe_global_names(_safe_globals())
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure to parse means a damaged file
        raise InputError(f"checkpoint '{path}' cannot be read ({_first_line(exc)}); download or copy the model again") from None
    return sorted(set(found) - allowed)


def checkpoint_is_safe(path: str | Path) -> bool:
    """True when `path` loads with torch.load(weights_only=True, map_location="cpu") (numeric numpy
    scalars allowed); False when it would need unsafe unpickling (arbitrary Python objects, which can
    run code). InputError when it is damaged or not a checkpoint."""
    if unsafe_checkpoint_globals(path):
        return False
    _load_weights_only(Path(path), "cpu", mmap=True)
    return True


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load an nnU-Net checkpoint without unsafe unpickling (weights_only=True plus numeric numpy).
    InputError if it is damaged, not a checkpoint, or holds objects that need unsafe unpickling."""
    path = Path(path)
    unsafe = unsafe_checkpoint_globals(path)
    if unsafe:
        raise InputError(
            f"checkpoint '{path}' holds Python objects that could run code when loaded ({', '.join(unsafe[:5])}); "
            "LegSegNet loads only tensors, numbers and strings (torch.load weights_only=True) and refuses it — "
            "use a checkpoint saved by nnU-Net's trainer"
        )
    return _load_weights_only(path, map_location)


def _load_weights_only(path: Path, map_location: Any, mmap: bool = False, label: str | None = None) -> dict:
    torch = _import_torch()
    label = label or str(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            checkpoint = torch.load(str(path), map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise InputError(f"checkpoint '{label}' cannot be loaded ({_first_line(exc)}); download or copy the model again") from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise InputError(f"'{label}' is a PyTorch file but not an nnU-Net checkpoint (no network_weights)")
    return checkpoint


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


# ====================================================================== the store
@dataclass(frozen=True)
class ModelInfo:
    """One installed model, as recorded in its metadata file."""

    name: str
    path: Path  # the model folder inside the store (plans.json, dataset.json, fold_N/, metadata)
    source: str
    sha256: str | None  # of the archive for a zip/URL; of the model's files for a folder or hf: source
    sha256_of: str  # "archive" or "files"
    installed_at: str  # ISO 8601, UTC
    licence: str | None
    round: int | None  # model-in-the-loop training round, None for other models
    input_format: str
    folds: tuple[int | str, ...]
    is_default: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def folder(self) -> ModelFolder:
        return inspect_model_folder(self.path, name=self.name)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "path": str(self.path), "source": self.source, "sha256": self.sha256,
            "sha256_of": self.sha256_of, "installed_at": self.installed_at, "licence": self.licence,
            "round": self.round, "input_format": self.input_format, "folds": [str(f) for f in self.folds],
            "default": self.is_default,
        }


def default_store_root() -> Path:
    """LEGSEGNET_MODELS_DIR, else the per-user data folder of this platform."""
    override = os.environ.get(MODELS_DIR_ENV)
    if override:
        return Path(override).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / "legsegnet" / "models"


class ModelStore:
    """The installed models: one folder each under `root`, with a metadata file. Shared by CLI and Slicer."""

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        max_download_bytes: int = MAX_DOWNLOAD_BYTES,
        max_uncompressed_bytes: int = MAX_UNCOMPRESSED_BYTES,
        max_archive_members: int = MAX_ARCHIVE_MEMBERS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        hf_endpoint: str | None = None,
    ) -> None:
        self.root = Path(root).expanduser() if root is not None else default_store_root()
        self.max_download_bytes = max_download_bytes
        self.max_uncompressed_bytes = max_uncompressed_bytes
        self.max_archive_members = max_archive_members
        self.timeout_s = timeout_s
        self.hf_endpoint = (hf_endpoint or os.environ.get(HF_ENDPOINT_ENV) or DEFAULT_HF_ENDPOINT).rstrip("/")

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    # ---------------------------------------------------------------- reading
    def list(self) -> list[ModelInfo]:
        """Installed models, oldest first."""
        if not self.root.is_dir():
            return []
        default_name = self._marked_default()
        infos = []
        for child in _sorted_dirs(self.root):
            if child.name.startswith(".") or not _NAME_RE.match(child.name):
                continue
            info = self._read_info(child, default_name)
            if info is not None:
                infos.append(info)
        infos.sort(key=lambda i: (i.installed_at, i.name))
        if default_name is None or not any(i.is_default for i in infos):
            if infos:  # the newest is the default when none is marked
                newest = infos[-1]
                infos[-1] = dataclasses.replace(newest, is_default=True)
        return infos

    def get(self, name: str) -> ModelInfo:
        for info in self.list():
            if info.name == name:
                return info
        installed = [i.name for i in self.list()]
        if installed:
            raise InputError(
                f"no installed model named '{name}'; installed: {', '.join(installed)} (see 'legsegnet models list')"
            )
        raise InputError(
            f"no installed model named '{name}' (no models are installed in {self.root}); install one with "
            f"'legsegnet models install {PUBLISHED_SOURCE}' or give a model folder"
        )

    def default(self) -> ModelInfo | None:
        """The model `--engine auto` uses: the one marked default, else the most recently installed."""
        for info in self.list():
            if info.is_default:
                return info
        return None

    def set_default(self, name: str) -> ModelInfo:
        self.get(name)
        _atomic_write_text(self.root / DEFAULT_MARKER, name + "\n")
        return self.get(name)

    def _marked_default(self) -> str | None:
        try:
            text = (self.root / DEFAULT_MARKER).read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return text or None

    def _read_info(self, folder: Path, default_name: str | None) -> ModelInfo | None:
        metadata = _read_metadata(folder)
        if metadata is None:
            if not (folder / "plans.json").is_file():
                return None
            # Copied into the store by hand: list it with what can be seen.
            metadata = {
                "source": "(copied into the store)",
                "installed_at": _dt.datetime.fromtimestamp(folder.stat().st_mtime, _dt.timezone.utc).isoformat(),
            }
        folds = tuple(f for f, c in _scan_folds(folder).items() if c)
        return ModelInfo(
            name=folder.name,
            path=folder,
            source=str(metadata.get("source", "")),
            sha256=metadata.get("sha256"),
            sha256_of=str(metadata.get("sha256_of", "files")),
            installed_at=str(metadata.get("installed_at", "")),
            licence=metadata.get("licence"),
            round=metadata.get("round"),
            input_format=str(metadata.get("input_format") or _guess_input_format(folder)),
            folds=folds,
            is_default=folder.name == default_name,
            metadata={**metadata, "name": folder.name},
        )

    # ---------------------------------------------------------------- removing
    def remove(self, name: str) -> None:
        info = self.get(name)
        trash = self.root / f"{TRASH_PREFIX}{name}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(info.path, trash)  # atomic: the model disappears from the listing at once
        except OSError as exc:
            raise LegSegNetError(f"cannot remove model '{name}' ({exc.strerror or exc}); is it in use? close Slicer/other runs and retry") from None
        shutil.rmtree(trash, ignore_errors=True)
        if self._marked_default() == name:
            try:
                (self.root / DEFAULT_MARKER).unlink()
            except OSError:
                pass

    # ---------------------------------------------------------------- installing
    def install(
        self,
        source: str | Path,
        name: str | None = None,
        sha256: str | None = None,
        progress: Progress | None = None,
        *,
        training_round: int | None = None,
        licence: str | None = None,
        make_default: bool = False,
    ) -> ModelInfo:
        """Install a model from a folder, a .zip, an https:// URL of a zip, or hf:OWNER/REPO[@REVISION].

        `sha256`: the expected SHA-256 of the archive (zip file or URL, as sha256sum prints it), or for a
        folder or hf: source of the model's files (the `sha256` that `models list --json` shows).
        Any failure (checksum, unsafe archive, invalid model, network) leaves the store unchanged.
        """
        progress = progress or Progress()
        text = str(source).strip()
        expected = _normalise_sha256(sha256)
        kind = _source_kind(text)
        if kind == "folder":
            folder_source = Path(text).expanduser()
            if not folder_source.exists():
                raise InputError(
                    f"'{text}' is neither an existing folder or .zip file nor a URL; give a model folder, "
                    f"a .zip, an https:// URL of a zip, or hf:OWNER/REPO (e.g. {PUBLISHED_SOURCE})"
                )
            name = _check_name(name) if name else _default_name(kind, text, _locate_model_dir(folder_source)[0])
        else:
            name = _check_name(name) if name else _default_name(kind, text, None)
        self._refuse_existing(name)  # before any download
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_staging()
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
        try:
            extra: dict[str, Any] = {}
            archive_sha: str | None = None
            if kind == "hf":
                located_from, archive_sha, extra = self._stage_hf(text, expected, staging, progress)
            elif kind == "url":
                archive = staging / "download.zip"
                archive_sha = self._download(text, archive, progress, what="the model archive")
                located_from = self._unpack(archive, archive_sha, expected, staging, progress, label=text)
            elif kind == "zip":
                archive = Path(text).expanduser()
                if not archive.is_file():
                    raise InputError(f"'{archive}' does not exist; give a model folder, a .zip, an https:// URL or hf:OWNER/REPO")
                archive_sha = _sha256_file(archive)
                located_from = self._unpack(archive, archive_sha, expected, staging, progress, label=str(archive))
            else:
                located_from = Path(text).expanduser()
            staged = staging / "model"
            # Messages about an archive's or a download's files name the source, not the staging folder.
            with _naming_source(text, staged, located_from, enabled=kind != "folder"):
                model_dir, trainer, plans_id, _config = _locate_model_dir(located_from)
                progress.stage("copying")
                self._check_free_space(_tree_size(model_dir))
                files_sha = _collect_model_files(model_dir, staged, move=kind != "folder")
                if archive_sha is not None:
                    digest, digest_of = archive_sha, "archive"
                else:
                    digest, digest_of = files_sha, "files"
                    if expected is not None and expected != files_sha:
                        raise InputError(_checksum_message(text, files_sha, expected, "model files'"))
                progress.stage("checking")
                folder = inspect_model_folder(staged, name=name)
                self._check_checkpoints(folder, progress)
            licence = licence or extra.pop("licence", None)
            metadata = {
                "format_version": METADATA_VERSION,
                "name": name,
                "source": text,
                "sha256": digest,
                "sha256_of": digest_of,
                "files_sha256": files_sha,
                "installed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds"),
                "licence": licence,
                "licence_url": LICENCE_URLS.get(licence) if licence else None,
                "round": training_round,
                "input_format": folder.input_format,
                "configuration": CONFIGURATION,
                "trainer": trainer,
                "plans_identifier": plans_id,
                "folds": [str(f) for f in folder.folds],
                "checkpoint_loading": "torch.load(weights_only=True), numeric numpy scalars allowed",
                "installed_by": f"legsegnet {__version__}",
                **extra,
            }
            (staged / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
            target = self.root / name
            self._refuse_existing(name)
            try:
                os.rename(staged, target)  # atomic; fails if another install took the name meanwhile
            except OSError as exc:
                if target.exists():
                    raise InputError(f"a model named '{name}' is already installed; remove it first or choose --name") from None
                raise LegSegNetError(f"cannot move the model into the store {self.root} ({exc.strerror or exc})") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if licence and kind != "hf":  # a hub model's licence was shown before its download
            progress.note(_licence_notice(name, licence))
        if make_default:
            self.set_default(name)
        return self.get(name)

    # ---------------------------------------------------------------- install helpers
    def _refuse_existing(self, name: str) -> None:
        if not self.root.is_dir():
            return
        for child in self.root.iterdir():
            if child.name.lower() == name.lower():  # case-insensitive file systems (macOS, Windows)
                raise InputError(
                    f"a model named '{child.name}' is already installed; remove it first "
                    f"(legsegnet models remove {child.name}) or choose another --name"
                )

    def _remove_stale_staging(self) -> None:
        now = time.time()
        for child in self.root.iterdir():
            if child.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
                try:
                    if now - child.stat().st_mtime > STALE_STAGING_S:
                        shutil.rmtree(child, ignore_errors=True)
                except OSError:
                    pass

    def _check_free_space(self, needed: int) -> None:
        free = shutil.disk_usage(self.root).free
        if needed + 64 * _MIB > free:
            raise LegSegNetError(
                f"not enough disk space in {self.root}: the model needs {needed / 1e9:.2f} GB, "
                f"{free / 1e9:.2f} GB free; free some space or set {MODELS_DIR_ENV} to another folder"
            )

    def _unpack(
        self, archive: Path, archive_sha: str, expected: str | None, staging: Path, progress: Progress, label: str
    ) -> Path:
        if expected is not None and archive_sha != expected:
            raise InputError(_checksum_message(label, archive_sha, expected, "archive"))
        dest = staging / "extract"
        dest.mkdir()
        self._extract_zip(archive, dest, progress, label)
        return dest

    def _extract_zip(self, archive: Path, dest: Path, progress: Progress, label: str) -> None:
        """Extract from an untrusted zip only the files a model is made of (`_model_members`).

        Every member's name and type is checked first; then the declared size of the chosen members is
        bounded before anything is written, and their actual bytes are counted while they are written
        (a header may lie). Other members are never decompressed."""
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError):
            raise InputError(f"'{label}' is not a valid .zip archive (or the download is damaged); check the file or URL") from None
        with zf:
            infos = zf.infolist()
            if len(infos) > self.max_archive_members:
                raise InputError(f"'{label}' holds {len(infos)} entries, more than {self.max_archive_members}; not a model archive")
            seen: set[str] = set()
            files: dict[PurePosixPath, zipfile.ZipInfo] = {}
            for info in infos:
                rel = _safe_member_path(info.filename, label)
                kind = stat.S_IFMT(info.external_attr >> 16)
                if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise InputError(
                        f"'{label}' holds '{info.filename}', which is a {_file_kind(kind)}, not a file; "
                        "archives may hold only files and folders — refused"
                    )
                if info.flag_bits & 0x1:
                    raise InputError(f"'{label}' holds an encrypted entry '{info.filename}'; give an unencrypted archive")
                if rel is None:
                    continue
                key = str(rel).lower()
                if key in seen:
                    raise InputError(f"'{label}' holds '{info.filename}' twice (names differ only in case?); refused")
                seen.add(key)
                if not info.is_dir():
                    files[rel] = info
            plan = [(files[rel], rel) for rel in sorted(_model_members(files))]
            if not any(rel.name == "plans.json" for _, rel in plan):
                what = "it is empty" if not files else "no plans.json in it"
                raise InputError(
                    f"'{label}' holds no nnU-Net model ({what}); a model archive holds plans.json, dataset.json "
                    "and fold_N/checkpoint_*.pth"
                )
            declared = 0
            for info, rel in plan:
                if rel.suffix == ".json" and info.file_size > MAX_JSON_BYTES:
                    raise InputError(
                        f"'{label}' holds a {info.file_size / 1e6:.0f} MB '{info.filename}'; an nnU-Net {rel.name} "
                        "is a few kB — refused (not a model archive)"
                    )
                declared += info.file_size
            if declared > self.max_uncompressed_bytes:
                raise InputError(
                    f"'{label}' would expand to more than {self.max_uncompressed_bytes / 1e9:.1f} GB; "
                    "refused (not a model archive, or a zip bomb)"
                )
            skipped = len(files) - len(plan)
            if skipped:
                progress.note(f"{skipped} file(s) in {Path(label).name or label} are not part of the model and were not extracted")
            self._check_free_space(declared)
            progress.stage("extracting", total=len(plan))
            dest_real = os.path.realpath(dest)
            written_total = 0
            for info, rel in plan:
                target = dest.joinpath(*rel.parts)
                # The name checks above already make escape impossible; this is the second lock.
                if not os.path.realpath(target).startswith(dest_real + os.sep):
                    raise InputError(f"'{label}' entry '{info.filename}' points outside the target folder; refused")
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    written = 0
                    with zf.open(info) as src, open(target, "xb") as out:
                        while chunk := src.read(_CHUNK):
                            written += len(chunk)
                            written_total += len(chunk)
                            if written > info.file_size or written_total > self.max_uncompressed_bytes:
                                raise InputError(f"'{label}' entry '{info.filename}' expands beyond its declared size; refused")
                            out.write(chunk)
                except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                    raise InputError(f"'{label}' is damaged ({_first_line(exc)} in '{info.filename}'); download it again") from None
                except NotImplementedError as exc:
                    raise InputError(f"'{label}': {exc}; re-create the archive with standard (deflate) compression") from None
                except (FileExistsError, NotADirectoryError, IsADirectoryError):
                    raise InputError(f"'{label}' entry '{info.filename}' collides with another entry; refused") from None
                progress.advance()

    def _check_checkpoints(self, folder: ModelFolder, progress: Progress) -> None:
        try:
            _import_torch()
        except LegSegNetError:
            progress.note("PyTorch is not installed: the checkpoints' contents were not checked")
            return
        for fold, names in folder.folds.items():
            for file_name in names:
                path = folder.path / _fold_dir(fold) / file_name
                try:
                    unsafe = unsafe_checkpoint_globals(path)
                except InputError:
                    raise InputError(
                        f"checkpoint fold_{fold}/{file_name} is damaged or not a PyTorch checkpoint; download or copy the model again"
                    ) from None
                if unsafe:
                    raise InputError(
                        f"checkpoint fold_{fold}/{file_name} holds Python objects that could run code when loaded "
                        f"({', '.join(unsafe[:5])}); LegSegNet loads checkpoints only with torch.load(weights_only=True) "
                        "and refuses this model"
                    )
                _load_weights_only(path, "cpu", mmap=True, label=f"fold_{fold}/{file_name}")

    # ---------------------------------------------------------------- downloads
    def _download(
        self, url: str, dest: Path, progress: Progress, what: str, expected_size: int | None = None
    ) -> str:
        """Stream `url` into `dest`; returns its SHA-256. Refuses short downloads and oversize files."""
        _check_url(url)
        progress.note(f"downloading {what} from {url}")
        response = self._open(url)
        with response:
            length_text = response.headers.get("Content-Length")
            length = int(length_text) if length_text and length_text.isdigit() else None
            size = expected_size if expected_size is not None else length
            if size is not None and size > self.max_download_bytes:
                raise InputError(f"{url} is {size / 1e9:.1f} GB, more than the {self.max_download_bytes / 1e9:.1f} GB limit; not a model")
            if size is not None:
                self._check_free_space(size)
            total_mib = math.ceil(size / _MIB) if size else None
            progress.stage("download MiB", total=total_mib)
            digest = hashlib.sha256()
            received = 0
            shown = 0
            with open(dest, "wb") as out:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (http.client.HTTPException, OSError) as exc:
                        raise LegSegNetError(
                            f"the download of {url} was interrupted after {received} bytes ({_first_line(exc) or 'connection lost'}); "
                            "nothing was installed — check the connection and try again"
                        ) from None
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > self.max_download_bytes:
                        raise InputError(f"{url} is larger than the {self.max_download_bytes / 1e9:.1f} GB limit; not a model")
                    digest.update(chunk)
                    out.write(chunk)
                    if total_mib:
                        now = min(received // _MIB, total_mib)
                        if now > shown:
                            progress.advance(now - shown)
                            shown = now
            for promised in (length, expected_size):
                if promised is not None and received != promised:
                    raise LegSegNetError(
                        f"the download of {url} is incomplete: received {received} of {promised} bytes; "
                        "nothing was installed — check the connection and try again"
                    )
            if total_mib and shown < total_mib:
                progress.advance(total_mib - shown)
        return digest.hexdigest()

    def _open(self, url: str):
        opener = _opener_for(url)
        request = urllib.request.Request(url, headers={"User-Agent": f"legsegnet/{__version__}", "Accept-Encoding": "identity"})
        try:
            return opener.open(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 404:
                raise InputError(f"{url} was not found (HTTP 404); check the address or repository name") from None
            if exc.code in (401, 403):
                raise InputError(f"access to {url} was refused (HTTP {exc.code}); the file is private or gated") from None
            raise LegSegNetError(f"the server answered HTTP {exc.code} {exc.reason} for {url}; try again later") from None
        except urllib.error.URLError as exc:
            raise LegSegNetError(_network_message(url, exc.reason)) from None
        except (http.client.HTTPException, OSError) as exc:
            raise LegSegNetError(_network_message(url, exc)) from None

    def _fetch_json(self, url: str) -> Any:
        _check_url(url)
        response = self._open(url)
        with response:
            try:
                body = response.read(16 * _MIB + 1)
            except (http.client.HTTPException, OSError) as exc:
                raise LegSegNetError(_network_message(url, exc)) from None
        if len(body) > 16 * _MIB:
            raise LegSegNetError(f"the answer from {url} is unexpectedly large; not a model repository listing")
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise LegSegNetError(f"the answer from {url} is not JSON; is {self.hf_endpoint} a Hugging Face hub?") from None

    def _stage_hf(
        self, source: str, expected: str | None, staging: Path, progress: Progress
    ) -> tuple[Path, str | None, dict]:
        """Download a model repository from the Hugging Face hub into `staging`: (folder to install
        from, the archive's SHA-256 when the repository holds a zip, metadata to record)."""
        repo, revision = parse_hf_source(source)
        info = self._fetch_json(hf_api_url(repo, revision, self.hf_endpoint))
        siblings = info.get("siblings") if isinstance(info, dict) else None
        if not isinstance(siblings, list):
            raise LegSegNetError(f"the hub's answer for {repo} lists no files; try again later")
        files = {e["rfilename"]: e for e in siblings if isinstance(e, dict) and isinstance(e.get("rfilename"), str)}
        commit = info.get("sha")
        pinned = commit if isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{40}", commit) else (revision or "main")
        licence = hf_licence(info, repo)
        if licence:  # shown before the (large) download starts
            progress.note(_licence_notice(repo, licence))
        extra: dict[str, Any] = {"hub_repo": repo, "hub_revision": pinned, "licence": licence}
        kind, paths = plan_hf_download(list(files), repo)
        download_root = staging / "hub"
        downloaded: dict[str, tuple[Path, str]] = {}
        for path in paths:
            rel = _safe_member_path(path, f"hf:{repo}")
            if rel is None:
                continue
            target = download_root.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            entry = files[path]
            lfs = entry.get("lfs") if isinstance(entry.get("lfs"), dict) else None
            # Without LFS details only small text files are plain git blobs whose size and blob id
            # describe the content; for a binary they might describe an LFS pointer, so skip them.
            plain_blob = lfs is None and path.endswith(".json")
            size = (lfs or entry).get("size") if (lfs or plain_blob) else None
            size = size if isinstance(size, int) and size >= 0 else None
            url = hf_file_url(repo, path, pinned, self.hf_endpoint)
            sha = self._download(url, target, progress, what=path, expected_size=size)
            _verify_hub_file(target, path, sha, entry if plain_blob else {}, lfs)
            downloaded[path] = (target, sha)
        if kind == "zip":
            archive, archive_sha = downloaded[paths[0]]
            located = self._unpack(archive, archive_sha, expected, staging, progress, label=f"hf:{repo}/{paths[0]}")
            return located, archive_sha, extra
        return download_root, None, extra


# ====================================================================== hub helpers (pure, tested)
def parse_hf_source(source: str) -> tuple[str, str | None]:
    """'hf:OWNER/REPO[@REVISION]' -> ('OWNER/REPO', REVISION or None)."""
    match = _HF_SOURCE_RE.match(source.strip())
    if not match or ".." in source:
        raise InputError(f"'{source}' is not a hub source; write hf:OWNER/REPO, e.g. {PUBLISHED_SOURCE}")
    return f"{match.group(1)}/{match.group(2)}", match.group(3)


def hf_api_url(repo: str, revision: str | None = None, endpoint: str = DEFAULT_HF_ENDPOINT) -> str:
    """The hub's model-info URL, listing every file with its size and LFS SHA-256 (`blobs=true`)."""
    base = f"{endpoint.rstrip('/')}/api/models/{_quote_repo(repo)}"
    if revision:
        base += f"/revision/{urllib.parse.quote(revision, safe='')}"
    return base + "?blobs=true"


def hf_file_url(repo: str, path: str, revision: str | None = None, endpoint: str = DEFAULT_HF_ENDPOINT) -> str:
    """The hub's download URL of one file: {endpoint}/{repo}/resolve/{revision}/{path}."""
    rev = urllib.parse.quote(revision or "main", safe="")
    return f"{endpoint.rstrip('/')}/{_quote_repo(repo)}/resolve/{rev}/{urllib.parse.quote(path, safe='/')}"


def _quote_repo(repo: str) -> str:
    owner, name = repo.split("/", 1)
    return f"{urllib.parse.quote(owner, safe='')}/{urllib.parse.quote(name, safe='')}"


def hf_licence(info: Any, repo: str) -> str | None:
    """The licence a hub repository declares (model card or tags); the published weights' if silent."""
    licence_id = None
    if isinstance(info, dict):
        card = info.get("cardData")
        if isinstance(card, dict) and isinstance(card.get("license"), str):
            licence_id = card["license"]
        for tag in info.get("tags") or []:
            if licence_id is None and isinstance(tag, str) and tag.startswith("license:"):
                licence_id = tag.split(":", 1)[1]
    if licence_id:
        return _HF_LICENCE_NAMES.get(licence_id.lower(), licence_id)
    if repo.lower() == PUBLISHED_REPO.lower():
        return PUBLISHED_LICENCE
    return None


def plan_hf_download(paths: Sequence[str], repo: str = "") -> tuple[str, list[str]]:
    """Which repository files make the model: ("files", [plans.json, dataset.json, fold_N/checkpoints, ...])
    for a repository holding a model folder (at its root or below; the 2d one of several), or
    ("zip", [archive]) for one holding a single zip of it."""
    path_set = set(paths)
    candidates = []
    for path in paths:
        parts = PurePosixPath(path)
        if parts.name != "plans.json":
            continue
        prefix = "" if str(parts.parent) == "." else f"{parts.parent}/"
        checkpoints = [
            p for p in paths
            if p.startswith(prefix) and len(PurePosixPath(p[len(prefix):]).parts) == 2
            and _FOLD_RE.match(PurePosixPath(p[len(prefix):]).parts[0])
            and _CHECKPOINT_RE.match(PurePosixPath(p).name) and PurePosixPath(p).name != "checkpoint_latest.pth"
        ]
        if f"{prefix}dataset.json" in path_set and checkpoints:
            config = _split_config_name(parts.parent.name)[2]
            candidates.append((config not in (None, CONFIGURATION), prefix.count("/"), prefix, checkpoints))
    candidates = [c for c in candidates if not c[0]]  # drop 3d configurations
    if candidates:
        candidates.sort()
        _, _, prefix, checkpoints = candidates[0]
        top = [f"{prefix}{n}" for n in _MODEL_TOP_FILES if f"{prefix}{n}" in path_set]
        return "files", top + sorted(checkpoints)
    zips = sorted(p for p in paths if p.lower().endswith(".zip"))
    if len(zips) == 1:
        return "zip", zips
    where = f"hub repository {repo}" if repo else "the hub repository"
    if len(zips) > 1:
        raise InputError(f"{where} holds several zips ({', '.join(zips)}) and no model folder; download one and install the .zip")
    raise InputError(
        f"{where} holds no nnU-Net 2D model (plans.json and dataset.json beside fold_N/checkpoint_*.pth) and no .zip"
    )


def _verify_hub_file(path: Path, repo_path: str, sha256: str, entry: dict, lfs: dict | None) -> None:
    """Check a downloaded file against the hub's own listing: LFS SHA-256, or the git blob id."""
    if lfs is not None:
        expected = lfs.get("sha256") or lfs.get("oid")
        if isinstance(expected, str) and expected.lower() != sha256:
            raise LegSegNetError(
                f"{repo_path} from the hub does not match the hub's checksum (SHA-256 {sha256}, listed {expected}); "
                "the download is damaged — try again"
            )
        return
    blob_id = entry.get("blobId")
    if isinstance(blob_id, str) and re.fullmatch(r"[0-9a-f]{40}", blob_id):
        blob = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                blob.update(chunk)
        if blob.hexdigest() != blob_id:
            raise LegSegNetError(f"{repo_path} from the hub does not match the hub's git blob id; the download is damaged — try again")


# ====================================================================== small helpers
def resolve_model(path_or_name: str | Path | None, store: ModelStore | None = None) -> ModelFolder:
    """The model a run uses: a model folder path, an installed name, or (None) the store's default."""
    store = store or ModelStore()
    if path_or_name is None or str(path_or_name).strip() == "":
        info = store.default()
        if info is None:
            raise InputError(
                f"no nnU-Net model is installed (store: {store.root}); install the published weights with "
                f"'legsegnet models install {PUBLISHED_SOURCE}', give --model FOLDER, or use --engine threshold"
            )
        return info.folder()
    text = str(path_or_name)
    candidate = Path(text).expanduser()
    if candidate.exists():
        return inspect_model_folder(candidate)
    if _NAME_RE.match(text) and "/" not in text and "\\" not in text:
        return store.get(text).folder()
    raise InputError(f"--model '{text}' is neither an existing model folder nor an installed model name (see 'legsegnet models list')")


def _read_metadata(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _guess_input_format(folder: Path) -> str:
    try:
        dataset = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
        return _input_format(str(dataset.get("file_ending", "")), plans, dataset.get("channel_names") or {})
    except (OSError, ValueError, AttributeError):
        return "unknown"


def _source_kind(text: str) -> str:
    lowered = text.lower()
    if lowered.startswith("hf:"):
        return "hf"
    if re.match(r"^[a-z][a-z0-9+.-]*://", lowered):
        _check_url(text)
        return "url"
    if lowered.endswith(".zip") or Path(text).expanduser().is_file():
        return "zip"
    return "folder"


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(url: str, previous: str | None = None) -> None:
    """https anywhere; plain http only to this computer (a local mirror); no downgrade on redirect."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        return
    if scheme == "http" and _is_loopback(parts.hostname):
        if previous is not None and urllib.parse.urlsplit(previous).scheme.lower() == "https":
            raise InputError(f"refusing a redirect from https to plain http ({url})")
        return
    raise InputError(
        f"'{url}': only https:// URLs are accepted (plain http:// only to this computer); "
        "downloads must be encrypted"
    )


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401 - urllib hook
        _check_url(newurl, previous=req.full_url)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener_for(url: str) -> urllib.request.OpenerDirector:
    handlers: list = [_CheckedRedirects()]
    if _is_loopback(urllib.parse.urlsplit(url).hostname):
        handlers.append(urllib.request.ProxyHandler({}))  # this computer is never behind a proxy
    return urllib.request.build_opener(*handlers)


def _network_message(url: str, reason: Any) -> str:
    host = urllib.parse.urlsplit(url).hostname
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"{host} did not answer in time ({url}); check the internet connection and try again"
    if isinstance(reason, ssl.SSLError):
        return f"secure connection to {host} failed ({_first_line(reason)}); check the system's certificates or proxy"
    text = _first_line(reason) if isinstance(reason, BaseException) else str(reason)
    return f"cannot reach {host} ({text}); check the internet connection or proxy settings and try again"


def _safe_member_path(name: str, label: str) -> PurePosixPath | None:
    """A relative path that stays inside the target folder, or InputError; None for a bare './'."""
    if "\x00" in name or any(ord(c) < 32 for c in name):
        raise InputError(f"'{label}' holds an entry with control characters in its name; refused")
    text = name.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text) or ":" in text:
        raise InputError(f"'{label}' holds '{name}', an absolute path; archives may hold only relative paths — refused")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InputError(f"'{label}' holds '{name}', which climbs out of the target folder ('..'); refused")
    return PurePosixPath(*parts) if parts else None


def _file_kind(mode_kind: int) -> str:
    return {
        stat.S_IFLNK: "symbolic link",
        stat.S_IFCHR: "character device",
        stat.S_IFBLK: "block device",
        stat.S_IFIFO: "named pipe",
        stat.S_IFSOCK: "socket",
    }.get(mode_kind, "special file")


def _normalise_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:"):]
    if not _SHA256_RE.match(text):
        raise InputError(f"--sha256 wants 64 hexadecimal digits (as sha256sum prints), not '{value}'")
    return text


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InputError(
            f"'{name}' is not a valid model name; use up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def _default_name(kind: str, text: str, model_dir: Path | None) -> str:
    """The name a model gets without --name: the hub repository's, the archive's or the folder's."""
    if kind == "hf":
        base = parse_hf_source(text)[0].split("/")[1]
    elif kind == "url":
        base = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(text).path)).name
        base = re.sub(r"\.zip$", "", base, flags=re.IGNORECASE)
    elif kind == "zip":
        base = Path(text).name
        base = re.sub(r"\.zip$", "", base, flags=re.IGNORECASE)
    else:
        base = _name_from_folder(model_dir) if model_dir is not None else ""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-._").lower()[:64]
    return clean if clean and _NAME_RE.match(clean) else "model"


def _checksum_message(label: str, actual: str, expected: str, what: str) -> str:
    return (
        f"checksum mismatch for {label}: the {what} SHA-256 is {actual}, expected {expected}; "
        "the file is damaged or not the one you meant — nothing was installed"
    )


def _licence_notice(model: str, licence: str) -> str:
    url = LICENCE_URLS.get(licence)
    terms = " — non-commercial use only, with attribution" if "NC" in licence.split() or "BY-NC" in licence else ""
    return f"licence of {model}: {licence}{terms}" + (f" ({url})" if url else "")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _model_members(paths: Any) -> set[PurePosixPath]:
    """Of an archive's file paths, those a model is made of: plans.json, dataset.json and
    dataset_fingerprint.json of every folder holding plans.json, and its fold_N/checkpoint_*.pth (not
    checkpoint_latest.pth, not those of a 3d configuration folder). `_collect_model_files` keeps the same."""
    paths = set(paths)
    model_dirs = {p.parent for p in paths if p.name == "plans.json"}
    chosen = set()
    for path in paths:
        if path.name in _MODEL_TOP_FILES and path.parent in model_dirs:
            chosen.add(path)
        elif (
            len(path.parts) >= 2
            and path.parent.parent in model_dirs
            and _FOLD_RE.match(path.parent.name)
            and _CHECKPOINT_RE.match(path.name)
            and path.name != "checkpoint_latest.pth"
            and _split_config_name(path.parent.parent.name)[2] in (None, CONFIGURATION)
        ):
            chosen.add(path)
    return chosen


def _tree_size(folder: Path) -> int:
    total = 0
    for name in _MODEL_TOP_FILES:
        if (folder / name).is_file():
            total += (folder / name).stat().st_size
    for fold in _scan_folds(folder):
        for checkpoint in (folder / _fold_dir(fold)).iterdir():
            if checkpoint.is_file() and _CHECKPOINT_RE.match(checkpoint.name):
                total += checkpoint.stat().st_size
    return total


def _collect_model_files(src: Path, dst: Path, move: bool) -> str:
    """Put what inference needs (plans, dataset, fingerprint, fold_N/checkpoint_*.pth) into `dst`.
    Moves within the staging folder, copies from a user's folder. Returns the files' digest: the
    SHA-256 of their sorted `sha256  relative/path` lines."""
    wanted = [name for name in _MODEL_TOP_FILES if (src / name).is_file()]
    for fold in _scan_folds(src):
        for checkpoint in sorted((src / _fold_dir(fold)).iterdir()):
            if checkpoint.is_file() and _CHECKPOINT_RE.match(checkpoint.name) and checkpoint.name != "checkpoint_latest.pth":
                wanted.append(f"{_fold_dir(fold)}/{checkpoint.name}")
    lines = []
    for rel in wanted:
        source, target = src / rel, dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if move:
                os.replace(source, target)
            else:
                shutil.copyfile(source, target)
        except OSError as exc:
            raise InputError(f"cannot read {source} ({exc.strerror or exc}); check the model folder") from None
        lines.append(f"{_sha256_file(target)}  {rel}\n")
    return hashlib.sha256("".join(sorted(lines, key=lambda line: line[66:])).encode()).hexdigest()


@contextlib.contextmanager
def _naming_source(source: str, *staging_paths: Path, enabled: bool = True):
    """InputErrors raised inside name `source` (the zip, URL or hub repository) where they would name
    one of the staging folders its files were unpacked into."""
    try:
        yield
    except InputError as exc:
        message = str(exc)
        if not enabled:
            raise
        for path in sorted((str(p) for p in staging_paths), key=len, reverse=True):
            message = message.replace(path, source)
        if message == str(exc):
            raise
        raise InputError(message) from None


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
