"""``ftsweep final``: from a finished study to a model you can ship, tested once.

The chosen trial's parameters (the best trial, or ``--trial N``) are fitted again, K times with
different seeds, in trial processes exactly like the sweep's (the trainer's ``final_fit`` hook,
device pinning, a log per fit, checkpoints after every epoch); with ``--baseline`` the trainer's
default parameters are fitted the same way. Only these fits read the test split, once each, at
the end. The driver then computes the test metrics (:mod:`orchestrator.final_report`), copies the
exported seed's model into the export folder with a model card and ``final.json``, and records a
``final`` run in MLflow under the study's run (:mod:`orchestrator.final_tracking`).

Resumable and idempotent: everything lives in the study's folder under ``final/``
(``ftsweep-runs/NAME/final``, through :func:`orchestrator.storage.study_folder`). A fit whose
result is there is not run again; a fit killed mid-way continues from its last epoch checkpoint;
a finished final prints its stored result unless ``--force``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from orchestrator.errors import UserError

if TYPE_CHECKING:
    import optuna

    from orchestrator.config import Sweep
    from orchestrator.messages import TrialOutcome
    from orchestrator.storage import StoreLocation
    from trainers.base import BaseTrainer

#: A fit whose process is killed from outside (the OOM killer) is re-run from its checkpoint this often.
MAX_ATTEMPTS = 3
REQUEST_FILE = "request.json"
RESULT_FILE = "final.json"


class FinalError(UserError):
    """A final fit could not finish (it failed, diverged or was killed too often); nothing done is lost."""


@dataclass(frozen=True)
class FinalOptions:
    """The command line of ``ftsweep final``."""

    study_name: str
    storage: str | None = None
    trial: int | None = None
    refit: Literal["train", "train+val"] = "train"
    seeds: int = 1
    baseline: bool = False
    register: str | None = None
    out: str | None = None
    force: bool = False


@dataclass
class FinalOutcome:
    """What ``final`` did: the report and whether it was already there."""

    report: dict[str, Any]
    reused: bool


@dataclass(frozen=True)
class _Fit:
    kind: Literal["tuned", "baseline"]
    index: int
    params: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.kind}-seed{self.index}"


def run_final(options: FinalOptions, say: Callable[[str], None] = print) -> FinalOutcome:
    """Fit, test once, export and track the chosen trial of a study.

    Raises:
        UserError: for a study with no finished trial, an unknown ``--trial``, ``--refit train+val``
            without a validation split, a trainer without the final hooks, a data problem, or an
            existing final made with other options (without ``--force``); nothing stored changes.
        FinalError: when a fit fails.
    """
    from orchestrator.plan import build_trainer
    from orchestrator.storage import StoreLocation
    from orchestrator.study import load_study, open_existing_storage, stored_sweep

    location = StoreLocation.resolve(options.storage, key="--storage")
    study = load_study(options.study_name, open_existing_storage(location, options.study_name))
    sweep = stored_sweep(study, location)
    trial = _chosen_trial(study, options.trial)
    trainer_cls, trainer = build_trainer(sweep)
    if not trainer_cls.implements_final():
        raise UserError(
            f"the trainer {sweep.trainer.name!r} of study {options.study_name!r} has no final_fit / "
            "load_predictor "
            "hooks (trainers/base.py), so `ftsweep final` cannot fit or export its model; implement them in "
            "the trainer"
        )
    unavailable = trainer.final_unavailable()
    if unavailable:
        raise UserError(f"study {options.study_name!r}: {unavailable}")
    trainer.check()  # the data (the test file too) and the model, as when planning; one line when wrong
    splits = trainer.splits()
    if options.refit == "train+val" and "validation" not in splits:
        raise UserError(
            f"--refit train+val: the data of study {options.study_name!r} has no validation split to add to "
            "training; use --refit train"
        )
    params = _trial_params(sweep, trainer, trial)
    if options.seeds > 1 and "seed" not in trainer_cls.Params.model_fields:
        raise UserError(
            f"--seeds {options.seeds}: the trainer {sweep.trainer.name!r} takes no 'seed' parameter; use "
            "--seeds 1"
        )
    epochs = _best_epoch(trial, params, trainer) if options.refit == "train+val" else None
    work = location.study_dir(options.study_name) / "final"
    export = Path(options.out).expanduser().resolve() if options.out else work / "model"
    fits = _fits(options, params, trainer, sweep)
    request = {
        "trial": trial.number,
        "refit": options.refit,
        "epochs": epochs,
        "seeds": options.seeds,
        "baseline": options.baseline,
        "params": params,
        "model_dir": str(export),
    }
    with _final_lock(work, options.study_name):
        return _final(
            options, sweep, trainer, trainer_cls, trial, location, work, export, fits, request, splits, say
        )


def _final(
    options: FinalOptions,
    sweep: Sweep,
    trainer: BaseTrainer,
    trainer_cls: type[BaseTrainer],
    trial: optuna.trial.FrozenTrial,
    location: StoreLocation,
    work: Path,
    export: Path,
    fits: list[_Fit],
    request: dict[str, Any],
    splits: dict[str, Path | None],
    say: Callable[[str], None],
) -> FinalOutcome:
    epochs = request["epochs"]
    existing = _existing(work, request, options)
    if existing is not None:
        if options.register and (existing.get("mlflow") or {}).get("registered") is None:
            from orchestrator.final_tracking import register_existing

            existing["mlflow"] = register_existing(sweep, work, existing, options.register)
            _write_json(work / RESULT_FILE, existing)
        return FinalOutcome(existing, reused=True)
    _prepare(work, export, request, options.force)

    has_test = "test" in splits
    say(
        f"final fit of study {options.study_name!r}, trial {trial.number}: refit {options.refit}"
        + (f" for {epochs} epochs" if epochs else "")
        + f", {options.seeds} seed(s)"
        + (" and the default config" if options.baseline else "")
        + f"; work folder {work}"
    )
    results = {
        fit.label: _run_fit(fit, options, sweep, trainer_cls, trial, location, work, epochs, has_test, say)
        for fit in fits
    }
    from orchestrator.final_report import model_card

    report = _report(options, sweep, trainer, trial, fits, results, work, export, epochs, splits)
    _export(work, report, export)
    (export / "README.md").write_text(model_card(report), encoding="utf-8")
    _write_json(export / RESULT_FILE, report)
    if sweep.tracking.enabled:
        from orchestrator.final_tracking import track_final

        report["mlflow"] = track_final(sweep, work, report, export, options.register, say)
        _write_json(export / RESULT_FILE, report)
    _write_json(work / RESULT_FILE, report)  # last: its presence says the final is complete
    for fit in fits:  # the other fits' models are not needed any more (their predictions stay)
        if fit.label != f"tuned-seed{report['exported_seed']}":
            shutil.rmtree(work / "fits" / fit.label / "model", ignore_errors=True)
    from orchestrator.report_build import announce, start_in_background

    announce(start_in_background(location, options.study_name), say)  # the sweep report, with the final
    return FinalOutcome(report, reused=False)


@contextlib.contextmanager
def _final_lock(work: Path, study_name: str) -> Iterator[None]:
    """One ``final`` of a study at a time: an ``flock`` that dies with its process (SIGKILL included)."""
    from orchestrator.driver_lock import process_lock

    def busy(holder: str) -> UserError:
        return UserError(
            f"a `ftsweep final` of study {study_name!r} is running ({holder}); wait for it to finish"
        )

    with process_lock(work / "final.lock", busy):
        yield


# -- choosing ---------------------------------------------------------------------------------------


def _chosen_trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    from optuna.trial import TrialState

    from orchestrator.report import best_trial

    name = study.study_name
    if number is None and len(study.directions) > 1:
        from orchestrator.study import pareto_front

        front = ", ".join(str(t.number) for t in pareto_front(study)) or "none yet"
        raise UserError(
            f"study {name!r} has several objectives and no one best trial: choose a trial of its Pareto "
            f"front with --trial N (front: trials {front})"
        )
    if number is None:
        found = best_trial(study)
        if found is None:
            raise UserError(
                f"study {name!r} has no finished (complete) trial yet; run or resume it first (`ftsweep "
                f"status {name}`)"
            )
        return _ran_here(study, found, best=True)
    complete = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    if number not in complete:
        shown = ", ".join(map(str, sorted(complete)[:20])) or "none"
        raise UserError(
            f"--trial {number}: study {name!r} has no complete trial {number}; complete trials: {shown}"
        )
    return _ran_here(study, complete[number], best=False)


def _ran_here(study: optuna.Study, trial: optuna.trial.FrozenTrial, best: bool) -> optuna.trial.FrozenTrial:
    """``trial``, unless ``study.warm_start`` copied it from an earlier study: it never ran in this one."""
    from optuna.study import StudyDirection

    from orchestrator.study import WARM_START_ATTR, is_warm_started

    if not is_warm_started(trial):
        return trial
    origin = trial.user_attrs[WARM_START_ATTR]
    own = [t for t in study.get_trials(deepcopy=False) if t.state == trial.state and not is_warm_started(t)]
    sign = -1.0 if study.directions[0] == StudyDirection.MAXIMIZE else 1.0
    best_own = min(own, key=lambda t: (sign * t.values[0], t.number), default=None)
    choose = (
        f"choose a trial this study ran with --trial (its best: {best_own.number})"
        if best_own is not None
        else "run or resume this study first"
    )
    raise UserError(
        f"trial {trial.number}{' (the best)' if best else ''} of study {study.study_name!r} came from "
        f"study.warm_start (trial {origin['trial']} of study {origin['study']!r}) and never ran in this "
        f"study, so nothing of it is here to fit; {choose}, or run `ftsweep final {origin['study']} --trial "
        f"{origin['trial']}`"
    )


def _trial_params(sweep: Sweep, trainer: BaseTrainer, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """Every parameter of the trial, as its process was given them (validated by the trainer)."""
    merged = {**trainer.fixed_params(), **sweep.trainer.params, **trial.params}
    return type(trainer).Params.model_validate(merged).model_dump()


def _best_epoch(trial: optuna.trial.FrozenTrial, params: dict[str, Any], trainer: BaseTrainer) -> int:
    """The trial's best epoch: the first whose reported value is the trial's value (several objectives:
    the epoch its values were taken from)."""
    from orchestrator.study import BEST_EPOCH_ATTR

    values = trial.intermediate_values
    if BEST_EPOCH_ATTR in trial.user_attrs:
        return int(trial.user_attrs[BEST_EPOCH_ATTR])
    if values and trial.values:
        for epoch in sorted(values):
            if values[epoch] == trial.values[0]:
                return int(epoch)
    return int(trainer.max_epochs(params) or max(values, default=1))


def _fits(options: FinalOptions, params: dict[str, Any], trainer: BaseTrainer, sweep: Sweep) -> list[_Fit]:
    base_seed = int(params.get("seed", 0) or 0)

    def seeded(values: dict[str, Any], index: int) -> dict[str, Any]:
        return {**values, "seed": base_seed + index} if "seed" in values else dict(values)

    fits = [_Fit("tuned", index, seeded(params, index)) for index in range(options.seeds)]
    if options.baseline:
        defaults = {**trainer.baseline_params(), **sweep.trainer.params}
        defaults = type(trainer).Params.model_validate(defaults).model_dump()
        if "seed" in defaults:
            defaults["seed"] = base_seed
        fits += [_Fit("baseline", index, seeded(defaults, index)) for index in range(options.seeds)]
    return fits


# -- the work folder --------------------------------------------------------------------------------


def _existing(work: Path, request: dict[str, Any], options: FinalOptions) -> dict[str, Any] | None:
    """The finished final's report when it answers this request; raises when another request holds it."""
    done = _read_json(work / RESULT_FILE)
    started = _read_json(work / REQUEST_FILE)
    if options.force or (done is None and started is None):
        return None
    if done is not None and done.get("request") == _key(request):
        return done
    if done is None and started is not None and started.get("key") == _key(request):
        return None  # the same request, unfinished (killed): continue it
    what = "a final model" if done is not None else "an unfinished `ftsweep final`"
    shown = started or {}
    raise UserError(
        f"study {options.study_name!r} already has {what} made with other options (trial "
        f"{shown.get('trial')}, "
        f"refit {shown.get('refit')}, {shown.get('seeds')} seed(s), baseline {shown.get('baseline')}) in "
        f"{work}; "
        "run that command again to see or finish it, or add --force to replace it"
    )


