"""Per-trial scheduling overhead with a no-op trainer: ftsweep vs Optuna ``optimize()`` vs Ray Tune.

Every system runs the same thing: trials that sample ``x`` and ``y`` (TPE, seed 0, constant
liar because two trials are in flight), report 3 intermediate values (with a should-prune check
after each on ftsweep and Optuna) and do no work, 2 at a time, with the study on a SQLite file in
a temporary folder. Each system runs in its own fresh Python process (so none inherits another's
imports, Ray runtime or fork server); the parent prints one Markdown table.

- ms per trial: (last trial's end - first trial's start) / trials, from the trials'
  ``datetime_start`` / ``datetime_complete`` in the Optuna storage (every system here records its
  trials in one, Ray Tune through ``OptunaSearch``).
- start-up seconds: from launching the system's process (interpreter, imports, ``ray.init``,
  schema creation, MLflow set-up) to the first trial's start. Total wall time is in the details.

Run: ``.venv/bin/python bench/scheduling_overhead.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
from _common import (
    OtherLoad,
    SqlCounter,
    checkpoint_save_probe,
    machine_header,
    markdown_table,
    noop_sweep,
    sqlite_commit_probe,
    temp_dir,
    trial_span,
)

SYSTEMS = {
    "ftsweep-local": "ftsweep, local backend, MLflow tracking on",
    "ftsweep-local-notrack": "ftsweep, local backend, tracking.enabled: false",
    "optuna": "Optuna optimize(), n_jobs=2 threads, RDBStorage SQLite",
    "raytune": "Ray Tune Tuner + OptunaSearch, reuse_actors=False (default)",
    "raytune-reuse": "Ray Tune Tuner + OptunaSearch, reuse_actors=True",
    "ftsweep-ray": "ftsweep, ray backend (max_concurrent_trials 2), MLflow tracking on",
}
RAY_SYSTEMS = ("raytune", "raytune-reuse", "ftsweep-ray")
TARGET_OPTUNA = 1.5
TARGET_RAY = 0.5


# ---------------------------------------------------------------------------------------------
# children: one system each, in a fresh process; the result goes to a JSON file
# ---------------------------------------------------------------------------------------------
class PhaseTimer:
    """Inclusive wall time, calls, SQL statements and commits of the driver's phases."""

    def __init__(self, counter: SqlCounter) -> None:
        self.counter = counter
        self.totals: dict[str, list[float]] = {}  # name -> [seconds, calls, statements, commits]
        self.order: list[str] = []

    def wrap(self, owner: Any, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)
        timer = self

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            statements, commits = timer.counter.snapshot()
            start = time.perf_counter()
            try:
                with timer.counter.in_phase(name):
                    return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                now_statements, now_commits = timer.counter.snapshot()
                if name not in timer.totals:
                    timer.totals[name] = [0.0, 0, 0, 0]
                    timer.order.append(name)
                slot = timer.totals[name]
                slot[0] += elapsed
                slot[1] += 1
                slot[2] += now_statements - statements
                slot[3] += now_commits - commits

        wrapped.__wrapped__ = original  # type: ignore[attr-defined]
        setattr(owner, attribute, wrapped)


PHASES = (
    ("session.start_trial", "session.StudySession.start_trial (ask a trial)"),
    ("ask", "  optuna Study.ask"),
    ("suggest", "  SearchSpace.suggest (x, y)"),
    ("launch", "LocalBackend._launch (fork a trial process)"),
    ("report", "session.StudySession.report"),
    ("trial.report", "  optuna Trial.report"),
    ("should_prune", "  optuna Trial.should_prune"),
    ("complete", "session.StudySession.complete"),
    ("attach", "  session._attach (user attrs before tell)"),
    ("tell", "  optuna Study.tell"),
    ("drop", "  session._drop_checkpoint"),
    ("set_user_attr", "optuna Trial.set_user_attr (inside start_trial, report, complete)"),
    ("record_heartbeats", "recovery.record_heartbeats (inside start_trial, heartbeat)"),
    ("heartbeat", "session.StudySession.heartbeat (every loop)"),
    ("wait", "multiprocessing wait (driver idle)"),
    ("run", "LocalBackend.run (the whole trial loop)"),
)
TOP_LEVEL = ("session.start_trial", "launch", "report", "complete", "heartbeat", "wait")


