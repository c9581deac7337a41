"""A training set's record: `legsegnet-manifest.json`, the source of truth of which cases a LegSegNet training
set holds (file, checksum, scan, slice, patient, round, history of each case), and nnU-Net's dataset.json
generated from it. Reading it, and verifying every listed file against its checksum, is all training needs;
writing it is `dataset.add_slices`'s commit (see dataset.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..core.errors import InputError
from ..core.files import sha256_file
from ..core.tissues import TISSUES
from ..engines import slice_axes as axes_module

FORMAT_PNG = "png"
FORMAT_HU = "hu"
FORMATS = (FORMAT_PNG, FORMAT_HU)
FILE_ENDINGS = {FORMAT_PNG: ".png", FORMAT_HU: ".nii.gz"}
# nnU-Net normalises by channel name: "CT" selects its CT normalisation (dataset-wide HU statistics); any
# other name gets per-image z-scoring, which is what an 8-bit natural image wants.
CHANNEL_NAMES = {FORMAT_PNG: "grey", FORMAT_HU: "CT"}
LABELS = {"background": 0, **{t.key: t.value for t in TISSUES}}

MANIFEST_FILE = "legsegnet-manifest.json"
MANIFEST_VERSION = 1
DATASET_JSON = "dataset.json"
IMAGES_DIR = "imagesTr"
LABELS_DIR = "labelsTr"


# ====================================================================== the manifest
@dataclass
class Manifest:
    """legsegnet-manifest.json: the dataset's format and one entry per case (see `_entry`)."""

    input_format: str
    entries: list[dict] = field(default_factory=list)
    created_at: str = ""
    encoding: dict = field(default_factory=dict)
    # axis order of the written slices (engines/slice_axes.py); manifests without it hold the published order
    slice_axes: str = axes_module.PUBLISHED

    def to_dict(self) -> dict:
        return {
            "format_version": MANIFEST_VERSION,
            "written_by": f"legsegnet {__version__}",
            "created_at": self.created_at,
            "input_format": self.input_format,
            "file_ending": FILE_ENDINGS[self.input_format],
            "labels": LABELS,
            "encoding": self.encoding,
            "slice_axes": self.slice_axes,
            "entries": self.entries,
        }

    @classmethod
    def from_dict(cls, data: dict, where: Path) -> Manifest:
        try:
            input_format = data["input_format"]
            entries = list(data["entries"])
            axes = data.get("slice_axes", axes_module.PUBLISHED)
            if input_format not in FORMATS or not all(isinstance(e, dict) and "case" in e for e in entries):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{where} is not a LegSegNet dataset manifest (damaged or from another tool)") from None
        if axes not in axes_module.AXES:
            raise InputError(
                f"{where} records slice axes {axes!r}, which this LegSegNet does not know; update LegSegNet"
            )
        return cls(input_format, entries, str(data.get("created_at", "")), dict(data.get("encoding") or {}), axes)

    def by_slice(self) -> dict[tuple[str, int], dict]:
        return {(e["ct_sha256"], int(e["slice_index"])): e for e in self.entries}

    def patients(self) -> dict[str, int]:
        """Patient -> number of cases."""
        counts: dict[str, int] = {}
        for e in self.entries:
            counts[e["patient"]] = counts.get(e["patient"], 0) + 1
        return counts

    def rounds(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for e in self.entries:
            counts[int(e["round"])] = counts.get(int(e["round"]), 0) + 1
        return dict(sorted(counts.items()))

    def summary(self) -> dict:
        return {
            "input_format": self.input_format,
            "cases": len(self.entries),
            "scans": len({e["ct_sha256"] for e in self.entries}),
            "patients": len(self.patients()),
            "rounds": {str(r): n for r, n in self.rounds().items()},
        }


def manifest_path(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / MANIFEST_FILE


def read_manifest(dataset_dir: str | Path) -> Manifest | None:
    """The dataset's manifest, or None when the folder holds none."""
    path = manifest_path(dataset_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror or exc}); check the dataset folder") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise InputError(f"{path} is not valid JSON; the dataset's manifest is damaged") from None
    return Manifest.from_dict(data, path)


def load_dataset(dataset_dir: str | Path, verify: bool = True) -> Manifest:
    """The manifest of an existing dataset; with `verify`, every listed file must exist with its checksum."""
    folder = Path(dataset_dir).expanduser()
    if not folder.is_dir():
        raise InputError(f"dataset folder '{folder}' does not exist; create it with 'legsegnet dataset add'")
    manifest = read_manifest(folder)
    if manifest is None:
        raise InputError(
            f"'{folder}' holds no {MANIFEST_FILE}; it is not a LegSegNet training set — create one with "
            "'legsegnet dataset add CT LABELS --dataset DIR --slices ...'"
        )
    if not manifest.entries:
        raise InputError(
            f"the dataset '{folder}' holds no slices yet; add corrected slices with 'legsegnet dataset add'"
        )
    if verify:
        for entry in manifest.entries:
            for key in ("image", "label"):
                path = folder / entry[key]
                if not path.is_file():
                    raise InputError(
                        f"dataset '{folder}': {entry[key]} (case {entry['case']}) is missing; restore it or export "
                        "that slice again with 'legsegnet dataset add'"
                    )
                if sha256_file(path) != entry[f"{key}_sha256"]:
                    raise InputError(
                        f"dataset '{folder}': {entry[key]} (case {entry['case']}) was changed after export (checksum "
                        "differs from the manifest); export that slice again with 'legsegnet dataset add'"
                    )
    return manifest


def dataset_json(manifest: Manifest, name: str) -> dict:
    """nnU-Net v2's dataset.json for the manifest's cases."""
    return {
        "channel_names": {"0": CHANNEL_NAMES[manifest.input_format]},
        "labels": LABELS,
        "numTraining": len(manifest.entries),
        "file_ending": FILE_ENDINGS[manifest.input_format],
        "name": name,
        "description": f"{axes_module.LEGSEGNET_DESCRIPTION} (see legsegnet-manifest.json for provenance)",
        axes_module.DATASET_JSON_KEY: manifest.slice_axes,  # nnU-Net ignores it and copies it into the model
    }
