"""Corrected slices become nnU-Net v2 training data (model-in-the-loop annotation, paper section 3.3).

    legsegnet dataset add CT LABELS --dataset DIR --slices 12,40,77 [--patient ID] [--round N] [--format png|hu]

DIR is an nnU-Net v2 raw dataset (`imagesTr/<case>_0000.<ext>`, `labelsTr/<case>.<ext>`, `dataset.json`)
plus LegSegNet's manifest, `legsegnet-manifest.json`, which is the dataset's source of truth.

Formats (fixed when the dataset is created; it must be the input format of the model being refined):

- `png`: the published model's input, exactly: each slice goes through published_preprocessing (HU window,
  truncating cast, OpenCV bicubic to 256 x 256), the very function the nnU-Net engine uses at inference, so a
  model trained here sees at training time what it will see in use. Labels are resized to the same 256 x 256
  grid by nearest neighbour (see `resize_labels_nearest`).
- `hu`: the HU slice on its native grid as a 2D NIfTI with the pixel spacing kept; the nnU-Net engine feeds
  HU-format models the same slice with the same spacing.

Axes: every slice is first turned to the standard in-plane orientation (scan/orientation.py), as the engine
turns every scan, so the storage order of a scan never changes what a model learns. Then it is written in
the axis order of its format (engines/slice_axes.py), which is the order the engine hands the model:
PNG images with rows along the patient's left-right axis (the published encoding); HU slices as 2D NIfTI
whose x axis runs left-right and y axis front-back, so that nnU-Net's reader gives (front-back,
left-right) with spacing in that order: exactly the slice and spacing nnU-Net reads from the same scan
stored LPS as a volume. So a model trained on this set and one trained by plain nnU-Net on the same slices
take the same input and are interchangeable. The order is recorded in the manifest (`slice_axes`) and in
dataset.json (`legsegnet_slice_axes`, which nnU-Net copies into the trained model). Sets written before
that record existed hold their slices in the published order (the storage slab); new slices are added to
them in that order too, so a set never mixes orders.

Each slice is a case. A case is identified by the scan's content hash (`scan_sha256`: voxels and size, not
the file, so a DICOM folder, its NIfTI copy and the Slicer volume are one scan) and the slice index.
Exporting a slice again never duplicates it: unchanged labels are skipped; changed labels (a later, better
correction) replace the case, under a new file name, and the manifest keeps the previous version's checksum,
round and date in the entry's `history`.

Nothing is half-written. Under a lock: every slice is checked (label values 0-4, grid = the CT's) before
anything is written; new files are written to a staging folder and renamed into imagesTr/labelsTr under
names no manifest entry and no file uses yet; then the manifest is replaced atomically (the commit), dataset.json
is regenerated from it, and the files of replaced cases are deleted. Before the renames, a journal
(`.legsegnet-pending.json`) lists each file about to be moved in with its checksum; an export killed before
its commit leaves those files unlisted, and the next export deletes exactly them (same name, same checksum,
still not in the manifest), and its own `.legsegnet-staging-*` folders. Any other file in the folder (a file
LegSegNet did not write) is never touched. Training reads only what the manifest lists and checks every
file's checksum. The CT and label map given are never one of the dataset's files (refused before reading).

The manifest and dataset.json are read and described in manifest.py; how a slice is encoded and written, in
slice_encoding.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError, LegSegNetError
from ..core.files import atomic_write_text, sha256_file
from ..core.input_paths import itk_path
from ..core.paths import check_writable_folder
from ..core.progress import Progress
from ..core.text import now_iso
from ..core.tissues import MAX_LABEL
from ..engines import slice_axes as axes_module
from ..scan.ct_volume import CTVolume
from .manifest import (
    DATASET_JSON,
    FILE_ENDINGS,
    FORMAT_HU,
    FORMAT_PNG,
    FORMATS,
    IMAGES_DIR,
    LABELS_DIR,
    MANIFEST_FILE,
    Manifest,
    dataset_json,
    manifest_path,
    read_manifest,
)
from .slice_encoding import encode_slices, encoding_description, write_2d

STAGING_PREFIX = ".legsegnet-staging-"
PENDING_FILE = ".legsegnet-pending.json"  # the files an export is moving in before its commit
LOCK_FILE = ".legsegnet.lock"
# bytes a path inside the training set adds to its folder's, at most (a staged case file, e.g.
# '/.legsegnet-staging-abcd1234/imagesTr/leg_0123456789ab_s0001_v12_0000.nii.gz'), for the path-length check
LONGEST_ENTRY = 96
# files and folders LegSegNet itself keeps in a dataset folder besides the nnU-Net layout
_OWN_ENTRIES = {MANIFEST_FILE, DATASET_JSON, IMAGES_DIR, LABELS_DIR, LOCK_FILE, PENDING_FILE, "training-runs"}

_PATIENT_RE = re.compile(r"^[\w][\w .@+:-]{0,63}$")


# ====================================================================== results
@dataclass
class AddResult:
    dataset: Path
    input_format: str
    patient: str
    training_round: int
    added: list[int] = field(default_factory=list)  # slice indices written for the first time
    replaced: list[int] = field(default_factory=list)  # slices whose labels changed since their last export
    unchanged: list[int] = field(default_factory=list)  # already in the dataset with the same labels: skipped
    cases: list[str] = field(default_factory=list)  # case identifiers written
    total_cases: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "command": "dataset add",
            "dataset": str(self.dataset),
            "input_format": self.input_format,
            "patient": self.patient,
            "round": self.training_round,
            "added": self.added,
            "replaced": self.replaced,
            "unchanged": self.unchanged,
            "cases": self.cases,
            "total_cases": self.total_cases,
            "notes": self.notes,
        }


# ====================================================================== helpers
def scan_sha256(volume: CTVolume) -> str:
    """Content hash of a scan: its voxel values (HU) and size, independent of the file format it came in."""
    values = volume.hu_array()
    digest = hashlib.sha256()
    digest.update(json.dumps({"size": list(volume.size_ijk), "dtype": str(values.dtype)}).encode())
    digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


def slice_ranges(text: str) -> list[tuple[int, int]]:
    """'12,40,77' or '10:12,20' (inclusive ranges) → [(first, last), ...]; the syntax only, no scan needed."""
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            a, b = (int(v) for v in part.split(":")) if ":" in part else (int(part), int(part))
        except ValueError:
            raise InputError(
                f"--slices wants slice numbers separated by commas (ranges as FIRST:LAST), e.g. 12,40,77, not '{text}'"
            ) from None
        if b < a:
            raise InputError(f"--slices: range '{part}' is reversed; write FIRST:LAST with FIRST <= LAST")
        ranges.append((a, b))
    if not ranges:
        raise InputError("no slices given; list the reviewed slices with --slices, e.g. --slices 12,40,77")
    return ranges


def parse_slice_list(text: str | Sequence[int], n_slices: int) -> list[int]:
    """'12,40,77' or '10:12,20' (inclusive ranges) → sorted distinct indices inside 0..n_slices-1."""
    ranges = slice_ranges(text) if isinstance(text, str) else [(int(v), int(v)) for v in text]
    if not ranges:
        raise InputError("no slices given; list the reviewed slices with --slices, e.g. --slices 12,40,77")
    # bounds before any range is expanded: '0:99999999999' must not become a list of 10^11 numbers
    outside = [a if a < 0 or a >= n_slices else n_slices for a, b in ranges if a < 0 or b >= n_slices]
    if outside:
        raise InputError(
            f"slice {min(outside)} does not exist: the CT has slices 0:{n_slices - 1} along its superior/inferior axis"
        )
    return sorted({i for a, b in ranges for i in range(a, b + 1)})


def check_patient(patient: str) -> str:
    text = str(patient).strip()
    if not _PATIENT_RE.match(text):
        raise InputError(
            f"--patient '{patient}' is not a usable identifier: use 1-64 letters, digits, spaces or . _ - @ + : "
            "(a pseudonym, not a name: it is stored in the manifest)"
        )
    return text


@contextlib.contextmanager
def dataset_lock(folder: Path) -> Iterator[None]:
    """Exclusive lock on the dataset folder (two exports at once would race on the manifest); waits as long as
    another export holds it. Hand-written on purpose: `filelock` would be one more package to install inside 3D
    Slicer's Python for these few lines (see DEVELOPERS.md)."""
    path = folder / LOCK_FILE
    with open(path, "a+") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
            unlock = lambda: fcntl.flock(handle, fcntl.LOCK_UN)  # noqa: E731
        except ImportError:  # Windows
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
            unlock = lambda: msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)  # noqa: E731
        try:
            yield
        finally:
            unlock()


