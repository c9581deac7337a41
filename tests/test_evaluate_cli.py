"""`legsegnet evaluate` end to end on real files: phantom CTs, their exact labels as references, and the threshold
engine's real predictions, in the three input forms (one pair, pairs.csv, two folders)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import stats

from LegSegNetLib import cli
from LegSegNetLib.core.progress import Progress
from LegSegNetLib.core.tissues import TISSUE_KEYS
from LegSegNetLib.engines import make_engine
from LegSegNetLib.evaluation import metrics
from LegSegNetLib.evaluation.report import EVALUATION_COLUMNS, OUTPUT_FILES, SLICE_COLUMNS
from LegSegNetLib.phantom import make_leg_phantom

IDS = ("p01", "p02", "p03", "p04")
SHAPE = (6, 80, 112)


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "LegSegNetLib.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def number(cell: str) -> float:
    return math.nan if cell == "" else float(cell)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """ct/<id>.nii.gz, ref/<id>.nii.gz (exact phantom labels), batch/scans/<id>/labels.nii.gz (threshold engine).

    p04 has a reference but no prediction (a failed scan of a cohort run)."""
    root = tmp_path_factory.mktemp("cohort")
    for folder in ("ct", "ref"):
        (root / folder).mkdir()
    arrays = {}
    engine = make_engine("threshold")
    for i, scan in enumerate(IDS):
        phantom = make_leg_phantom(shape=SHAPE, seed=10 + i, touching=i == 1)
        volume, reference = phantom.to_volume()
        sitk.WriteImage(volume.image, str(root / "ct" / f"{scan}.nii.gz"))
        sitk.WriteImage(reference, str(root / "ref" / f"{scan}.nii.gz"))
        pred = engine.segment(volume.slab(), volume.slab_spacing, Progress())
        if scan != "p04":
            (root / "batch" / "scans" / scan).mkdir(parents=True)
            sitk.WriteImage(volume.labels_to_image(pred), str(root / "batch" / "scans" / scan / "labels.nii.gz"))
        arrays[scan] = (volume, phantom.labels, pred)
    return root, arrays


@pytest.fixture(scope="module")
def cohort_run(cohort, tmp_path_factory):
    """The folder form with a CT folder, run once through the real command (a subprocess)."""
    root, _ = cohort
    out = tmp_path_factory.mktemp("runs") / "cohort-out"
    done = run_cli(
        "evaluate", str(root / "batch"), str(root / "ref"), "--ct", str(root / "ct"), "-o", str(out), "--seed", "3"
    )
    assert done.returncode == 0, done.stderr
    return out, done


# ---------------------------------------------------------------------------------------------- happy paths
def test_one_pair_with_ct_gives_the_numbers_of_compare_labels(cohort, tmp_path):
    root, arrays = cohort
    out = tmp_path / "one"
    done = run_cli(
        "evaluate",
        str(root / "batch" / "scans" / "p01" / "labels.nii.gz"),
        str(root / "ref" / "p01.nii.gz"),
        "--ct",
        str(root / "ct" / "p01.nii.gz"),
        "-o",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    assert "1 scan evaluated" in done.stdout and "SM   Dice" in done.stdout
    rows = read_csv(out / "evaluation.csv")
    assert tuple(rows[0]) == EVALUATION_COLUMNS and [r["tissue"] for r in rows] == list(TISSUE_KEYS)
    assert {r["id"] for r in rows} == {"p01"}  # the reference's name
    volume, truth, pred = arrays["p01"]
    expected = metrics.compare_labels(pred, truth, volume.slab_spacing, hu=volume.slab())
    for row in rows:
        want = expected.tissues[row["tissue"]]
        for column in ("dice", "iou", "mean_hu_diff"):
            assert number(row[column]) == pytest.approx(getattr(want, column), rel=1e-12, abs=1e-12), column
        for column in ("assd_mm", "hd95_mm", "volume_pred_cm3", "volume_ref_cm3"):  # NIfTI stores float32 spacing
            assert number(row[column]) == pytest.approx(getattr(want, column), rel=1e-6), column
        assert int(row["voxels_both"]) == want.voxels_both
        assert (row["first_slice"], row["last_slice"]) == ("0", str(SHAPE[0] - 1))
    slices = read_csv(out / "slices.csv")
    assert tuple(slices[0]) == SLICE_COLUMNS
    assert [int(r["slice_index"]) for r in slices] == list(range(SHAPE[0]))
    np.testing.assert_allclose([float(r["z_mm"]) for r in slices], volume.slice_z_mm())
    np.testing.assert_allclose([number(r["dice_SM"]) for r in slices], expected.slice_dice[:, 1], rtol=1e-12)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_scans"] == 1 and summary["tissues"]["SM"]["metrics"]["dice"]["ci95_mean"] is None


def test_folders_in_the_cohort_layout_are_matched_by_id(cohort_run):
    out, done = cohort_run
    summary = json.loads((out / "summary.json").read_text())
    assert [s["id"] for s in summary["scans"]] == ["p01", "p02", "p03"]
    assert summary["unmatched"] == {"pred_only": [], "ref_only": ["p04"]}
    assert "left out (no prediction): p04" in done.stderr
    assert summary["n_scans_with_ct"] == 3 and summary["pairs_from"] == "folders"
    assert all(s["pred"].endswith("labels.nii.gz") and s["ct"].endswith(".nii.gz") for s in summary["scans"])
    rows = read_csv(out / "evaluation.csv")
    assert len(rows) == 3 * len(TISSUE_KEYS)
    assert all(0.5 < float(r["dice"]) <= 1.0 for r in rows if r["tissue"] != "IAT")


def test_bland_altman_correlation_and_icc_read_back_equal_a_hand_computation(cohort_run):
    out, _ = cohort_run
    rows = read_csv(out / "evaluation.csv")
    summary = json.loads((out / "summary.json").read_text())
    for key in TISSUE_KEYS:
        pred = np.array([float(r["volume_pred_cm3"]) for r in rows if r["tissue"] == key])
        ref = np.array([float(r["volume_ref_cm3"]) for r in rows if r["tissue"] == key])
        diff = pred - ref
        ba = summary["tissues"][key]["volume_cm3"]["bland_altman"]
        assert ba["n"] == 3
        assert ba["bias"] == pytest.approx(diff.mean(), abs=1e-9)
        assert ba["sd_diff"] == pytest.approx(diff.std(ddof=1), abs=1e-9)
        assert ba["loa_lower"] == pytest.approx(diff.mean() - 1.96 * diff.std(ddof=1), abs=1e-9)
        assert ba["loa_upper"] == pytest.approx(diff.mean() + 1.96 * diff.std(ddof=1), abs=1e-9)
        pearson = summary["tissues"][key]["volume_cm3"]["pearson"]
        assert pearson["r"] == pytest.approx(stats.pearsonr(pred, ref).statistic, abs=1e-9)
        assert pearson["ci95"] is None  # Fisher's z needs 4 scans
        hu_pred = np.array([float(r["mean_hu_pred"]) for r in rows if r["tissue"] == key])
        hu_ref = np.array([float(r["mean_hu_ref"]) for r in rows if r["tissue"] == key])
        hu_ba = summary["tissues"][key]["mean_hu"]["bland_altman"]
        assert hu_ba["bias"] == pytest.approx((hu_pred - hu_ref).mean(), abs=1e-9)
        dice = np.array([float(r["dice"]) for r in rows if r["tissue"] == key])
        described = summary["tissues"][key]["metrics"]["dice"]
        assert described["mean"] == pytest.approx(dice.mean()) and described["median"] == pytest.approx(np.median(dice))
        assert described["sd"] == pytest.approx(dice.std(ddof=1))
        low, high = described["ci95_mean"]
        assert dice.min() - 1e-12 <= low <= described["mean"] <= high <= dice.max() + 1e-12
    for figure in ("bland_altman.png", "correlation.png", "dice_boxplot.png"):
        image = sitk.ReadImage(str(out / figure))  # a real PNG
        assert min(image.GetSize()[:2]) > 200, figure


def test_pairs_csv_with_relative_paths_and_a_seeded_bootstrap(cohort, tmp_path):
    root, _ = cohort
    table = root / "pairs.csv"
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "pred", "ref", "ct", "note"])
        for i in range(9):  # enough scans for the bootstrap to draw many different cohorts
            scan = IDS[i % 3]
            writer.writerow(
                [
                    f"case{i}-{scan}",
                    f"batch/scans/{scan}/labels.nii.gz",
                    f"ref/{scan}.nii.gz",
                    "" if scan == "p03" else f"ct/{scan}.nii.gz",
                    "ignored",
                ]
            )
    runs = {}
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        assert (
            cli.main(
                [
                    "evaluate",
                    "--pairs",
                    str(table),
                    "-o",
                    str(tmp_path / name),
                    "--seed",
                    seed,
                    "--bootstrap",
                    "500",
                    "--quiet",
                ]
            )
            == 0
        )
        runs[name] = (tmp_path / name / "summary.json").read_text()
    assert runs["a"] == runs["b"]  # the same seed, the same file
    a, c = json.loads(runs["a"]), json.loads(runs["c"])
    assert a["tissues"]["SM"]["metrics"]["dice"]["ci95_mean"] != c["tissues"]["SM"]["metrics"]["dice"]["ci95_mean"]
    assert a["tissues"]["SM"]["metrics"]["dice"]["mean"] == c["tissues"]["SM"]["metrics"]["dice"]["mean"]
    assert [s["id"] for s in a["scans"]][:3] == ["case0-p01", "case1-p02", "case2-p03"] and a["n_scans"] == 9
    assert a["n_scans_with_ct"] == 6 and a["tissues"]["SM"]["mean_hu"]["bland_altman"]["n"] == 6
    assert a["bootstrap_replicates"] == 500 and a["seed"] == 5


def test_reference_slices_only(cohort, tmp_path):
    root, arrays = cohort
    volume, truth, pred = arrays["p02"]
    sparse = np.zeros_like(truth)
    sparse[2:5] = truth[2:5]  # a reference annotated on slices 2-4 only
    ref_path = tmp_path / "sparse.nii.gz"
    sitk.WriteImage(volume.labels_to_image(sparse), str(ref_path))
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "evaluate",
                str(root / "batch" / "scans" / "p02" / "labels.nii.gz"),
                str(ref_path),
                "-o",
                str(out),
                "--slices",
                "reference",
                "--quiet",
            ]
        )
        == 0
    )
    rows = read_csv(out / "evaluation.csv")
    assert {(r["first_slice"], r["last_slice"]) for r in rows} == {("2", "4")}
    expected = metrics.compare_labels(pred[2:5], truth[2:5], volume.slab_spacing)
    for row in rows:
        assert float(row["dice"]) == pytest.approx(expected.tissues[row["tissue"]].dice, rel=1e-12)
    assert [int(r["slice_index"]) for r in read_csv(out / "slices.csv")] == [2, 3, 4]


def test_empty_masks_follow_the_documented_conventions_in_the_files(tmp_path):
    ref = np.zeros((3, 8, 8), np.uint8)
    pred = np.zeros_like(ref)
    ref[:, 2:6, 2:6] = 2  # SM in both
    pred[:, 2:6, 3:7] = 2
    ref[1, 0, 0] = 3  # IAT only in the reference
    paths = []
    for name, array in (("pred", pred), ("ref", ref)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.8, 0.8, 4.0))
        paths.append(str(tmp_path / f"{name}.nrrd"))
        sitk.WriteImage(image, paths[-1])
    assert cli.main(["evaluate", *paths, "-o", str(tmp_path / "out"), "--quiet"]) == 0
    rows = {r["tissue"]: r for r in read_csv(tmp_path / "out" / "evaluation.csv")}
    assert rows["IAT"]["dice"] == "0.0" and rows["IAT"]["assd_mm"] == "inf" and rows["IAT"]["hd95_mm"] == "inf"
    assert rows["IAT"]["rel_volume_diff_pct"] == "-100.0"
    for tissue in ("SAT", "Bone"):  # in neither map: undefined, empty cells
        assert rows[tissue]["dice"] == rows[tissue]["assd_mm"] == rows[tissue]["rel_volume_diff_pct"] == ""
        assert rows[tissue]["volume_pred_cm3"] == "0.0"
    assert rows["SM"]["mean_hu_diff"] == ""  # no CT given
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["tissues"]["IAT"]["metrics"]["assd_mm"]["n_infinite"] == 1
    assert summary["tissues"]["SAT"]["metrics"]["dice"] == {
        "n": 0,
        "n_undefined": 1,
        "n_infinite": 0,
        "mean": None,
        "sd": None,
        "median": None,
        "ci95_mean": None,
    }


def test_other_files_in_an_existing_output_folder_are_kept(cohort, tmp_path):
    root, _ = cohort
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "evaluation.csv").write_text("old")
    pred, ref = root / "batch" / "scans" / "p03" / "labels.nii.gz", root / "ref" / "p03.nii.gz"
    assert cli.main(["evaluate", str(pred), str(ref), "-o", str(out), "--quiet"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "evaluation.csv").read_text() != "old"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------- refusals
def _one_error_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_grids_that_differ_are_refused_and_nothing_is_written(cohort, tmp_path):
    root, arrays = cohort
    volume, truth, _ = arrays["p01"]
    shifted = volume.labels_to_image(truth)
    shifted.SetOrigin([o + 1.0 for o in shifted.GetOrigin()])
    bad = tmp_path / "batch" / "scans"
    for scan in ("p01", "p02", "p03"):
        (bad / scan).mkdir(parents=True)
        source = root / "batch" / "scans" / scan / "labels.nii.gz"
        (bad / scan / "labels.nii.gz").write_bytes(source.read_bytes())
    sitk.WriteImage(shifted, str(bad / "p03" / "labels.nii.gz"))  # the last scan of the cohort is off by 1 mm
    out = tmp_path / "deeper" / "out"
    line = _one_error_line(run_cli("evaluate", str(tmp_path / "batch"), str(root / "ref"), "-o", str(out), "--quiet"))
    assert "scan 'p03'" in line and "different voxel grids" in line and "origin" in line
    assert not (tmp_path / "deeper").exists()


def test_labels_outside_0_to_4_are_refused_and_nothing_is_written(cohort, tmp_path):
    root, arrays = cohort
    volume, truth, _ = arrays["p01"]
    wrong = truth.copy()
    wrong[2, 10, 10] = 7
    path = tmp_path / "seven.nii.gz"
    sitk.WriteImage(volume.labels_to_image(wrong), str(path))
    line = _one_error_line(
        run_cli("evaluate", str(path), str(root / "ref" / "p01.nii.gz"), "-o", str(tmp_path / "out"), "--quiet")
    )
    assert "values 7 that are not LegSegNet labels" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["{ref}/p01.nii.gz", "{ref}"], "is a folder but"),
        (["{ref}/p01.nii.gz"], "got 1 path"),
        (["{ref}/p01.nii.gz", "{ref}/p02.nii.gz", "--pairs", "{root}/pairs-bad.csv"], "not both"),
        (["--pairs", "{root}/pairs-bad.csv"], "lacks the column ref"),
        (["{root}/empty", "{ref}"], "no scan of"),
        (["{ref}/p01.nii.gz", "{ref}/p02.nii.gz", "--slices", "3-4"], "--slices wants"),
        (["{ref}/p01.nii.gz", "{ref}/p02.nii.gz", "--slices", "4:99"], "outside"),
        (["{ref}/p01.nii.gz", "{ref}/missing.nii.gz"], "not found"),
    ],
)
def test_bad_arguments_give_one_error_line_and_exit_2(cohort, tmp_path, capsys, args, needle):
    root, _ = cohort
    (root / "pairs-bad.csv").write_text("id,pred\na,b\n")
    (root / "empty").mkdir(exist_ok=True)
    argv = ["evaluate", *[a.format(root=root, ref=root / "ref") for a in args], "-o", str(tmp_path / "out"), "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "out").exists()


def test_without_matplotlib_the_tables_are_written_and_the_figures_skipped(cohort, tmp_path):
    # 3D Slicer's Python has no matplotlib
    root, _ = cohort
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from LegSegNetLib.cli import main\n"
        f"sys.exit(main(['evaluate', {str(root / 'batch')!r}, {str(root / 'ref')!r}, '-o', {str(tmp_path / 'out')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (
        "matplotlib is not installed: dice_boxplot.png, bland_altman.png, correlation.png were not drawn" in done.stderr
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["evaluation.csv", "slices.csv", "summary.json"]
