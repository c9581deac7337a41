"""Measurement tables and the profile plot as MRML nodes (vtkMRMLTableNode, plot series and chart).

Everything is filled from the metrics dictionary that `metrics.json` holds (quantify's `to_dict()`),
so the numbers in Slicer are the numbers the command line writes. Only MRML/VTK; no Qt.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import vtk

from ..core.tissues import TISSUE_BY_KEY, TISSUE_KEYS

ROLE_ATTRIBUTE = "LegSegNet.Role"
SIDES = (("left", "Left"), ("right", "Right"))

# How overlapping segments are measured (Segment Editor allows overlaps; a label map does not). Shown as the
# tissue table's description and the tooltips of its columns, and stated in the README.
OVERLAP_RULE = (
    "Where segments overlap, a voxel is counted once, for the later tissue in the order "
    "SAT < SM < IAT < Bone (e.g. a voxel in both SM and Bone counts as Bone)."
)
TISSUE_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    # (column name, metrics.json key, unit, description); per-leg columns are "<Left|Right> <name>"
    ("Volume (cm3)", "volume_cm3", "cm3", "voxels x voxel volume over the measured slices. " + OVERLAP_RULE),
    ("Mean (HU)", "mean_hu", "HU", "mean HU over the tissue's voxels. " + OVERLAP_RULE),
    ("SD (HU)", "sd_hu", "HU", "sample standard deviation (n-1) of HU over the tissue's voxels"),
    ("Voxels", "voxels", "", "voxels of the tissue over the measured slices. " + OVERLAP_RULE),
)
DERIVED_ROWS: tuple[tuple[str, str, str], ...] = (
    # (metric key, unit, description)
    ("V_Fat_cm3", "cm3", "total fat volume V_SAT + V_IAT"),
    ("R_IAT_SAT", "", "IAT / SAT volume ratio"),
    ("R_SM_Fat", "", "muscle / fat volume ratio"),
    ("mu_SM_hu", "HU", "mean attenuation of skeletal muscle"),
    ("mu_Fat_hu", "HU", "mean attenuation of SAT and IAT voxels together"),
)
PROFILE_COLUMNS: tuple[str, ...] = ("slice_index", "z_mm") + tuple(f"A_{k}_cm2" for k in TISSUE_KEYS)


def _number(value) -> float:
    """JSON null (undefined mean, absent leg) becomes NaN in a numeric column."""
    if value is None:
        return math.nan
    return float(value)


def _leg_part(leg: Mapping, part: str) -> Mapping:
    # quantify's per-leg dict has the same "tissues"/"derived" layout as the whole; tolerate a flat one
    return leg.get(part, leg) if isinstance(leg, Mapping) else {}


def _reset(tableNode) -> None:
    tableNode.RemoveAllColumns()


def _add_string_column(tableNode, name: str, values: Sequence[str]) -> None:
    column = vtk.vtkStringArray()
    column.SetName(name)
    for value in values:
        column.InsertNextValue(value)
    tableNode.AddColumn(column)


def _add_number_column(tableNode, name: str, values: Iterable[float], unit: str = "", description: str = "") -> None:
    column = vtk.vtkDoubleArray()
    column.SetName(name)
    for value in values:
        column.InsertNextValue(_number(value))
    tableNode.AddColumn(column)
    if unit:
        tableNode.SetColumnUnitLabel(name, unit)
    if description:
        tableNode.SetColumnDescription(name, description)


def fill_tissue_table(tableNode, metrics: Mapping) -> None:
    """One row per tissue: `Tissue` first, then volume, mean, SD, voxels, then the same per leg."""
    was = tableNode.StartModify()
    try:
        _reset(tableNode)
        tissues = metrics.get("tissues", {})
        _add_string_column(tableNode, "Tissue", TISSUE_KEYS)
        for name, key, unit, description in TISSUE_COLUMNS:
            _add_number_column(tableNode, name, [tissues.get(k, {}).get(key) for k in TISSUE_KEYS], unit, description)
        legs = metrics.get("legs") or {}
        for side, title in SIDES:
            leg_tissues = _leg_part(legs.get(side) or {}, "tissues")
            for name, key, unit, description in TISSUE_COLUMNS:
                values = [(leg_tissues.get(k) or {}).get(key) for k in TISSUE_KEYS]
                _add_number_column(
                    tableNode, f"{title} {name}", values, unit, f"patient's {title.lower()} leg: {description}"
                )
        tableNode.SetDescription("LegSegNet tissue measurements. " + OVERLAP_RULE)
        tableNode.SetAttribute(ROLE_ATTRIBUTE, "tissues")
        _set_run_attributes(tableNode, metrics)
    finally:
        tableNode.EndModify(was)


def fill_derived_table(tableNode, metrics: Mapping) -> None:
    """One row per derived metric (paper equations 4-8): value for both legs together, then per leg."""
    was = tableNode.StartModify()
    try:
        _reset(tableNode)
        derived = metrics.get("derived", {})
        legs = metrics.get("legs") or {}
        _add_string_column(tableNode, "Metric", [key for key, _, _ in DERIVED_ROWS])
        _add_number_column(tableNode, "Value", [derived.get(key) for key, _, _ in DERIVED_ROWS])
        for side, title in SIDES:
            leg_derived = _leg_part(legs.get(side) or {}, "derived")
            _add_number_column(tableNode, title, [leg_derived.get(key) for key, _, _ in DERIVED_ROWS])
        _add_string_column(tableNode, "Unit", [unit for _, unit, _ in DERIVED_ROWS])
        _add_string_column(tableNode, "Description", [text for _, _, text in DERIVED_ROWS])
        tableNode.SetAttribute(ROLE_ATTRIBUTE, "derived")
        _set_run_attributes(tableNode, metrics)
    finally:
        tableNode.EndModify(was)


def fill_profile_table(tableNode, rows: Sequence[Mapping]) -> None:
    """The longitudinal profile: one row per analysed slice, columns as in profile.csv."""
    was = tableNode.StartModify()
    try:
        _reset(tableNode)
        for name in PROFILE_COLUMNS:
            unit = "mm" if name == "z_mm" else ("cm2" if name.endswith("_cm2") else "")
            _add_number_column(tableNode, name, [row[name] for row in rows], unit)
        tableNode.SetAttribute(ROLE_ATTRIBUTE, "profile")
    finally:
        tableNode.EndModify(was)


def fill_profile_chart(chartNode, profileTable, seriesNodes: Mapping[str, object]) -> None:
    """Tissue area against position along the leg, one line per tissue in its colour."""
    chartNode.RemoveAllPlotSeriesNodeIDs()
    for key in TISSUE_KEYS:
        series = seriesNodes[key]
        series.SetAndObserveTableNodeID(profileTable.GetID())
        series.SetXColumnName("z_mm")
        series.SetYColumnName(f"A_{key}_cm2")
        series.SetPlotType(series.PlotTypeScatter)
        series.SetMarkerStyle(series.MarkerStyleNone)
        series.SetLineStyle(series.LineStyleSolid)
        series.SetColor(*TISSUE_BY_KEY[key].rgb_float)
        series.SetAttribute(ROLE_ATTRIBUTE, f"profile-{key}")
        chartNode.AddAndObservePlotSeriesNodeID(series.GetID())
    chartNode.SetTitle("Tissue area along the leg")
    chartNode.SetXAxisTitle("S position (mm)")
    chartNode.SetYAxisTitle("area (cm2)")
    chartNode.SetLegendVisibility(True)
    chartNode.SetAttribute(ROLE_ATTRIBUTE, "profile-chart")


def _set_run_attributes(tableNode, metrics: Mapping) -> None:
    slices = metrics.get("slices")
    if slices:
        tableNode.SetAttribute("LegSegNet.Slices", f"{slices[0]}:{slices[1]}")
    for key in ("engine", "model"):
        if metrics.get(key) is not None:
            tableNode.SetAttribute(f"LegSegNet.{key.capitalize()}", str(metrics[key]))


# ---------------------------------------------------------------------- reading back
def column_names(tableNode) -> list[str]:
    table = tableNode.GetTable()
    return [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]


def table_rows(tableNode) -> list[dict]:
    """The table as a list of {column name: value} (numbers as float, strings as str)."""
    table = tableNode.GetTable()
    names = column_names(tableNode)
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c, name in enumerate(names):
            column = table.GetColumn(c)
            row[name] = column.GetValue(r) if isinstance(column, vtk.vtkStringArray) else float(column.GetValue(r))
        rows.append(row)
    return rows


def write_csv(tableNode, path: str | Path) -> Path:
    """The table as a CSV file (empty cells for NaN), header = column names."""
    path = Path(path)
    names = column_names(tableNode)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for row in table_rows(tableNode):
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in (row[n] for n in names)])
    return path


def read_profile_csv(path: str | Path, slice_offset: int = 0) -> list[dict]:
    """profile.csv rows as dicts of floats; `slice_offset` maps a slab's slice indices to the volume's."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            parsed = {k: _number(v) if v not in ("", None) else math.nan for k, v in row.items()}
            parsed["slice_index"] = parsed["slice_index"] + slice_offset
            rows.append(parsed)
    return rows


def profile_rows_as_dicts(rows) -> list[dict]:
    """quantify's `profile_rows()` as dicts, whether it gives dicts or sequences in PROFILE_COLUMNS order."""
    result = []
    for row in rows:
        if isinstance(row, Mapping):
            result.append({name: _number(row[name]) for name in PROFILE_COLUMNS})
        else:
            result.append({name: _number(value) for name, value in zip(PROFILE_COLUMNS, row)})
    return result
