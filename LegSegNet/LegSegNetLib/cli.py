"""The `legsegnet` command line (commands, options and output files are documented in README.md).

    legsegnet segment INPUT -o OUTDIR [--engine auto|threshold|nnunet] [--slices FIRST:LAST | --auto-range] ...
    legsegnet quantify CT LABELS -o OUTDIR
    legsegnet batch INPUT... -o OUTDIR [--manifest FILE.csv] [--workers N | --scheduler ADDR | --slurm] [engine options]
    legsegnet models list | install SOURCE [--name NAME] [--sha256 HEX] | remove NAME | default NAME
    legsegnet dataset add CT LABELS --dataset DIR --slices LIST [--patient ID] [--round N] [--format png|hu]
    legsegnet review RESULTS [--mode stratified|uncertain] [--slices-per-scan K] [--seed N] [--min-gap G]
    legsegnet train DATASET [--from MODEL] [--epochs N] [--device ...] [--name NAME] [--folds 0] [--resume]
    legsegnet evaluate PRED REF [--ct CT] -o OUTDIR | --pairs FILE.csv -o OUTDIR | PRED_DIR REF_DIR -o OUTDIR

Exit status 0 on success, 2 for a bad input or argument, 1 for anything else; failures print one
`error:` line on stderr (the traceback only with --debug). The worker process (worker.py) parses the
same arguments, so Slicer and the terminal accept exactly the same options.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .core.errors import InputError, LegSegNetError, error_exit_code
from .core.errors import one_line as _one_line
from .core.progress import Progress, for_stream
from .core.signals import stop_signals_raise
from .core.text import format_duration
from .core.tissues import TISSUES


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # every (sub)command takes --debug, so it may stand anywhere; SUPPRESS keeps a subcommand's absent
        # --debug from overwriting one given before the subcommand
        self.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show the Python traceback on failure"
        )

    # argparse prints usage and exits by itself; the contract wants one `error:` line and exit 2.
    def error(self, message: str):  # type: ignore[override]
        raise InputError(f"{message} (see '{self.prog} --help')")


def build_parser(prog: str = "legsegnet") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="Lower-extremity CT tissue segmentation and body composition.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    seg = commands.add_parser("segment", help="segment a CT and measure the tissues")
    seg.add_argument("input", help="NIfTI, NRRD, MetaImage, a DICOM series folder, or one 2D slice (DICOM / 8-bit PNG)")
    seg.add_argument("-o", "--outdir", required=True, help="output folder (created; files replaced atomically)")
    _add_engine_options(seg)
    seg.add_argument(
        "--dicom",
        action="store_true",
        help="DICOM series input only: also write seg.dcm (DICOM SEG) and sr.dcm (TID 1500 measurement report)",
    )
    seg.add_argument("--quiet", action="store_true", help="no progress bar")

    batch = commands.add_parser("batch", help="segment and measure many scans on Dask (resumable, cohort.csv)")
    from .batch.options import add_batch_options

    add_batch_options(batch, _positive_int)
    _add_engine_options(batch)
    batch.add_argument("--quiet", action="store_true", help="no progress lines (failures are still listed)")

    quant = commands.add_parser("quantify", help="measure an existing (e.g. corrected) label map on its CT")
    quant.add_argument("ct")
    quant.add_argument("labels", help="label map on the CT's grid, values 0-4, or a DICOM SEG of the CT series")
    quant.add_argument("-o", "--outdir", required=True)
    quant.add_argument("--slices", default=None, metavar="FIRST:LAST", help="default: the slices holding labels")
    quant.add_argument(
        "--dicom",
        action="store_true",
        help="DICOM series CT only: also write seg.dcm (DICOM SEG) and sr.dcm (TID 1500 measurement report)",
    )
    quant.add_argument("--quiet", action="store_true")

    _add_models_parser(commands)
    _add_dataset_parser(commands)
    _add_train_parser(commands)
    _add_evaluate_parser(commands)
    _add_review_parser(commands)
    return parser


def _add_evaluate_parser(commands) -> None:
    from .evaluation.statistics import DEFAULT_BOOTSTRAP

    ev = commands.add_parser(
        "evaluate",
        help="compare predicted label maps with reference label maps (Dice, ASSD, HD95, volumes, agreement statistics)",
    )
    ev.add_argument(
        "inputs",
        nargs="*",
        metavar="PRED REF",
        help="predicted and reference label map (two files), or two folders matched by scan id",
    )
    ev.add_argument("-o", "--outdir", required=True, help="output folder (created; files replaced atomically)")
    ev.add_argument("--pairs", default=None, metavar="FILE.csv", help="CSV with columns id,pred,ref and optional ct")
    ev.add_argument("--ct", default=None, help="the CT (one pair) or a folder of CTs named by scan id: adds mean HU")
    ev.add_argument(
        "--slices",
        default="all",
        metavar="all|reference|FIRST:LAST",
        help="slices to compare: all (default), those from the reference's first to last labelled "
        "slice, or an inclusive range",
    )
    ev.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the bootstrap CIs (default 0)")
    ev.add_argument(
        "--bootstrap",
        type=_positive_int,
        default=DEFAULT_BOOTSTRAP,
        metavar="N",
        help=f"bootstrap replicates for the CIs (default {DEFAULT_BOOTSTRAP})",
    )
    ev.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The options of `segment` that choose the engine and the slices (shared with `batch`)."""
    parser.add_argument("--engine", default="auto", choices=["auto", "threshold", "nnunet"])
    parser.add_argument("--model", default=None, help="nnU-Net model folder or installed model name")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--slices", default=None, metavar="FIRST:LAST", help="inclusive axial slice range")
    parser.add_argument("--auto-range", action="store_true", help="analyse only the slices where legs are found")
    parser.add_argument("--folds", default=None, type=_parse_folds, help="nnU-Net folds to ensemble, e.g. 0,1,2")
    tta = parser.add_mutually_exclusive_group()
    tta.add_argument("--tta", dest="tta", action="store_true", default=None, help="mirroring test-time augmentation")
    tta.add_argument("--no-tta", dest="tta", action="store_false")
    parser.add_argument("--batch-size", type=_positive_int, default=None, help="slices per forward pass (nnU-Net)")
    parser.add_argument(
        "--checkpoint",
        default=None,
        choices=["best", "final"],
        help="nnU-Net checkpoint of each fold (default: final for an nnU-Net results folder, as "
        "nnUNetv2_predict; best for the published layout)",
    )
    parser.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "bf16"],
        help="nnU-Net on the CPU: bf16 is faster on CPUs with AVX-512 BF16 or AMX, and its labels may differ "
        "from fp32's on a few voxels (default fp32, or $LEGSEGNET_NNUNET_PRECISION); recorded in metrics.json",
    )


