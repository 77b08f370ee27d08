"""How long ``ftsweep report`` takes on a big study (1,000 trials by default).

The study is made with Optuna directly in a SQLite file (no trial runs): the sweep record ftsweep
keeps (a noop sweep with tracking off, so MLflow is not read), then ``add_trials`` of N trials on 4
devices, each with 6 parameters (a log-scaled learning rate and weight decay, dropout, label
smoothing, an int freeze depth, a categorical regularizer), 4 intermediate values, start and end
times and the ``device`` attribute; 80% complete, 15% pruned, 5% failed.

Timed: the real CLI (``ftsweep report NAME --storage URL``, a fresh interpreter, wall time, best
of ``--repeat``), then the same work in-process, step by step (read the study, draw the plotly
figures, write the HTML, draw the PNGs). The background report at the end of a sweep is this CLI
run as a child process: the sweep does not wait for it.

Run: ``.venv/bin/python bench/report_time.py [--trials 1000 5000] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import _common
from _common import machine_header, markdown_table, temp_dir

NAME = "report-bench"
DEVICES = ("cuda:0", "cuda:1", "cuda:2", "cuda:3")


def build_study(folder: Path, n_trials: int, seed: int = 0) -> str:
    """A study of ``n_trials`` finished trials in ``folder/ftsweep.db``; its storage URL."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    from orchestrator.study import save_sweep_record

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{folder / 'ftsweep.db'}"
    raw = _common.noop_sweep_raw(folder, NAME, n_trials=n_trials, tracking=False, storage_url=url)
    study = optuna.create_study(study_name=NAME, storage=url, direction="maximize")
    save_sweep_record(study, {"sweep": raw, "base_dir": str(folder)})
    distributions = {
        "learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
        "weight_decay": FloatDistribution(1e-6, 0.1, log=True),
        "dropout": FloatDistribution(0.0, 0.5),
        "label_smoothing": FloatDistribution(0.0, 0.2),
        "freeze_depth": IntDistribution(0, 6),
        "regularizer": CategoricalDistribution(["none", "l1", "l2sp"]),
    }
    rng = random.Random(seed)
    free_at = {device: datetime.datetime(2026, 1, 1, 9, 0) for device in DEVICES}
    trials = []
    for _ in range(n_trials):
        params = {
            "learning_rate": 10 ** rng.uniform(-5, -3),
            "weight_decay": 10 ** rng.uniform(-6, -1),
            "dropout": rng.uniform(0, 0.5),
            "label_smoothing": rng.uniform(0, 0.2),
            "freeze_depth": rng.randint(0, 6),
            "regularizer": rng.choice(["none", "l1", "l2sp"]),
        }
        value = 0.9 - abs(params["learning_rate"] - 1e-4) * 500 + params["dropout"] * 0.1 + rng.gauss(0, 0.02)
        draw = rng.random()
        state = TrialState.COMPLETE if draw < 0.8 else TrialState.PRUNED if draw < 0.95 else TrialState.FAIL
        epochs = 4 if state == TrialState.COMPLETE else 2
        device = min(DEVICES, key=lambda d: free_at[d])
        start = free_at[device] + datetime.timedelta(seconds=rng.uniform(1, 30))
        end = start + datetime.timedelta(minutes=epochs * rng.uniform(1, 3))
        free_at[device] = end
        trials.append(
            create_trial(
                state=state,
                value=value if state == TrialState.COMPLETE else None,
                params=params,
                distributions=distributions,
                intermediate_values={e: value - 0.1 / e for e in range(1, epochs + 1)},
                user_attrs={"device": device},
            )
        )
        trials[-1].datetime_start, trials[-1].datetime_complete = start, end
    study.add_trials(trials)
    return url


def time_cli(folder: Path, url: str, repeat: int) -> tuple[float, float]:
    """(best wall seconds, CPU seconds of that run): CPU time says more than wall time on a busy machine."""
    import resource

    best, cpu = float("inf"), 0.0
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "report", NAME, "--storage", url],
            cwd=folder,
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if wall < best:
            best = wall
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return best, cpu


def time_steps(url: str, folder: Path) -> dict[str, float]:
    """The report's steps in this process (the imports counted in the first step that needs them)."""
    from orchestrator.storage import StoreLocation

    steps: dict[str, float] = {}
    start = time.perf_counter()
    from orchestrator.report_data import collect

    data = collect(StoreLocation.resolve(url), NAME)
    steps["read the study + importances"] = time.perf_counter() - start
    start = time.perf_counter()
    from orchestrator.report_figures import draw_all

    drawn = draw_all(data)
    steps["plotly figures"] = time.perf_counter() - start
    start = time.perf_counter()
    from orchestrator.report_html import render

    page = render(data, drawn)
    (folder / "steps.html").write_text(page, encoding="utf-8")
    steps["HTML"] = time.perf_counter() - start
    start = time.perf_counter()
    from orchestrator.report_png import render_pngs

    pngs = render_pngs(data, drawn)
    steps["matplotlib PNGs"] = time.perf_counter() - start
    steps["HTML size (MB)"] = len(page) / 1e6
    steps["PNG size (kB)"] = sum(len(content) for _, content in pngs) / 1e3
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[1000])
    parser.add_argument("--repeat", type=int, default=2, help="CLI runs per size (best is kept)")
    parser.add_argument("--keep", type=Path, help="build the studies in this folder and keep them")
    args = parser.parse_args()
    print(machine_header([f"load average at the start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}"]))
    rows = []
    for n in args.trials:
        with temp_dir("ftsweep-report-bench-") as scratch:
            folder = (args.keep / f"trials-{n}") if args.keep else scratch
            folder.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            url = build_study(folder, n)
            built = time.perf_counter() - start
            cli, cpu = time_cli(folder, url, args.repeat)
            # In a fresh interpreter, so that the CLI's runs above did not warm its imports up.
            steps_text = subprocess.run(
                [sys.executable, __file__, "--steps", url, str(folder)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            steps = {k: float(v) for k, v in (line.split("\t") for line in steps_text.strip().splitlines())}
            rows.append(
                [
                    f"{n:,}",
                    f"{built:.1f}",
                    f"{cli:.1f}",
                    f"{cpu:.1f}",
                    *(f"{steps[k]:.2f}" for k in list(steps)[:4]),
                    f"{steps['HTML size (MB)']:.1f}",
                    f"{steps['PNG size (kB)']:.0f}",
                ]
            )
    header = [
        "trials",
        "build study (s)",
        "`ftsweep report` wall (s)",
        "its CPU (s)",
        "read + importances (s)",
        "plotly figures (s)",
        "HTML (s)",
        "PNGs (s)",
        "HTML (MB)",
        "PNGs (kB)",
    ]
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--steps":
        for key, value in time_steps(sys.argv[2], Path(sys.argv[3])).items():
            print(f"{key}\t{value}")
        sys.exit(0)
    sys.exit(main())
