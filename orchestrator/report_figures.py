"""The sweep report's interactive figures: :class:`~orchestrator.report_data.ReportData` -> plotly figures.

One function per figure of :data:`orchestrator.report_data.FIGURES`, each returning a :class:`Drawn`:
a figure, a note (what was sampled or aggregated, or why there is nothing to draw), or both. Nothing
here reads a store; :mod:`orchestrator.report_png` draws the same figures with matplotlib.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.report_data import (
    MAX_CURVES,
    MAX_PARALLEL,
    MAX_SCATTER,
    MAX_TIMELINE_BARS,
    N_BEST_KEPT,
    N_TOP_TABLE,
    ReportData,
    TrialRow,
    best_so_far,
    curve_band,
    figures,
    sample_trials,
    timeline_lanes,
)

#: Colours: the best trial, complete trials, pruned trials, failed trials.
BEST, COMPLETE, PRUNED, FAILED = "#d62728", "#1f77b4", "#9a9a9a", "#ff7f0e"
STATE_COLOURS = {"COMPLETE": COMPLETE, "PRUNED": PRUNED, "FAIL": FAILED, "RUNNING": "#2ca02c"}


@dataclass(frozen=True)
class Drawn:
    """One figure of the report: the plotly figure (None when there is nothing to draw) and a note."""

    key: str
    title: str
    figure: Any | None
    note: str | None = None


def draw_all(data: ReportData) -> list[Drawn]:
    """Every figure of :data:`~orchestrator.report_data.FIGURES`, in order."""
    drawers: dict[str, Callable[[ReportData], tuple[Any | None, str | None]]] = {
        "history": history,
        "importances": importances,
        "parallel": parallel,
        "curves": curves,
        "train_val": train_val,
        "gap": gap,
        "timeline": timeline,
        "top": top_table,
        "final": final,
        "pareto": pareto,
    }
    out = []
    for key, title in figures(data):
        figure, note = drawers[key](data)
        if figure is not None:
            figure.update_layout(title={"text": title}, template="plotly_white")
            if key != "parallel":
                figure.update_layout(margin={"t": 60})
        out.append(Drawn(key, title, figure, note))
    return out


def _go() -> Any:
    import plotly.graph_objects as go

    return go


def _no_complete(data: ReportData) -> str | None:
    if data.complete:
        return None
    return f"no complete trial yet ({_counts_text(data)}): nothing to draw until one completes"


def _counts_text(data: ReportData) -> str:
    counts = data.counts()
    return ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())) or "no trial"


def history(data: ReportData) -> tuple[Any | None, str | None]:
    """Each complete trial's value, and the best so far as a step line."""
    missing = _no_complete(data)
    if missing:
        return None, missing
    go = _go()
    complete = data.complete
    steps = best_so_far(data)
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=[t.number for t in complete],
            y=[t.value for t in complete],
            mode="markers",
            name=data.metric,
            marker={"color": COMPLETE, "size": 6 if len(complete) < 500 else 4, "opacity": 0.7},
        )
    )
    figure.add_trace(
        go.Scatter(
            x=[n for n, _ in steps],
            y=[v for _, v in steps],
            mode="lines",
            line={"shape": "hv", "color": BEST, "width": 2},
            name="best so far",
        )
    )
    figure.update_layout(xaxis_title="trial", yaxis_title=f"{data.metric} ({data.direction})")
    note = None if len(complete) > 1 else "one complete trial: the history starts here"
    return figure, note


def pareto_points(data: ReportData) -> tuple[list[TrialRow], list[TrialRow], str | None]:
    """(the front's trials sorted along the first objective, the other complete trials to draw, a note):
    every front trial is drawn; above :data:`MAX_SCATTER` trials, a seeded sample of the others."""
    on_front = set(data.front)
    complete = [t for t in data.complete if len(t.values) >= 2 and all(map(math.isfinite, t.values[:2]))]
    front = sorted((t for t in complete if t.number in on_front), key=lambda t: (t.values[0], t.values[1]))
    others = [t for t in complete if t.number not in on_front]
    shown, note = sample_trials(others, [], MAX_SCATTER, 0)
    notes = [note] if note else []
    if len(data.metrics) > 2:
        notes.append(f"the first two of {len(data.metrics)} objectives ({', '.join(data.metrics)})")
    return front, shown, "; ".join(notes) or None