def _remove_leftovers(folder: Path, manifest: Manifest | None) -> list[str]:
    """Delete what an export killed before its commit left: its staging folders and the files its journal
    lists that the manifest does not (only while they still hold the bytes it wrote). Nothing else."""
    removed = []
    for child in folder.iterdir():
        if child.name.startswith(STAGING_PREFIX) and child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
    pending = _read_pending(folder)
    listed = set()
    for e in manifest.entries if manifest else []:
        listed.update((e["image"], e["label"]))
    for rel, digest in pending.items():
        path = folder / rel
        if rel in listed or not path.is_file() or path.is_symlink() or sha256_file(path) != digest:
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(rel)
    with contextlib.suppress(OSError):
        (folder / PENDING_FILE).unlink()
    return removed


def _read_pending(folder: Path) -> dict[str, str]:
    """The journal's {relative path: sha256}, only paths of the form imagesTr/NAME or labelsTr/NAME."""
    try:
        files = json.loads((folder / PENDING_FILE).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not isinstance(files, dict):
        return {}
    return {
        rel: digest
        for rel, digest in files.items()
        if isinstance(rel, str)
        and isinstance(digest, str)
        and rel.count("/") == 1
        and rel.split("/")[0] in (IMAGES_DIR, LABELS_DIR)
        and rel.split("/")[1] not in ("", ".", "..")
    }


def _move_no_clobber(source: Path, target: Path) -> None:
    """Move a staged file to a name that must be free: an existing file (anyone's) is never replaced."""
    try:
        os.link(source, target)  # fails with FileExistsError if the name was taken
    except FileExistsError:
        raise LegSegNetError(f"{target} appeared while the slices were being added; add them again") from None
    except OSError:  # no hard links on this file system: check, then rename (the dataset is locked)
        if os.path.lexists(target):
            raise LegSegNetError(f"{target} appeared while the slices were being added; add them again") from None
        os.rename(source, target)
        return
    os.unlink(source)


def _check_dataset_folder(folder: Path) -> Manifest | None:
    itk_path(folder)  # the case files are written with SimpleITK, which cannot take a path that is not UTF-8
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--dataset '{folder}' is a file; give a folder (it is created if missing)")
    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest is None and folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in _OWN_ENTRIES and not p.name.startswith("."))
        case_files = [
            p for sub in (IMAGES_DIR, LABELS_DIR) if (folder / sub).is_dir() for p in (folder / sub).iterdir()
        ]
        if foreign or case_files or (folder / DATASET_JSON).exists():
            raise InputError(
                f"'{folder}' already holds files but no {MANIFEST_FILE}, so LegSegNet cannot tell where they came "
                "from; give an empty or new folder for the training set"
            )
    return manifest