def _instrument_ftsweep(counter: SqlCounter, marks: dict[str, Any], profile_out: str | None) -> PhaseTimer:
    """Count SQL on the study's engine and time the driver's phases (session.py, local.py, Optuna)."""
    import optuna

    import orchestrator.backends.local as local
    import orchestrator.runner as runner
    import orchestrator.session as session
    import search_spaces

    original_open = runner.open_storage

    def open_storage(url: str) -> Any:
        storage = original_open(url)
        counter.attach(storage.engine)
        return storage

    runner.open_storage = open_storage
    timer = PhaseTimer(counter)
    names = dict(PHASES)
    targets = {
        "session.start_trial": (session.StudySession, "start_trial"),
        "ask": (optuna.study.Study, "ask"),
        "suggest": (search_spaces.SearchSpace, "suggest"),
        "launch": (local.LocalBackend, "_launch"),
        "report": (session.StudySession, "report"),
        "trial.report": (optuna.trial.Trial, "report"),
        "should_prune": (optuna.trial.Trial, "should_prune"),
        "complete": (session.StudySession, "complete"),
        "attach": (session.StudySession, "_attach"),
        "tell": (optuna.study.Study, "tell"),
        "drop": (session.StudySession, "_drop_checkpoint"),
        "set_user_attr": (optuna.trial.Trial, "set_user_attr"),
        "record_heartbeats": (session, "record_heartbeats"),
        "heartbeat": (session.StudySession, "heartbeat"),
        "wait": (local, "wait"),
        "run": (local.LocalBackend, "run"),
    }
    for key, (owner, attribute) in targets.items():
        timer.wrap(owner, attribute, names[key])

    # Trial-side latencies seen from the driver: launch -> first report, report -> next report,
    # last report -> result.
    launched: dict[int, float] = {}
    answered: dict[int, float] = {}
    gaps: dict[str, list[float]] = {
        "launch to first report": [],
        "report to next report": [],
        "last report to result": [],
    }
    marks["gaps"] = gaps
    original_start, original_launch = session.StudySession.start_trial, local.LocalBackend._launch
    original_report, original_complete = session.StudySession.report, session.StudySession.complete

    def start_trial(self: Any, device: str) -> Any:
        if "first_ask" not in marks:
            marks["first_ask"] = counter.snapshot()
        return original_start(self, device)

    def launch(self: Any, context: Any, sess: Any, handle: Any, slot: Any) -> Any:
        entry = original_launch(self, context, sess, handle, slot)
        launched[handle.number] = time.perf_counter()
        return entry

    def report(self: Any, handle: Any, epoch: int, metrics: dict[str, float]) -> bool:
        now = time.perf_counter()
        if handle.number in answered:
            gaps["report to next report"].append(now - answered[handle.number])
        elif handle.number in launched:
            gaps["launch to first report"].append(now - launched[handle.number])
        try:
            return original_report(self, handle, epoch, metrics)
        finally:
            answered[handle.number] = time.perf_counter()

    def complete(self: Any, handle: Any, result: dict[str, float]) -> None:
        if handle.number in answered:
            gaps["last report to result"].append(time.perf_counter() - answered[handle.number])
        return original_complete(self, handle, result)

    session.StudySession.start_trial = start_trial
    local.LocalBackend._launch = launch
    session.StudySession.report = report
    session.StudySession.complete = complete

    if profile_out:
        import cProfile

        original_run = local.LocalBackend.run

        def profiled_run(self: Any, sess: Any) -> None:
            profiler = cProfile.Profile()
            profiler.enable()
            try:
                original_run(self, sess)
            finally:
                profiler.disable()
                profiler.dump_stats(profile_out)

        local.LocalBackend.run = profiled_run
    return timer