def pareto(data: ReportData) -> tuple[Any | None, str | None]:
    """The first two objectives of every complete trial, the Pareto front highlighted and joined."""
    front, others, note = pareto_points(data)
    if not front:
        return None, _no_complete(data) or "no complete trial has every objective's value yet"
    go = _go()
    figure = go.Figure()
    first, second = data.metrics[0], data.metrics[1]

    def text(trials: list[TrialRow]) -> list[str]:
        return [f"trial {t.number}: {first} {t.values[0]:.4g}, {second} {t.values[1]:.4g}" for t in trials]

    figure.add_trace(
        go.Scatter(
            x=[t.values[0] for t in others],
            y=[t.values[1] for t in others],
            mode="markers",
            name="dominated",
            text=text(others),
            marker={"color": COMPLETE, "size": 7, "opacity": 0.6},
        )
    )
    figure.add_trace(
        go.Scatter(
            x=[t.values[0] for t in front],
            y=[t.values[1] for t in front],
            mode="lines+markers",
            name="Pareto front",
            text=text(front),
            line={"color": BEST, "shape": "hv" if data.directions[0] == "maximize" else "vh", "dash": "dot"},
            marker={"color": BEST, "size": 10, "symbol": "diamond"},
        )
    )
    figure.update_layout(
        xaxis_title=f"{first} ({data.directions[0]})", yaxis_title=f"{second} ({data.directions[1]})"
    )
    return figure, note


def importances(data: ReportData) -> tuple[Any | None, str | None]:
    missing = _no_complete(data)
    if missing:
        return None, missing
    if data.importances is None:
        return None, f"{data.importance_note} ({data.importance_method})"
    go = _go()
    ranked = sorted(data.importances.items(), key=lambda item: item[1])
    figure = go.Figure(
        go.Bar(x=[v for _, v in ranked], y=[k for k, _ in ranked], orientation="h", marker_color=COMPLETE)
    )
    figure.update_layout(
        xaxis_title=f"importance for {data.metric} ({data.importance_method})",
        height=max(300, 40 * len(ranked) + 120),
    )
    return figure, None


def parallel(data: ReportData) -> tuple[Any | None, str | None]:
    """One line per complete trial across its parameters and value; the value as colour."""
    missing = _no_complete(data)
    if missing:
        return None, missing
    params = data.searched_params()
    if not params:
        return None, "no parameter was searched"
    go = _go()
    shown, note = sample_trials(data.complete, data.ranked(), MAX_PARALLEL, N_BEST_KEPT * 5)
    dimensions = [_dimension(name, shown, data.log_scale.get(name, False)) for name in params]
    values = [float(t.value) for t in shown]  # type: ignore[arg-type]
    dimensions.append({"label": data.metric, "values": values})
    figure = go.Figure(
        go.Parcoords(
            line={
                "color": values,
                "colorscale": "Viridis",
                "showscale": True,
                "reversescale": not data.maximize,
            },
            dimensions=dimensions,
        )
    )
    figure.update_layout(margin={"t": 110, "l": 60, "r": 40})
    return figure, note


def _dimension(name: str, trials: list[TrialRow], log: bool) -> dict[str, Any]:
    raw = [t.params.get(name) for t in trials]
    if any(isinstance(v, str | bool) for v in raw if v is not None) or not all(
        isinstance(v, int | float) or v is None for v in raw
    ):
        choices = sorted({str(v) for v in raw}, key=str)
        index = {c: i for i, c in enumerate(choices)}
        return {
            "label": name,
            "values": [index[str(v)] for v in raw],
            "tickvals": list(range(len(choices))),
            "ticktext": choices,
        }
    numbers = [math.nan if v is None else float(v) for v in raw]
    if log:
        numbers = [math.log10(v) if v > 0 else math.nan for v in numbers]
    finite = [v for v in numbers if math.isfinite(v)]
    if not finite:
        return {"label": name, "values": [0.0] * len(numbers), "tickvals": [0.0], "ticktext": ["unused"]}
    low, high = min(finite), max(finite)
    ticks = [low + (high - low) * i / 3 for i in range(4)] if high > low else [low]
    text = [f"{10**t if log else t:.3g}" for t in ticks]
    if len(finite) < len(numbers):
        # A conditional parameter a trial did not use: its own place under the axis, named.
        unused = low - 0.15 * ((high - low) or 1.0)
        numbers = [v if math.isfinite(v) else unused for v in numbers]
        ticks, text = [unused, *ticks], ["unused", *text]
    return {
        "label": f"{name} (log)" if log else name,
        "values": numbers,
        "tickvals": ticks,
        "ticktext": text,
    }


