"""``ftsweep status`` on a study of 10,000 trials, in SQLite and in PostgreSQL.

The study is a real ftsweep study: ``run_sweep`` runs one noop trial (which stores the sweep
file with the study, as ``ftsweep run`` does), then ``study.add_trials`` adds 9,999 COMPLETE
trials, each with 7 parameters (x, y and five fine-tuning-like ones: a log-scaled learning rate
and weight decay, dropout, an int freeze depth, a categorical regularizer), 3 intermediate
values, and the user attributes ftsweep writes (device, owner, epochs, MLflow run id).

Timed: the real CLI (``ftsweep status NAME --storage URL > /dev/null``, which shows the last 200
trials, and with ``--last 20``, ``--all`` and ``--all --format json``), best of 3, wall time of the
subprocess; then the same work in-process, step by step (``orchestrator.status.read_status``,
``render_status``, rich's print), in a fresh interpreter without a profiler, and under cProfile.

Run: ``.venv/bin/python bench/status_scale.py`` (``--help`` for the options). The SQLite file is
in a temporary folder; the PostgreSQL study (``--postgres URL``) is deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common
from _common import OtherLoad, machine_header, markdown_table, quiet_stderr, temp_dir

TARGET_S = 1.0
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
FTSWEEP = _common.REPO_ROOT / ".venv" / "bin" / "ftsweep"


def build_study(url: str, name: str, folder: Path, n_trials: int, seed: int = 0) -> tuple[float, float]:
    """A real ftsweep study of ``n_trials`` trials; returns (seconds for run_sweep, seconds for
    add_trials)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from orchestrator.config import validate_sweep
    from orchestrator.runner import run_sweep

    raw = _common.noop_sweep_raw(folder, name, n_trials=n_trials, workers=1, tracking=False, storage_url=url)
    sweep = validate_sweep(raw, base_dir=folder, source=f"bench:{name}")
    start = time.perf_counter()
    with quiet_stderr():
        run_sweep(sweep, n_trials=1, workers=1, live=False)
    first = time.perf_counter() - start

    distributions = {
        "x": FloatDistribution(-5.0, 5.0),
        "y": FloatDistribution(-5.0, 5.0),
        "learning_rate": FloatDistribution(1e-5, 3e-4, log=True),
        "weight_decay": FloatDistribution(1e-6, 0.1, log=True),
        "dropout": FloatDistribution(0.0, 0.5),
        "freeze_depth": IntDistribution(0, 6),
        "regularizer": CategoricalDistribution(["none", "l1", "l2sp"]),
    }
    rng = random.Random(seed)
    clock = datetime.datetime.now() - datetime.timedelta(hours=n_trials // 60 + 1)
    trials = []
    for number in range(1, n_trials):
        params: dict[str, Any] = {
            "x": rng.uniform(-5, 5),
            "y": rng.uniform(-5, 5),
            "learning_rate": math.exp(rng.uniform(math.log(1e-5), math.log(3e-4))),
            "weight_decay": math.exp(rng.uniform(math.log(1e-6), math.log(0.1))),
            "dropout": rng.uniform(0.0, 0.5),
            "freeze_depth": rng.randint(0, 6),
            "regularizer": rng.choice(["none", "l1", "l2sp"]),
        }
        score = -((params["x"] - 1.0) ** 2) - (params["y"] + 2.0) ** 2
        trial = optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE,
            value=score + 0.03,
            params=params,
            distributions=distributions,
            user_attrs={
                "device": "cuda:0",
                "owner": f"bench-host:{1000 + number % 7}",
                "epochs": 3,
                "mlflow_run_id": uuid.UUID(int=rng.getrandbits(128)).hex,
            },
            intermediate_values={epoch: score + 0.01 * epoch for epoch in (1, 2, 3)},
        )
        duration = datetime.timedelta(seconds=rng.uniform(20, 90))
        trial.datetime_start = clock
        trial.datetime_complete = clock + duration
        clock += duration
        trials.append(trial)
    storage = _build_storage(url)
    study = optuna.load_study(study_name=name, storage=storage)
    start = time.perf_counter()
    study.add_trials(trials)
    added = time.perf_counter() - start
    storage.engine.dispose()
    return first, added