# ====================================================================== adding slices
def add_slices(
    dataset_dir: str | Path,
    volume: CTVolume,
    labels: sitk.Image | np.ndarray,
    slices: str | Sequence[int],
    *,
    patient: str | None = None,
    training_round: int = 0,
    input_format: str | None = None,
    source: str | None = None,
    progress: Progress | None = None,
) -> AddResult:
    """Add the given slices of `volume` with their `labels` to the dataset (see the module docstring).

    labels: a label image on the CT's grid, or the whole slab (n_slices, rows, cols) in the slab convention.
    input_format: png or hu; None keeps the dataset's format, or png (the published model's) for a new one.
    Raises InputError, leaving the dataset as it was, for a bad label value, grid, slice, format or folder.
    """
    progress = progress or Progress()
    folder = Path(dataset_dir).expanduser()
    if training_round is None or int(training_round) != training_round or int(training_round) < 0:
        raise InputError(f"--round must be a whole number 0 or more, not {training_round}")
    training_round = int(training_round)
    if input_format is not None and input_format not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, not '{input_format}'")
    indices = parse_slice_list(slices, volume.n_slices)
    slab_labels = _labels_slab(volume, labels)
    _check_label_values(slab_labels, indices)

    progress.stage("checking")
    ct_sha = scan_sha256(volume)
    notes: list[str] = []
    if patient is None or str(patient).strip() == "":
        patient = f"scan-{ct_sha[:12]}"
        notes.append(
            f"no patient given: this scan counts as its own patient '{patient}'; give every scan of one person the "
            "same --patient so that training keeps that person on one side of the train/validation split"
        )
    patient = check_patient(patient)

    _check_dataset_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with dataset_lock(folder):
        manifest = read_manifest(folder)  # again, under the lock
        if manifest is None:
            fmt = input_format or FORMAT_PNG
            manifest = Manifest(fmt, [], now_iso(), encoding_description(fmt), axes_module.written_order(fmt))
        elif input_format is not None and input_format != manifest.input_format:
            raise InputError(
                f"the dataset '{folder}' holds {manifest.input_format.upper()}-format slices; it cannot take "
                f"{input_format.upper()} slices (a model is trained on one input format): use --format "
                f"{manifest.input_format} or another --dataset"
            )
        if manifest.slice_axes != axes_module.written_order(manifest.input_format):
            notes.append(
                f"the dataset '{folder}' was started by an earlier LegSegNet: its {manifest.input_format.upper()} slices "
                f"have {axes_module.DESCRIPTIONS[manifest.slice_axes]}, and new slices are added the same way; models "
                "trained on it are not interchangeable with plain nnU-Net models: start a new --dataset folder for that"
            )
        removed = _remove_leftovers(folder, manifest)
        if removed:
            notes.append(f"removed {len(removed)} file(s) left by an interrupted export")
        result = AddResult(folder, manifest.input_format, patient, training_round, notes=notes)
        _add_under_lock(
            folder,
            manifest,
            volume,
            slab_labels,
            indices,
            ct_sha,
            patient,
            training_round,
            source or volume.source,
            result,
            progress,
        )
    for note in notes:
        progress.note(note)
    return result