def curves(data: ReportData) -> tuple[Any | None, str | None]:
    """The best-so-far metric per epoch of every trial; pruned trials faded, the best one highlighted."""
    with_curve = [t for t in data.trials if t.curve]
    if not with_curve:
        return None, "no trial has reported an epoch yet"
    go = _go()
    figure = go.Figure()
    best = data.best
    note = None
    drawn = with_curve
    if len(with_curve) > MAX_CURVES:
        band = curve_band(with_curve)
        epochs = [b[0] for b in band]
        figure.add_trace(
            go.Scatter(x=epochs, y=[b[3] for b in band], mode="lines", line={"width": 0}, showlegend=False)
        )
        figure.add_trace(
            go.Scatter(
                x=epochs,
                y=[b[1] for b in band],
                mode="lines",
                line={"width": 0},
                fill="tonexty",
                fillcolor="rgba(31,119,180,0.2)",
                name="10-90% of all trials",
            )
        )
        figure.add_trace(
            go.Scatter(
                x=epochs, y=[b[2] for b in band], mode="lines", line={"color": COMPLETE}, name="median"
            )
        )
        keep = {t.number for t in data.ranked()[:N_BEST_KEPT]}
        drawn = [t for t in with_curve if t.number in keep]
        note = (
            f"{len(with_curve):,} trials: the best {len(drawn)} drawn, every trial summarized as a median "
            "and a 10-90% band per epoch"
        )
    for state, colour, opacity in (
        ("PRUNED", PRUNED, 0.35),
        ("FAIL", FAILED, 0.35),
        ("COMPLETE", COMPLETE, 0.6),
    ):
        group = [t for t in drawn if t.state == state and (best is None or t.number != best.number)]
        if group:
            figure.add_trace(_merged_lines(go, group, state.lower(), colour, opacity, 1))
    if best is not None and best.curve:
        figure.add_trace(_merged_lines(go, [best], f"best (trial {best.number})", BEST, 1.0, 3))
    figure.update_layout(xaxis={"title": "epoch", "dtick": 1}, yaxis_title=f"{data.metric}, best so far")
    return figure, (
        note + "; " if note else ""
    ) + "values are each trial's best so far (what the pruner sees)"


def _merged_lines(go: Any, trials: list[TrialRow], name: str, colour: str, opacity: float, width: int) -> Any:
    """One trace for many trials' curves (gaps between them): a study of hundreds stays light."""
    xs: list[Any] = []
    ys: list[Any] = []
    texts: list[Any] = []
    for trial in trials:
        steps = sorted(trial.curve.items())
        xs += [s for s, _ in steps] + [None]
        ys += [v for _, v in steps] + [None]
        texts += [f"trial {trial.number}"] * len(steps) + [None]
    return go.Scatter(
        x=xs,
        y=ys,
        text=texts,
        mode="lines+markers",  # a trial of one epoch is a point, not an invisible line
        name=name,
        opacity=opacity,
        line={"color": colour, "width": width},
        marker={"size": 2 + 2 * width},
        hovertemplate="%{text}<br>epoch %{x}: %{y:.4g}<extra></extra>",
    )


def train_val(data: ReportData) -> tuple[Any | None, str | None]:
    if not data.top_curves:
        return None, data.curves_note or "no complete trial with per-epoch metrics yet"
    go = _go()
    figure = go.Figure()
    palette = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b"]
    for index, curve in enumerate(data.top_curves):
        colour = palette[index % len(palette)]
        for name, points in curve.series.items():
            figure.add_trace(
                go.Scatter(
                    x=[e for e, _ in points],
                    y=[v for _, v in points],
                    mode="lines+markers",
                    name=f"trial {curve.number}: {name}",
                    line={"color": colour, "dash": "dash" if name.startswith("train_") else "solid"},
                )
            )
    figure.update_layout(
        xaxis={"title": "epoch", "dtick": 1}, yaxis_title="metric (dashed: train, solid: validation)"
    )
    return figure, data.curves_note