def _build_storage(url: str) -> Any:
    """An RDBStorage for building only: commits do not wait for the disk (the study is a throwaway)."""
    import optuna
    from sqlalchemy import event

    if url.startswith("postgresql"):
        return optuna.storages.RDBStorage(
            url, engine_kwargs={"connect_args": {"options": "-c synchronous_commit=off"}}
        )
    storage = optuna.storages.RDBStorage(url)
    if url.startswith("sqlite"):
        event.listen(
            storage.engine, "connect", lambda connection, record: connection.execute("PRAGMA synchronous=OFF")
        )
        storage.engine.dispose()
    return storage


def best_of(n: int, action: Callable[[], Any]) -> tuple[float, list[float]]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times), times


def cli_time(arguments: list[str], repeat: int) -> tuple[float, list[float]]:
    def run() -> None:
        with open(os.devnull, "wb") as sink:
            result = subprocess.run(
                [str(FTSWEEP), *arguments], stdout=sink, stderr=subprocess.PIPE, cwd=_common.REPO_ROOT
            )
        if result.returncode != 0:
            raise SystemExit(
                f"ftsweep {' '.join(arguments)} failed ({result.returncode}): "
                f"{result.stderr.decode()[-2000:]}"
            )

    return best_of(repeat, run)


MODES: tuple[tuple[str, dict[str, Any], list[str]], ...] = (
    ("default (the last 200 rows)", {}, []),
    ("--last 20", {"last": 20}, ["--last", "20"]),
    ("--all", {"show_all": True}, ["--all"]),
)


def in_process_steps(url: str, name: str, repeat: int) -> dict[str, dict[str, float]]:
    """Best-of-``repeat`` seconds of each step of ``ftsweep status``, per mode (default, --last 20, --all)."""
    from rich.console import Console

    from orchestrator.status import RICH_ROWS, read_status, render_plain, render_status

    table: dict[str, dict[str, float]] = {}
    for label, options, _flags in MODES:
        best: dict[str, float] = {}
        for _ in range(repeat):
            steps: dict[str, float] = {}
            start = time.perf_counter()
            data = read_status(url, name, **options)
            steps["read_status (SQL: counts, best, shown rows)"] = time.perf_counter() - start
            mark = time.perf_counter()
            with open(os.devnull, "w") as sink:
                if len(data.rows) > RICH_ROWS:  # what the CLI does
                    print(render_plain(data), file=sink)
                else:
                    Console(file=sink, highlight=False, soft_wrap=False, width=120).print(render_status(data))
            steps["render and print as the CLI does (rich table; plain text above 1,000 rows)"] = (
                time.perf_counter() - mark
            )
            steps["total in-process"] = time.perf_counter() - start
            mark = time.perf_counter()
            with open(os.devnull, "w") as sink:
                Console(file=sink, highlight=False, soft_wrap=False, width=120).print(render_status(data))
            steps["for comparison: the same rows as a rich table, to /dev/null"] = time.perf_counter() - mark
            for key, value in steps.items():
                best[key] = min(best.get(key, math.inf), value)
        best["rows shown"] = len(data.rows)
        table[label] = best
    return table


BREAKDOWN = """
import json, os, sys, time
t0 = time.perf_counter()
import rich.console, rich.table
from orchestrator.cli import build_parser
from orchestrator.status import RICH_ROWS, read_status, render_plain, render_status
t1 = time.perf_counter()
data = read_status(sys.argv[1], sys.argv[2], show_all=sys.argv[3] == "all")
t2 = time.perf_counter()
plain = len(data.rows) > RICH_ROWS  # what the CLI does
table = render_plain(data) if plain else render_status(data)
t3 = time.perf_counter()
with open(os.devnull, "w") as sink:
    if plain:
        print(table, file=sink)
    else:
        rich.console.Console(file=sink, highlight=False, soft_wrap=False).print(table)
t4 = time.perf_counter()
print(json.dumps({"imports (rich, orchestrator.cli, orchestrator.status)": t1 - t0,
                  "read_status (imports sqlalchemy; engine, SQL, decode)": t2 - t1,
                  "render (rich Table; plain text above 1,000 rows)": t3 - t2,
                  "print to /dev/null": t4 - t3, "optuna imported": "optuna" in sys.modules}))
"""


