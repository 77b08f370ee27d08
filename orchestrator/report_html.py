"""The sweep report as one self-contained HTML file: plotly's JavaScript embedded, no network needed.

It opens from a file, offline, and from the MLflow UI's artifact view. Each figure of
:mod:`orchestrator.report_figures` gets a section headed by its title, with its note (what was
sampled, or why there is nothing to draw) under it.
"""

from __future__ import annotations

import html
from typing import Any

from orchestrator.report_data import ReportData
from orchestrator.report_figures import Drawn

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1200px; color: #222; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 4px; }
h2 { font-size: 1.2em; margin: 28px 0 4px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.facts { color: #444; margin: 2px 0; }
.note { color: #666; font-size: 0.9em; margin: 4px 0 8px; }
.missing { background: #fff7e6; border-left: 4px solid #f0a020; padding: 6px 10px; margin: 4px 0; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; }
"""


def render(data: ReportData, drawn: list[Drawn]) -> str:
    """The whole page: a summary of the study, then every figure in order."""
    from plotly.offline import get_plotlyjs

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ftsweep report: {html.escape(data.study_name)}</title>",
        f"<style>{_STYLE}</style>",
        # Embedded (about 4.6 MB): the page must open without a network, also from an MLflow artifact.
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>Sweep report: {html.escape(data.study_name)}</h1>",
        *_summary(data),
    ]
    for index, item in enumerate(drawn, start=1):
        parts.append(f'<section id="{item.key}"><h2>{index}. {html.escape(item.title)}</h2>')
        if item.note:
            css = "missing" if item.figure is None else "note"
            parts.append(f'<p class="{css}">{html.escape(item.note)}</p>')
        if item.figure is not None:
            parts.append(_figure_html(item.figure, item.key))
        if item.key == "final" and data.final is not None:
            parts.append(_final_text(data.final))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _figure_html(figure: Any, key: str) -> str:
    return str(
        figure.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"figure-{key}",
            config={"displaylogo": False, "responsive": True},
        )
    )


def _summary(data: ReportData) -> list[str]:
    counts = data.counts()
    state_text = ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())) or "no trial yet"
    budget = f" of a budget of {data.budget}" if data.budget else ""
    lines = [
        f'<p class="facts">metric <b>{html.escape(data.metric)}</b> ({data.direction}); '
        f"{len(data.trials)} trials{budget}: {html.escape(state_text)}</p>"
    ]
    best = data.best
    if best is not None:
        params = ", ".join(f"{k}={_short(v)}" for k, v in best.params.items())
        lines.append(
            f'<p class="facts">best: trial {best.number}, {html.escape(data.metric)} {best.value:.6g}'
            + (f" ({html.escape(params)})" if params else "")
            + "</p>"
        )
    lines.append(
        f'<p class="facts">made {data.generated:%Y-%m-%d %H:%M} UTC by <code>ftsweep report '
        f"{html.escape(data.study_name)}</code></p>"
    )
    for missing in missing_lines(data):
        lines.append(f'<p class="missing">{html.escape(missing)}</p>')
    return lines


def missing_lines(data: ReportData) -> list[str]:
    """What the report lacks, said once at the top (each figure repeats its own part)."""
    out = list(data.notes)
    n_complete = len(data.complete)
    if not data.trials:
        out.append("the study has no trial yet: every figure below is empty until trials run")
    elif n_complete == 0:
        out.append("no trial has completed yet: the figures need at least one complete trial")
    elif n_complete == 1:
        out.append(
            "one complete trial: importances need at least 2, and comparisons between trials need more"
        )
    return out


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _final_text(report: dict[str, Any]) -> str:
    try:
        from orchestrator.final_report import summary_lines

        text = "\n".join(summary_lines(report))
    except (KeyError, TypeError, ValueError):
        return '<p class="note">the final report could not be summarized</p>'
    return f"<pre>{html.escape(text)}</pre>"
