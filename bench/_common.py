"""Helpers the benchmark scripts share: the machine header, Markdown tables, noop sweeps, timings.

Every script runs from a clean checkout as ``.venv/bin/python bench/<name>.py``; this module sits
next to them (``sys.path[0]`` is ``bench/``) and puts the repository root on the path, so the
scripts work whether or not ftsweep is installed in the environment.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_header(extra: Sequence[str] = ()) -> str:
    """Markdown lines naming the machine and the versions the numbers depend on."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    executable = (
        Path(sys.executable).relative_to(REPO_ROOT).as_posix()
        if _inside_repo(sys.executable)
        else sys.executable
    )
    lines = [
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {affinity} CPUs usable ({os.cpu_count()} online), {cpu_model()}, {platform.platform()}",
        f"- python {platform.python_version()}; ftsweep {package_version('ftsweep')}; optuna "
        f"{package_version('optuna')}; ray {package_version('ray')}; mlflow {package_version('mlflow')}; "
        f"torch {package_version('torch')}; sqlalchemy {package_version('sqlalchemy')}",
        f"- command: {' '.join([executable, *sys.argv])}",
    ]
    lines += [f"- {line}" for line in extra]
    return "\n".join(lines)


def _inside_repo(path: str) -> bool:
    try:
        Path(path).relative_to(REPO_ROOT)
        return True
    except ValueError:
        return False


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


DEMO = REPO_ROOT / "examples" / "campaign"


def write_demo_data(
    folder: Path, train_rows: int, eval_rows: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Stratified, seeded samples of the demo's training and validation files, as CSV in ``folder``.

    Returns:
        the two files' paths (``train``, ``validation``) and their row counts (``rows``).
    """
    import csv

    from trainers.data_files import read_table
    from trainers.splits import Split, stratified_sample

    train = Split(*read_table(DEMO / "train.csv", "text", "label"))
    if train_rows < len(train):
        train = stratified_sample(train, train_rows, seed=seed)
    validation = Split(*read_table(DEMO / "val.csv", "text", "label"))
    if eval_rows is not None and eval_rows < len(validation):
        validation = stratified_sample(validation, eval_rows, seed=seed)
    paths: dict[str, Any] = {"rows": {"train": len(train), "validation": len(validation)}}
    for name, split in (("train", train), ("validation", validation)):
        path = folder / f"{name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(["text", "label"])
            writer.writerows(zip(split.texts, split.labels, strict=True))
        paths[name] = str(path)
    return paths


def child_environment(threads: int) -> dict[str, str]:
    """The environment of a benchmark's child process: ``threads`` threads, offline, quiet tokenizers."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder removed afterwards (``--keep`` in a script may skip this)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def noop_sweep_raw(
    folder: Path,
    name: str,
    *,
    n_trials: int,
    epochs: int = 3,
    sleep_seconds: float = 0.0,
    workers: int = 2,
    tracking: bool = True,
    sampler: str = "tpe",
    pruner: str = "none",
    backend: str = "local",
    storage_url: str | None = None,
) -> dict[str, Any]:
    """A sweep of the ``noop`` trainer with x, y searched; every database inside ``folder``."""
    execution: dict[str, Any] = {"backend": backend, "gpus_per_trial": 0}
    if backend == "ray":
        execution["max_concurrent_trials"] = workers
    else:
        execution["workers"] = workers
    return {
        "study": {
            "name": name,
            "storage": storage_url or f"sqlite:///{folder / 'ftsweep.db'}",
            "metric": "score",
            "direction": "maximize",
            "sampler": {"name": sampler, "seed": 0},
            "pruner": {"name": pruner},
            "n_trials": n_trials,
        },
        "trainer": {"name": "noop", "epochs": epochs, "sleep_seconds": sleep_seconds},
        "search_space": {
            "x": {"type": "float", "low": -5.0, "high": 5.0},
            "y": {"type": "float", "low": -5.0, "high": 5.0},
        },
        "execution": execution,
        "tracking": {"enabled": tracking, "mlflow_uri": f"sqlite:///{folder / 'mlflow.db'}"},
    }


def noop_sweep(folder: Path, name: str, **options: Any) -> Any:
    """The validated :class:`orchestrator.config.Sweep` of :func:`noop_sweep_raw`."""
    from orchestrator.config import validate_sweep

    return validate_sweep(noop_sweep_raw(folder, name, **options), base_dir=folder, source=f"bench:{name}")


def trial_span(trials: Sequence[Any]) -> tuple[float, datetime.datetime, datetime.datetime]:
    """Seconds from the first trial's start to the last trial's end, and those two moments."""
    finished = [t for t in trials if t.datetime_start is not None and t.datetime_complete is not None]
    if not finished:
        raise RuntimeError("no finished trial to time")
    first = min(t.datetime_start for t in finished)
    last = max(t.datetime_complete for t in finished)
    return (last - first).total_seconds(), first, last


