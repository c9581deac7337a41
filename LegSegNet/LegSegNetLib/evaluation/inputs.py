"""Which predicted label map goes with which reference (and CT): the three ways `legsegnet evaluate` takes them.

1. One pair: `PRED REF [--ct CT]`, two label map files. The scan's id is the reference's name (see `scan_id`).
2. A table: `--pairs pairs.csv` with a header row and the columns `id`, `pred`, `ref` and optionally `ct`
   (other columns are ignored). Relative paths are relative to the CSV file's folder; an empty `ct` cell
   means no CT for that scan.
3. Two folders: `PRED_DIR REF_DIR [--ct CT_DIR]`, matched by scan id. In each folder a scan is
   - a label map file `<id>.nii.gz` (or .nii, .nrrd, .nhdr, .mha, .mhd), or
   - a subfolder `<id>/` holding `labels.nii.gz` (what `legsegnet segment -o <id>` writes);
   a folder with a `scans/` subfolder (the layout of a cohort run, `OUTDIR/scans/<id>/labels.nii.gz`) is
   read from there. Names starting with "." are ignored. A CT folder holds `<id>.<image suffix>` or a DICOM
   series folder `<id>/`. Ids present on one side only are left out and listed (`unmatched`); no match at
   all, or one id found twice in a folder, is an error.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InputError

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
OUTPUT_LABELS = "labels.nii.gz"  # the label map a `segment` output folder holds
COHORT_SCANS = "scans"
PAIRS_COLUMNS = ("id", "pred", "ref")


@dataclass(frozen=True)
class EvaluationPair:
    id: str
    pred: Path
    ref: Path
    ct: Path | None = None


@dataclass
class PairList:
    pairs: list[EvaluationPair]
    unmatched: dict[str, list[str]] = field(default_factory=lambda: {"pred_only": [], "ref_only": []})
    source: str = "pair"  # "pair", "pairs.csv" or "folders"


def scan_id(path: Path) -> str:
    """A label map's scan id: its name without the image suffix, or its folder's name for `labels.nii.gz`."""
    name = _strip_suffix(path.name)
    if name == _strip_suffix(OUTPUT_LABELS) and path.parent.name:
        return path.parent.name
    return name


def resolve_pairs(inputs: list[str], pairs_csv: str | None = None, ct: str | None = None) -> PairList:
    """The pairs to evaluate from the command line's PRED REF (files or folders), --pairs and --ct."""
    if pairs_csv is not None:
        if inputs:
            raise InputError("give either PRED REF or --pairs FILE.csv, not both")
        if ct is not None:
            raise InputError("with --pairs, give each scan's CT in the file's 'ct' column instead of --ct")
        return PairList(read_pairs_csv(Path(pairs_csv).expanduser()), source="pairs.csv")
    if len(inputs) != 2:
        raise InputError(
            f"give the predicted and the reference label map (PRED REF: two files or two folders), or --pairs "
            f"FILE.csv; got {len(inputs)} path{'s' if len(inputs) != 1 else ''}"
        )
    pred, ref = (Path(p).expanduser() for p in inputs)
    for path, what in ((pred, "predicted label map"), (ref, "reference label map")):
        if not path.exists():
            raise InputError(f"{what} not found: '{path}'; check the path")
    if pred.is_dir() != ref.is_dir():
        folder, other = (pred, ref) if pred.is_dir() else (ref, pred)
        raise InputError(
            f"'{folder}' is a folder but '{other}' is a file; give two label map files or two folders to match by name"
        )
    if not pred.is_dir():
        return PairList([EvaluationPair(scan_id(ref), pred, ref, Path(ct).expanduser() if ct else None)])
    return match_folders(pred, ref, Path(ct).expanduser() if ct else None)


