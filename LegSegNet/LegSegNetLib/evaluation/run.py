"""`legsegnet evaluate`: read each pair, check it, compare it, summarise the cohort, write the results as one set.

    summary = evaluate(["pred.nii.gz", "ref.nii.gz"], "out", ct="ct.nii.gz")
    summary = evaluate([], "out", pairs_csv="pairs.csv", seed=1)
    summary = evaluate(["batch-out", "references"], "out")        # two folders matched by scan id

Every grid is checked before voxels are compared: predicted and reference label maps (and the CT) must have
the same size, spacing, origin and direction within `ct_volume.grid_differences`' tolerances; nothing is
resampled. Slices are counted along the superior/inferior voxel axis, as everywhere in LegSegNet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..anatomy.axial_range import parse_slices
from ..core.errors import InputError
from ..core.input_paths import itk_path
from ..core.output_set import check_outputs
from ..core.progress import Progress
from ..core.tissues import TISSUE_KEYS
from ..scan import volume_io
from ..scan.ct_volume import CTVolume, check_same_grid, find_axial_axis, grid_differences
from ..scan.itk_files import itk_suffix
from . import statistics
from .inputs import EvaluationPair, PairList, resolve_pairs
from .metrics import ScanAgreement, compare_labels

SLICES_ALL = "all"
SLICES_REFERENCE = "reference"
SUMMARISED_METRICS = ("dice", "iou", "assd_mm", "hd95_mm", "volume_diff_cm3", "rel_volume_diff_pct")
HU_METRIC = "mean_hu_diff"


@dataclass
class ScanResult:
    pair: EvaluationPair
    agreement: ScanAgreement
    first: int  # evaluated slices, counted in the whole scan
    last: int
    z_mm: np.ndarray  # S/I position of each evaluated slice (LPS z, mm)

    @property
    def has_ct(self) -> bool:
        return self.pair.ct is not None


def evaluate(
    inputs: list[str],
    outdir,
    *,
    pairs_csv: str | None = None,
    ct: str | None = None,
    slices: str = SLICES_ALL,
    seed: int = 0,
    n_bootstrap: int = statistics.DEFAULT_BOOTSTRAP,
    progress: Progress | None = None,
) -> dict:
    """Evaluate predicted label maps against references and write OUTDIR; returns summary.json's content."""
    from . import report

    progress = progress or Progress()
    check_before_reading(outdir, inputs, pairs_csv=pairs_csv, ct=ct, slices=slices)
    pair_list = resolve_pairs(inputs, pairs_csv=pairs_csv, ct=ct)
    for side, what in (("pred_only", "no reference"), ("ref_only", "no prediction")):
        if pair_list.unmatched[side]:
            progress.note(f"left out ({what}): {', '.join(pair_list.unmatched[side])}")
    check_grids_from_headers(pair_list.pairs, progress)
    progress.stage("evaluating", total=len(pair_list.pairs))
    results = []
    for pair in pair_list.pairs:
        results.append(evaluate_pair(pair, slices))
        progress.advance()
    summary = summarize(results, pair_list, slices=slices, seed=seed, n_bootstrap=n_bootstrap)
    report.write_evaluation(outdir, results, summary, progress)
    return summary


def check_before_reading(
    outdir, inputs: list[str], *, pairs_csv: str | None = None, ct: str | None = None, slices: str = SLICES_ALL
) -> None:
    """What can be checked before any label map is read (the CLI's validation step calls it too): the --slices
    option, and that OUTDIR can take the set without replacing an input."""
    from .report import OUTPUT_FILES

    check_slices_option(slices)
    check_outputs(outdir, OUTPUT_FILES, [p for p in (*inputs, pairs_csv, ct) if p])


def check_slices_option(slices: str) -> None:
    if slices in (SLICES_ALL, SLICES_REFERENCE):
        return
    if not re.fullmatch(r"\s*-?\d+\s*:\s*-?\d+\s*", str(slices)):
        raise InputError(f"--slices wants 'all', 'reference' or FIRST:LAST (e.g. 10:80), not '{slices}'")