def fresh_breakdown(url: str, name: str, mode: str, repeat: int) -> dict[str, Any]:
    """The CLI's steps timed inside a fresh interpreter (no profiler), best of ``repeat`` per step."""
    import json

    best: dict[str, Any] = {}
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", BREAKDOWN, url, name, mode],
            capture_output=True,
            text=True,
            check=True,
            cwd=_common.REPO_ROOT,
        )
        for key, value in json.loads(out.stdout.strip().splitlines()[-1]).items():
            best[key] = value if isinstance(value, bool) else min(best.get(key, math.inf), value)
    return best


def cli_profile(url: str, name: str, folder: Path, flags: list[str]) -> list[list[str]]:
    """cProfile of one fresh ``ftsweep status`` process, summed into inclusive (overlapping) buckets."""
    import pstats

    out = folder / f"status-{uuid.uuid4().hex[:6]}.prof"
    with open(os.devnull, "wb") as sink:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                str(out),
                str(FTSWEEP),
                "status",
                name,
                "--storage",
                url,
                *flags,
            ],
            stdout=sink,
            check=True,
            cwd=_common.REPO_ROOT,
        )
    stats = pstats.Stats(str(out)).stats  # type: ignore[attr-defined]

    def cumulative(path_part: str, function: str) -> float:
        return sum(v[3] for (f, _l, fn), v in stats.items() if fn == function and path_part in f)

    total = cumulative("orchestrator/cli.py", "main")
    buckets = [
        ("the whole command (cli.main), profiled", total),
        ("imports (every module imported, wherever)", cumulative("importlib._bootstrap", "_find_and_load")),
        ("orchestrator.status.read_status", cumulative("orchestrator/status.py", "read_status")),
        ("↳ SQLAlchemy Connection.execute (the queries)", cumulative("sqlalchemy/engine/base.py", "execute")),
        ("↳ orchestrator.status.decode_param", cumulative("orchestrator/status.py", "decode_param")),
        (
            "orchestrator.status.render_plain (the plain text the CLI prints above 1,000 rows)",
            cumulative("orchestrator/status.py", "render_plain"),
        ),
        (
            "orchestrator.status.render_status (a rich Table, up to 1,000 rows)",
            cumulative("orchestrator/status.py", "render_status"),
        ),
        ("rich Console.print", cumulative("rich/console.py", "print")),
    ]
    out.unlink(missing_ok=True)
    return [
        [label, f"{seconds:.3f}", f"{100 * seconds / total:.0f}%" if total else ""]
        for label, seconds in buckets
    ]


def import_floor(repeat: int) -> float:
    """Seconds to start Python and import what ``ftsweep status`` imports (without touching a database)."""
    code = "import orchestrator.cli, orchestrator.status, sqlalchemy, rich.console, rich.table"
    return best_of(repeat, lambda: subprocess.run([sys.executable, "-c", code], check=True))[0]