def sqlite_commit_probe(folder: Path, n: int = 50) -> float:
    """Median milliseconds of one small INSERT + COMMIT on a SQLite file in ``folder``.

    SQLite commits wait for the disk (fsync); on a shared virtual disk their cost varies from
    run to run, and every SQL-backed row of a table moves with it. Printed with the results so
    that two runs can be compared.
    """
    path = folder / "probe.db"
    connection = sqlite3.connect(path)
    try:
        connection.execute("CREATE TABLE t (i INTEGER)")
        connection.commit()
        times = []
        for i in range(n):
            start = time.perf_counter()
            connection.execute("INSERT INTO t VALUES (?)", (i,))
            connection.commit()
            times.append(time.perf_counter() - start)
    finally:
        connection.close()
        path.unlink(missing_ok=True)
    return statistics.median(times) * 1000


@contextlib.contextmanager
def quiet_stderr(path: Path | None = None) -> Iterator[None]:
    """Send file descriptor 2 (ftsweep's progress lines, Ray's logs) to a file or /dev/null."""
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(str(path) if path else os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, 2)
    os.close(target)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class SqlCounter:
    """Counts SQL statements and commits on a SQLAlchemy engine (``before_cursor_execute``, ``commit``).

    ``phase`` names what the driver is doing, so statements can be attributed (ask, report, tell, ...).
    """

    def __init__(self) -> None:
        self.statements = 0
        self.commits = 0
        self.phase = "other"
        self.by_phase: dict[str, list[int]] = {}
        self.by_kind: dict[str, int] = {}

    def attach(self, engine: Any) -> None:
        from sqlalchemy import event

        event.listen(engine, "before_cursor_execute", self._on_statement)
        event.listen(engine, "commit", self._on_commit)

    def _slot(self) -> list[int]:
        return self.by_phase.setdefault(self.phase, [0, 0])

    def _on_statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements += 1
        self._slot()[0] += 1
        kind = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def _on_commit(self, conn: Any) -> None:
        self.commits += 1
        self._slot()[1] += 1

    @contextlib.contextmanager
    def in_phase(self, name: str) -> Iterator[None]:
        previous, self.phase = self.phase, name
        try:
            yield
        finally:
            self.phase = previous

    def snapshot(self) -> tuple[int, int]:
        return self.statements, self.commits


def checkpoint_save_probe(folder: Path, n: int = 30) -> float:
    """Median milliseconds of one ftsweep checkpoint save (pickle, fsync, rename): a noop trial does one
    per epoch."""
    from trainers.checkpoint import save_checkpoint

    target = folder / "checkpoint-probe"
    times = []
    for epoch in range(n):
        start = time.perf_counter()
        save_checkpoint(target, {"epoch": epoch})
        times.append(time.perf_counter() - start)
    shutil.rmtree(target, ignore_errors=True)
    return statistics.median(times) * 1000


class OtherLoad:
    """CPU used by processes outside this benchmark's process tree while it runs (a noise gauge).

    A thread samples ``/proc`` every ``interval`` seconds and sums the CPU time that processes which
    do not descend from this one used between samples (processes that live less than one interval
    are missed). ``summary()`` gives the average and the peak number of cores they kept busy.
    """

    def __init__(self, interval: float = 0.5) -> None:
        import threading

        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-other-load", daemon=True)
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last: dict[int, float] = {}
        self.samples: list[float] = []
        self.busy_seconds = 0.0
        self.elapsed = 0.0

    def _scan(self) -> dict[int, tuple[int, float]]:
        found: dict[int, tuple[int, float]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = text.rsplit(")", 1)[1].split()
            # after the name: state ppid ... utime (field 14) stime (15), 1-based in proc(5)
            found[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / self._ticks)
        return found

    def _others(self, found: dict[int, tuple[int, float]]) -> dict[int, float]:
        me = os.getpid()
        mine: dict[int, bool] = {me: True}

        def is_mine(pid: int) -> bool:
            chain = []
            while pid not in mine:
                chain.append(pid)
                parent = found.get(pid, (0, 0.0))[0]
                if parent <= 1 or parent == pid:
                    mine[pid] = False
                    break
                pid = parent
            result = mine[pid]
            for member in chain:
                mine[member] = result
            return result

        return {pid: cpu for pid, (_ppid, cpu) in found.items() if not is_mine(pid)}

    def _run(self) -> None:
        if not Path("/proc/stat").exists():
            return
        self._last = self._others(self._scan())
        previous = time.monotonic()
        while not self._stop.wait(self.interval):
            current = self._others(self._scan())
            now = time.monotonic()
            used = sum(cpu - self._last.get(pid, cpu) for pid, cpu in current.items())
            self.busy_seconds += max(0.0, used)
            self.elapsed += now - previous
            self.samples.append(max(0.0, used) / (now - previous))
            self._last, previous = current, now

    def start(self) -> OtherLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> str:
        if not self.samples:
            return "other processes' CPU: not measured"
        average = self.busy_seconds / self.elapsed if self.elapsed else 0.0
        return (
            f"CPU used by other processes during the run (outside this benchmark's process tree): "
            f"{average:.2f} cores on average, {max(self.samples):.2f} at peak (of {os.cpu_count()})"
        )

    def mark(self) -> tuple[float, float]:
        return self.busy_seconds, self.elapsed

    def since(self, mark: tuple[float, float]) -> float:
        """Average cores other processes used since ``mark`` (sampling granularity: one interval)."""
        busy, elapsed = self.busy_seconds - mark[0], self.elapsed - mark[1]
        return busy / elapsed if elapsed > 0 else 0.0