def _child_ftsweep(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import optuna

    from orchestrator.runner import run_sweep

    counter = SqlCounter()
    marks: dict[str, Any] = {}
    timer = _instrument_ftsweep(counter, marks, args.profile_out)
    backend = "ray" if args.child == "ftsweep-ray" else "local"
    sweep = noop_sweep(
        folder,
        "bench",
        n_trials=args.n,
        workers=args.workers,
        tracking=args.child != "ftsweep-local-notrack",
        sampler=args.sampler,
        backend=backend,
    )
    if backend == "ray":
        _ray_init(args)
    run_start = time.time()
    outcome = run_sweep(sweep, n_trials=args.n, workers=args.workers, live=False)
    end = time.time()
    statements, commits = counter.snapshot()
    first_statements, first_commits = marks.get("first_ask", (0, 0))
    study = optuna.load_study(study_name="bench", storage=sweep.storage_url)
    result = _result_from_trials(args, study.trials, run_start, end)
    result.update(
        statements=statements - first_statements,
        commits=commits - first_commits,
        statement_kinds=counter.by_kind,
        phases={name: timer.totals[name] for name in timer.order},
        gaps={name: _summary(values) for name, values in marks["gaps"].items()},
        tracking_errors=outcome.tracking_errors[:3],
    )
    return result


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "mean_ms": 1000 * sum(ordered) / len(ordered),
        "median_ms": 1000 * ordered[len(ordered) // 2],
        "p90_ms": 1000 * ordered[int(0.9 * (len(ordered) - 1))],
    }


def _child_optuna(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{folder / 'optuna.db'}", engine_kwargs={"connect_args": {"timeout": 60}}
    )
    counter = SqlCounter()
    counter.attach(storage.engine)
    study = optuna.create_study(
        study_name="bench",
        storage=storage,
        direction="maximize",
        sampler=_sampler(args),
        pruner=optuna.pruners.NopPruner(),
    )

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5.0, 5.0)
        y = trial.suggest_float("y", -5.0, 5.0)
        score = 0.0
        for epoch in range(1, 4):
            score = -((x - 1.0) ** 2) - (y + 2.0) ** 2 + 0.01 * epoch
            trial.report(score, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return score

    statements, commits = counter.snapshot()
    run_start = time.time()
    study.optimize(objective, n_trials=args.n, n_jobs=args.workers)
    end = time.time()
    result = _result_from_trials(args, study.trials, run_start, end)
    result.update(
        statements=counter.statements - statements,
        commits=counter.commits - commits,
        statement_kinds=counter.by_kind,
    )
    return result


def _sampler(args: argparse.Namespace) -> Any:
    import optuna

    if args.sampler == "random":
        return optuna.samplers.RandomSampler(seed=0)
    return optuna.samplers.TPESampler(seed=0, constant_liar=args.workers > 1)


def _ray_init(args: argparse.Namespace) -> None:
    import ray

    # A short private temp folder: Ray's socket paths must stay under 107 characters.
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, _temp_dir=args.ray_temp)


def _child_raytune(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import optuna
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _ray_init(args)
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{folder / 'raytune.db'}", engine_kwargs={"connect_args": {"timeout": 60}}
    )
    counter = SqlCounter()
    counter.attach(storage.engine)

    def trainable(config: dict[str, Any]) -> None:
        x, y = config["x"], config["y"]
        for epoch in range(1, 4):
            tune.report({"score": -((x - 1.0) ** 2) - (y + 2.0) ** 2 + 0.01 * epoch, "epoch": epoch})

    search = OptunaSearch(
        space={
            "x": optuna.distributions.FloatDistribution(-5.0, 5.0),
            "y": optuna.distributions.FloatDistribution(-5.0, 5.0),
        },
        metric="score",
        mode="max",
        sampler=_sampler(args),
        study_name="bench",
        storage=storage,
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search,
            num_samples=args.n,
            max_concurrent_trials=args.workers,
            reuse_actors=args.child == "raytune-reuse",
        ),
        run_config=tune.RunConfig(name="bench", storage_path=str(folder / "ray_results"), verbose=0),
    )
    statements, commits = counter.snapshot()  # after OptunaSearch created the study
    run_start = time.time()
    grid = tuner.fit()
    end = time.time()
    errors = [str(r.error)[:200] for r in grid if r.error]
    study = optuna.load_study(study_name="bench", storage=storage)
    result = _result_from_trials(args, study.trials, run_start, end)
    result.update(
        statements=counter.statements - statements,
        commits=counter.commits - commits,
        statement_kinds=counter.by_kind,
        tune_errors=errors[:3],
    )
    ray.shutdown()
    return result


def _result_from_trials(
    args: argparse.Namespace, trials: list[Any], run_start: float, end: float
) -> dict[str, Any]:
    span, first, last = trial_span(trials)
    launched = datetime.datetime.fromtimestamp(args.t0)
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    reasons = sorted({str(t.user_attrs.get("reason")) for t in trials if t.state.name == "FAIL"})
    return {
        "system": args.child,
        "trials": len(trials),
        "span_s": span,
        "startup_s": (first - launched).total_seconds(),
        "total_s": end - args.t0,
        "run_call_s": end - run_start,
        "tail_s": end - last.timestamp(),
        "states": states,
        "fail_reasons": reasons[:3],
    }


