"""MLflow logging as a share of trial time: the same noop sweep with tracking on and off.

Trials of the ``noop`` trainer that last about a second (``--epochs`` x ``--sleep``; 5 x 0.2 s by
default), 20 per run, 2 at a time, study and MLflow store on SQLite files in a temporary folder.
Runs alternate tracking on / off (``--repeat`` pairs, each run in a fresh process); the table shows
the median run of each.

Two measures:

- the difference in per-trial wall time between tracking on and off, as a share of trial time;
- the CPU time of the MLflow writer process (every per-trial MLflow call: child runs, params,
  per-epoch metrics, final metrics, the parent run's best value), its start-up (imports) apart,
  as reported by the writer when it closes, as a share of the total trial time (the sum of every
  trial's duration); and the time the driver spends in ``StudyTracker``'s methods (they only
  queue messages). The synchronous parts (``open``, ``start_study`` before the first trial, the
  drain in ``close`` after the last) are shown apart, as start-up and tail.

Run: ``.venv/bin/python bench/mlflow_share.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common
from _common import (
    OtherLoad,
    machine_header,
    markdown_table,
    noop_sweep,
    sqlite_commit_probe,
    temp_dir,
    trial_span,
)

TARGET_SHARE = 0.02
METHODS = (
    "open",
    "start_study",
    "start_trial",
    "set_device",
    "log_epoch",
    "end_trial",
    "set_best",
    "log_study_metrics",
    "log_artifacts",
    "close",
)


# ---------------------------------------------------------------------------------------------
# child: one run
# ---------------------------------------------------------------------------------------------
def _instrument_tracker(totals: dict[str, list[float]]) -> None:
    """Time every StudyTracker method on the driver's side; keep the writer process's CPU figures.

    totals[name] = [driver seconds, driver calls];
    totals["writer"] = [start-up CPU s, CPU s from then to the close message, total CPU s]
    """
    from orchestrator.tracking import StudyTracker

    for name in METHODS:
        original = getattr(StudyTracker, name)

        def wrapped(
            self: Any, *args: Any, _original: Any = original, _name: str = name, **kwargs: Any
        ) -> Any:
            start = time.perf_counter()
            try:
                return _original(self, *args, **kwargs)
            finally:
                entry = totals.setdefault(_name, [0.0, 0])
                entry[0] += time.perf_counter() - start
                entry[1] += 1
                if _name == "close" and self.writer_stats:
                    stats = self.writer_stats
                    totals["writer"] = [
                        stats["startup_cpu_seconds"],
                        stats["trials_cpu_seconds"],
                        stats["cpu_seconds"],
                    ]

        setattr(StudyTracker, name, wrapped)


def child_main(args: argparse.Namespace) -> None:
    import optuna

    from orchestrator.runner import run_sweep

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    totals: dict[str, list[float]] = {}
    _instrument_tracker(totals)
    sweep = noop_sweep(
        folder,
        "mlflow-share",
        n_trials=args.n_trials,
        epochs=args.epochs,
        sleep_seconds=args.sleep,
        workers=args.workers,
        tracking=args.tracking == "on",
    )
    run_start = time.time()
    outcome = run_sweep(sweep, n_trials=args.n_trials, workers=args.workers, live=False)
    end = time.time()
    study = optuna.load_study(study_name="mlflow-share", storage=sweep.storage_url)
    span, first, last = trial_span(study.trials)
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials if t.datetime_complete
    ]
    launched = datetime.datetime.fromtimestamp(args.t0)
    result = {
        "tracking": args.tracking,
        "trials": len(study.trials),
        "states": {
            s: sum(1 for t in study.trials if t.state.name == s) for s in {t.state.name for t in study.trials}
        },
        "span_s": span,
        "durations_s": durations,
        "startup_s": (first - launched).total_seconds(),
        "total_s": end - args.t0,
        "run_call_s": end - run_start,
        "tail_s": end - last.timestamp(),
        "tracker": totals,
        "tracking_errors": outcome.tracking_errors[:3],
        "fail_reasons": sorted(
            {str(t.user_attrs.get("reason")) for t in study.trials if t.state.name == "FAIL"}
        ),
    }
    Path(args.out).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# parent
# ---------------------------------------------------------------------------------------------
def run_child(tracking: str, index: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    label = f"tracking-{tracking}-{index}"
    out, log = root / f"{label}.json", root / f"{label}.log"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--tracking",
        tracking,
        "--dir",
        str(root / label),
        "--out",
        str(out),
        "--n-trials",
        str(args.n_trials),
        "--epochs",
        str(args.epochs),
        "--sleep",
        str(args.sleep),
        "--workers",
        str(args.workers),
    ]
    print(f"running {label} ...", file=sys.stderr, flush=True)
    with open(log, "w") as stream:
        t0 = time.time()
        code = subprocess.call(
            [*command, "--t0", repr(t0)], stdout=stream, stderr=subprocess.STDOUT, cwd=_common.REPO_ROOT
        )
    if code != 0 or not out.exists():
        raise SystemExit(f"{label} failed with exit code {code}:\n{log.read_text(errors='replace')[-3000:]}")
    result = json.loads(out.read_text())
    print(
        f"  {label}: mean trial {statistics.mean(result['durations_s']) * 1000:.1f} ms, states "
        f"{result['states']}",
        file=sys.stderr,
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-trials", type=int, default=20, help="trials per run (default 20)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per trial (default 5)")
    parser.add_argument("--sleep", type=float, default=0.2, help="seconds each epoch sleeps (default 0.2)")
    parser.add_argument("--workers", type=int, default=2, help="trials at once (default 2)")
    parser.add_argument(
        "--repeat", type=int, default=5, help="pairs of runs, tracking on then off (default 5)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tracking", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return

    with temp_dir("ftsweep-bench-mlflow-") as root:
        other = OtherLoad().start()
        load_before = os.getloadavg()
        probe = sqlite_commit_probe(root)
        runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        for index in range(max(1, args.repeat)):
            for tracking in ("on", "off"):
                runs[tracking].append(run_child(tracking, index, args, root))
        load_after = os.getloadavg()
        other.stop()

    def mean_trial(r: dict[str, Any]) -> float:
        return statistics.mean(r["durations_s"])

    chosen = {k: sorted(v, key=mean_trial)[len(v) // 2] for k, v in runs.items()}
    extra = [
        f"workload: {args.n_trials} noop trials per run, {args.epochs} epochs x {args.sleep} s sleep, "
        f"{args.workers} at a time, study and MLflow store on SQLite files in a temp folder; TPE seed 0, no "
        "pruning",
        f"{args.repeat} run(s) per setting, alternating on/off, each in a fresh process; the median run (by "
        "mean trial time) is shown",
        f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}; SQLite small-commit latency "
        f"{probe:.2f} ms",
        other.summary(),
    ]
    print("## MLflow logging as a share of trial time\n")
    print(machine_header(extra))
    print()
    rows = []
    for tracking in ("on", "off"):
        r = chosen[tracking]
        every = ", ".join(f"{mean_trial(x) * 1000:.0f}" for x in runs[tracking])
        rows.append(
            [
                f"tracking {tracking}",
                r["trials"],
                f"{mean_trial(r) * 1000:.1f}",
                every,
                f"{r['span_s'] / r['trials'] * 1000:.1f}",
                f"{r['startup_s']:.2f}",
                f"{r['tail_s']:.2f}",
                f"{r['total_s']:.2f}",
            ]
        )
    print(
        markdown_table(
            [
                "run",
                "trials",
                "trial duration ms (mean)",
                "mean trial ms, each run",
                "wall ms per trial (first start to last end / n)",
                "start-up s",
                "after last trial s",
                "total wall s",
            ],
            rows,
        )
    )
    print()
    on, off = mean_trial(chosen["on"]), mean_trial(chosen["off"])
    on_all = statistics.median(mean_trial(x) for x in runs["on"])
    off_all = statistics.median(mean_trial(x) for x in runs["off"])
    diff_share = (on_all - off_all) / off_all
    wall_on = statistics.median(x["span_s"] / x["trials"] for x in runs["on"])
    wall_off = statistics.median(x["span_s"] / x["trials"] for x in runs["off"])
    print(
        f"- trial duration, tracking on - off: {(on_all - off_all) * 1000:+.1f} ms per trial = "
        f"{100 * diff_share:+.2f}% of trial time (medians over runs; target ≤ {100 * TARGET_SHARE:.0f}%: "
        f"{'meets' if diff_share <= TARGET_SHARE else 'MISSES'})"
    )
    pooled_on = statistics.median(d for x in runs["on"] for d in x["durations_s"])
    pooled_off = statistics.median(d for x in runs["off"] for d in x["durations_s"])
    print(
        f"- median trial duration, every trial of every run pooled: on {pooled_on * 1000:.1f} ms, off "
        f"{pooled_off * 1000:.1f} ms: {(pooled_on - pooled_off) * 1000:+.1f} ms = "
        f"{100 * (pooled_on - pooled_off) / pooled_off:+.2f}%"
    )
    print(
        f"- wall time per trial, tracking on - off: {(wall_on - wall_off) * 1000:+.1f} ms = "
        f"{100 * (wall_on - wall_off) / wall_off:+.2f}%"
    )
    print(
        f"- run-to-run spread of the mean trial time: on {min(mean_trial(x) for x in runs['on']) * 1000:.0f}–"
        f"{max(mean_trial(x) for x in runs['on']) * 1000:.0f} ms, off "
        f"{min(mean_trial(x) for x in runs['off']) * 1000:.0f}–"
        f"{max(mean_trial(x) for x in runs['off']) * 1000:.0f} ms (the difference above is within it when "
        "it is smaller)"
    )
    del on, off
    print()

    # The tracker's own time, from every tracking-on run together.
    totals: dict[str, list[float]] = {}
    trial_seconds = 0.0
    span_seconds = 0.0
    n_trials = 0
    writer_cpu = 0.0
    writer_startup = 0.0
    writer_close = 0.0
    for r in runs["on"]:
        trial_seconds += sum(r["durations_s"])
        span_seconds += r["span_s"]
        n_trials += r["trials"]
        startup, trials, total = r["tracker"].get("writer", [0.0, 0.0, 0.0])
        writer_startup += startup
        writer_cpu += trials
        writer_close += total - startup - trials
        for name, values in r["tracker"].items():
            if name == "writer":
                continue
            slot = totals.setdefault(name, [0.0, 0])
            for i, value in enumerate(values):
                slot[i] += value
    print(f"### Inside the tracker (all {len(runs['on'])} tracking-on runs, {n_trials} trials)\n")
    rows = []
    for name in METHODS:
        if name not in totals or name in ("open", "start_study", "close"):
            continue  # synchronous, once per run: shown below the table
        driver_s, calls = totals[name]
        rows.append([name, f"{calls / n_trials:.2f}", f"{driver_s / n_trials * 1000:.3f}"])
    print(
        markdown_table(
            ["StudyTracker method (driver side)", "calls per trial", "driver ms per trial (call returns)"],
            rows,
        )
    )
    print()
    share = writer_cpu / trial_seconds
    print(
        f"- MLflow writer process, per-trial work: {writer_cpu / n_trials * 1000:.1f} ms CPU per trial = "
        f"{100 * share:.2f}% of total trial time (sum of trial durations {trial_seconds:.1f} s; target ≤ "
        f"{100 * TARGET_SHARE:.0f}%: {'meets' if share <= TARGET_SHARE else 'MISSES'}); "
        f"{100 * writer_cpu / span_seconds:.2f}% of the wall time the trials spanned; its start-up (imports, "
        f"store) {writer_startup / len(runs['on']):.2f} s CPU per run, alongside the driver's, and its close "
        "(the study run's last batch and end, the best checkpoint's artifacts) "
        f"{writer_close / len(runs['on']):.2f} s"
    )
    n_runs = len(runs["on"])
    opened = totals.get("open", [0.0])[0] / n_runs
    started = totals.get("start_study", [0.0])[0] / n_runs
    drain = totals.get("close", [0.0])[0] / n_runs
    print(
        f"- synchronous, once per run (not in the share above): open {opened:.2f} s (starts the writer, "
        f"imports mlflow, creates the store's schema and the experiment), start_study {started:.2f} s "
        f"(parent run, params, 3 artifacts), close {drain:.2f} s (the writer writes what it holds, ends the "
        "parent run)"
    )
    for tracking in ("on", "off"):
        failed = sum(r["states"].get("FAIL", 0) for r in runs[tracking])
        if failed:
            reasons = sorted({reason for r in runs[tracking] for reason in r.get("fail_reasons", [])})
            print(f"- tracking {tracking}: {failed} failed trial(s) over all runs: {'; '.join(reasons)}")
    errors = [e for r in runs["on"] for e in r["tracking_errors"]]
    if errors:
        print(f"- tracking errors: {errors[:3]}")


if __name__ == "__main__":
    main()