def check_before_reading(dataset_dir: str | Path, inputs: Sequence[str | Path], slices: str | Sequence[int]) -> None:
    """What can be checked before the CT is read (the CLI's validation step calls it too): the training set's
    folder can be written, no input is one of its files, --slices is well formed."""
    check_writable_folder(dataset_dir, "--dataset", longest_inside=LONGEST_ENTRY)
    check_inputs_outside(dataset_dir, inputs)
    if isinstance(slices, str):
        slice_ranges(slices)


def check_inputs_outside(dataset_dir: str | Path, inputs: Sequence[str | Path]) -> None:
    """InputError when a CT or label map given is one of the dataset's own files (a replaced case's files are
    deleted, the manifest and dataset.json rewritten): compared by inode, so links count."""
    folder = Path(dataset_dir).expanduser()
    if str(dataset_dir).strip() == "":
        raise InputError("--dataset is empty; give the training set folder")
    if folder.exists() and not folder.is_dir():
        return  # refused with its own message later
    own = [folder / name for name in (MANIFEST_FILE, DATASET_JSON, LOCK_FILE, PENDING_FILE)]
    for sub in (IMAGES_DIR, LABELS_DIR):
        with contextlib.suppress(OSError):
            own += list((folder / sub).iterdir())
    for given in inputs:
        source = Path(given).expanduser()
        for path in own:
            with contextlib.suppress(OSError):
                if source.is_file() and os.path.lexists(path) and os.path.samefile(source, path):
                    raise InputError(
                        f"the input {source} is the dataset's own file {path}, which adding slices may replace or "
                        "delete; copy it out of the dataset folder and give the copy"
                    )


def _labels_slab(volume: CTVolume, labels: sitk.Image | np.ndarray) -> np.ndarray:
    if isinstance(labels, sitk.Image):
        return volume.slab_from_image(labels)  # InputError unless on the CT's grid
    array = np.asarray(labels)
    expected = (volume.n_slices, *volume.slab(0, 0).shape[1:])
    if array.shape != expected:
        raise InputError(
            f"the label array has shape {array.shape}, but the CT's slab is {expected} (slices, rows, columns); "
            "give labels on the CT's voxel grid"
        )
    return array