def child_main(args: argparse.Namespace) -> None:
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)  # anything a library writes to the working directory stays in the temp folder
    if args.child.startswith("ftsweep-"):
        result = _child_ftsweep(args, folder)
    elif args.child == "optuna":
        result = _child_optuna(args, folder)
    else:
        result = _child_raytune(args, folder)
    Path(args.out).write_text(json.dumps(result, default=str))


# ---------------------------------------------------------------------------------------------
# parent: runs every system, prints the tables
# ---------------------------------------------------------------------------------------------
def run_child(
    system: str, n: int, args: argparse.Namespace, root: Path, profile_out: Path | None = None
) -> dict[str, Any]:
    label = system + ("-profile" if profile_out else "")
    index = sum(1 for _ in root.glob(f"{label}-run*.json"))
    folder = root / f"{label}-run{index}"
    out = root / f"{label}-run{index}.json"
    log = root / f"{label}-run{index}.log"
    ray_temp = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        system,
        "--dir",
        str(folder),
        "--out",
        str(out),
        "--n",
        str(n),
        "--workers",
        str(args.workers),
        "--sampler",
        args.sampler,
        "--ray-temp",
        ray_temp,
    ]
    if profile_out:
        command += ["--profile-out", str(profile_out)]
    print(f"running {label}: {n} trials ...", file=sys.stderr, flush=True)
    with open(log, "w") as stream:
        t0 = time.time()
        code = subprocess.call(
            [*command, "--t0", repr(t0)], stdout=stream, stderr=subprocess.STDOUT, cwd=_common.REPO_ROOT
        )
    import shutil

    shutil.rmtree(ray_temp, ignore_errors=True)
    if code != 0 or not out.exists():
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{label} failed with exit code {code}; the end of its output:\n{tail}")
    result = json.loads(out.read_text())
    print(
        f"  {label}: {result['span_s'] / result['trials'] * 1000:.1f} ms per trial, start-up "
        f"{result['startup_s']:.2f} s, states {result['states']}",
        file=sys.stderr,
        flush=True,
    )
    return result


