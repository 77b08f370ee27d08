"""``ftsweep status``: the trial table, read straight from the study's tables.

A study of 10,000 trials loaded through Optuna's API (every trial with its parameters,
distributions, attributes and intermediate values, as Python objects) takes seconds; the table
needs a few columns. So this module reads Optuna's schema with a handful of SQL queries (no
Optuna import) and decodes parameters from their stored distributions itself. The schema is
Optuna's own (``studies``, ``trials``, ``trial_params``, ``trial_values``, ...).
"""

from __future__ import annotations

import datetime
import functools
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import StorageError, StudyNotFound
from orchestrator.storage import StoreLocation

#: Without --last or --all, a study with more trials shows only its latest ones.
DEFAULT_ROWS = 200
#: Above this many rows the table is printed as plain aligned text: rich's layout of 10,000 rows
#: takes seconds, plain text a few hundredths.
RICH_ROWS = 1000
COLUMNS = ("trial", "state", "value", "epochs", "duration", "params", "reason")
#: The summary's name for the trials ``study.warm_start`` copied from an earlier study (never ran here).
WARM_STARTED = "WARM-STARTED"
#: The ids of those trials (``:w`` is the user attribute that marks them).
_WARM_TRIALS = "SELECT trial_id FROM trial_user_attributes WHERE key = :w"


@dataclass
class StatusData:
    """What the status table shows."""

    study_name: str
    metric: str
    direction: str
    budget: int | None
    counts: Counter[str]
    rows: list[dict[str, Any]]
    best_trial: int | None = None
    best_value: float | None = None
    total: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: A study of several objectives: its metrics (the value column shows each) and its Pareto front.
    metrics: list[str] = field(default_factory=list)
    front: list[int] = field(default_factory=list)

    @property
    def columns(self) -> tuple[str, ...]:
        """The table's columns: a study of several objectives has ``front`` (``*``: on the Pareto front)."""
        return (*COLUMNS[:3], "front", *COLUMNS[3:]) if self.metrics else COLUMNS

    def header(self) -> list[str]:
        value = " / ".join(self.metrics) if self.metrics else self.metric
        return [value if column == "value" else column for column in self.columns]


def _when(value: Any) -> datetime.datetime | None:
    if value is None or isinstance(value, datetime.datetime):
        return value
    return datetime.datetime.fromisoformat(str(value))


def decode_param(value: float, distribution_json: str) -> Any:
    """A stored parameter in its user-facing form (a categorical's choice, an int as int)."""
    kind, choices = _distribution(distribution_json)
    if kind == "categorical":
        return choices[int(value)]
    return int(value) if kind == "int" else float(value)


@functools.lru_cache(maxsize=4096)
def _distribution(distribution_json: str) -> tuple[str, tuple[Any, ...]]:
    """(kind, choices) of a stored distribution; every trial of a study repeats the same few."""
    distribution = json.loads(distribution_json)
    name = distribution.get("name", "")
    if name == "CategoricalDistribution":
        return "categorical", tuple(distribution.get("attributes", {})["choices"])
    if name in ("IntDistribution", "IntUniformDistribution", "IntLogUniformDistribution"):
        return "int", ()
    return "float", ()


def read_status(
    store: StoreLocation | str, study_name: str, last: int | None = None, show_all: bool = False
) -> StatusData:
    """The study's state counts, its best trial and the rows of its latest trials.

    Raises:
        StudyNotFound: listing the studies the storage holds.
        StorageError: when the storage cannot be read.
    """
    import sqlalchemy
    from sqlalchemy import text

    from orchestrator.storage import mask_text
    from orchestrator.study import null_pool_engine, require_store_file, require_study_tables

    location = store if isinstance(store, StoreLocation) else StoreLocation.resolve(store)
    require_store_file(location, study_name)
    engine = null_pool_engine(location)
    try:
        with engine.connect() as connection:
            require_study_tables(connection, location, study_name)
            return _read(connection, text, study_name, location.display, last, show_all)
    except sqlalchemy.exc.SQLAlchemyError as error:
        detail = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise StorageError(f"storage {location.display}: cannot read it ({mask_text(detail)})") from error
    finally:
        engine.dispose()


