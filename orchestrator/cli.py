"""The ``ftsweep`` command: one function per verb, one error boundary.

Exit codes: 0 done (or stopped by the timeout); 2 a user's mistake (one line on stderr, no
traceback), which includes a run whose every trial failed, a stop by ``study.max_failures``, a full
disk and a study another driver is running; 1 a bug (the traceback goes to a log file whose path
is printed); 130 interrupted (Ctrl-C, SIGTERM). The session says why it stopped with a
:class:`~orchestrator.session.StopReason`; :func:`_finish` maps it to the code.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

from orchestrator.errors import UserError

EXIT_OK, EXIT_BUG, EXIT_USER, EXIT_INTERRUPTED = 0, 1, 2, 130


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _workers(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def _duration(text: str) -> float:
    from orchestrator.config import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if seconds <= 0:
        # As study.timeout in the sweep file: 0 is refused, not read as "no timeout"
        # (leave the flag out for that).
        raise argparse.ArgumentTypeError(
            f"must be more than 0 (got {text!r}); leave --timeout out for no time limit"
        )
    return seconds


def _add_storage(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        help="SQLAlchemy URL of the study's storage (default: $FTSWEEP_STORAGE, else sqlite:///ftsweep.db)",
    )


def _add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", choices=("local", "ray"), help="where trials run (overrides execution.backend)"
    )
    parser.add_argument(
        "--ray-address", help="an existing Ray cluster, e.g. auto (overrides execution.ray_address)"
    )


def _backend_overrides(args: argparse.Namespace) -> list[str]:
    from orchestrator.config import literal_override

    overrides = []
    if args.backend:
        overrides.append(f"execution.backend={args.backend}")
    if args.ray_address:
        overrides.append(literal_override("execution.ray_address", args.ray_address))
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftsweep",
        description="Hyperparameter sweeps for fine-tuning: Optuna studies in a SQL store, "
        "parallel trials on every GPU, MLflow tracking, resumable.",
    )
    parser.add_argument("--version", action="version", version=f"ftsweep {_version()}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    run = verbs.add_parser("run", help="create a study from a sweep file and run it")
    run.add_argument("sweep_file", help="the sweep file (YAML)")
    run.add_argument(
        "--n-trials", type=_positive_int, help="finished trials to run (overrides study.n_trials)"
    )
    run.add_argument(
        "--workers", type=_workers, help="trials at once: a number or auto (overrides execution.workers)"
    )
    run.add_argument("--timeout", type=_duration, help="stop starting trials after this long: 90s, 30m, 2h")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the sweep file, e.g. --set trainer.epochs=2 (repeatable)",
    )
    run.add_argument("--storage", help="storage URL (overrides study.storage)")
    _add_backend(run)
    run.set_defaults(handler=cmd_run)

    resume = verbs.add_parser("resume", help="continue an interrupted study to its budget")
    resume.add_argument("study_name")
    _add_storage(resume)
    resume.add_argument("--n-trials", type=_positive_int, help="a new total budget of finished trials")
    resume.add_argument("--workers", type=_workers)
    resume.add_argument("--timeout", type=_duration)
    resume.add_argument(
        "--sweep", dest="sweep_file", help="continue with this sweep file instead of the stored one"
    )
    resume.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the stored sweep file (repeatable)",
    )
    _add_backend(resume)
    resume.add_argument(
        "--force",
        action="store_true",
        help="accept a sweep file whose search space or trainer differ from the stored one",
    )
    resume.set_defaults(handler=cmd_resume)

    worker = verbs.add_parser("worker", help="join a running study from this machine (PostgreSQL storage)")
    worker.add_argument("study_name")
    _add_storage(worker)
    worker.add_argument(
        "--workers", type=_workers, help="trials at once on this machine (default: execution.workers)"
    )
    worker.set_defaults(handler=cmd_worker)

    status = verbs.add_parser(
        "status", help="the study's trials: number, state, params, value, epochs, duration"
    )
    status.add_argument("study_name")
    _add_storage(status)
    status.add_argument(
        "--last", type=_positive_int, help="show only the last N trials (default: the last 200)"
    )
    status.add_argument("--all", action="store_true", help="show every trial")
    status.add_argument(
        "--format",
        choices=("table", "plain", "json"),
        default="table",
        help="table: a rich table, or plain text above 1,000 rows (far quicker to print); "
        "plain: aligned text; json",
    )
    status.set_defaults(handler=cmd_status)

    best = verbs.add_parser("best", help="the best trial's parameters and value")
    best.add_argument("study_name")
    _add_storage(best)
    best.add_argument(
        "--format",
        choices=("table", "yaml", "json"),
        default="table",
        help="yaml: a trainer.params mapping of the best parameters; json: the whole summary",
    )
    best.add_argument(
        "--as-sweep", metavar="FILE", help="write a runnable sweep file with the best parameters fixed"
    )
    best.add_argument("--name", help="the study name in the --as-sweep file (default: NAME-best)")
    best.set_defaults(handler=cmd_best)

    report = verbs.add_parser(
        "report",
        help="the sweep as one HTML page (and a PNG per figure), logged to the study's MLflow run",
    )
    report.add_argument("study_name")
    _add_storage(report)
    report.add_argument(
        "--out", metavar="FILE", help="the HTML file (default: ftsweep-runs/NAME/report/report.html)"
    )
    report.add_argument("--background", action="store_true", help=argparse.SUPPRESS)
    report.set_defaults(handler=cmd_report)

    _add_final_verbs(verbs)
    _add_study_verbs(verbs)

    ui = verbs.add_parser("ui", help="start the MLflow UI on the sweep's tracking store")
    ui.add_argument(
        "study_name",
        nargs="?",
        help="read the tracking URI from this study (else $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    _add_storage(ui)
    ui.add_argument("--tracking-uri", help="the MLflow tracking URI to show")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=_positive_int, default=5000)
    ui.set_defaults(handler=cmd_ui)
    return parser


# -- verbs --
def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.config import literal_override, load_sweep

    overrides = list(args.overrides) + _backend_overrides(args)
    if args.storage is not None:
        # The flag's value is a string, taken whole: not read as YAML, where " #" starts a comment.
        overrides.append(literal_override("study.storage", args.storage))
    sweep = load_sweep(args.sweep_file, overrides)
    from orchestrator.runner import run_sweep

    outcome = run_sweep(sweep, n_trials=args.n_trials, workers=args.workers, timeout=args.timeout)
    return _finish(outcome)


def cmd_resume(args: argparse.Namespace) -> int:
    from orchestrator.runner import resume_study

    outcome = resume_study(
        args.study_name,
        args.storage,
        n_trials=args.n_trials,
        workers=args.workers,
        timeout=args.timeout,
        sweep_file=args.sweep_file,
        overrides=args.overrides + _backend_overrides(args),
        force=args.force,
    )
    return _finish(outcome)


def cmd_worker(args: argparse.Namespace) -> int:
    from orchestrator.runner import resume_study

    outcome = resume_study(args.study_name, args.storage, workers=args.workers, as_worker=True)
    return _finish(outcome)


def _finish(outcome: object) -> int:
    """The session's summary on stderr, and the exit code its result and stop reason call for.

    A session whose every finished trial failed, or that stopped on ``study.max_failures`` or a full
    disk, is the user's to fix: one line naming the first error, exit 2. A signal is 130.
    """
    from orchestrator.runner import RunOutcome
    from orchestrator.session import StopReason

    assert isinstance(outcome, RunOutcome)
    result = outcome.result
    stream = sys.stderr
    for error in outcome.tracking_errors[:5]:
        print(f"warning: {error}", file=stream)
    print(
        f"study {outcome.study_name!r}: {outcome.n_counted}/{outcome.n_trials} trials finished "
        f"(this run: {result.complete} complete, {result.pruned} pruned, {result.failed} failed"
        + (f", {result.interrupted} interrupted" if result.interrupted else "")
        + ")",
        file=stream,
    )
    if result.front:
        print(f"Pareto front: trials {', '.join(map(str, result.front))}", file=stream)
        print(
            f"see it with: ftsweep best {outcome.study_name}" + _storage_flag(outcome.storage_url),
            file=stream,
        )
    elif result.best_trial is not None:
        print(f"best trial {result.best_trial}: {result.best_value:.6g}", file=stream)
        print(
            f"see it with: ftsweep best {outcome.study_name}" + _storage_flag(outcome.storage_url),
            file=stream,
        )
    continue_hint = f"continue with: ftsweep resume {outcome.study_name}" + _storage_flag(outcome.storage_url)
    reason = result.stop_reason
    if reason in (StopReason.MAX_FAILURES, StopReason.DISK_FULL, StopReason.TRACKING_LOST):
        print(continue_hint, file=stream)
        print(f"ftsweep: error: {result.stopped_by}", file=stream)
        return EXIT_USER
    interrupted = reason is StopReason.SIGNAL and outcome.n_counted < outcome.n_trials
    if result.failed and result.failed == result.finished and not interrupted:
        print(
            f"ftsweep: error: every trial of this run failed; first error: {result.first_error}", file=stream
        )
        return EXIT_USER
    if reason is not None and outcome.n_counted < outcome.n_trials:
        print(f"stopped: {result.stopped_by}", file=stream)
        print(continue_hint, file=stream)
        return EXIT_INTERRUPTED if reason is StopReason.SIGNAL else EXIT_OK
    return EXIT_OK


def _storage_flag(display: str) -> str:
    """`` --storage URL`` (masked: a password is never printed) unless the store is the default one."""
    import shlex

    from orchestrator.storage import StoreLocation

    try:
        default = StoreLocation.resolve(None).display
    except UserError:
        default = None
    return "" if display == default else f" --storage {shlex.quote(display)}"


def _location(args: argparse.Namespace):  # noqa: ANN202
    from orchestrator.storage import StoreLocation

    return StoreLocation.resolve(args.storage, key="--storage")


def _open(args: argparse.Namespace):  # noqa: ANN202
    from orchestrator.study import load_study, open_existing_storage

    storage = open_existing_storage(_location(args), args.study_name)
    return load_study(args.study_name, storage)


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator.status import (
        RICH_ROWS,
        read_status,
        render_compact,
        render_plain,
        render_status,
        table_width,
    )

    data = read_status(_location(args), args.study_name, last=args.last, show_all=args.all)
    if args.format == "json":
        import json

        print(json.dumps(data.rows, indent=2, default=str))
        return EXIT_OK
    if args.format == "plain":
        print(render_plain(data))
        return EXIT_OK
    import shutil

    # $COLUMNS, else the terminal's width, else 80 (a pipe): the same text whatever reads it.
    width = shutil.get_terminal_size((80, 24)).columns
    if table_width(data) > width:
        print(render_compact(data, width))  # a parameter per key=value under its trial, not a squeezed column
        return EXIT_OK
    if len(data.rows) > RICH_ROWS:
        print(render_plain(data))
        return EXIT_OK
    from rich.console import Console

    Console(highlight=False, soft_wrap=False, width=width).print(render_status(data))
    return EXIT_OK


def cmd_best(args: argparse.Namespace) -> int:
    from orchestrator.report import best_summary, best_trainer_params, format_best

    study = _open(args)
    if len(study.directions) > 1:
        return _print_front(study, args)
    summary = best_summary(study)
    assert summary is not None
    if args.as_sweep:
        return _write_best_sweep(study, args)
    params = best_trainer_params(study) if args.format == "yaml" else None
    print(format_best(summary, args.format, params))
    return EXIT_OK


def _print_front(study: object, args: argparse.Namespace) -> int:
    """``best`` of a study of several objectives: its Pareto front (no one best trial to write as a sweep)."""
    from orchestrator.report import format_front, front_summary

    summary = front_summary(study)  # type: ignore[arg-type]
    if args.as_sweep:
        numbers = ", ".join(str(point["trial"]) for point in summary["front"])
        raise UserError(
            f"best --as-sweep: study {summary['study']!r} has several objectives and no one best trial; "
            f"its Pareto front is trials {numbers}: fit one with `ftsweep final {summary['study']} --trial N`"
        )
    print(format_front(summary, args.format))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.report_build import write_report

    out = Path(args.out) if args.out else None
    files = write_report(_location(args), args.study_name, out, only_if_kept=args.background)
    if files is None:
        print(f"report: the folder of study {args.study_name!r} is gone; nothing written", file=sys.stderr)
        return EXIT_OK
    for warning in files.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"report: {files.html}")
    print(f"figures: {files.pngs[0].parent} ({len(files.pngs)} PNG files)")
    if files.logged_to:
        print(f"logged to MLflow run {files.logged_to} under report/")
    return EXIT_OK


def _write_best_sweep(study: object, args: argparse.Namespace) -> int:
    """``best --as-sweep FILE``: the best trial as a sweep file ``ftsweep run`` takes as it is."""
    import yaml

    from orchestrator.report import best_as_sweep
    from orchestrator.study import stored_sweep

    raw, notes = best_as_sweep(study, args.name)  # type: ignore[arg-type]
    target = Path(args.as_sweep)
    if target.exists():
        raise UserError(f"best --as-sweep: {target} exists; choose another file or remove it")
    base_dir = stored_sweep(study).base_dir  # type: ignore[arg-type]
    if target.resolve().parent != base_dir:
        notes.append(f"relative paths in it (data, model) were written for {base_dir}")
    target.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    for note in notes:
        print(note, file=sys.stderr)
    print(f"wrote {target}; run it with: ftsweep run {target}")
    return EXIT_OK


def _add_study_verbs(verbs: argparse._SubParsersAction) -> None:
    """``studies`` and ``delete``: the studies of a storage, listed and removed."""
    studies = verbs.add_parser(
        "studies", help="the studies in a storage: trials done / budget, best value, last activity"
    )
    _add_storage(studies)
    studies.set_defaults(handler=cmd_studies)
    delete = verbs.add_parser(
        "delete", help="delete a study, its folders and its MLflow runs (asks first, unless --yes)"
    )
    delete.add_argument("study_name")
    _add_storage(delete)
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(handler=cmd_delete)


def cmd_studies(args: argparse.Namespace) -> int:
    from orchestrator.studies import list_studies, render_studies

    location = _location(args)
    print(render_studies(list_studies(location), location.display))
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    from orchestrator.studies import delete_study, plan_delete

    location = _location(args)
    plan = plan_delete(location, args.study_name)
    what = [f"study {plan.study_name!r} ({plan.n_trials} trials) in {location.display}"]
    what += [str(folder) for folder in plan.folders]
    if plan.tracking is not None:
        what.append(f"its MLflow runs in experiment {plan.experiment!r} ({plan.tracking.display})")
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError(f"delete {args.study_name}: add --yes to delete without a question (no terminal)")
        print("this deletes:\n  " + "\n  ".join(what), file=sys.stderr)
        if input("delete? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted", file=sys.stderr)
            return EXIT_OK
    for line in delete_study(location, plan):
        print(line)
    return EXIT_OK


def _add_final_verbs(verbs: argparse._SubParsersAction) -> None:
    """``final`` and ``predict``: from a finished study to a model, and from a model to a scored file."""
    final = verbs.add_parser(
        "final",
        help="fit the best trial's config again, test it once on the test split, export and track the model",
    )
    final.add_argument("study_name")
    _add_storage(final)
    final.add_argument(
        "--trial", type=_non_negative_int, help="fit this complete trial instead of the best one"
    )
    final.add_argument(
        "--refit",
        choices=("train", "train+val"),
        default="train",
        help="train: the training split, keeping the best validation epoch (default); "
        "train+val: both splits for the trial's best epoch count",
    )
    final.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        help="fit this many seeds and report mean and sd of every test metric (default 1)",
    )
    final.add_argument(
        "--baseline",
        action="store_true",
        help="also fit the trainer's default config and report the test difference with a 95%% interval",
    )
    final.add_argument(
        "--register", metavar="MODEL_NAME", help="add the model to the MLflow Model Registry under this name"
    )
    final.add_argument("--out", metavar="DIR", help="export folder (default: ftsweep-runs/NAME/final/model)")
    final.add_argument("--force", action="store_true", help="fit again even when a final model exists")
    final.set_defaults(handler=cmd_final)

    predict = verbs.add_parser(
        "predict", help="score a CSV / JSONL / Parquet file with a model `ftsweep final` exported"
    )
    predict.add_argument(
        "model", help="the exported folder, or models:/NAME/VERSION from the MLflow Model Registry"
    )
    predict.add_argument(
        "input_file", help="a .csv, .jsonl or .parquet file with the text column the model was trained on"
    )
    predict.add_argument(
        "--out",
        help="the output file (.csv, .jsonl or .parquet; default: INPUT.predictions.EXT beside the input)",
    )
    predict.add_argument(
        "--batch-size", type=_positive_int, default=64, help="texts per forward pass (default 64)"
    )
    predict.add_argument(
        "--tracking-uri",
        help="the MLflow store of a models:/ URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    predict.set_defaults(handler=cmd_predict)


def cmd_final(args: argparse.Namespace) -> int:
    from orchestrator.final import FinalOptions, run_final
    from orchestrator.final_report import summary_lines

    options = FinalOptions(
        study_name=args.study_name,
        storage=args.storage,
        trial=args.trial,
        refit=args.refit,
        seeds=args.seeds,
        baseline=args.baseline,
        register=args.register,
        out=args.out,
        force=args.force,
    )
    outcome = run_final(options, say=lambda line: print(line, file=sys.stderr, flush=True))
    if outcome.reused:
        print("a final model of this request exists already (add --force to fit it again):", file=sys.stderr)
    print("\n".join(summary_lines(outcome.report)))
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from orchestrator.predict import run_predict

    target, rows = run_predict(args.model, args.input_file, args.out, args.batch_size, args.tracking_uri)
    print(f"{rows} rows scored: {target}")
    return EXIT_OK


def cmd_ui(args: argparse.Namespace) -> int:
    import shutil

    from orchestrator.storage import TrackingLocation

    experiment = None
    if args.study_name:
        from orchestrator.study import stored_sweep

        sweep = stored_sweep(_open(args), _location(args))
        experiment = sweep.experiment_name
    if args.tracking_uri is not None:
        tracking = TrackingLocation.resolve(args.tracking_uri, key="--tracking-uri")
    elif args.study_name:
        tracking = sweep.tracking_location
    else:
        tracking = TrackingLocation.resolve(None)
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    if not Path(mlflow).exists():
        raise UserError("the MLflow UI needs the full mlflow package: pip install mlflow")
    # The store's URI reaches MLflow through its environment variable, not the command line
    # (which `ps` shows every user of the machine).
    command = [mlflow, "ui", "--host", args.host, "--port", str(args.port)]
    environment = {**os.environ, "MLFLOW_BACKEND_STORE_URI": tracking.uri}
    from orchestrator import ui

    base = f"http://{ui.connect_host(args.host)}:{args.port}"
    link = ui.runs_link(base, tracking, experiment)
    # The link is printed once the server answers: the first click works.
    return ui.serve(
        command,
        environment,
        f"{base}/health",
        f"MLflow UI: {link}  (tracking store {tracking.display}; Ctrl-C stops it)",
    )


# -- the error boundary --
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as error:
        print(f"ftsweep: error: {_masked(str(error))}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("ftsweep: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `ftsweep status NAME | head`: the reader left; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as error:  # noqa: BLE001 - the one place a bug becomes a message and a log file
        from orchestrator.backends._trial_process import is_disk_full

        if is_disk_full(error):
            where = getattr(error, "filename", None) or "the study's folders"
            print(
                f"ftsweep: error: no space left on device ({where}); free some space, then continue the "
                "study with `ftsweep resume NAME` (nothing finished is lost)",
                file=sys.stderr,
            )
            return EXIT_USER
        path = _write_crash_log(argv)
        print(f"ftsweep: internal error: {_masked(repr(sys.exc_info()[1]))}", file=sys.stderr)
        print(f"ftsweep: the traceback is in {path}; please include it in a bug report", file=sys.stderr)
        return EXIT_BUG


def _write_crash_log(argv: Sequence[str] | None) -> Path:
    folder = Path(os.environ.get("FTSWEEP_LOG_DIR") or Path(tempfile.gettempdir()) / "ftsweep")
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = folder / f"crash-{stamp}-{os.getpid()}.log"
    from orchestrator.storage import mask_argument, mask_text

    # The folder is often world-readable (/tmp): no password goes in, from the command line or the traceback.
    command = " ".join(mask_argument(argument) for argument in (argv if argv is not None else sys.argv))
    path.write_text(
        f"ftsweep {_version()}\ncommand: {command}\n\n{mask_text(traceback.format_exc())}", encoding="utf-8"
    )
    return path


def _masked(text: str) -> str:
    """An error's text with any URL's password masked (a library may quote the URL it was given)."""
    from orchestrator.storage import mask_text

    return mask_text(text)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("ftsweep")
    except Exception:  # noqa: BLE001
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