def gap(data: ReportData) -> tuple[Any | None, str | None]:
    """The generalization gap against each regularization parameter searched, the metric as colour."""
    missing = _no_complete(data)
    if missing:
        return None, missing
    regularizers = data.regularization_params()
    if not regularizers:
        from orchestrator.report_data import REGULARIZATION_PARAMS

        return None, (
            "no regularization parameter was searched (any of " + ", ".join(REGULARIZATION_PARAMS) + ")"
        )
    with_gap = [t for t in data.complete if t.gap is not None]
    if not with_gap:
        return None, data.gap_note or "no complete trial has a generalization gap yet"
    from plotly.subplots import make_subplots

    go = _go()
    shown, note = sample_trials(with_gap, data.ranked(), MAX_SCATTER, N_BEST_KEPT * 10)
    figure = make_subplots(rows=1, cols=len(regularizers), shared_yaxes=True, subplot_titles=regularizers)
    values = [float(t.value) for t in shown]  # type: ignore[arg-type]
    low, high = min(values), max(values)
    for column, name in enumerate(regularizers, start=1):
        points = [t for t in shown if t.params.get(name) is not None]
        figure.add_trace(
            go.Scatter(
                x=[t.params[name] for t in points],
                y=[t.gap for t in points],
                mode="markers",
                text=[f"trial {t.number}: {data.metric} {t.value:.4g}" for t in points],
                marker={
                    "color": [t.value for t in points],
                    "colorscale": "Viridis",
                    "reversescale": not data.maximize,
                    "cmin": low,
                    "cmax": high,
                    "showscale": column == len(regularizers),
                    "colorbar": {"title": {"text": data.metric}},
                    "size": 7,
                },
                showlegend=False,
            ),
            row=1,
            col=column,
        )
        if data.log_scale.get(name):
            figure.update_xaxes(type="log", row=1, col=column)
    figure.update_yaxes(title_text="generalization gap (last epoch)", row=1, col=1)
    figure.add_hline(y=0, line={"color": "#888", "dash": "dot"})
    return figure, note


def timeline(data: ReportData) -> tuple[Any | None, str | None]:
    """Which device ran which trial when: idle devices show as gaps."""
    timed = [t for t in data.trials if t.start is not None]
    if not timed:
        return None, "no trial has started yet"
    go = _go()
    now = datetime.datetime.now()
    if len(timed) > MAX_TIMELINE_BARS:
        return _busy_heatmap(go, timed, now), (
            f"{len(timed):,} trials: each device's busy share per time slice instead of one bar per trial"
        )
    lanes = timeline_lanes(timed, now)
    figure = go.Figure()
    for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING"):
        group = [t for t in timed if t.state == state]
        if not group:
            continue
        figure.add_trace(
            go.Bar(
                base=[t.start.isoformat() for t in group],  # type: ignore[union-attr]
                x=[_ms(t.start, t.end or now) for t in group],  # type: ignore[arg-type]
                y=[lanes[t.number] for t in group],
                orientation="h",
                name=state.lower(),
                marker_color=STATE_COLOURS.get(state, PRUNED),
                text=[f"{t.number}" for t in group],
                textposition="inside" if len(timed) <= 60 else "none",  # numbers on bars only while legible
                hovertemplate="trial %{text}<extra></extra>",
            )
        )
    figure.update_layout(
        barmode="overlay",
        xaxis={"type": "date", "title": "time"},
        yaxis={"title": "device", "categoryorder": "category descending"},
        height=max(300, 60 * len(set(lanes.values())) + 160),
    )
    return figure, None


def _ms(start: datetime.datetime, end: datetime.datetime) -> float:
    return max(0.0, (end - start).total_seconds() * 1000)


def busy_share(
    timed: list[TrialRow], now: datetime.datetime, n_slices: int = 120
) -> tuple[list[str], list[datetime.datetime], list[list[float]]]:
    """(devices, slice starts, share of each slice each device was busy)."""
    spans = [(t, t.start, t.end or now) for t in timed if t.start is not None]
    start = min(span[1] for span in spans)
    end = max(span[2] for span in spans)
    width = max((end - start).total_seconds() / n_slices, 1e-6)
    lanes = timeline_lanes(timed, now)
    devices = sorted(set(lanes.values()))
    row = {device: i for i, device in enumerate(devices)}
    busy = [[0.0] * n_slices for _ in devices]
    for trial, began, ended in spans:
        a = (began - start).total_seconds() / width
        b = (ended - start).total_seconds() / width
        for index in range(int(a), min(n_slices, int(math.ceil(b)))):
            overlap = min(b, index + 1) - max(a, index)
            busy[row[lanes[trial.number]]][index] += max(0.0, overlap)
    starts = [start + datetime.timedelta(seconds=width * i) for i in range(n_slices)]
    return devices, starts, [[min(1.0, v) for v in line] for line in busy]