def _add_dataset_parser(commands) -> None:
    data = commands.add_parser("dataset", help="training sets of corrected slices (model-in-the-loop annotation)")
    actions = data.add_subparsers(dest="dataset_command", metavar="add", required=True, parser_class=_Parser)
    add = actions.add_parser("add", help="add corrected slices of a CT to an nnU-Net v2 training set")
    add.add_argument("ct", help="the CT (NIfTI, NRRD, MetaImage, DICOM series folder)")
    add.add_argument("labels", help="its corrected label map on the CT's grid, values 0-4")
    add.add_argument("--dataset", required=True, metavar="DIR", help="the training set folder (created if missing)")
    add.add_argument(
        "--slices",
        required=True,
        metavar="LIST",
        help="the reviewed slices, e.g. 12,40,77 (ranges as FIRST:LAST), counted along the S/I voxel axis",
    )
    add.add_argument(
        "--patient",
        default=None,
        metavar="ID",
        help="pseudonymous patient ID: slices of one patient stay on one side of the train/validation split "
        "(default: the scan counts as its own patient)",
    )
    add.add_argument(
        "--round",
        dest="training_round",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="annotation round these corrections belong to (default 0)",
    )
    add.add_argument(
        "--format",
        dest="input_format",
        choices=["png", "hu"],
        default=None,
        help="input format of the model to refine: png (the published weights) or hu; "
        "default: the dataset's, png for a new one",
    )
    add.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_train_parser(commands) -> None:
    train = commands.add_parser("train", help="train the next round's nnU-Net model on a training set and install it")
    train.add_argument("dataset", help="the training set folder (made with 'legsegnet dataset add')")
    train.add_argument(
        "--from",
        dest="from_model",
        default=None,
        metavar="MODEL",
        help="installed model name or model folder to fine-tune (default: train from scratch)",
    )
    train.add_argument(
        "--epochs", type=_positive_int, default=None, help="epochs (default: 1000 from scratch, 200 when fine-tuning)"
    )
    train.add_argument(
        "--iterations",
        type=_positive_int,
        default=None,
        metavar="N",
        help="iterations per epoch (default 250; validation runs a fifth as many, at most 50)",
    )
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    train.add_argument("--name", default=None, help="name of the new model (default: DATASET-roundN)")
    train.add_argument(
        "--folds",
        default=None,
        type=_parse_train_folds,
        help="patient-level folds to train, e.g. 0 or 0,1,2,3,4, or 'all' (no validation); default 0",
    )
    train.add_argument(
        "--round",
        dest="training_round",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="round number of the new model (default: the --from model's round + 1)",
    )
    train.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        metavar="LR",
        help="initial learning rate (default: 0.01 from scratch, 0.001 when fine-tuning)",
    )
    train.add_argument(
        "--batch-size", type=_positive_int, default=None, help="slices per iteration (default: the plans')"
    )
    train.add_argument(
        "--holdout",
        dest="holdout_fraction",
        type=_fraction,
        default=None,
        metavar="FRACTION",
        help="share of patients held out from training and scored on (default 0.2; decided once per patient and "
        "kept in DATASET/legsegnet-holdout.json; 0 holds out no new patient)",
    )
    train.add_argument(
        "--resume", action="store_true", help="continue the interrupted run --name from its last checkpoint"
    )
    train.add_argument(
        "--default", dest="make_default", action="store_true", help="make the new model the one --engine auto uses"
    )
    train.add_argument(
        "--workdir", default=None, metavar="DIR", help="run folder (default: DATASET/training-runs/NAME)"
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_review_parser(commands) -> None:
    from .annotation import review

    rev = commands.add_parser(
        "review", help="which slices of a segmentation to review and correct (stratified random or most uncertain)"
    )
    rev.set_defaults(quiet=True)  # its stdout is the result; nothing to show progress of
    rev.add_argument("results", metavar="RESULTS", help="the OUTDIR of 'legsegnet segment' (its profile.csv)")
    rev.add_argument(
        "--mode",
        default=review.MODE_STRATIFIED,
        choices=review.MODES,
        help="stratified: one random slice in each of K equal parts of the range (default); uncertain: the K "
        "slices where nnU-Net was least sure (profile.csv's uncertainty column), --min-gap apart",
    )
    rev.add_argument(
        "--slices-per-scan",
        type=_positive_int,
        default=review.DEFAULT_SLICES_PER_SCAN,
        metavar="K",
        help=f"slices to review (default {review.DEFAULT_SLICES_PER_SCAN})",
    )
    rev.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the stratified sample (default 0)")
    rev.add_argument(
        "--min-gap",
        type=_positive_int,
        default=review.DEFAULT_MIN_GAP,
        metavar="G",
        help=f"uncertain mode: sampled slices at least G slices apart (default {review.DEFAULT_MIN_GAP})",
    )
    rev.add_argument("--json", action="store_true", help="print the sample as JSON")


def _add_models_parser(commands) -> None:
    models = commands.add_parser("models", help="list, install and remove nnU-Net models (the per-user model store)")
    # `models` prints its own results: quiet=True keeps main() from printing a segmentation summary.
    models.set_defaults(quiet=True)
    actions = models.add_subparsers(
        dest="models_command", metavar="list|install|remove|default", required=True, parser_class=_Parser
    )
    listing = actions.add_parser("list", help="the installed models (the store: $LEGSEGNET_MODELS_DIR or per-user)")
    listing.add_argument("--json", action="store_true", help="machine-readable list")
    install = actions.add_parser(
        "install", help="install a model from a folder, a .zip, an https:// URL or hf:OWNER/REPO"
    )
    install.add_argument(
        "source",
        help="model folder, .zip file, https:// URL of a zip, or hf:OWNER/REPO (published: hf:GogoChen/LegSegNet)",
    )
    install.add_argument("--name", default=None, help="name in the store (default: from the source)")
    install.add_argument(
        "--sha256", default=None, metavar="HEX", help="expected SHA-256 of the archive; refused on mismatch"
    )
    install.add_argument("--default", dest="make_default", action="store_true", help="use it for --engine auto")
    install.add_argument("--quiet", dest="models_quiet", action="store_true", help="no progress bar")
    remove = actions.add_parser("remove", help="remove an installed model")
    remove.add_argument("name")
    default = actions.add_parser("default", help="mark the installed model that --engine auto uses")
    default.add_argument("name")


def _parse_folds(text: str) -> list[int]:
    try:
        folds = [int(part) for part in text.split(",") if part.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--folds wants comma-separated fold numbers like 0,1,2, not '{text}'"
        ) from None
    if not folds or any(f < 0 for f in folds):
        raise argparse.ArgumentTypeError(f"--folds wants non-negative fold numbers like 0,1,2, not '{text}'")
    return folds


def _parse_train_folds(text: str) -> list[int] | str:
    if text.strip().lower() == "all":
        return "all"
    return _parse_folds(text)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"wants a number from 0 up to (not including) 1, not '{text}'")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"wants a whole number of 0 or more, not '{text}'")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"wants a whole number of at least 1, not '{text}'")
    return value