def _check_label_values(slab_labels: np.ndarray, indices: list[int]) -> None:
    """InputError naming the slices whose labels are not whole numbers 0-4."""
    chosen = np.asarray(slab_labels[indices])
    problems = []
    for index, values in zip(indices, chosen):
        if values.dtype.kind == "f" and (
            not np.all(np.isfinite(values)) or not np.array_equal(values, np.rint(values))
        ):
            problems.append(f"slice {index} holds fractional or non-finite values")
            continue
        if values.size and (values.min() < 0 or values.max() > MAX_LABEL):
            bad = np.unique(values[(values < 0) | (values > MAX_LABEL)])
            problems.append(f"slice {index} holds {', '.join(f'{v:g}' for v in bad[:5].astype(float))}")
    if problems:
        raise InputError(
            f"labels outside 0-{MAX_LABEL} ({'; '.join(problems)}): a training slice may hold only 0 (background), "
            f"1 (SAT), 2 (SM), 3 (IAT) and {MAX_LABEL} (Bone); fix those voxels in the segmentation and export again. "
            "Nothing was added"
        )


def _add_under_lock(
    folder: Path,
    manifest: Manifest,
    volume: CTVolume,
    slab_labels: np.ndarray,
    indices: list[int],
    ct_sha: str,
    patient: str,
    training_round: int,
    source: str,
    result: AddResult,
    progress: Progress,
) -> None:
    existing = manifest.by_slice()
    to_write: list[tuple[int, dict | None, str]] = []  # (slice, previous entry, label content hash)
    for index in indices:
        content = _label_content_sha256(slab_labels[index])
        previous = existing.get((ct_sha, index))
        if previous is not None and previous.get("label_content_sha256") == content:
            result.unchanged.append(index)
            continue
        to_write.append((index, previous, content))
    result.total_cases = len(manifest.entries)
    if not to_write:
        return

    fmt = manifest.input_format
    ending = FILE_ENDINGS[fmt]
    chosen = [i for i, _, _ in to_write]
    progress.stage("encoding", total=len(chosen))
    # the slices as the engine hands them to the model: turned to the standard orientation, in the set's axis order
    turn = volume.inplane_turn()
    hu_slices, (_, row_mm, col_mm) = axes_module.to_model_order(
        turn.to_standard(volume.slab())[chosen], turn.spacing_to_standard(volume.slab_spacing), manifest.slice_axes
    )
    label_slices, _ = axes_module.to_model_order(
        turn.to_standard(slab_labels)[chosen], (1.0, 1.0, 1.0), manifest.slice_axes
    )
    images, labels = encode_slices(hu_slices, np.asarray(label_slices), fmt)
    resize = encoding_description(fmt).get(
        "resize", "native grid"
    )  # OpenCV or its numpy port (may differ by 1 grey level)
    spacing_rc = (row_mm, col_mm) if fmt == FORMAT_HU else None
    z_mm = volume.slice_z_mm()
    used_names = {e["case"] for e in manifest.entries}
    # names taken by files in the folder (LegSegNet's or not) are not used either: nothing is overwritten
    for sub in (IMAGES_DIR, LABELS_DIR):
        if (folder / sub).is_dir():
            used_names.update(_case_of(p.name, ending) for p in (folder / sub).iterdir())

    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
    moved: list[Path] = []
    try:
        new_entries: dict[int, dict] = {}
        for (index, previous, content), image, label in zip(to_write, images, labels):
            version = int(previous.get("version", 1)) + 1 if previous else 1
            case = _case_name(ct_sha, index, version, used_names)
            used_names.add(case)
            image_rel, label_rel = f"{IMAGES_DIR}/{case}_0000{ending}", f"{LABELS_DIR}/{case}{ending}"
            write_2d(image, staging / Path(image_rel).name, spacing_rc)
            write_2d(label, staging / Path(label_rel).name, spacing_rc)
            entry = {
                "case": case,
                "image": image_rel,
                "label": label_rel,
                "source": source,
                "ct_sha256": ct_sha,
                "slice_index": index,
                "n_slices": volume.n_slices,
                "patient": patient,
                "round": training_round,
                "added_at": now_iso(),
                "version": version,
                "image_sha256": sha256_file(staging / Path(image_rel).name),
                "label_sha256": sha256_file(staging / Path(label_rel).name),
                "label_content_sha256": content,
                "native_shape": list(label_slices.shape[1:]),
                "spacing_mm": [row_mm, col_mm],
                "z_mm": round(float(z_mm[index]), 4),
                "encoding": resize,
                "history": [],
            }
            if previous is not None:
                entry["history"] = list(previous.get("history", [])) + [
                    {
                        k: previous.get(k)
                        for k in ("case", "version", "round", "added_at", "patient", "label_content_sha256")
                    }
                ]
            new_entries[index] = entry
            progress.advance()

        progress.stage("writing")
        for sub in (IMAGES_DIR, LABELS_DIR):
            (folder / sub).mkdir(exist_ok=True)
        pending = {e[key]: e[f"{key}_sha256"] for e in new_entries.values() for key in ("image", "label")}
        atomic_write_text(folder / PENDING_FILE, json.dumps({"files": pending}, indent=1) + "\n")
        for entry in new_entries.values():
            for key in ("image", "label"):
                target = folder / entry[key]
                _move_no_clobber(staging / target.name, target)
                moved.append(target)

        replaced_files = []
        entries = []
        for e in manifest.entries:
            key = (e["ct_sha256"], int(e["slice_index"]))
            if key[0] == ct_sha and key[1] in new_entries:
                replaced_files += [folder / e["image"], folder / e["label"]]
                continue
            entries.append(e)
        entries += [new_entries[i] for i in chosen]
        committed = Manifest(
            manifest.input_format, entries, manifest.created_at or now_iso(), manifest.encoding, manifest.slice_axes
        )
        atomic_write_text(manifest_path(folder), json.dumps(committed.to_dict(), indent=1) + "\n")  # the commit
    except BaseException:
        for path in moved:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            (folder / PENDING_FILE).unlink()

    atomic_write_text(
        folder / DATASET_JSON, json.dumps(dataset_json(committed, _dataset_name(folder)), indent=2) + "\n"
    )
    for path in replaced_files:
        with contextlib.suppress(OSError):
            path.unlink()
    for index, previous, _ in to_write:
        (result.replaced if previous is not None else result.added).append(index)
    result.cases = [new_entries[i]["case"] for i in chosen]
    result.total_cases = len(committed.entries)