def _prepare(work: Path, export: Path, request: dict[str, Any], force: bool) -> None:
    if export.exists() and any(export.iterdir()) and not (export / RESULT_FILE).exists():
        raise UserError(
            f"--out {export}: the folder exists and holds files `ftsweep final` did not write; give a new "
            "folder"
        )
    if force:
        for name in ("fits", "logs", RESULT_FILE, REQUEST_FILE, "mlflow.json"):
            path = work / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        if (export / RESULT_FILE).exists():
            shutil.rmtree(export)
    work.mkdir(parents=True, exist_ok=True)
    _write_json(work / REQUEST_FILE, {**request, "key": _key(request)})


def _key(request: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: Any) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=2, default=str), encoding="utf-8")
    os.replace(temporary, path)


# -- running one fit ---------------------------------------------------------------------------------


def _run_fit(
    fit: _Fit,
    options: FinalOptions,
    sweep: Sweep,
    trainer_cls: type[BaseTrainer],
    trial: optuna.trial.FrozenTrial,
    location: StoreLocation,
    work: Path,
    epochs: int | None,
    has_test: bool,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Run one fit in a trial process (or read its stored result); its figures."""
    from orchestrator.backends._trial_process import TrialJob
    from orchestrator.backends.local import _user_module, process_context
    from orchestrator.devices import plan_slots, visible_gpu_ids
    from trainers.base import FinalFitRequest

    folder = work / "fits" / fit.label
    done = _read_json(folder / "result.json")
    if done is not None and (folder / "predictions.json").exists():
        say(f"{fit.label}: done before, its result is kept")
        return done
    folder.mkdir(parents=True, exist_ok=True)
    execution = sweep.execution
    # The final fit runs alone: a whole GPU when the sweep used one (or a share of one), else the CPU.
    gpus = execution.gpus_per_trial
    slot = plan_slots(
        visible_gpu_ids(), 0 if gpus == 0 else max(1.0, gpus), 1, threads_per_trial=execution.cpus_per_trial
    )[0]
    log_path = work / "logs" / f"{fit.label}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    job = TrialJob(
        trial_number=trial.number,
        trainer_name=sweep.trainer.name,
        settings=sweep.trainer_settings(),
        base_dir=str(sweep.base_dir),
        params=fit.params,
        environment=slot.environment(),
        device=slot.device,
        n_threads=slot.n_threads,
        metric=sweep.study.metric,
        direction=sweep.study.direction,
        checkpoint_dir=str(folder / "checkpoint"),
        log_path=str(log_path),
        cache_dir=str(location.study_dir(sweep.study.name) / "cache"),
        final=FinalFitRequest(refit=options.refit, epochs=epochs, output_dir=folder, evaluate_test=has_test),
    )
    context = process_context(tuple(trainer_cls.preload_modules) + _user_module(sweep.trainer.name))
    say(f"{fit.label}: fitting on {slot.label} (log: {log_path})")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        outcome, code = _drive(context, job, folder, fit.label, sweep.study.metric, say)
        if outcome is not None:
            return _finished(fit, outcome, folder, log_path)
        if code is not None and code < 0 and attempt < MAX_ATTEMPTS:
            say(f"{fit.label}: its process was killed (signal {-code}); continuing from its last checkpoint")
            continue
        raise FinalError(
            f"final fit {fit.label} ended without a result (exit code {code}); see {log_path}; "
            "run the same command again to continue from its last checkpoint"
        )
    raise AssertionError("unreachable")


def _drive(
    context: Any, job: Any, folder: Path, label: str, metric: str, say: Callable[[str], None]
) -> tuple[TrialOutcome | None, int | None]:
    """Start the fit's process and answer its epoch reports until it sends its outcome or dies."""
    from multiprocessing.connection import wait

    from orchestrator.backends.local import start_trial_process
    from orchestrator.messages import CONTINUE, EpochReport

    process, conn, lifeline = start_trial_process(context, job, f"ftsweep-final-{label}")
    (folder / "fit.pid").write_text(str(process.pid))
    try:
        while True:
            ready = wait([conn, process.sentinel], timeout=1.0)
            if conn in ready or (ready and conn.poll()):
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    message = None
                if isinstance(message, EpochReport):
                    value = message.metrics.get(metric)
                    say(
                        f"{label}: epoch {message.epoch}"
                        + (f", {metric} {value:.4f}" if value is not None else "")
                    )
                    conn.send(CONTINUE)
                    continue
                if message is not None:
                    process.join(timeout=30)
                    return message, process.exitcode
            if not process.is_alive():
                process.join(timeout=5)
                return None, process.exitcode
    finally:
        if process.is_alive():
            process.kill()
            process.join(timeout=10)
        conn.close()
        lifeline.close()


def _finished(fit: _Fit, outcome: TrialOutcome, folder: Path, log_path: Path) -> dict[str, Any]:
    from orchestrator.messages import Completed, Failed, Interrupted, Pruned

    if isinstance(outcome, Completed):
        if not (folder / "predictions.json").exists():
            raise FinalError(
                f"final fit {fit.label} wrote no predictions.json (the trainer's final_fit must); see "
                f"{log_path}"
            )
        result = {
            "label": fit.label,
            "kind": fit.kind,
            "index": fit.index,
            "params": fit.params,
            "metrics": outcome.metrics,
        }
        _write_json(folder / "result.json", result)
        shutil.rmtree(
            folder / "checkpoint", ignore_errors=True
        )  # the model is exported: the state is not needed
        return result
    if isinstance(outcome, Interrupted):
        raise FinalError(
            f"final fit {fit.label} stopped: {outcome.reason}; run the same command again to continue it"
        )
    if isinstance(outcome, Pruned):
        raise FinalError(f"final fit {fit.label} stopped: {outcome.reason}; see {log_path}")
    assert isinstance(outcome, Failed)
    raise FinalError(f"final fit {fit.label} failed: {outcome.reason}; the traceback is in {log_path}")


# -- the report and the export -----------------------------------------------------------------------


def _report(
    options: FinalOptions,
    sweep: Sweep,
    trainer: BaseTrainer,
    trial: optuna.trial.FrozenTrial,
    fits: list[_Fit],
    results: dict[str, dict[str, Any]],
    work: Path,
    export: Path,
    epochs: int | None,
    splits: dict[str, Path | None],
) -> dict[str, Any]:
    from orchestrator.final_report import (
        bootstrap_intervals,
        evaluate_fit,
        headline_names,
        paired_difference,
        read_predictions,
        seed_summary,
        task_of,
    )

    metric = sweep.study.metric
    loaded = {fit.label: read_predictions(work / "fits" / fit.label / "predictions.json") for fit in fits}
    evaluations = {
        label: evaluate_fit(labels, predictions) for label, (labels, predictions) in loaded.items()
    }
    tuned = [fit for fit in fits if fit.kind == "tuned"]
    if options.refit == "train":
        # The seed with the best validation score: chosen without the test split.
        sign = 1.0 if sweep.study.direction == "maximize" else -1.0
        chosen = max(
            tuned, key=lambda fit: (sign * float(results[fit.label]["metrics"].get(metric, 0.0)), -fit.index)
        )
    else:
        chosen = tuned[0]
    labels, chosen_predictions = loaded[chosen.label]
    exported = dict(evaluations[chosen.label])
    has_test = "test" in chosen_predictions
    if has_test:
        exported["test_intervals"] = bootstrap_intervals(chosen_predictions["test"], len(labels))
    report: dict[str, Any] = {
        "study": sweep.study.name,
        "trial": trial.number,
        "trial_value": trial.values[0],
        "metric": metric,
        "direction": sweep.study.direction,
        "trainer": sweep.trainer.name,
        "base_model": str(sweep.trainer_settings().get("model", "")),
        "refit": options.refit,
        "epochs": epochs,
        "n_seeds": options.seeds,
        "exported_seed": chosen.index,
        "params": chosen.params,
        "labels": labels,
        "input_column": _model_info(work / "fits" / chosen.label / "model").get("input_column"),
        "pooling": _model_info(work / "fits" / chosen.label / "model").get("pooling"),
        "n_test": int(len(chosen_predictions["test"].true)) if has_test else 0,
        "data": _fingerprints(splits, loaded[chosen.label][1]),
        "exported": exported,
        "fits": {
            label: {
                "params": results[label]["params"],
                "fit_metrics": results[label]["metrics"],
                **evaluations[label],
            }
            for label in results
        },
        "model_dir": str(export),
        "request": _key(
            {
                "trial": trial.number,
                "refit": options.refit,
                "epochs": epochs,
                "seeds": options.seeds,
                "baseline": options.baseline,
                "params": tuned[0].params,
                "model_dir": str(export),
            }
        ),
    }
    if has_test:
        report["seeds_test"] = seed_summary([evaluations[fit.label]["test"] for fit in tuned])
    if options.baseline and has_test:
        baseline = [fit for fit in fits if fit.kind == "baseline"]
        n_classes = len(labels)
        report["baseline"] = {
            "params": baseline[0].params,
            "seeds_test": seed_summary([evaluations[fit.label]["test"] for fit in baseline]),
            "difference": paired_difference(
                [loaded[fit.label][1]["test"] for fit in tuned],
                [loaded[fit.label][1]["test"] for fit in baseline],
                n_classes,
            ),
        }
    report["task"] = task_of(chosen_predictions)  # classification, or regression (numbers, not classes)
    report["headline"] = list(headline_names(report["task"]))
    return report


def _model_info(folder: Path) -> dict[str, Any]:
    return _read_json(folder / "ftsweep_model.json") or {}


def _fingerprints(splits: dict[str, Path | None], predictions: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {}
    for name, path in splits.items():
        rows = len(predictions[name].true) if name in predictions else None
        if path is None:
            found[name] = {"file": "(split off the training file)", "sha256": "-", "rows": rows}
            continue
        digest = hashlib.sha256()
        # An image folder's digest covers every file under it, each by its relative name and bytes.
        files = sorted(item for item in path.rglob("*") if item.is_file()) if path.is_dir() else [path]
        for file in files:
            if path.is_dir():
                digest.update(file.relative_to(path).as_posix().encode("utf-8") + b"\0")
            with open(file, "rb") as stream:
                while block := stream.read(1 << 20):
                    digest.update(block)
        found[name] = {"file": str(path), "sha256": digest.hexdigest(), "rows": rows}
    return found


def _export(work: Path, report: dict[str, Any], export: Path) -> None:
    """The exported seed's model folder, copied whole into the export folder (replacing an older copy)."""
    source = work / "fits" / f"tuned-seed{report['exported_seed']}" / "model"
    staging = export.with_name(export.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    if export.exists():
        shutil.rmtree(export)
    os.replace(staging, export)