def _read(
    connection: Any, text: Any, study_name: str, where: str, last: int | None, show_all: bool
) -> StatusData:
    study_id = connection.execute(
        text("SELECT study_id FROM studies WHERE study_name = :n"), {"n": study_name}
    ).scalar()
    if study_id is None:
        names = sorted(row[0] for row in connection.execute(text("SELECT study_name FROM studies")))
        raise StudyNotFound(
            f"no study {study_name!r} in {where}; studies there: {', '.join(names) or 'none'}"
        )
    from orchestrator.study import WARM_START_ATTR, sweep_records

    key: dict[str, Any] = {"s": study_id, "w": WARM_START_ATTR}
    sweep = sweep_records(connection, study_id).get(study_id, {}).get("sweep", {})
    study_section = sweep.get("study", {})
    direction = study_section.get("direction", "maximize")
    metrics: list[str] = []
    if isinstance(study_section.get("metric"), list):  # several objectives (the first one ranks "best")
        metrics, directions = list(study_section["metric"]), list(direction)
        direction = directions[0]
    # Trials study.warm_start copied from an earlier study are counted apart: they never ran here.
    counts: Counter[str] = Counter(
        {
            (WARM_STARTED if warm else state): n
            for state, warm, n in connection.execute(
                text(
                    f"SELECT state, trial_id IN ({_WARM_TRIALS}) AS warm, COUNT(*) FROM trials "
                    "WHERE study_id = :s GROUP BY state, warm"
                ),
                key,
            )
        }
    )
    total = sum(counts.values())
    limit = None if show_all else (last or (DEFAULT_ROWS if total > DEFAULT_ROWS else None))
    key["m"] = max(0, total - limit) if limit else 0

    order = "DESC" if direction == "maximize" else "ASC"
    best = connection.execute(
        text(
            "SELECT t.number, v.value FROM trial_values v JOIN trials t ON t.trial_id = v.trial_id "
            "WHERE t.study_id = :s AND t.state = 'COMPLETE' AND v.objective = 0 AND v.value IS NOT NULL "
            f"AND t.trial_id NOT IN ({_WARM_TRIALS}) "
            f"ORDER BY v.value {order}, t.number LIMIT 1"
        ),
        key,
    ).first()

    selected = "FROM trials t WHERE t.study_id = :s AND t.number >= :m"
    rows: dict[int, dict[str, Any]] = {}
    for trial_id, number, state, start, complete in connection.execute(
        text(
            "SELECT t.trial_id, t.number, t.state, t.datetime_start, t.datetime_complete "
            f"{selected} ORDER BY t.number"
        ),
        key,
    ):
        started, finished = _when(start), _when(complete)
        rows[trial_id] = {
            "number": number,
            "state": state,
            "value": None,
            "epochs": None,
            "duration_seconds": (finished - started).total_seconds() if started and finished else None,
            "params": {},
            "reason": "",
        }
    joined = "JOIN trials t ON t.trial_id = x.trial_id WHERE t.study_id = :s AND t.number >= :m"
    for trial_id, value in connection.execute(
        text(f"SELECT x.trial_id, x.value FROM trial_values x {joined} AND x.objective = 0"), key
    ):
        rows[trial_id]["value"] = value
    front: list[int] = []
    if metrics:
        front = _pareto_front(connection, text, key, directions)
        for trial_id, objective, value in connection.execute(
            text(f"SELECT x.trial_id, x.objective, x.value FROM trial_values x {joined}"), key
        ):
            rows[trial_id].setdefault("values", [None] * len(metrics))[objective] = value
        on_front = set(front)
        for row in rows.values():
            row["front"] = row["number"] in on_front
    for trial_id, name, value, distribution in connection.execute(
        text(
            "SELECT x.trial_id, x.param_name, x.param_value, x.distribution_json "
            f"FROM trial_params x {joined} ORDER BY x.param_id"
        ),
        key,
    ):
        rows[trial_id]["params"][name] = decode_param(value, distribution)
    for trial_id, name, value in connection.execute(
        text(
            "SELECT x.trial_id, x.key, x.value_json "
            f"FROM trial_user_attributes x {joined} AND x.key IN ('epochs', 'reason')"
        ),
        key,
    ):
        rows[trial_id][name if name == "epochs" else "reason"] = json.loads(value)
    for trial_id, step in connection.execute(
        text(f"SELECT x.trial_id, MAX(x.step) FROM trial_intermediate_values x {joined} GROUP BY x.trial_id"),
        key,
    ):
        if rows[trial_id]["epochs"] is None:
            rows[trial_id]["epochs"] = step
    return StatusData(
        study_name=study_name,
        metric=metrics[0] if metrics else study_section.get("metric", "value"),
        direction=direction,
        budget=study_section.get("n_trials"),
        counts=counts,
        rows=list(rows.values()),
        best_trial=best[0] if best else None,
        best_value=best[1] if best else None,
        total=total,
        metrics=metrics,
        front=front,
    )


def _pareto_front(connection: Any, text: Any, key: dict[str, Any], directions: list[str]) -> list[int]:
    """The numbers of the complete trials this study ran (not warm-started) on the Pareto front."""
    from orchestrator.study import front_numbers

    costs: dict[int, list[float]] = {}
    for number, objective, value in connection.execute(
        text(
            "SELECT t.number, v.objective, v.value "
            "FROM trial_values v JOIN trials t ON t.trial_id = v.trial_id "
            "WHERE t.study_id = :s AND t.state = 'COMPLETE' AND v.value IS NOT NULL "
            f"AND t.trial_id NOT IN ({_WARM_TRIALS})"
        ),
        key,
    ):
        if objective < len(directions):
            sign = -1.0 if directions[objective] == "maximize" else 1.0
            costs.setdefault(number, [0.0] * len(directions))[objective] = sign * float(value)
    return front_numbers(costs)


