"""The sweep report's figures as PNG files, drawn with matplotlib (no browser needed).

The same figures as :mod:`orchestrator.report_figures`, from the same
:class:`~orchestrator.report_data.ReportData` and the same sampling, for places that show images and
not HTML (the MLflow UI's artifact view, a README, a chat). A figure with nothing to draw becomes
a small PNG that says why, so every figure has its file.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from typing import Any

from orchestrator.report_data import (
    MAX_CURVES,
    MAX_PARALLEL,
    MAX_SCATTER,
    MAX_TIMELINE_BARS,
    N_BEST_KEPT,
    ReportData,
    best_so_far,
    curve_band,
    figures,
    sample_trials,
    timeline_lanes,
)
from orchestrator.report_figures import (
    BEST,
    COMPLETE,
    FAILED,
    PRUNED,
    STATE_COLOURS,
    Drawn,
    busy_share,
    final_bars,
    pareto_points,
    top_rows,
)

DPI = 100


def render_pngs(data: ReportData, drawn: list[Drawn]) -> list[tuple[str, bytes]]:
    """One PNG per figure of ``drawn``: (file name ``NN-key.png``, its bytes), in order."""
    import io

    drawers: dict[str, Callable[[Any, ReportData], None]] = {
        "history": _history,
        "importances": _importances,
        "parallel": _parallel,
        "curves": _curves,
        "train_val": _train_val,
        "gap": _gap,
        "timeline": _timeline,
        "top": _top,
        "final": _final,
        "pareto": _pareto,
    }
    assert [key for key, _ in figures(data)] == [item.key for item in drawn]
    out = []
    for index, item in enumerate(drawn, start=1):
        figure = _new_figure(item.key, data)
        if item.figure is None:
            _note_only(figure, item.title, item.note or "nothing to draw")
        else:
            drawers[item.key](figure, data)
            figure.suptitle(item.title, fontsize=13, x=0.01, ha="left")
            if item.note:
                figure.text(
                    0.01, 0.005, item.note, fontsize=8, color="#555", ha="left", va="bottom", wrap=True
                )
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=DPI)
        out.append((f"{index:02d}-{item.key}.png", buffer.getvalue()))
    return out


def _new_figure(key: str, data: ReportData) -> Any:
    from matplotlib.figure import Figure

    width = 12 if key in ("gap", "parallel", "top") else 9
    height = 5.5
    if key == "gap":
        height = 4.5
    return Figure(figsize=(width, height), layout="constrained")


def _note_only(figure: Any, title: str, note: str) -> None:
    figure.set_size_inches(9, 1.6)
    figure.text(0.01, 0.75, title, fontsize=13, ha="left")
    figure.text(0.01, 0.35, note, fontsize=9, color="#555", ha="left", wrap=True)


def _history(figure: Any, data: ReportData) -> None:
    ax = figure.subplots()
    complete = data.complete
    ax.scatter(
        [t.number for t in complete],
        [t.value for t in complete],
        s=12,
        c=COMPLETE,
        alpha=0.7,
        label=data.metric,
    )
    steps = best_so_far(data)
    ax.step([n for n, _ in steps], [v for _, v in steps], where="post", color=BEST, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{data.metric} ({data.direction})")
    ax.legend(loc="best")


def _importances(figure: Any, data: ReportData) -> None:
    ax = figure.subplots()
    ranked = sorted((data.importances or {}).items(), key=lambda item: item[1])
    ax.barh([k for k, _ in ranked], [v for _, v in ranked], color=COMPLETE)
    ax.set_xlabel(f"importance for {data.metric} ({data.importance_method})")


def _parallel(figure: Any, data: ReportData) -> None:
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    ax = figure.subplots()
    params = data.searched_params()
    shown, _ = sample_trials(data.complete, data.ranked(), MAX_PARALLEL, N_BEST_KEPT * 5)
    columns = [_scaled([t.params.get(p) for t in shown], data.log_scale.get(p, False)) for p in params]
    values = [float(t.value) for t in shown]  # type: ignore[arg-type]
    columns.append(_scaled(values, False))
    labels = [f"log10 {p}" if data.log_scale.get(p) else p for p in params] + [data.metric]
    colour_map = colormaps["viridis" if data.maximize else "viridis_r"]
    norm = Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1)
    order = sorted(range(len(shown)), key=lambda i: values[i] if data.maximize else -values[i])
    for i in order:  # the best drawn last, on top
        ax.plot(
            range(len(columns)), [c[i] for c in columns], color=colour_map(norm(values[i])), alpha=0.6, lw=1
        )
    ax.set_xticks(range(len(columns)), labels, rotation=20, ha="right")
    ax.set_yticks([])
    ax.set_ylabel("each axis scaled to its own range")
    for x in range(len(columns)):
        ax.axvline(x, color="#888", lw=0.6)
    figure.colorbar(_mappable(colour_map, norm), ax=ax, label=data.metric)


def _scaled(raw: list[Any], log: bool) -> list[float]:
    """Each axis to [0, 1]: numbers by value (log10 on a log scale), other values by their sorted order."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw if v is not None):
        numbers = [math.nan if v is None else float(v) for v in raw]
        if log:
            numbers = [math.log10(v) if v > 0 else math.nan for v in numbers]
    else:
        choices = sorted({str(v) for v in raw})
        numbers = [float(choices.index(str(v))) for v in raw]
    finite = [v for v in numbers if math.isfinite(v)]
    if not finite:
        return [0.5] * len(raw)
    low, high = min(finite), max(finite)
    span = high - low or 1.0
    return [(v - low) / span if math.isfinite(v) else math.nan for v in numbers]