def check_before_work(args: argparse.Namespace) -> None:
    """The one validation step, before anything is read or written (shared by the CLI and the worker): every
    folder a command writes can take its files (a folder, not read-only, names the file system can hold, no
    link to nowhere, no input among the outputs) and what can be checked of the arguments without the scan.
    Each command's library function makes the same checks first, for callers other than the CLI."""
    if args.command in ("segment", "quantify"):
        from .pipeline import check_before_reading

        inputs = [args.input] if args.command == "segment" else [args.ct, args.labels]
        check_before_reading(args.outdir, inputs, dicom=args.dicom)
    elif args.command == "evaluate":
        from .evaluation.run import check_before_reading

        check_before_reading(args.outdir, args.inputs, pairs_csv=args.pairs, ct=args.ct, slices=args.slices)
    elif args.command == "dataset":
        from .annotation.dataset import check_before_reading

        check_before_reading(args.dataset, [args.ct, args.labels], args.slices)
    elif args.command == "models" and args.models_command != "list":
        from .models.store import ModelStore

        ModelStore().check_writable()
    elif args.command == "train":
        from .annotation.training_runs import RUNS_DIR
        from .core.paths import check_writable_folder
        from .models.store import ModelStore

        # the trained model is installed at the end: a store that cannot take it must not cost a training
        ModelStore().check_writable()
        check_writable_folder(
            args.workdir or Path(args.dataset).expanduser() / RUNS_DIR,
            "--workdir" if args.workdir else "the training set's run folder",
        )


