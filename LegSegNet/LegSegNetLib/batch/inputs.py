"""The scans of a batch: what the INPUTs and the manifest name, each scan found once, with a stable id.

- A file is one scan (NIfTI, NRRD, MetaImage, one DICOM file; anything else is still a scan and fails with
  the reader's message, so nothing named on the command line is dropped silently).
- A folder is searched (symbolic links followed, each real folder once): every NIfTI/NRRD/MetaImage file
  is a scan, and every DICOM image series is a scan, grouped by SeriesInstanceUID across the whole search,
  so a series split over folders, or a folder given twice, is still one scan. Only DICOM headers are read
  (pydicom with `stop_before_pixels`). A DICOM file whose header cannot be parsed becomes a scan of its own
  (it fails with the reader's "corrupt or truncated" message). Other files (text, PNG, archives) are skipped
  and counted.
- A manifest CSV has a column `scan` (a file or a DICOM folder, relative to the manifest's folder) and
  optionally `id`, `patient`, `slices` (FIRST:LAST) and `series_uid` (one series of a folder holding several).

Scan ids name the folders `OUTDIR/scans/<id>/` and must stay the same from run to run (resume): the
manifest's `id`, or else the path below the INPUT folder with separators turned into `_` (a file's
extensions dropped); a DICOM folder holding several image series appends `_s<SeriesNumber>`. Ids that would
collide get a short hash of their source appended.

The content fingerprint of a scan (resume decides with it whether the input changed) hashes, for every file
the scan reads, its name, size, modification time (ns) and the SHA-256 of its first 8 KiB (the header).
It costs one stat and one small read per file, not a read of the voxels.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..anatomy.axial_range import _RANGE as _SLICE_RANGE
from ..core.errors import InputError
from ..scan.dicom_folder import DICOM_SUFFIXES as _DICOM_SUFFIXES
from ..scan.dicom_folder import has_dicom_preamble as _has_dicom_preamble
from ..scan.itk_files import itk_suffix as _itk_suffix

HEADER_BYTES = 8192  # hashed per file for the fingerprint: the image header
MAX_ID_LENGTH = 100
MANIFEST_COLUMNS = ("scan", "id", "patient", "slices", "series_uid")
_DISCOVERY_TAGS = ["SOPClassUID", "SeriesInstanceUID", "SeriesNumber", "PatientID", "Rows"]
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_IMAGE_COMPANIONS = (".raw", ".raw.gz", ".zraw", ".img", ".img.gz")  # data files of .mhd / .nhdr headers


@dataclass(frozen=True)
class ScanSpec:
    """One scan of the batch, as the workers receive it (plain data, so it travels to any Dask worker)."""

    id: str
    source: str  # absolute path: an image file, a DICOM file, or the folder holding a DICOM series
    series_uid: str = ""  # the DICOM series to read from `source` ("" = the reader's choice)
    patient: str = ""
    slices: str | None = None  # FIRST:LAST from the manifest
    files: tuple[str, ...] = ()  # every file the scan reads, for the fingerprint
    fingerprint: str = ""
    input_bytes: int = 0  # the size of those files: the batch starts the largest scans first

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("files")  # can be thousands of paths; the workers do not need them
        return out


@dataclass
class Discovery:
    scans: list[ScanSpec]
    skipped_files: int = 0  # files in searched folders that are neither images nor DICOM


@dataclass
class _Found:
    """A scan before its id is settled."""

    base_id: str
    source: Path
    series_uid: str = ""
    patient: str = ""
    slices: str | None = None
    files: list[Path] = field(default_factory=list)
    id_given: bool = False


# ---------------------------------------------------------------------------------------------- public
def find_scans(inputs: list[str], manifest: str | None = None) -> Discovery:
    """Every scan named by `inputs` (files and folders) and `manifest`, each once, ids settled and
    fingerprints taken. Raises InputError for a missing INPUT, an unreadable or malformed manifest."""
    found: list[_Found] = []
    skipped = 0
    seen_series: dict[str, _Found] = {}
    seen_files: set[str] = set()  # real paths: a folder searched twice (given twice, nested, linked) counts once
    for text in inputs:
        path = Path(text).expanduser()
        if not path.exists():
            raise InputError(f"input not found: '{text}'; give image files, DICOM folders or folder trees")
        if path.is_dir():
            skipped += _search_folder(path.absolute(), found, seen_series, seen_files)
        else:
            found.append(_file_scan(path.absolute(), path.name))
    if manifest is not None:
        found.extend(_read_manifest(Path(manifest).expanduser()))
    found = _drop_repeats(found)
    scans = []
    for scan_id, f in zip(_settle_ids(found), found):
        fingerprint, size = content_fingerprint(f.files, f.source)
        scans.append(
            ScanSpec(
                id=scan_id,
                source=str(f.source),
                series_uid=f.series_uid,
                patient=f.patient,
                slices=f.slices,
                files=tuple(str(p) for p in f.files),
                fingerprint=fingerprint,
                input_bytes=size,
            )
        )
    return Discovery(scans=scans, skipped_files=skipped)


def content_fingerprint(files: list[Path], source: Path) -> tuple[str, int]:
    """Name (relative to the scan's source), size, mtime and header hash of every file, hashed together; and the
    files' total size."""
    digest = hashlib.sha256()
    total = 0
    anchor = source if source.is_dir() else source.parent
    for path in sorted(files):
        try:
            name = path.relative_to(anchor).as_posix()
        except ValueError:
            name = path.name
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
        try:
            info = path.stat()
            with open(path, "rb") as handle:
                head = handle.read(HEADER_BYTES)
        except OSError:
            digest.update(b"missing\0")
            continue
        digest.update(f"{info.st_size}:{info.st_mtime_ns}\0".encode())
        total += info.st_size
        digest.update(hashlib.sha256(head).digest())
    return "v1:" + digest.hexdigest()[:32], total


def safe_id(text: str) -> str:
    """`text` made into a folder name: letters, digits, '.', '_', '-' only, not hidden, at most 100 chars."""
    cleaned = _UNSAFE.sub("_", text).strip("._-") or "scan"
    if len(cleaned) > MAX_ID_LENGTH:
        cleaned = cleaned[: MAX_ID_LENGTH - 9] + "-" + _short_hash(text)
    return cleaned


# ---------------------------------------------------------------------------------------------- files
def _file_scan(path: Path, relative: str) -> _Found:
    return _Found(base_id=_id_from_relative(relative, strip_extension=True), source=path, files=_with_companions(path))


def _with_companions(path: Path) -> list[Path]:
    """A .mhd / .nhdr header with its data file(s) of the same stem."""
    files = [path]
    suffix = _itk_suffix(path)
    if suffix in (".mhd", ".nhdr"):
        stem = path.name[: -len(suffix)]
        files += [path.with_name(stem + ext) for ext in _IMAGE_COMPANIONS if path.with_name(stem + ext).is_file()]
    return files


def _id_from_relative(relative: str, strip_extension: bool) -> str:
    parts = [p for p in Path(relative).parts if p not in ("", ".")]
    if strip_extension and parts:
        name = parts[-1]
        suffix = _itk_suffix(Path(name))
        if suffix:
            name = name[: -len(suffix)]
        elif "." in name[1:]:
            name = name.rsplit(".", 1)[0]
        parts[-1] = name
    return safe_id("_".join(parts))


# ---------------------------------------------------------------------------------------------- folders
def _search_folder(root: Path, found: list[_Found], seen_series: dict[str, _Found], seen_files: set[str]) -> int:
    """Add the scans under `root` to `found`; return the number of files skipped."""
    skipped = 0
    series_in_folder: dict[Path, set[str]] = {}
    new_series: list[_Found] = []
    series_number: dict[str, int | None] = {}
    visited: set[str] = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:  # a link back up the tree, or two links to one folder
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            path = Path(folder) / name
            real_file = os.path.realpath(path)
            if real_file in seen_files:
                continue
            seen_files.add(real_file)
            relative = path.relative_to(root).as_posix()
            if _itk_suffix(path) is not None:
                found.append(_file_scan(path, relative))
                continue
            if any(relative.lower().endswith(ext) for ext in _IMAGE_COMPANIONS) and _has_header_sibling(path):
                continue
            if not (path.suffix.lower() in _DICOM_SUFFIXES or _has_dicom_preamble(path)):
                skipped += 1
                continue
            header = _dicom_header(path)
            if header is None:  # unparseable: a scan of its own, which fails saying the file is corrupt
                found.append(_file_scan(path, relative))
                continue
            uid, number, patient, has_pixels = header
            if not has_pixels:  # reports, key objects, presentation states: not images
                skipped += 1
                continue
            uid = uid or f"no-series-uid:{folder}"  # such files can only be grouped by folder
            series = seen_series.get(uid)
            if series is None:
                series = _Found(base_id="", source=Path(folder), series_uid=uid, patient=patient)
                seen_series[uid] = series
                new_series.append(series)
                series_number[uid] = number
            series.files.append(path)
    for series in new_series:
        series.source = _common_folder(series.files)
        series_in_folder.setdefault(series.source, set()).add(series.series_uid)
    for series in new_series:
        relative = series.source.relative_to(root).as_posix() if series.source != root else root.name
        base = _id_from_relative(relative, strip_extension=False)
        if len(series_in_folder[series.source]) > 1:
            number = series_number[series.series_uid]
            base += f"_s{number}" if number is not None else f"_{_short_hash(series.series_uid)}"
        series.base_id = safe_id(base)
        if series.series_uid.startswith("no-series-uid:"):
            series.series_uid = ""
        found.append(series)
    return skipped


def _dicom_header(path: Path) -> tuple[str, int | None, str, bool] | None:
    """(SeriesInstanceUID, SeriesNumber, PatientID, has pixels) from the header only; None when
    pydicom cannot parse it."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_DISCOVERY_TAGS)
    except Exception:  # noqa: BLE001 - pydicom raises many types for damaged files
        return None
    if "SOPClassUID" not in ds and "Rows" not in ds:
        return None
    try:
        number = int(ds.get("SeriesNumber")) if ds.get("SeriesNumber") not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    return str(ds.get("SeriesInstanceUID", "")), number, str(ds.get("PatientID", "")).strip(), "Rows" in ds


def _common_folder(files: list[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in files]))


def _has_header_sibling(path: Path) -> bool:
    name = path.name.lower()
    for ext in _IMAGE_COMPANIONS:
        if name.endswith(ext):
            stem = path.name[: -len(ext)]
            return any(path.with_name(stem + header).is_file() for header in (".mhd", ".nhdr"))
    return False


# ---------------------------------------------------------------------------------------------- manifest
def _read_manifest(path: Path) -> list[_Found]:
    if not path.is_file():
        raise InputError(f"manifest not found: '{path}'; give a CSV file with a 'scan' column")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            columns = [c.strip().lower() for c in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the manifest '{path.name}' ({exc}); save it as a UTF-8 CSV file") from exc
    if not rows:
        raise InputError(f"the manifest '{path.name}' has no rows; give a header line with 'scan' and one row per scan")
    if "scan" not in columns:
        raise InputError(
            f"the manifest '{path.name}' has no 'scan' column (found: {', '.join(columns) or 'none'}); "
            f"its columns are {', '.join(MANIFEST_COLUMNS)} (only 'scan' is required)"
        )
    unknown = [c for c in columns if c and c not in MANIFEST_COLUMNS]
    if unknown:
        raise InputError(
            f"the manifest '{path.name}' has unknown column(s) {', '.join(unknown)}; "
            f"its columns are {', '.join(MANIFEST_COLUMNS)}"
        )
    found = []
    for line, raw in enumerate(rows, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
        where = f"manifest '{path.name}' line {line}"
        if not row.get("scan"):
            raise InputError(f"{where}: the 'scan' cell is empty; give the path of the scan")
        scan = Path(row["scan"]).expanduser()
        scan = scan if scan.is_absolute() else path.parent / scan
        scan = Path(os.path.abspath(scan))
        slices = row.get("slices") or None
        if slices is not None and not _SLICE_RANGE.match(slices):
            raise InputError(f"{where}: slices '{slices}' is not FIRST:LAST with two whole numbers (e.g. 20:180)")
        scan_id = row.get("id") or ""
        if scan_id and safe_id(scan_id) != scan_id:
            raise InputError(
                f"{where}: id '{scan_id}' cannot name a folder; use letters, digits, '.', '_' and '-' only "
                f"(e.g. '{safe_id(scan_id)}')"
            )
        if scan.is_dir():
            files = [p for p in sorted(scan.rglob("*")) if p.is_file() and not p.name.startswith(".")]
            base = scan_id or safe_id(scan.name)
        else:
            files = _with_companions(scan)
            base = scan_id or _id_from_relative(scan.name, strip_extension=True)
        found.append(
            _Found(
                base_id=base,
                source=scan,
                series_uid=row.get("series_uid", ""),
                patient=row.get("patient", ""),
                slices=slices,
                files=files,
                id_given=bool(scan_id),
            )
        )
    given = [f.base_id for f in found if f.id_given]
    repeated = sorted({i for i in given if given.count(i) > 1})
    if repeated:
        raise InputError(
            f"the manifest '{path.name}' gives the id(s) {', '.join(repeated[:5])} to several scans; ids must be unique"
        )
    return found


# ---------------------------------------------------------------------------------------------- ids
def _drop_repeats(found: list[_Found]) -> list[_Found]:
    """A scan named twice (a file given twice, a manifest row repeating an INPUT) is one scan; the manifest's
    row wins, since it may carry an id, patient and slices."""
    by_key: dict[tuple[str, str], _Found] = {}
    for f in found:
        key = (str(f.source), f.series_uid)
        if key not in by_key or f.id_given or f.patient or f.slices:
            by_key[key] = f
    return list(by_key.values())


def _settle_ids(found: list[_Found]) -> list[str]:
    """Ids in input order; ids named by a manifest are kept, colliding derived ids get a hash of the source."""
    taken = {f.base_id for f in found if f.id_given}
    counts: dict[str, int] = {}
    for f in found:
        if not f.id_given:
            counts[f.base_id] = counts.get(f.base_id, 0) + 1
    ids = []
    for f in found:
        if f.id_given or (counts[f.base_id] == 1 and f.base_id not in taken):
            ids.append(f.base_id)
        else:
            ids.append(safe_id(f"{f.base_id}-{_short_hash(str(f.source) + '|' + f.series_uid)}"))
    return ids


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
