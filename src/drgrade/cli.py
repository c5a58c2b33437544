"""The `drgrade` command line: each command is a thin call into the library."""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

from drgrade import __version__
from drgrade.config import add_config_arguments
from drgrade.data.download import DATASETS, RETINAMNIST
from drgrade.errors import DrgradeError


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="dataset folder, npz file or prepared folder")
    _add_layout_options(parser)


def _add_layout_options(parser: argparse.ArgumentParser) -> None:
    from drgrade.data.sources import LAYOUTS

    parser.add_argument("--format", default="auto", choices=["auto", *LAYOUTS],
                        help="dataset layout (auto: detected when unambiguous)")
    parser.add_argument("--labels", type=Path, help="label CSV (or folder) if not in SOURCE")
    parser.add_argument("--images", type=Path, help="image folder if not where the layout says")


def _read(args: argparse.Namespace):
    from drgrade.data.sources import read_source

    return read_source(args.source, args.format, args.labels, args.images)


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print the dataset summary."""
    from drgrade.data.inspect import describe

    print(describe(_read(args)))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Crop, resize and cache a dataset into --out."""
    from drgrade.data.manifest import ALL_TEST, assign_splits, check_fractions
    from drgrade.data.prepare import check_options, prepare_dataset

    test_fraction = ALL_TEST if args.all_test else args.test_fraction
    # Wrong options fail now, not after reading a large dataset.
    check_options(args.size, args.enhance, args.image_format, args.workers)
    check_fractions(args.val_fraction, test_fraction)
    manifest = _read(args).require_images(args.allow_missing)
    for warning in manifest.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    manifest.table = assign_splits(manifest.table, args.val_fraction, test_fraction, args.seed,
                                   args.split_from)
    result = prepare_dataset(
        manifest, args.out, size=args.size, enhance=args.enhance, workers=args.workers,
        image_format=args.image_format,
    )
    print(result.summary())
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Download and verify a dataset, or explain how to get it."""
    from drgrade.data.download import download

    path = download(args.dataset, args.out, args.size)
    size = "" if args.size == 28 else f" --image-size {args.size}"
    print(f"{path}: verified (MD5). Train on it: drgrade train --config "
          f"configs/retinamnist.yaml --data {path}{size}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train one experiment config into a run folder."""
    from drgrade.config import config_overrides, load_config
    from drgrade.fit import train
    from drgrade.run_folder import CONFIG_FILE, chosen_epoch, epochs_logged

    config_file = args.config
    if args.resume and config_file is None and args.out:
        # Resuming continues the run as it was configured; flags may still extend it.
        config_file = Path(args.out) / CONFIG_FILE
    config = load_config(config_file, config_overrides(args))
    run = train(config, resume=args.resume)
    epoch, kappa = chosen_epoch(run)
    print(f"run folder: {run}\nbest validation kappa {kappa:.3f}, at epoch {epoch} of "
          f"{epochs_logged(run)} (checkpoints/best.ckpt); score it on the test split with "
          f"`drgrade evaluate {run}`")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a run's best checkpoint (or a checkpoint) on one split."""
    from drgrade.evaluation.evaluate import evaluate
    from drgrade.evaluation.metrics import metrics_table
    from drgrade.run_folder import METRICS_FILE, PREDICTIONS_FILE

    if args.resamples < 1:
        raise DrgradeError(f"--resamples must be at least 1, got {args.resamples}")
    metrics = evaluate(args.checkpoint, args.data, args.split, args.tta, args.out,
                       layout=args.format, labels=args.labels, images=args.images,
                       cache=args.cache, batch_size=args.batch_size, workers=args.workers,
                       resamples=args.resamples, seed=args.seed)
    out = Path(metrics["out"])
    print(f"{metrics['checkpoint']} on the {args.split} split of {metrics['data']}"
          f"{' (flip TTA)' if args.tta else ''}:")
    print(metrics_table(metrics))
    print(f"\nwritten: {out / METRICS_FILE}, {out / PREDICTIONS_FILE} and figures in "
          f"{out / 'figures'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Paired comparison of two evaluations of the same images: B - A with its interval."""
    from drgrade.evaluation.compare import run_compare

    comparison = run_compare(args.a, args.b, args.split, args.data, args.resamples, args.seed,
                             args.out)
    print("\n".join(comparison.lines()))
    if args.out:
        print(f"\nwritten: {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole pipeline offline on synthetic photographs."""
    from drgrade.demo import run_demo
    from drgrade.evaluation.metrics import metrics_table

    metrics = run_demo(args.out, n_images=args.images, seed=args.seed, epochs=args.epochs)
    print(f"\ntest split of the synthetic dataset ({args.out / 'run'}):")
    print(metrics_table(metrics))
    print(f"\nrun folder: {args.out / 'run'} (log.csv, checkpoints/, figures/, metrics.json)")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    """Run a grid of trainings, then write the report."""
    from drgrade.config import config_overrides
    from drgrade.evaluation.report import write_report
    from drgrade.experiment import run_experiment

    # --out is the experiment's folder here; each cell gets its own run folder inside it.
    overrides = {k: v for k, v in config_overrides(args).items()
                 if v is not None and k != "out"}
    run_experiment(args.experiment, args.out, overrides)
    markdown_file, html_file = write_report(args.out)
    print(f"report: {markdown_file} and {html_file}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """Search training options with Optuna, then report the recipe chosen on validation."""
    from drgrade.config import config_overrides
    from drgrade.search import run_search

    # --out is the search's folder here; each trial gets its own run folder inside it.
    overrides = {k: v for k, v in config_overrides(args).items()
                 if v is not None and k != "out"}
    markdown_file, html_file = run_search(args.search, args.out, args.trials, overrides)
    print(f"report: {markdown_file} and {html_file}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report of the runs in a folder."""
    from drgrade.evaluation.report import write_report

    markdown_file, html_file = write_report(args.runs)
    print(f"report: {markdown_file} and {html_file}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Grade raw photographs into a CSV, optionally with heat maps."""
    # --devices 1 alone is the single-process path; more processes (or nodes) are Lightning's.
    if args.num_nodes is not None or (args.devices or 1) > 1:
        from drgrade.distributed_predict import predict_distributed

        summary = predict_distributed(
            args.model, args.paths, args.out, devices=args.devices or 1,
            num_nodes=args.num_nodes or 1, accelerator=args.accelerator,
            batch_size=args.batch_size, tta=args.tta, kaggle=args.kaggle, explain=args.explain,
            workers=args.workers)
        if summary is not None:  # rank 0 only: one summary, not one per process
            print(summary)
        return 0
    from drgrade.inference.loader import load_grader
    from drgrade.inference.predict import predict

    grader = load_grader(args.model, {"cpu": "cpu", "gpu": "cuda"}.get(args.accelerator))
    summary = predict(grader, args.paths, args.out, batch_size=args.batch_size, tta=args.tta,
                      kaggle=args.kaggle, explain=args.explain,
                      explain_method=args.explain_method, workers=args.workers)
    print(summary)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX and check onnxruntime against PyTorch."""
    from drgrade.inference.export import export_onnx
    from drgrade.inference.predict import find_images
    from drgrade.inference.torch_grader import TorchGrader

    grader = TorchGrader.from_checkpoint(args.checkpoint, device="cpu")
    images = find_images(args.check_images) if args.check_images else []
    print(export_onnx(grader, args.onnx, images))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the grading web page for a model until interrupted."""
    from drgrade.serve.app import serve

    try:
        serve(args.model, args.host, args.port, args.max_upload_mb, args.explain_method,
              args.allowed_host, args.max_concurrent, args.read_timeout)
    except KeyboardInterrupt:
        pass  # Ctrl+C is how a server is meant to stop
    print("drgrade serve: stopped")
    return 0


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless there is none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    # The allowed values live with the library code that uses them.
    from drgrade.data.fundus import ENHANCEMENTS
    from drgrade.data.prepare import FORMATS as IMAGE_FORMATS
    from drgrade.inference.grader import HEAT_MAP_METHODS

    parser = argparse.ArgumentParser(
        prog="drgrade",
        description="Grade diabetic retinopathy (0 no DR .. 4 proliferative) "
                    "from colour fundus photographs.",
    )
    parser.add_argument("--version", action="version", version=f"drgrade {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Every option's help line shows its default.
    command = partial(commands.add_parser, formatter_class=DefaultsHelpFormatter)

    download = command(
        "download", help="fetch RetinaMNIST (MD5-checked), or how to get the others",
        description="Download a public DR dataset into --out and verify its published MD5 "
                    "(a file already there is verified, not overwritten). EyePACS, APTOS, DDR, "
                    "Messidor-2 and IDRiD need an account or a manual download: for those it "
                    "prints the steps.",
    )
    download.add_argument("dataset", choices=DATASETS)
    download.add_argument("--out", type=Path, default=Path("data"), help="folder to put it in")
    download.add_argument("--size", type=int, default=28, choices=sorted(RETINAMNIST),
                          help="RetinaMNIST image size (MedMNIST+ publishes 28, 64, 128, 224)")
    download.set_defaults(run=cmd_download)

    inspect = command(
        "inspect", help="summarise a dataset: layout, splits, grades, baselines, problems",
        description="Summarise a dataset before training: layout detected, images per split "
                    "and grade, majority-class accuracy, patient overlap, problems found.",
    )
    _add_source_options(inspect)
    inspect.set_defaults(run=cmd_inspect)

    prepare = command(
        "prepare", help="crop the fundus, resize and cache a dataset (resumable)",
        description="Raw photographs -> cached dataset folder (images, manifest.csv, "
                    "rejected.csv). Rerunning skips finished images.",
    )
    _add_source_options(prepare)
    prepare.add_argument("--out", type=Path, required=True, help="output folder")
    prepare.add_argument("--size", type=int, default=512, help="side of the square output")
    prepare.add_argument("--enhance", choices=ENHANCEMENTS, default=ENHANCEMENTS[0],
                         help="Ben Graham local-colour subtraction")
    prepare.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                         help="parallel processes")
    prepare.add_argument("--image-format", choices=list(IMAGE_FORMATS), default="jpg",
                         help="cached image format: jpg (quality 95, 4:4:4) or png")
    prepare.add_argument("--allow-missing", action="store_true",
                         help="go on with the listed images that exist, reporting the rest")
    from drgrade.data.manifest import SPLIT_FROM  # light: pandas loads only when used

    prepare.add_argument("--split-from", choices=SPLIT_FROM, default=SPLIT_FROM[0],
                         help="official: keep the train/val/test split the layout ships "
                              "(IDRiD and EyePACS releases, DDR, MedMNIST, the lab's) and "
                              "split only images without one; random: a new split for all")
    prepare.add_argument("--val-fraction", type=float, default=0.1,
                         help="share of unsplit images for validation, patient-grouped")
    prepare.add_argument("--test-fraction", type=float, default=0.2,
                         help="share of unsplit images for test, patient-grouped; 1: the "
                              "whole source is test")
    prepare.add_argument("--all-test", action="store_true",
                         help="the whole source is the test split (an external test set); "
                              "the same as --test-fraction 1")
    prepare.add_argument("--seed", type=int, default=0, help="seed of the split")
    prepare.set_defaults(run=cmd_prepare)

    train = commands.add_parser(
        "train", help="train a grader (Lightning: checkpoints, resume, multi-GPU)",
        description="Train one experiment: a YAML config (--config) with any option "
                    "overridden by its flag. Writes a run folder (--out) with the resolved "
                    "config, log.csv, checkpoints/best.ckpt and checkpoints/last.ckpt.",
    )
    train.add_argument("--config", type=Path, help="experiment YAML file")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from checkpoints/last.ckpt")
    add_config_arguments(train)
    train.set_defaults(run=cmd_train)

    evaluate = command(
        "evaluate", help="score a trained grader: accuracy beside the baseline, kappa, "
                         "per-grade recall, referable-DR sensitivity/specificity/AUC",
        description="Evaluate a run folder (its best checkpoint) or a checkpoint on one split "
                    "of its own data or of any other dataset (an external test set: a "
                    "prepared folder or any raw layout, prepared once into --cache exactly as "
                    "the model's card says). Writes predictions.csv, metrics.json with 95% "
                    "bootstrap intervals (patients resampled) and figures (confusion matrices, "
                    "referable ROC, reliability). The baseline is the run's training majority.",
    )
    from drgrade.data.manifest import EVALUATED_SPLITS

    evaluate.add_argument("checkpoint", type=Path, metavar="RUN_OR_CHECKPOINT")
    evaluate.add_argument("--data", help="data to evaluate on (default: the run's own data); "
                                         "a prepared folder, an npz or a raw dataset layout")
    _add_layout_options(evaluate)
    evaluate.add_argument("--split", default="test", choices=EVALUATED_SPLITS,
                          help="split to score (all: every image of --data)")
    evaluate.add_argument("--tta", action="store_true", help="average over flipped views")
    evaluate.add_argument("--out", type=Path,
                          help="folder for the results (default: the run folder for its own "
                               "test split, RUN/evaluations/<data>-<split> otherwise)")
    evaluate.add_argument("--cache", type=Path,
                          help="where raw photographs are prepared for the model (default: "
                               "OUT/cache; reused by the next evaluation)")
    evaluate.add_argument("--batch-size", type=int, default=32, help="images per batch")
    evaluate.add_argument("--workers", type=int,
                          help="processes preparing raw photographs and loading images "
                               "(default: every CPU for preparing, none for loading)")
    evaluate.add_argument("--resamples", type=int, default=2000,
                          help="bootstrap resamples for the 95%% confidence intervals")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    evaluate.set_defaults(run=cmd_evaluate)

    compare = command(
        "compare", help="is B better than A on the same images? paired bootstrap of the "
                        "difference in accuracy, kappa and referable AUC, DeLong's test",
        description="Compare two evaluations of the same images, read from their "
                    "predictions.csv: a run folder (its own test split) or an evaluation "
                    "folder (RUN/evaluations/NAME). Images are paired by id; each bootstrap "
                    "resample draws patients once and scores both models on them.",
    )
    compare.add_argument("a", type=Path, metavar="RUN_OR_EVAL_A")
    compare.add_argument("b", type=Path, metavar="RUN_OR_EVAL_B")
    compare.add_argument("--split", default="test", choices=EVALUATED_SPLITS,
                         help="the split both evaluations must hold")
    compare.add_argument("--data", metavar="NAME",
                         help="compare RUN/evaluations/NAME (or NAME-SPLIT) of both run folders "
                              "instead of their own test split")
    compare.add_argument("--resamples", type=int, default=2000,
                         help="paired bootstrap resamples for the 95%% intervals")
    compare.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    compare.add_argument("--out", type=Path, metavar="FILE.json",
                         help="also write the comparison as JSON")
    compare.set_defaults(run=cmd_compare)

    experiment = command(
        "experiment", help="run a grid of trainings (archs x pretrained x sizes x seeds) "
                           "and write the report",
        description="Run every cell of an experiment file's grid as its own run folder "
                    "under --out, skipping finished cells and resuming an interrupted one, "
                    "evaluate each on its test split, then write the report. Training "
                    "options given as flags apply to every cell (grid values win).",
    )
    experiment.add_argument("experiment", type=Path, help="experiment YAML file (base + grid)")
    experiment.add_argument("--out", type=Path, required=True,
                            help="experiment folder: one run folder per cell, and the report")
    add_config_arguments(experiment, skip=("out",))
    experiment.set_defaults(run=cmd_experiment)

    search = command(
        "search", help="search training options with Optuna (seeded, resumable), chosen on "
                       "validation kappa, and report the recipe with its test metrics",
        description="Run a search file's trials (TPE sampler, median pruning on validation "
                    "kappa) as run folders OUT/trial-N, the study kept in OUT/study.db: a "
                    "rerun continues up to --trials in total and resumes a trial cut off "
                    "mid-training. Then scores the best trial on its test split and writes "
                    "OUT/search.md and search.html. Training options given as flags apply "
                    "to every trial.",
    )
    search.add_argument("search", type=Path, help="search YAML file (base + set + space)")
    search.add_argument("--out", type=Path, required=True,
                        help="search folder: study.db, one run folder per trial, the report")
    search.add_argument("--trials", type=int,
                        help="trials in total, those already run included (default: the "
                             "file's `trials:`, else 20)")
    add_config_arguments(search, skip=("out",))
    search.set_defaults(run=cmd_search)

    report = command(
        "report", help="write report.md and report.html for a folder of runs",
        description="The lab's table per image size (test accuracy, kappa, referable AUC "
                    "with 95% intervals; pretrained vs scratch), every run's evaluations "
                    "(external datasets too) with intervals, the validation-fixed threshold "
                    "and patient-level referral, paired comparisons (pretrained vs scratch, "
                    "adjacent image sizes) with DeLong's p, accuracy curves, confusion "
                    "matrices, reliability diagrams and the resolution plot, from the run "
                    "folders in RUNS; unfinished cells are marked.",
    )
    report.add_argument("runs", type=Path, metavar="RUNS_DIR")
    report.set_defaults(run=cmd_report)

    demo = command(
        "demo", help="run the whole pipeline offline on synthetic photographs (~2-5 CPU min)",
        description="Write synthetic fundus photographs whose lesions follow the grade, "
                    "prepare them, train ResNet-18 from scratch and evaluate it on a held-out "
                    "split. Needs no data and no network. Rerunning reuses finished stages.",
    )
    demo.add_argument("--out", type=Path, default=Path("drgrade-demo"), help="output folder")
    demo.add_argument("--images", type=int, default=800, help="synthetic photographs to make")
    demo.add_argument("--epochs", type=int, help="training epochs (default: the demo recipe's)")
    demo.add_argument("--seed", type=int, default=0, help="seed of data, split and training")
    demo.set_defaults(run=cmd_demo)

    predict = command(
        "predict", help="grade raw photographs into a CSV (probabilities, referable, heat maps)",
        description="Grade raw fundus photographs with a trained model, applying exactly the "
                    "preprocessing recorded in it (fundus crop, size, enhancement). Unusable "
                    "files become rows with the reason in the error column; the run goes on.",
    )
    predict.add_argument("model", type=Path, metavar="MODEL",
                         help="run folder (its best checkpoint), .ckpt, or .onnx written by "
                              "`drgrade export` (runs on onnxruntime, needs nothing else)")
    predict.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                         help="photographs, or folders searched recursively for images")
    predict.add_argument("--out", type=Path, default=Path("predictions.csv"),
                         help="CSV: image, grade, grade_name, p0..p4 (or score), referable, "
                              "error")
    predict.add_argument("--batch-size", type=int, default=16, help="images per batch")
    predict.add_argument("--tta", action="store_true", help="average over flipped views")
    predict.add_argument("--kaggle", action="store_true",
                         help="write Kaggle's image,level (image = file name without "
                              "extension) instead; failed images are printed, not written")
    predict.add_argument("--explain", type=Path, metavar="DIR",
                         help="write a heat map PNG per graded image into DIR "
                              "(photograph beside the overlay)")
    predict.add_argument("--explain-method", choices=list(HEAT_MAP_METHODS),
                         default="gradcam", help="heat map method")
    # One core fewer than there are, so the model keeps one (benchmarks/RESULTS.md).
    predict.add_argument("--workers", type=int, default=min(4, max(1, (os.cpu_count() or 1) - 1)),
                         help="processes decoding and cropping photographs (0: in the main "
                              "process)")
    predict.add_argument("--devices", type=int,
                         help="processes (one per GPU) grading through Lightning's predict "
                              "loop, with DDP when more than one; a PyTorch model only "
                              "(default: one process, no Lightning)")
    predict.add_argument("--num-nodes", type=int,
                         help="machines running --devices processes each (--out on a file "
                              "system they share)")
    predict.add_argument("--accelerator", choices=["cpu", "gpu", "auto"], default="auto",
                         help="where the PyTorch model runs (auto: a GPU if there is one)")
    predict.set_defaults(run=cmd_predict)

    export = command(
        "export", help="export a trained model to ONNX, checked against PyTorch",
        description="Write the model as one ONNX file with a dynamic batch axis and the "
                    "preprocessing, head and grade names in its metadata, so that "
                    "`drgrade predict model.onnx ...` needs nothing else. Fails if "
                    "onnxruntime's outputs differ from PyTorch's by more than 1e-4.",
    )
    export.add_argument("checkpoint", type=Path, metavar="RUN_OR_CHECKPOINT")
    export.add_argument("--onnx", type=Path, required=True, help="output .onnx file")
    export.add_argument("--check-images", type=Path, nargs="+", metavar="PATH",
                        help="photographs or folders to compare outputs on (the first 8 "
                             "usable; default: 8 random inputs)")
    export.set_defaults(run=cmd_export)

    serve = command(
        "serve", help="a web page to grade one photograph at a time (grade, probabilities, "
                      "referable flag, heat map)",
        description="Serve a page (and its JSON API, POST /api/grade) where a fundus "
                    "photograph is uploaded and graded with the model's own preprocessing, "
                    "with its Grad-CAM heat map. Listens on this machine only unless --host "
                    "says otherwise; uploads are not kept.",
    )
    serve.add_argument("model", type=Path, metavar="MODEL",
                       help="run folder (its best checkpoint), .ckpt, or .onnx (no heat maps)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (0.0.0.0: every interface, with no login)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (0: a free one)")
    serve.add_argument("--max-upload-mb", type=float, default=20.0,
                       help="largest photograph accepted, in MB")
    serve.add_argument("--explain-method", choices=list(HEAT_MAP_METHODS), default="gradcam",
                       help="heat map method")
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="another host name or address browsers may use to reach the page "
                            "(repeatable; localhost, 127.0.0.1, [::1] and --host always work)")
    serve.add_argument("--max-concurrent", type=int, default=2,
                       help="photographs decoded and graded at once; more wait their turn")
    serve.add_argument("--read-timeout", type=float, default=30.0,
                       help="seconds an upload may stall before it is refused (408)")
    serve.set_defaults(run=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print a message and exit 2, without a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except DrgradeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
