"""The tissues' coded meaning (SNOMED CT), read from the shipped Slicer terminology file.

`Resources/LegSegNet.term.json` is the one place the codes live: Slicer's segments, the DICOM SEG's
segment descriptions and the DICOM SR's findings all read it, so they cannot disagree. Slicer-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import LegSegNetError
from .tissues import TISSUE_KEYS

TERMINOLOGY_FILE = Path(__file__).resolve().parents[2] / "Resources" / "LegSegNet.term.json"


@dataclass(frozen=True)
class Code:
    value: str
    scheme: str  # coding scheme designator, e.g. "SCT"
    meaning: str


@dataclass(frozen=True)
class TissueTerm:
    key: str  # SAT, SM, IAT, Bone: the segment name
    category: Code  # e.g. SCT 85756007 "Tissue"
    type: Code  # e.g. SCT 71966008 "Subcutaneous tissue"
    rgb: tuple[int, int, int]  # recommended display colour


@lru_cache(maxsize=4)
def tissue_terms(path: Path = TERMINOLOGY_FILE) -> dict[str, TissueTerm]:
    """Category, type and colour of each tissue key, in the file's order."""
    try:
        context = json.loads(Path(path).read_text(encoding="utf-8"))
        terms: dict[str, TissueTerm] = {}
        for category in context["SegmentationCodes"]["Category"]:
            category_code = _code(category)
            for type_ in category.get("Type", []):
                key = type_.get("3dSlicerLabel")
                if key is not None:
                    rgb = tuple(int(c) for c in type_["recommendedDisplayRGBValue"])
                    terms[key] = TissueTerm(key, category_code, _code(type_), rgb)  # type: ignore[arg-type]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LegSegNetError(
            f"the tissue terminology file {path} is missing or damaged ({exc}); reinstall LegSegNet"
        ) from exc
    missing = [key for key in TISSUE_KEYS if key not in terms]
    if missing:
        raise LegSegNetError(
            f"the tissue terminology file {path} has no entry for {', '.join(missing)}; reinstall LegSegNet"
        )
    return terms


def _code(entry: dict) -> Code:
    return Code(str(entry["CodeValue"]), str(entry["CodingSchemeDesignator"]), str(entry["CodeMeaning"]))