def check_grids_from_headers(pairs: list[EvaluationPair], progress: Progress) -> None:
    """Refuse mismatched grids from the file headers alone, before any voxel of the cohort is read."""
    progress.stage("checking grids", total=len(pairs))
    for pair in pairs:
        headers = [_header(pair.pred), _header(pair.ref)]
        if None not in headers:  # unreadable headers get their own message when the voxels are read
            _refuse_different_grids(pair, headers[1], headers[0])
        progress.advance()


def _header(path) -> sitk.ImageFileReader | None:
    if not path.is_file() or itk_suffix(path) is None:
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(itk_path(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader if reader.GetDimension() == 3 else None


def _refuse_different_grids(pair: EvaluationPair, ref, pred) -> None:
    problems = grid_differences(ref, pred)  # readers and images both answer GetSize/GetSpacing/...
    if problems:
        raise InputError(
            f"scan '{pair.id}': the prediction '{pair.pred}' and the reference '{pair.ref}' lie on different voxel "
            f"grids ({'; '.join(problems)}); evaluate does not resample: export both on the CT's grid"
        )


def evaluate_pair(pair: EvaluationPair, slices: str = SLICES_ALL) -> ScanResult:
    """Read one pair (and its CT), check the grids, compare the chosen slices."""
    ref_image = volume_io.read_label_image(pair.ref)
    pred_image = volume_io.read_label_image(pair.pred)
    _refuse_different_grids(pair, ref_image, pred_image)
    grid = CTVolume(image=ref_image, axial_axis=find_axial_axis(ref_image.GetDirection()), source=str(pair.ref))
    ct_volume = None
    if pair.ct is not None:
        ct_volume = volume_io.read_ct(pair.ct)
        check_same_grid(ct_volume.image, ref_image, what=f"reference label map '{pair.ref.name}' of scan '{pair.id}'")
    first, last = _slice_range(slices, grid, pair)
    ref_slab = grid.slab(first, last)
    pred_slab = grid.slab_from_image(pred_image, first, last)
    hu = None if ct_volume is None else ct_volume.slab(first, last)
    agreement = compare_labels(pred_slab, ref_slab, grid.slab_spacing, hu)
    return ScanResult(pair, agreement, first, last, grid.slice_z_mm(first, last))


def _slice_range(slices: str, grid: CTVolume, pair: EvaluationPair) -> tuple[int, int]:
    if slices == SLICES_ALL:
        return 0, grid.n_slices - 1
    if slices == SLICES_REFERENCE:
        slab = grid.slab()
        present = np.flatnonzero(slab.reshape(slab.shape[0], -1).any(axis=1))
        if present.size == 0:
            raise InputError(
                f"scan '{pair.id}': the reference '{pair.ref.name}' holds no label, so --slices reference leaves no "
                "slice to evaluate; check the file or use --slices all"
            )
        return int(present[0]), int(present[-1])
    try:
        return parse_slices(slices, grid.n_slices)
    except InputError as exc:
        raise InputError(f"scan '{pair.id}': {exc}") from exc


# ---------------------------------------------------------------------------------------------- summary
def summarize(
    results: list[ScanResult],
    pair_list: PairList,
    *,
    slices: str = SLICES_ALL,
    seed: int = 0,
    n_bootstrap: int = statistics.DEFAULT_BOOTSTRAP,
) -> dict:
    """summary.json: per tissue the metrics' cohort statistics and the volume (and mean HU) agreement."""
    bootstrap = statistics.BootstrapSample(len(results), n_bootstrap, seed)
    with_ct = [r for r in results if r.has_ct]
    tissues = {}
    for key in TISSUE_KEYS:
        rows = [r.agreement.tissues[key] for r in results]
        summarised = {m: statistics.describe([getattr(row, m) for row in rows], bootstrap) for m in SUMMARISED_METRICS}
        entry = {
            "metrics": summarised,
            "volume_cm3": statistics.agreement(
                [row.volume_pred_cm3 for row in rows], [row.volume_ref_cm3 for row in rows], bootstrap
            ),
            "mean_hu": None,
        }
        if with_ct:
            hu_rows = [r.agreement.tissues[key] for r in with_ct]
            hu_bootstrap = (
                bootstrap
                if len(with_ct) == len(results)
                else statistics.BootstrapSample(len(with_ct), n_bootstrap, seed)
            )
            summarised[HU_METRIC] = statistics.describe([row.mean_hu_diff for row in hu_rows], hu_bootstrap)
            entry["mean_hu"] = statistics.agreement(
                [row.mean_hu_pred for row in hu_rows], [row.mean_hu_ref for row in hu_rows], hu_bootstrap
            )
        tissues[key] = entry
    return {
        "legsegnet_version": __version__,
        "n_scans": len(results),
        "n_scans_with_ct": len(with_ct),
        "pairs_from": pair_list.source,
        "slices": slices,
        "seed": seed,
        "bootstrap_replicates": n_bootstrap,
        "unmatched": pair_list.unmatched,
        "scans": [
            {
                "id": r.pair.id,
                "pred": str(r.pair.pred),
                "ref": str(r.pair.ref),
                "ct": None if r.pair.ct is None else str(r.pair.ct),
                "slices": [r.first, r.last],
            }
            for r in results
        ],
        "tissues": tissues,
        "definitions": DEFINITIONS,
    }


DEFINITIONS = {
    "dice": "2|P&R| / (|P|+|R|) over the evaluated slices; NaN when both are empty, 0 when one is",
    "iou": "|P&R| / |P|R|; NaN when both are empty",
    "assd_mm": "mean of the surface-to-surface distances of both directions together (surface: voxels with a face "
    "neighbour outside the mask; distances between voxel centres with the voxel spacing); inf when one "
    "mask is empty",
    "hd95_mm": "max of the two directed 95th percentiles of the surface distances; inf when one mask is empty",
    "volume_diff_cm3": "V_pred - V_ref",
    "rel_volume_diff_pct": "100 (V_pred - V_ref) / V_ref; NaN when the reference is empty",
    "mean_hu_diff": "mean HU over the predicted voxels - mean HU over the reference voxels (with a CT)",
    "statistics": "mean, SD (n-1) and median over scans of the finite values; NaN (undefined) and inf are left out "
    "and counted; ci95_mean: percentile bootstrap over scans, seeded",
    "pearson": "Pearson r of V_pred against V_ref (or mean HU), 95% CI by Fisher's z, tanh(atanh(r) +- 1.95996 / sqrt(n-3))",
    "icc": "ICC(A,1) (McGraw & Wong 1996; = Shrout & Fleiss ICC(2,1)): two-way, absolute agreement, single "
    "measurement, so a systematic bias lowers it; 95% CI by the same bootstrap",
    "bland_altman": "differences pred - ref: bias = mean, limits of agreement = bias +- 1.96 SD (n-1)",
}


def tissue_rows(results: list[ScanResult]) -> list[dict]:
    """evaluation.csv's rows: one per scan and tissue."""
    rows = []
    for r in results:
        for key in TISSUE_KEYS:
            rows.append(
                {
                    "id": r.pair.id,
                    "tissue": key,
                    **r.agreement.tissues[key].to_dict(),
                    "first_slice": r.first,
                    "last_slice": r.last,
                }
            )
    return rows


def slice_rows(results: list[ScanResult]) -> list[dict]:
    """slices.csv's rows: per scan, each slice from the first to the last one holding a label."""
    rows = []
    for r in results:
        for k in r.agreement.slice_rows():
            row = {"id": r.pair.id, "slice_index": r.first + k, "z_mm": float(r.z_mm[k])}
            for j, key in enumerate(TISSUE_KEYS):
                row[f"dice_{key}"] = float(r.agreement.slice_dice[k, j])
            rows.append(row)
    return rows