def _median_result(results: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(results, key=lambda r: r["span_s"] / r["trials"])
    return ordered[len(ordered) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n-trials", type=int, default=200, help="trials for ftsweep local and Optuna (default 200)"
    )
    parser.add_argument("--ray-trials", type=int, default=40, help="trials for the Ray rows (default 40)")
    parser.add_argument("--workers", type=int, default=2, help="trials in flight at once (default 2)")
    parser.add_argument(
        "--sampler", choices=("tpe", "random"), default="tpe", help="sampler of every system (default tpe)"
    )
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of: {', '.join(SYSTEMS)}"
    )
    parser.add_argument("--skip-ray", action="store_true", help="leave out the three Ray rows")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per system; the median run is shown (default 1)"
    )
    parser.add_argument(
        "--profile",
        choices=("auto", "yes", "no"),
        default="auto",
        help="cProfile an extra ftsweep-local run: auto = when ftsweep misses the Optuna target",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (databases, logs, profiles)"
    )
    # internal: one system in a child process
    parser.add_argument("--child", choices=tuple(SYSTEMS), help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--ray-temp", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}")
    if args.skip_ray:
        systems = [s for s in systems if s not in RAY_SYSTEMS]

    root_cm = temp_dir("ftsweep-bench-sched-")
    root = root_cm.__enter__()
    try:
        other = OtherLoad().start()
        load_before = os.getloadavg()
        probe_before = sqlite_commit_probe(root)
        checkpoint_ms = checkpoint_save_probe(root)
        results: dict[str, dict[str, Any]] = {}
        for system in systems:
            n = args.ray_trials if system in RAY_SYSTEMS else args.n_trials
            runs = []
            for _ in range(max(1, args.repeat)):
                mark = other.mark()
                runs.append(run_child(system, n, args, root))
                runs[-1]["other_cores"] = other.since(mark)
            results[system] = _median_result(runs)
            results[system]["runs_ms"] = [round(r["span_s"] / r["trials"] * 1000, 1) for r in runs]
        probe_after = sqlite_commit_probe(root)
        load_after = os.getloadavg()

        def per_trial_ms(system: str) -> float | None:
            r = results.get(system)
            return r["span_s"] / r["trials"] * 1000 if r else None

        optuna_ms = per_trial_ms("optuna")
        local_ms = per_trial_ms("ftsweep-local")
        want_profile = args.profile == "yes" or (
            args.profile == "auto"
            and local_ms is not None
            and optuna_ms is not None
            and local_ms > TARGET_OPTUNA * optuna_ms
        )
        profile_path = root / "ftsweep-local.prof"
        profiled = None
        if want_profile and "ftsweep-local" in results:
            profiled = run_child("ftsweep-local", args.n_trials, args, root, profile_out=profile_path)
        other.stop()

        extra = [
            f"workload: noop trials (x, y sampled by {args.sampler.upper()} seed 0"
            + (", constant liar" if args.sampler == "tpe" and args.workers > 1 else "")
            + f"), 3 reports per trial, no pruning, {args.workers} trials in flight, every study on a SQLite "
            "file in a temp folder",
            f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} (other processes on the "
            "machine skew every row)",
            f"SQLite small-commit latency (median of 50, fsync-bound) before/after: {probe_before:.2f} / "
            f"{probe_after:.2f} ms; one ftsweep checkpoint save (fsync): {checkpoint_ms:.2f} ms",
            other.summary(),
        ]
        print("## Per-trial scheduling overhead (no-op trainer)\n")
        print(machine_header(extra))
        print()
        rows = []
        for system in systems:
            r = results[system]
            ms = per_trial_ms(system)
            assert ms is not None
            ratio = f"{ms / optuna_ms:.2f}×" if optuna_ms else "n/a"
            trials = f"{r['trials']}" + (
                " (--ray-trials)" if system in RAY_SYSTEMS and args.ray_trials != args.n_trials else ""
            )
            rows.append([SYSTEMS[system], trials, f"{ms:.1f}", ratio, f"{r['startup_s']:.2f}"])
        print(
            markdown_table(
                ["system", "trials", "ms per trial", "ratio to Optuna optimize()", "start-up seconds"], rows
            )
        )
        print()
        ray_ms = per_trial_ms("raytune")
        if local_ms is not None and optuna_ms:
            verdict = "meets" if local_ms <= TARGET_OPTUNA * optuna_ms else "MISSES"
            print(
                f"- ftsweep local / Optuna optimize(): {local_ms / optuna_ms:.2f}× (target ≤ "
                f"{TARGET_OPTUNA}×: {verdict})"
            )
        notrack_ms = per_trial_ms("ftsweep-local-notrack")
        if notrack_ms is not None and optuna_ms:
            print(f"- ftsweep local without tracking / Optuna optimize(): {notrack_ms / optuna_ms:.2f}×")
        if local_ms is not None and ray_ms:
            verdict = "meets" if local_ms <= TARGET_RAY * ray_ms else "MISSES"
            print(
                f"- ftsweep local / Ray Tune (defaults): {local_ms / ray_ms:.3f}× (target ≤ {TARGET_RAY}×: "
                f"{verdict})"
            )
        ftsweep_ray_ms = per_trial_ms("ftsweep-ray")
        if ftsweep_ray_ms is not None and ray_ms:
            print(f"- ftsweep ray backend / Ray Tune (defaults): {ftsweep_ray_ms / ray_ms:.2f}×")
        if args.repeat > 1:
            print(f"- each row is the median of {args.repeat} runs")
        print()

        print("### Details\n")
        detail_rows = []
        for system in systems:
            r = results[system]
            n = r["trials"]
            states = ", ".join(f"{count} {state.lower()}" for state, count in sorted(r["states"].items()))
            detail_rows.append(
                [
                    system,
                    f"{r['total_s']:.2f}",
                    f"{r['span_s']:.2f}",
                    f"{r['tail_s']:.2f}",
                    f"{r['statements'] / n:.1f}",
                    f"{r['commits'] / n:.1f}",
                    states,
                    "; ".join([*(r.get("fail_reasons") or []), *(r.get("tune_errors") or [])]) or "",
                    ", ".join(str(x) for x in r["runs_ms"]),
                    f"{r['other_cores']:.2f}",
                ]
            )
        print(
            markdown_table(
                [
                    "system",
                    "total wall s (launch to return)",
                    "first start to last end s",
                    "after last end s",
                    "SQL statements per trial",
                    "commits per trial",
                    "trial states",
                    "fail reasons",
                    "ms per trial, each run",
                    "other processes' CPU, cores",
                ],
                detail_rows,
            )
        )
        print()
        print(
            "SQL statements and commits are counted on the study's engine (``before_cursor_execute`` / "
            "``commit`` events), from the first trial on; for Ray Tune rows, on the OptunaSearch storage."
        )
        print()

        if "ftsweep-local" in results and "phases" in results["ftsweep-local"]:
            print_phases("ftsweep-local", results["ftsweep-local"])
        if "ftsweep-local-notrack" in results and "phases" in results["ftsweep-local-notrack"]:
            print_phases("ftsweep-local-notrack", results["ftsweep-local-notrack"])
        if profiled is not None:
            print_profile(profile_path, profiled)
        if args.keep:
            print(f"(kept {root})", file=sys.stderr)
    finally:
        if not args.keep:
            root_cm.__exit__(None, None, None)