def measure(
    url: str,
    label: str,
    name: str,
    args: argparse.Namespace,
    results: list[list[Any]],
    details: list[str],
    folder: Path,
) -> None:
    repeat = args.repeat

    def verdict(seconds: float) -> str:
        return "yes" if seconds < TARGET_S else "NO"

    def each(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    commands = [
        ["status", name, "--storage", url],
        ["status", name, "--storage", url, "--last", "20"],
        ["status", name, "--storage", url, "--all"],
        ["status", name, "--storage", url, "--all", "--format", "json"],
    ]
    for command in commands:
        best, every = cli_time(command, repeat)
        shown = " ".join(["ftsweep status NAME", *command[4:]])
        results.append([label, f"`{shown}` (CLI, > /dev/null)", f"{best:.2f}", each(every), verdict(best)])
    steps = in_process_steps(url, name, repeat)
    for mode, values in steps.items():
        results.append(
            [
                label,
                f"in-process `read_status` + render + print, {mode}",
                f"{values['total in-process']:.2f}",
                "",
                verdict(values["total in-process"]),
            ]
        )

    modes = list(steps)
    keys = [k for k in steps[modes[0]] if k != "rows shown"]
    rows = [[key, *(f"{steps[m][key]:.3f}" for m in modes)] for key in keys]
    rows.append(["rows shown", *(f"{int(steps[m]['rows shown']):,}" for m in modes)])
    details.append(f"#### {label}: `ftsweep status` step by step, in-process (best of {repeat}, seconds)\n")
    details.append(markdown_table(["step", *modes], rows))
    details.append("")
    fresh = {mode: fresh_breakdown(url, name, mode, repeat) for mode in ("default", "all")}
    keys = [k for k in fresh["all"] if k != "optuna imported"]
    rows = [[key, f"{fresh['default'][key]:.3f}", f"{fresh['all'][key]:.3f}"] for key in keys]
    rows.append(
        ["sum", f"{sum(fresh['default'][k] for k in keys):.3f}", f"{sum(fresh['all'][k] for k in keys):.3f}"]
    )
    details.append(
        f"#### {label}: the same steps in a fresh interpreter, no profiler (best of {repeat} each, seconds;"
        f" optuna imported: {fresh['all']['optuna imported']})\n"
    )
    details.append(markdown_table(["step", "default (last 200)", "--all"], rows))
    details.append("")
    details.append(
        f"#### {label}: cProfile of one fresh `ftsweep status NAME --all` process (inclusive, overlapping "
        "buckets)\n"
    )
    details.append(
        markdown_table(["where", "seconds (profiled)", "share"], cli_profile(url, name, folder, ["--all"]))
    )
    details.append("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-trials", type=int, default=10_000, help="trials in the study (default 10,000)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N for every timing (default 3)")
    parser.add_argument(
        "--postgres", default=DEFAULT_POSTGRES, help=f"PostgreSQL URL (default {DEFAULT_POSTGRES})"
    )
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: list[list[Any]] = []
    details: list[str] = []
    build: list[str] = []
    other = OtherLoad().start()
    with temp_dir("ftsweep-bench-status-") as folder:
        cwd = os.getcwd()
        os.chdir(folder)  # ftsweep-runs/ of the PostgreSQL study (next to the working directory) lands here
        try:
            floor = import_floor(args.repeat)
            sqlite_url = f"sqlite:///{folder / 'status.db'}"
            name = "status-scale"
            print("building the SQLite study ...", file=sys.stderr, flush=True)
            first, added = build_study(sqlite_url, name, folder, args.n_trials)
            build.append(
                f"SQLite: run_sweep of 1 noop trial {first:.1f} s, add_trials of {args.n_trials - 1:,} "
                f"trials {added:.1f} s"
            )
            measure(sqlite_url, "SQLite", name, args, results, details, folder)
            if not args.skip_postgres:
                pg_name = f"status-scale-{uuid.uuid4().hex[:8]}"
                try:
                    print("building the PostgreSQL study ...", file=sys.stderr, flush=True)
                    first, added = build_study(args.postgres, pg_name, folder, args.n_trials)
                    build.append(
                        f"PostgreSQL: run_sweep of 1 noop trial {first:.1f} s, add_trials {added:.1f} s"
                    )
                    measure(args.postgres, "PostgreSQL", pg_name, args, results, details, folder)
                finally:
                    with contextlib.suppress(Exception):
                        storage = optuna.storages.RDBStorage(args.postgres)
                        optuna.delete_study(study_name=pg_name, storage=storage)
                        storage.engine.dispose()
        finally:
            os.chdir(cwd)
            other.stop()

    extra = [
        f"study: {args.n_trials:,} COMPLETE trials, 7 params, 3 intermediate values and 4 user attributes "
        f"each; PostgreSQL at {args.postgres.split('@')[-1]}",
        *build,
        f"Python start + the imports of `ftsweep status` (no database): {floor:.2f} s (best of "
        f"{args.repeat})",
        other.summary(),
    ]
    print(f"## `ftsweep status` on {args.n_trials:,} trials\n")
    print(machine_header(extra))
    print()
    print(
        markdown_table(
            ["storage", "what", f"best of {args.repeat} (s)", "each run (s)", f"under {TARGET_S:g} s"],
            results,
        )
    )
    print()
    print("\n".join(details))


if __name__ == "__main__":
    main()