def _mappable(colour_map: Any, norm: Any) -> Any:
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=norm, cmap=colour_map)


def _curves(figure: Any, data: ReportData) -> None:
    ax = figure.subplots()
    with_curve = [t for t in data.trials if t.curve]
    drawn = with_curve
    if len(with_curve) > MAX_CURVES:
        band = curve_band(with_curve)
        epochs = [b[0] for b in band]
        ax.fill_between(
            epochs,
            [b[1] for b in band],
            [b[3] for b in band],
            color=COMPLETE,
            alpha=0.2,
            label="10-90% of all trials",
        )
        ax.plot(epochs, [b[2] for b in band], color=COMPLETE, label="median")
        keep = {t.number for t in data.ranked()[:N_BEST_KEPT]}
        drawn = [t for t in with_curve if t.number in keep]
    best = data.best
    for trial in drawn:
        if best is not None and trial.number == best.number:
            continue
        steps = sorted(trial.curve.items())
        colour = {"PRUNED": PRUNED, "FAIL": FAILED}.get(trial.state, COMPLETE)
        alpha = 0.35 if trial.state != "COMPLETE" else 0.6
        ax.plot(
            [s for s, _ in steps], [v for _, v in steps], color=colour, alpha=alpha, lw=1, marker="o", ms=2
        )
    if best is not None and best.curve:
        steps = sorted(best.curve.items())
        ax.plot(
            [s for s, _ in steps],
            [v for _, v in steps],
            color=BEST,
            lw=3,
            marker="o",
            ms=5,
            label=f"best (trial {best.number})",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{data.metric}, best so far")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")


def _train_val(figure: Any, data: ReportData) -> None:
    ax = figure.subplots()
    palette = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b"]
    for index, curve in enumerate(data.top_curves):
        for name, points in curve.series.items():
            ax.plot(
                [e for e, _ in points],
                [v for _, v in points],
                marker="o",
                ms=3,
                color=palette[index % len(palette)],
                ls="--" if name.startswith("train_") else "-",
                label=f"trial {curve.number}: {name}",
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("metric (dashed: train, solid: validation)")
    ax.legend(loc="best", fontsize=8)


def _gap(figure: Any, data: ReportData) -> None:
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    regularizers = data.regularization_params()
    with_gap = [t for t in data.complete if t.gap is not None]
    shown, _ = sample_trials(with_gap, data.ranked(), MAX_SCATTER, N_BEST_KEPT * 10)
    values = [float(t.value) for t in shown]  # type: ignore[arg-type]
    colour_map = colormaps["viridis" if data.maximize else "viridis_r"]
    norm = Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1)
    axes = figure.subplots(1, len(regularizers), sharey=True, squeeze=False)[0]
    for ax, name in zip(axes, regularizers, strict=True):
        points = [t for t in shown if t.params.get(name) is not None]
        ax.scatter(
            [t.params[name] for t in points],
            [t.gap for t in points],
            c=[colour_map(norm(t.value or 0.0)) for t in points],
            s=18,
        )
        ax.axhline(0, color="#888", ls=":", lw=1)
        ax.set_title(name, fontsize=10)
        if data.log_scale.get(name):
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap
    axes[0].set_ylabel("generalization gap (last epoch)")
    figure.colorbar(_mappable(colour_map, norm), ax=list(axes), label=data.metric)