def _format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _cells(row: dict[str, Any]) -> list[str]:
    if "front" in row:  # several objectives: every value, and the front's mark
        values = row.get("values") or []
        shown = "" if not values or None in values else " / ".join(f"{v:.4f}" for v in values)
        return [str(row["number"]), row["state"].lower(), shown, "*" if row["front"] else "", *_rest(row)]
    return [
        str(row["number"]),
        row["state"].lower(),
        "" if row["value"] is None else f"{row['value']:.4f}",
        *_rest(row),
    ]


def _rest(row: dict[str, Any]) -> list[str]:
    duration = row["duration_seconds"]
    return [
        "" if row["epochs"] is None else str(row["epochs"]),
        "" if duration is None else f"{duration:.1f}s",
        ", ".join(f"{key}={_format_value(value)}" for key, value in row["params"].items()),
        " ".join(str(row["reason"] or "").split()),
    ]


def summary_line(data: StatusData) -> str:
    """``30 trials: 10 complete, ...; budget 35; best val_f1 0.29 (trial 29)``."""
    states = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING", WARM_STARTED)
    parts = [f"{data.counts.get(state, 0)} {state.lower()}" for state in states if data.counts.get(state)]
    line = f"{data.total} trials: {', '.join(parts) or 'none yet'}"
    if data.budget:
        line += f"; budget {data.budget}"
    if data.metrics:
        shown = ", ".join(map(str, data.front)) or "none yet"
        line += f"; Pareto front (*) of {' / '.join(data.metrics)}: trials {shown}"
    elif data.best_value is not None:
        line += f"; best {data.metric} {data.best_value:.4f} (trial {data.best_trial})"
    if len(data.rows) < data.total:
        line += f"; showing the last {len(data.rows)} (--all for every trial)"
    return line


def render_status(data: StatusData) -> Any:
    """A rich table of the trials, oldest first, with the summary line as its caption."""
    from rich.table import Table

    table = Table(title=f"study {data.study_name}", title_justify="left")
    for column in data.header():
        table.add_column(column, overflow="fold")
    for row in data.rows:
        table.add_row(*_cells(row))
    table.caption = summary_line(data)
    table.caption_justify = "left"
    return table


def render_plain(data: StatusData) -> str:
    """The same table as plain text: columns aligned with spaces, one line per trial."""
    header = data.header()
    lines = [_cells(row) for row in data.rows]
    widths = [
        max([len(header[index])] + [len(cells[index]) for cells in lines]) for index in range(len(header) - 1)
    ]

    def line(cells: list[str]) -> str:
        return (
            "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=False))
            + "  "
            + cells[-1]
        )

    return "\n".join(
        [
            f"study {data.study_name}",
            line(header).rstrip(),
            *(line(cells).rstrip() for cells in lines),
            summary_line(data),
        ]
    )


def table_width(data: StatusData) -> int:
    """The width rich's table of ``data`` needs to show every row on one line (cells, padding, borders)."""
    header = data.header()
    cells = [_cells(row) for row in data.rows]
    widths = [max([len(header[i])] + [len(row[i]) for row in cells]) for i in range(len(header))]
    return sum(widths) + 3 * len(widths) + 1


def _short(value: Any) -> str:
    """A parameter's value in a few characters: 3 significant digits for a float."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def _wrap_items(items: list[str], indent: int, width: int) -> list[str]:
    """``items`` joined by spaces on lines of at most ``width`` characters, each indented by ``indent``."""
    lines: list[str] = []
    current = ""
    room = max(width - indent, 10)
    for item in (_fit(item, room) for item in items):
        if current and len(current) + 1 + len(item) > room:
            lines.append(" " * indent + current)
            current = item
        else:
            current = f"{current} {item}" if current else item
    if current:
        lines.append(" " * indent + current)
    return lines


def render_compact(data: StatusData, width: int = 80) -> str:
    """The trials for a narrow terminal or a pipe: no line longer than ``width``.

    One line per trial (number, state, value, epochs, duration), then its parameters as
    ``key=value`` with short numbers, and the reason it was pruned or failed, on lines beneath it.
    """
    import textwrap

    header = ["trial", "state", _fit(data.header()[2], 24), "epochs", "duration"]
    rows = [_cells(row) for row in data.rows]
    if data.metrics:  # several objectives: the front's mark goes beside the values
        rows = [[*cells[:2], f"{cells[2]} {cells[3]}".rstrip(), *cells[4:]] for cells in rows]
    widths = [max([len(header[i])] + [len(cells[i]) for cells in rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].rjust(widths[0])
        rest = [cell.ljust(w) for cell, w in zip(cells[1:], widths[1:], strict=False)]
        return _fit("  ".join([first, *rest]).rstrip(), width)

    indent = widths[0] + 2
    out = textwrap.wrap(f"study {data.study_name}", width) or [""]
    out.append(line(header))
    for row, cells in zip(data.rows, rows, strict=True):
        out.append(line(cells[:5]))
        out.extend(
            _wrap_items([f"{key}={_short(value)}" for key, value in row["params"].items()], indent, width)
        )
        if cells[6]:
            out.append(" " * indent + _fit(cells[6], max(width - indent, 10)))
    out.extend(textwrap.wrap(summary_line(data), width))
    return "\n".join(out)