def _busy_heatmap(go: Any, timed: list[TrialRow], now: datetime.datetime) -> Any:
    devices, starts, busy = busy_share(timed, now)
    figure = go.Figure(
        go.Heatmap(
            z=busy,
            x=[s.isoformat() for s in starts],
            y=devices,
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar={"title": {"text": "busy"}},
        )
    )
    figure.update_layout(xaxis={"type": "date", "title": "time"}, yaxis_title="device")
    return figure


def top_rows(data: ReportData) -> tuple[list[str], list[list[str]]]:
    """The top-trials table: header and rows (text), best first."""
    params = data.searched_params()
    header = ["trial", data.metric, "epochs", "device", *params]
    rows = []
    for trial in data.ranked()[:N_TOP_TABLE]:
        rows.append(
            [
                str(trial.number),
                f"{trial.value:.5g}",
                str(max(trial.curve, default="")),
                trial.device or "",
                *(_cell(trial.params.get(name)) for name in params),
            ]
        )
    return header, rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def top_table(data: ReportData) -> tuple[Any | None, str | None]:
    missing = _no_complete(data)
    if missing:
        return None, missing
    go = _go()
    header, rows = top_rows(data)
    columns = [list(column) for column in zip(*rows, strict=True)]
    figure = go.Figure(
        go.Table(
            header={"values": header, "fill_color": "#e8eef7", "align": "left"},
            cells={"values": columns, "align": "left"},
        )
    )
    figure.update_layout(height=110 + 22 * len(rows), margin={"b": 10})
    note = (
        f"the best {len(rows)} of {len(data.complete):,} complete trials"
        if len(data.complete) > len(rows)
        else None
    )
    return figure, note


def final_bars(
    report: dict[str, Any],
) -> tuple[list[str], list[float], list[tuple[float, float]], list[float]]:
    """(metric names, tuned test values, their intervals, baseline values or empty)."""
    exported = report.get("exported") or {}
    test = exported.get("test") or {}
    intervals = exported.get("test_intervals") or {}
    # A regression final's bars are its errors, in the label's units (r2 has another scale).
    shown = ("rmse", "mae") if report.get("task") == "regression" else ("accuracy", "macro_f1")
    names = [name for name in shown if name in test]
    values = [float(test[name]) for name in names]
    bounds = [
        (float(low), float(high))
        for low, high in (intervals.get(name, (v, v)) for name, v in zip(names, values, strict=True))
    ]
    difference = (report.get("baseline") or {}).get("difference") or {}
    baseline = [float(difference[name]["baseline"]) for name in names if name in difference]
    return names, values, bounds, baseline if len(baseline) == len(names) else []


def final(data: ReportData) -> tuple[Any | None, str | None]:
    if data.final is None:
        return None, (
            f"no complete `ftsweep final {data.study_name}` yet: it fits the best trial again and tests it "
            "once (add --baseline to compare it with the trainer's default config)"
        )
    names, values, bounds, baseline = final_bars(data.final)
    if not names:
        return None, "the final tested nothing (the data has no test split)"
    go = _go()
    figure = go.Figure(
        go.Bar(
            x=names,
            y=values,
            name=f"tuned (trial {data.final.get('trial')})",
            marker_color=COMPLETE,
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [b[1] - v for b, v in zip(bounds, values, strict=True)],
                "arrayminus": [v - b[0] for b, v in zip(bounds, values, strict=True)],
            },
        )
    )
    if baseline:
        figure.add_trace(go.Bar(x=names, y=baseline, name="default config", marker_color=PRUNED))
    figure.update_layout(barmode="group", yaxis_title="test (95% bootstrap interval)")
    return figure, None if baseline else "no baseline: run `ftsweep final NAME --baseline` to compare"