def engine_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of pipeline.segment (and engines.make_engine) that _add_engine_options parsed."""
    return {
        "engine": args.engine,
        "model": args.model,
        "device": args.device,
        "folds": args.folds,
        "tta": args.tta,
        "batch_size": args.batch_size,
        "checkpoint": args.checkpoint,
        "precision": args.precision,
    }


def run_command(args: argparse.Namespace, progress: Progress) -> dict:
    """Carry out a parsed command; shared by the CLI and the worker."""
    check_before_work(args)
    if args.command == "models":
        return _run_models(args, progress)
    if args.command == "dataset":
        return _run_dataset(args, progress)
    if args.command == "train":
        return _run_train(args, progress)
    if args.command == "evaluate":
        return _run_evaluate(args, progress)
    if args.command == "review":
        return _run_review(args, progress)
    if args.command == "batch":
        raise InputError("'batch' runs from the command line (legsegnet batch ...), not in the worker process")
    from . import pipeline

    if args.command == "segment":
        return pipeline.segment(
            args.input,
            args.outdir,
            slices=args.slices,
            auto_range=args.auto_range,
            dicom=args.dicom,
            progress=progress,
            **engine_options(args),
        )
    if args.command == "quantify":
        return pipeline.quantify_files(
            args.ct, args.labels, args.outdir, slices=args.slices, dicom=args.dicom, progress=progress
        )
    raise InputError(f"unknown command '{args.command}'")


def _run_models(args: argparse.Namespace, progress: Progress) -> dict:
    """`legsegnet models ...`: text on stdout for people; only progress events under the worker."""
    from .core.progress import JsonLinesProgress
    from .models.store import ModelStore

    store = ModelStore()
    for_people = not isinstance(progress, JsonLinesProgress)
    say = print if for_people else (lambda *_a, **_k: None)
    action = args.models_command
    if action == "list":
        infos = store.list()
        # with each trained model's held-out scores (annotation/holdout.py), which the table shows too
        listed = [
            {**info.to_dict(), "held_out": ((info.metadata or {}).get("training") or {}).get("held_out")}
            for info in infos
        ]
        if args.json and for_people:
            print(json.dumps({"store": str(store.root), "models": listed}, indent=2))
        elif not infos:
            say(f"no models installed in {store.root}")
            say("install the published weights with: legsegnet models install hf:GogoChen/LegSegNet")
        else:
            _print_model_table(infos, say)
            say(f"store: {store.root}")
        return {"command": "models list", "store": str(store.root), "models": listed}
    if action == "install":
        reporter = progress if not for_people or args.models_quiet else for_stream(sys.stderr)
        try:
            info = store.install(
                args.source, name=args.name, sha256=args.sha256, progress=reporter, make_default=args.make_default
            )
        except BaseException:
            reporter.abandon()
            raise
        reporter.finish()
        say(
            f"installed '{info.name}' from {info.source} ({info.input_format} input, folds {', '.join(map(str, info.folds))})"
        )
        if info.licence:
            url = info.metadata.get("licence_url")
            say(f"licence: {info.licence}" + (f" ({url})" if url else ""))
        say(f"sha256 ({info.sha256_of}): {info.sha256}")
        if info.is_default:
            say("it is the model --engine auto uses")
        return {"command": "models install", "model": info.to_dict()}
    if action == "remove":
        store.remove(args.name)
        say(f"removed '{args.name}' from {store.root}")
        return {"command": "models remove", "name": args.name}
    if action == "default":
        info = store.set_default(args.name)
        say(f"'{info.name}' is now the model --engine auto uses")
        return {"command": "models default", "model": info.to_dict()}
    raise InputError(f"unknown models command '{action}'")


def _for_people(progress: Progress) -> bool:
    from .core.progress import JsonLinesProgress

    return not isinstance(progress, JsonLinesProgress)


def _run_dataset(args: argparse.Namespace, progress: Progress) -> dict:
    """`legsegnet dataset add`: a summary line on stdout for people; the result event under the worker."""
    from .annotation import dataset

    if args.dataset_command != "add":
        raise InputError(f"unknown dataset command '{args.dataset_command}'")
    result = dataset.add_files(
        args.dataset,
        args.ct,
        args.labels,
        args.slices,
        patient=args.patient,
        training_round=args.training_round,
        input_format=args.input_format,
        progress=progress,
    )
    if _for_people(progress) and not args.quiet:
        progress.finish()
        parts = [
            f"{len(result.added)} added",
            f"{len(result.replaced)} replaced (labels changed)",
            f"{len(result.unchanged)} unchanged (already in the set)",
        ]
        print(
            f"slices: {', '.join(parts)}; the training set now holds {result.total_cases} slices "
            f"({result.input_format} format) in {result.dataset}"
        )
    return result.to_dict()


def _run_train(args: argparse.Namespace, progress: Progress) -> dict:
    """`legsegnet train`: trains, installs the model, prints its name for people."""
    from .annotation import training

    options = training.TrainOptions(
        from_model=args.from_model,
        epochs=args.epochs,
        device=args.device,
        name=args.name,
        folds=args.folds,
        training_round=args.training_round,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        make_default=args.make_default,
        workdir=args.workdir,
    )
    if args.holdout_fraction is not None:
        options.holdout_fraction = args.holdout_fraction
    if args.iterations:
        options.iterations_per_epoch = args.iterations
        options.val_iterations_per_epoch = max(1, min(training.DEFAULT_VAL_ITERATIONS, args.iterations // 5))
    result = training.train(args.dataset, options, resume=args.resume, progress=progress)
    if _for_people(progress) and not args.quiet:
        progress.finish()
        print(
            f"model '{result.model_name}' (round {result.training_round}) trained in "
            f"{format_duration(result.seconds)} and installed; use it with --model {result.model_name}"
        )
    return result.to_dict()


def _run_review(args: argparse.Namespace, progress: Progress) -> dict:
    """`legsegnet review`: the slices to review, one line (or JSON) on stdout; nothing is written."""
    from .annotation import review

    first, last, uncertainty = review.read_results_profile(args.results)
    state = review.ReviewState.start(first, last, args.slices_per_scan, args.seed, args.mode, uncertainty, args.min_gap)
    result = {
        "command": "review",
        "results": str(args.results),
        "mode": state.mode,
        "range": [first, last],
        "slices": list(state.slices),
        "uncertainty": {str(s): uncertainty.get(s) for s in state.slices} if uncertainty else None,
    }
    if _for_people(progress):
        if args.json:
            print(json.dumps(result, indent=2, allow_nan=False, default=str))
        else:
            print(",".join(map(str, state.slices)))
    return result


def _run_evaluate(args: argparse.Namespace, progress: Progress) -> dict:
    """`legsegnet evaluate`: writes OUTDIR; a per-tissue line of the cohort's main numbers for people."""
    from .evaluation.run import evaluate

    summary = evaluate(
        args.inputs,
        args.outdir,
        pairs_csv=args.pairs,
        ct=args.ct,
        slices=args.slices,
        seed=args.seed,
        n_bootstrap=args.bootstrap,
        progress=progress,
    )
    if _for_people(progress) and not args.quiet:
        progress.finish()
        print(f"{summary['n_scans']} scan{'s' if summary['n_scans'] != 1 else ''} evaluated")
        for key, tissue in summary["tissues"].items():
            m = tissue["metrics"]
            r = tissue["volume_cm3"]["pearson"]["r"]
            print(
                f"  {key:<4} Dice {_number(m['dice']['mean'], 3)}  ASSD {_number(m['assd_mm']['mean'], 2)} mm  "
                f"HD95 {_number(m['hd95_mm']['mean'], 2)} mm  volume difference "
                f"{_number(m['volume_diff_cm3']['mean'], 1)} cm3" + (f"  volume r {r:.3f}" if r is not None else "")
            )
        print(f"results in {args.outdir}")
    return summary


