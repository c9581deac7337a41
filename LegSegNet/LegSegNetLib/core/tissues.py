"""The four LegSegNet tissues: label values, keys, names and display colours.

One table that every other module (engines, quantification, reports, the Slicer segments) reads, so a
label value or colour is defined in exactly one place. Values follow the published LegSegNet model.
"""

from __future__ import annotations

from dataclasses import dataclass

BACKGROUND = 0
SAT = 1
SM = 2
IAT = 3
BONE = 4


@dataclass(frozen=True)
class Tissue:
    value: int
    key: str  # segment ID/name in Slicer, column prefix in CSV files
    name: str
    rgb: tuple[int, int, int]

    @property
    def rgb_float(self) -> tuple[float, float, float]:
        return tuple(c / 255.0 for c in self.rgb)  # type: ignore[return-value]


TISSUES: tuple[Tissue, ...] = (
    Tissue(SAT, "SAT", "subcutaneous adipose tissue", (139, 35, 35)),
    Tissue(SM, "SM", "skeletal muscle", (70, 105, 150)),
    Tissue(IAT, "IAT", "inter/intramuscular adipose tissue", (210, 120, 30)),
    Tissue(BONE, "Bone", "bone", (240, 210, 120)),
)
TISSUE_KEYS: tuple[str, ...] = tuple(t.key for t in TISSUES)
TISSUE_BY_KEY = {t.key: t for t in TISSUES}
TISSUE_BY_VALUE = {t.value: t for t in TISSUES}
MAX_LABEL = max(TISSUE_BY_VALUE)