def print_phases(system: str, result: dict[str, Any]) -> None:
    n = result["trials"]
    phases = result["phases"]
    print(f"### Where the ftsweep driver's time goes ({system}: inclusive wall time per trial)\n")
    rows = []
    for _key, name in PHASES:
        if name not in phases:
            continue
        seconds, calls, statements, commits = phases[name]
        label = ("↳ " + name.strip()) if name.startswith(" ") else name
        rows.append(
            [
                label,
                f"{calls / n:.2f}",
                f"{seconds / n * 1000:.2f}",
                f"{statements / n:.1f}",
                f"{commits / n:.1f}",
            ]
        )
    loop = phases.get(dict(PHASES)["run"])
    if loop:
        top = sum(phases[dict(PHASES)[key]][0] for key in TOP_LEVEL if dict(PHASES)[key] in phases)
        rows.append(
            [
                "rest of the loop (pipes, process joins, progress lines)",
                "",
                f"{(loop[0] - top) / n * 1000:.2f}",
                "",
                "",
            ]
        )
    print(
        markdown_table(
            [
                "driver call",
                "calls per trial",
                "ms per trial",
                "SQL statements per trial",
                "commits per trial",
            ],
            rows,
        )
    )
    print()
    idle = phases.get(dict(PHASES)["wait"], [0.0])[0]
    if loop:
        print(
            f"The driver was busy {100 * (1 - idle / loop[0]):.0f}% of the trial loop ({loop[0]:.1f} s; idle "
            f"= waiting on the trial processes' pipes); {result['span_s'] / n * 1000:.1f} ms per trial end "
            "to end. ↳ rows are inside the row above them; the unindented rows before `set_user_attr` add "
            "up, with the idle wait and the rest, to the loop."
        )
    kinds = ", ".join(
        f"{k} {v / n:.1f}" for k, v in sorted(result["statement_kinds"].items(), key=lambda kv: -kv[1])
    )
    print(f"Statements by kind per trial (whole run): {kinds}.")
    gaps = result.get("gaps") or {}
    parts = [
        f"{name} {g['median_ms']:.1f} ms median ({g['p90_ms']:.1f} p90)" for name, g in gaps.items() if g
    ]
    if parts:
        print(
            "Trial-process side, timed by the driver (includes waiting for the busy driver): "
            + "; ".join(parts)
            + "."
        )
    print()


def print_profile(path: Path, result: dict[str, Any]) -> None:
    import io
    import pstats

    n = result["trials"]
    stats = pstats.Stats(str(path))
    total = stats.total_tt  # type: ignore[attr-defined]
    print(
        f"### cProfile of run_sweep (ftsweep-local, {n} trials; cProfile slows it to "
        f"{result['span_s'] / n * 1000:.0f} ms per trial)\n"
    )
    rows = []
    entries = stats.stats  # type: ignore[attr-defined]
    ranked = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:20]
    for (filename, line, function), (_cc, ncalls, tottime, cumtime, _callers) in ranked:
        where = _short(filename, line, function)
        rows.append([where, f"{ncalls / n:.1f}", f"{tottime / n * 1000:.2f}", f"{cumtime / n * 1000:.2f}"])
    print(
        markdown_table(
            ["function (by own time)", "calls per trial", "own ms per trial", "cumulative ms per trial"], rows
        )
    )
    print()
    buffer = io.StringIO()
    pstats.Stats(str(path), stream=buffer).sort_stats("cumulative").print_stats(
        r"orchestrator|optuna/(study|trial|storages)", 25
    )
    print(
        f"Total profiled time {total:.1f} s. Top cumulative entries in orchestrator/ and optuna (pstats):\n"
    )
    print("```")
    text = buffer.getvalue()
    start = text.find("   ncalls")
    print(text[start:].rstrip() if start >= 0 else text.rstrip())
    print("```\n")


def _short(filename: str, line: int, function: str) -> str:
    for marker in ("site-packages/", "/work/main/", str(_common.REPO_ROOT) + "/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
    if filename == "~":
        return function
    return f"{filename}:{line}({function})"


if __name__ == "__main__":
    main()