def read_pairs_csv(path: Path) -> list[EvaluationPair]:
    if not path.is_file():
        raise InputError(f"pairs file not found: '{path}'; give a CSV file with the columns id,pred,ref[,ct]")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets add a BOM
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = [(c or "").strip() for c in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the pairs file '{path.name}' ({exc}); save it as a UTF-8 CSV file") from exc
    if not rows:
        raise InputError(
            f"the pairs file '{path.name}' holds no scans; give a header row id,pred,ref[,ct] and one row per scan"
        )
    missing = [c for c in PAIRS_COLUMNS if c not in columns]
    if missing:
        raise InputError(
            f"the pairs file '{path.name}' lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(it has {', '.join(columns) or 'none'}); its header must name id, pred, ref and optionally ct"
        )
    base = path.parent
    pairs, seen = [], set()
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not any(row.values()):
            continue
        empty = [c for c in PAIRS_COLUMNS if not row.get(c)]
        if empty:
            raise InputError(
                f"line {line} of '{path.name}' has no {', '.join(empty)}; every scan needs an id, pred and ref"
            )
        if row["id"] in seen:
            raise InputError(
                f"line {line} of '{path.name}': the id '{row['id']}' appears twice; give every scan its own id"
            )
        seen.add(row["id"])
        ct_cell = row.get("ct") or None
        pairs.append(
            EvaluationPair(
                row["id"],
                _relative_to(base, row["pred"]),
                _relative_to(base, row["ref"]),
                _relative_to(base, ct_cell) if ct_cell else None,
            )
        )
    if not pairs:
        raise InputError(f"the pairs file '{path.name}' holds no scans; add one row per scan below the header")
    return pairs


def match_folders(pred_dir: Path, ref_dir: Path, ct_dir: Path | None = None) -> PairList:
    preds, refs = label_maps_by_id(pred_dir), label_maps_by_id(ref_dir)
    common = sorted(set(preds) & set(refs))
    unmatched = {"pred_only": sorted(set(preds) - set(refs)), "ref_only": sorted(set(refs) - set(preds))}
    if not common:
        raise InputError(
            f"no scan of '{pred_dir}' ({_few(preds)}) has a reference of the same name in '{ref_dir}' ({_few(refs)}); "
            "name them alike (<id>.nii.gz or <id>/labels.nii.gz) or give --pairs FILE.csv"
        )
    cts: dict[str, Path] = {}
    if ct_dir is not None:
        if not ct_dir.is_dir():
            raise InputError(
                f"with two folders of label maps, --ct must be a folder of CTs named by scan id, not '{ct_dir}'"
            )
        cts = _cts_by_id(ct_dir)
        lacking = [i for i in common if i not in cts]
        if lacking:
            raise InputError(
                f"no CT for the scan{'s' if len(lacking) > 1 else ''} {_few(lacking)} in '{ct_dir}'; give each as "
                "<id>.nii.gz (or another image file) or a DICOM folder <id>/, or leave out --ct"
            )
    pairs = [EvaluationPair(i, preds[i], refs[i], cts.get(i)) for i in common]
    return PairList(pairs, unmatched, source="folders")


def label_maps_by_id(folder: Path) -> dict[str, Path]:
    """Scan id -> label map file in a folder (see the module docstring for the layouts)."""
    if (folder / COHORT_SCANS).is_dir():
        folder = folder / COHORT_SCANS
    found: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and (entry / OUTPUT_LABELS).is_file():
            found.setdefault(entry.name, []).append(entry / OUTPUT_LABELS)
        elif entry.is_file() and _label_suffix(entry.name):
            found.setdefault(_strip_suffix(entry.name), []).append(entry)
    twice = {i: paths for i, paths in found.items() if len(paths) > 1}
    if twice:
        i, paths = next(iter(twice.items()))
        raise InputError(
            f"the scan id '{i}' names {len(paths)} label maps in '{folder}' ({', '.join(p.name for p in paths)}); "
            "keep one per scan"
        )
    return {i: paths[0] for i, paths in found.items()}


def _cts_by_id(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        i = entry.name if entry.is_dir() else _strip_suffix(entry.name)
        if entry.is_dir() or _label_suffix(entry.name):
            if i in found:
                raise InputError(f"the scan id '{i}' names two CTs in '{folder}'; keep one per scan")
            found[i] = entry
    return found


def _label_suffix(name: str) -> str | None:
    lower = name.lower()
    return next((s for s in LABEL_SUFFIXES if lower.endswith(s)), None)


def _strip_suffix(name: str) -> str:
    suffix = _label_suffix(name)
    return name[: -len(suffix)] if suffix else name


def _relative_to(base: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _few(items, limit: int = 5) -> str:
    items = list(items)
    if not items:
        return "none"
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