def _label_content_sha256(labels_2d: np.ndarray) -> str:
    values = np.ascontiguousarray(labels_2d, dtype=np.uint8)
    digest = hashlib.sha256(f"{values.shape}".encode())
    digest.update(values.tobytes())
    return digest.hexdigest()


def _case_of(file_name: str, ending: str) -> str:
    """The case a file in imagesTr/labelsTr would belong to: `CASE_0000.png` and `CASE.png` -> CASE."""
    stem = file_name[: -len(ending)] if file_name.endswith(ending) else file_name
    return stem[: -len("_0000")] if stem.endswith("_0000") else stem


def _case_name(ct_sha: str, index: int, version: int, used: set[str]) -> str:
    base = f"leg_{ct_sha[:12]}_s{index:04d}"
    name = base if version == 1 else f"{base}_v{version}"
    while name in used:  # never reuse a name (a hash-prefix collision or a hand-edited manifest)
        version += 1
        name = f"{base}_v{version}"
    return name


def _dataset_name(folder: Path) -> str:
    return folder.resolve().name


def add_files(
    dataset_dir: str | Path,
    ct_path: str | Path,
    labels_path: str | Path,
    slices: str,
    *,
    patient: str | None = None,
    training_round: int = 0,
    input_format: str | None = None,
    progress: Progress | None = None,
) -> AddResult:
    """`legsegnet dataset add`: read the CT and its corrected label map (checked: values 0-4, the CT's grid)."""
    from ..scan import volume_io

    progress = progress or Progress()
    check_before_reading(dataset_dir, [ct_path, labels_path], slices)
    progress.stage("reading")
    volume = volume_io.read_ct(ct_path)
    labels = volume_io.read_labels(labels_path, volume)
    return add_slices(
        dataset_dir,
        volume,
        labels,
        slices,
        patient=patient,
        training_round=training_round,
        input_format=input_format,
        source=str(Path(ct_path).expanduser().resolve()),
        progress=progress,
    )