def _pareto(figure: Any, data: ReportData) -> None:
    front, others, _ = pareto_points(data)
    ax = figure.subplots()
    ax.scatter(
        [t.values[0] for t in others],
        [t.values[1] for t in others],
        s=18,
        color=COMPLETE,
        alpha=0.6,
        label="dominated",
    )
    ax.plot(
        [t.values[0] for t in front],
        [t.values[1] for t in front],
        ls=":",
        marker="D",
        color=BEST,
        label="Pareto front",
    )
    ax.set_xlabel(f"{data.metrics[0]} ({data.directions[0]})")
    ax.set_ylabel(f"{data.metrics[1]} ({data.directions[1]})")
    ax.legend(loc="best", fontsize=8)


def _timeline(figure: Any, data: ReportData) -> None:
    from matplotlib import dates

    ax = figure.subplots()
    timed = [t for t in data.trials if t.start is not None]
    now = datetime.datetime.now()
    if len(timed) > MAX_TIMELINE_BARS:
        devices, starts, busy = busy_share(timed, now)
        edges = [
            *starts,
            starts[-1] + (starts[-1] - starts[-2] if len(starts) > 1 else datetime.timedelta(1)),
        ]
        mesh = ax.pcolormesh(
            dates.date2num(edges), range(len(devices) + 1), busy, cmap="Blues", vmin=0, vmax=1
        )
        ax.set_yticks([i + 0.5 for i in range(len(devices))], devices)
        figure.colorbar(mesh, ax=ax, label="busy")
    else:
        lanes = timeline_lanes(timed, now)
        devices = sorted(set(lanes.values()), reverse=True)
        row = {device: i for i, device in enumerate(devices)}
        for trial in timed:
            start = dates.date2num(trial.start)
            width = dates.date2num(trial.end or now) - start
            ax.barh(
                row[lanes[trial.number]],
                width,
                left=start,
                height=0.6,
                color=STATE_COLOURS.get(trial.state, PRUNED),
                edgecolor="white",
                lw=0.5,
            )
        ax.set_yticks(range(len(devices)), devices)
        from matplotlib.patches import Patch

        states = sorted({t.state for t in timed})
        ax.legend(
            handles=[Patch(color=STATE_COLOURS.get(s, PRUNED), label=s.lower()) for s in states],
            loc="upper left",
            fontsize=8,
        )
    ax.xaxis_date()
    locator = dates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))
    ax.set_xlabel("time")
    ax.set_ylabel("device")


def _top(figure: Any, data: ReportData) -> None:
    header, rows = top_rows(data)
    figure.set_size_inches(min(18, 2 + 1.3 * len(header)), 1.2 + 0.28 * len(rows))
    ax = figure.subplots()
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=header, loc="upper left", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(header))))


def _final(figure: Any, data: ReportData) -> None:
    assert data.final is not None
    names, values, bounds, baseline = final_bars(data.final)
    ax = figure.subplots()
    width = 0.38 if baseline else 0.6
    xs = list(range(len(names)))
    errors = [
        [v - b[0] for b, v in zip(bounds, values, strict=True)],
        [b[1] - v for b, v in zip(bounds, values, strict=True)],
    ]
    ax.bar(
        [x - (width / 2 if baseline else 0) for x in xs],
        values,
        width,
        yerr=errors,
        capsize=4,
        color=COMPLETE,
        label=f"tuned (trial {data.final.get('trial')})",
    )
    if baseline:
        ax.bar([x + width / 2 for x in xs], baseline, width, color=PRUNED, label="default config")
    ax.set_xticks(xs, names)
    ax.set_ylabel("test (95% bootstrap interval)")
    ax.legend(loc="lower right")