def _number(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _print_model_table(infos, say) -> None:
    rows = [
        (
            "NAME",
            "DEFAULT",
            "INPUT",
            "ROUND",
            "FOLDS",
            "INSTALLED",
            "LICENCE",
            "HELD-OUT DICE SAT/SM/IAT/BONE",
            "CHANGE FROM --from MODEL",
            "SOURCE",
        )
    ]
    for info in infos:
        dice, change = _held_out_cells(info.metadata)
        rows.append(
            (
                info.name,
                "*" if info.is_default else "",
                info.input_format,
                "-" if info.round is None else str(info.round),
                ",".join(map(str, info.folds)),
                info.installed_at[:19].replace("T", " "),
                info.licence or "-",
                dice,
                change,
                info.source,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        say("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])


def _held_out_cells(metadata: dict) -> tuple[str, str]:
    """`models list`'s held-out cells of a trained model: its Dice per tissue on the training set's held-out
    slices, and the change from the model it was fine-tuned from on the same slices ('-' where there is none)."""
    held = ((metadata or {}).get("training") or {}).get("held_out") or {}
    dice = (held.get("model") or {}).get("dice")
    if not dice:
        return "-", "-"
    keys = [t.key for t in TISSUES]
    text = "/".join("-" if dice.get(k) is None else f"{dice[k]:.3f}" for k in keys)
    change = held.get("change")
    if not change:
        return text, "-"
    return text, "/".join("-" if change.get(k) is None else f"{change[k]:+.3f}" for k in keys)


def join_option_values(argv: list[str], options=("--slices",)) -> list[str]:
    """`--slices -3:4` → `--slices=-3:4`: argparse would take a value starting with '-' for an option,
    and the user deserves the range check's message, not "expected one argument"."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in options and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from .engines import use_passive_openmp_threads

    use_passive_openmp_threads()
    argv = join_option_values(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in argv
    progress: Progress = Progress()
    stdout = _SummaryStdout(sys.stdout)
    sys.stdout = stdout
    try:
        with stop_signals_raise():  # SIGTERM and SIGHUP unwind like Ctrl-C: every clean-up runs
            args = build_parser().parse_args(argv)
            debug = getattr(args, "debug", False)
            if args.command == "batch":  # its own progress lines, summary and exit status (1: some scans failed)
                from .batch.runner import run_batch

                return run_batch(args)
            if not getattr(args, "quiet", False):
                progress = for_stream(sys.stderr)
            metrics = run_command(args, progress)
            progress.finish()
            if not getattr(args, "quiet", False) and args.command in ("segment", "quantify"):
                _print_summary(metrics, args.outdir)
            stdout.flush()
        if stdout.error is not None and _stdout_is_the_result(args) and not isinstance(stdout.error, BrokenPipeError):
            raise LegSegNetError(f"could not write to standard output ({stdout.error.strerror or stdout.error})")
        return 0  # the results are complete: a summary nobody could read is no failure
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one error line
        progress.abandon()
        code, message = error_exit_code(exc)
        with contextlib.suppress(OSError, ValueError, AttributeError):  # stderr may be full, closed, or None
            if sys.stderr is None:
                return code
            if debug:
                traceback.print_exc()
            print(f"error: {_one_line(message)}", file=sys.stderr, flush=True)
        return code
    finally:
        sys.stdout = stdout.stream


def _stdout_is_the_result(args: argparse.Namespace) -> bool:
    """`models list` and `review` print what was asked for; every other command's results are files, stdout a
    summary."""
    return (args.command == "models" and args.models_command == "list") or args.command == "review"


class _SummaryStdout:
    """sys.stdout while a command runs: a reader that went away (a closed pipe) or a full device (/dev/full)
    does not fail a command whose results are already complete; the first failure is kept in `error`."""

    def __init__(self, stream) -> None:
        self.stream = stream
        # Python's sys.stdout is None when the process was started with it closed (`>&-`)
        self.error: OSError | None = None if stream is not None else OSError(errno.EBADF, "it is closed")

    def write(self, text: str) -> int:
        if self.error is None:
            try:
                return self.stream.write(text)
            except OSError as exc:
                self._failed(exc)
        return len(text)

    def flush(self) -> None:
        if self.error is None:
            try:
                self.stream.flush()
            except OSError as exc:
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        self.error = exc
        # Python flushes stdout once more when it exits, and would fail (exit 120) on what is still buffered:
        # the descriptor now leads to the null device.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.stream.fileno())
            os.close(null)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _print_summary(metrics: dict, outdir: str) -> None:
    tissues = metrics.get("tissues", {})
    parts = []
    for key, t in tissues.items():
        mean = t.get("mean_hu")
        mean_text = "n/a" if mean is None else f"{mean:.0f} HU"
        parts.append(f"{key} {t.get('volume_cm3', 0.0):.1f} cm3 ({mean_text})")
    first, last = metrics.get("slices", [None, None])
    print(f"slices {first}:{last}, engine {metrics.get('engine')}: " + ", ".join(parts))
    print(f"results in {outdir}")


if __name__ == "__main__":
    sys.exit(main())
