"""The sweep report's data: a study (and its MLflow runs, and its ``final``) read once into plain values.

Everything the report draws comes from :func:`collect`: the figures (:mod:`orchestrator.report_figures`,
:mod:`orchestrator.report_png`) never open a store. Where a study is too big for a figure to stay
readable, the choice of what to draw is made here too (:func:`sample_trials`, :func:`curve_band`),
so the HTML and the PNGs show the same thing and say the same about it.

Sources:
    - the Optuna study: states, values, parameters, datetimes, the device each trial ran on (the
      ``device`` user attribute) and its intermediate values (the best-so-far metric per epoch: what the
      pruner is shown, :meth:`orchestrator.session.StudySession.report`);
    - the study's MLflow runs (when tracking is on): each trial's last ``generalization_gap`` (or
      ``train_X - val_X``), and the per-epoch train and validation curves of the top trials;
    - ``ftsweep-runs/NAME/final/final.json`` (:mod:`orchestrator.final`), when a final is complete.

A source that cannot be read becomes a note in :attr:`ReportData.notes`, never an error: a report
says what it lacks.
"""

from __future__ import annotations

import datetime
import json
import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.storage import StoreLocation

if TYPE_CHECKING:
    import optuna

#: Parameters that regularize: each one searched gets its own generalization-gap panel.
REGULARIZATION_PARAMS = (
    "weight_decay",
    "dropout",
    "label_smoothing",
    "reg_strength",
    "l2sp_strength",
    "l1_strength",
    "freeze_depth",
    "augmentation_prob",
)
#: The metric a trainer reports as train minus validation (trainers/metrics.py).
GAP_METRIC = "generalization_gap"
#: The complete final's report in its work folder (``orchestrator.final.RESULT_FILE``; not imported from
#: there: ``final`` starts the report, so the report must not import ``final``).
FINAL_FILE = "final.json"
#: How many of the best trials get their train and validation curves read from MLflow.
N_TOP_CURVES = 3
#: Rows of the top-trials table.
N_TOP_TABLE = 20
#: The most runs read from MLflow (their last metrics), newest trials first beyond it.
MAX_MLFLOW_RUNS = 20_000


@dataclass(frozen=True)
class TrialRow:
    """One trial, as the report sees it."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    value: float | None
    params: dict[str, Any]
    curve: dict[int, float]  # epoch -> best-so-far metric (Optuna's intermediate values)
    device: str | None
    start: datetime.datetime | None
    end: datetime.datetime | None
    run_id: str | None
    gap: float | None = None  # the last generalization gap MLflow holds for the trial
    values: tuple[float, ...] = ()  # a study of several objectives: every objective's value


@dataclass(frozen=True)
class EpochCurves:
    """A top trial's per-epoch curves from MLflow: metric name -> [(epoch, value)]."""

    number: int
    value: float | None
    series: dict[str, list[tuple[int, float]]]


@dataclass
class ReportData:
    """Everything the report shows, as plain values."""

    study_name: str
    metric: str
    direction: str  # maximize | minimize
    budget: int | None
    trials: list[TrialRow]
    log_scale: dict[str, bool] = field(default_factory=dict)  # parameter -> searched on a log scale
    importances: dict[str, float] | None = None
    importance_method: str = ""
    importance_note: str | None = None
    top_curves: list[EpochCurves] = field(default_factory=list)
    curves_note: str | None = None
    gap_note: str | None = None
    final: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    #: A study of several objectives: its metrics, their directions and the trial numbers of its Pareto front.
    metrics: list[str] = field(default_factory=list)
    directions: list[str] = field(default_factory=list)
    front: list[int] = field(default_factory=list)
    generated: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc))

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def complete(self) -> list[TrialRow]:
        """Complete trials with a finite value, in trial order."""
        return [t for t in self.trials if t.state == "COMPLETE" and _finite(t.value)]

    def ranked(self) -> list[TrialRow]:
        """Complete trials, best first (ties: the lower trial number)."""
        sign = -1.0 if self.maximize else 1.0
        return sorted(self.complete, key=lambda t: (sign * float(t.value), t.number))  # type: ignore[arg-type]

    @property
    def best(self) -> TrialRow | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for trial in self.trials:
            out[trial.state] = out.get(trial.state, 0) + 1
        return out

    def searched_params(self) -> list[str]:
        """Every parameter some trial sampled, in first-seen order."""
        seen: dict[str, None] = {}
        for trial in self.trials:
            for name in trial.params:
                seen.setdefault(name, None)
        return list(seen)

    def regularization_params(self) -> list[str]:
        """The searched parameters that regularize (:data:`REGULARIZATION_PARAMS`)."""
        searched = set(self.searched_params())
        return [name for name in REGULARIZATION_PARAMS if name in searched]


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def sample_trials(
    trials: Sequence[TrialRow], ranked: Sequence[TrialRow], limit: int, n_best: int, seed: int = 0
) -> tuple[list[TrialRow], str | None]:
    """At most ``limit`` trials: the ``n_best`` best and a seeded random sample of the others.

    Returns:
        The trials to draw (in trial order) and a note saying what was left out, or None when all fit.
    """
    if len(trials) <= limit:
        return list(trials), None
    best = {t.number for t in ranked[:n_best]}
    rest = [t for t in trials if t.number not in best]
    picked = best | {t.number for t in random.Random(seed).sample(rest, max(0, limit - len(best)))}
    chosen = [t for t in trials if t.number in picked]
    return chosen, (
        f"{len(trials):,} trials: showing the best {len(best)} and a random "
        f"{len(chosen) - len(best)} of the rest"
    )


def curve_band(trials: Sequence[TrialRow]) -> list[tuple[int, float, float, float, int]]:
    """Per epoch, over the trials that reached it: (epoch, 10th percentile, median, 90th percentile, n)."""
    by_epoch: dict[int, list[float]] = {}
    for trial in trials:
        for epoch, value in trial.curve.items():
            if math.isfinite(value):
                by_epoch.setdefault(epoch, []).append(value)
    band = []
    for epoch in sorted(by_epoch):
        values = sorted(by_epoch[epoch])
        band.append(
            (epoch, _quantile(values, 0.1), _quantile(values, 0.5), _quantile(values, 0.9), len(values))
        )
    return band


def _quantile(ordered: list[float], q: float) -> float:
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def best_so_far(data: ReportData) -> list[tuple[int, float]]:
    """(trial number, best value up to it) over the complete trials, in trial order."""
    out: list[tuple[int, float]] = []
    best: float | None = None
    for trial in data.complete:
        value = float(trial.value)  # type: ignore[arg-type]
        if best is None or (value > best if data.maximize else value < best):
            best = value
        out.append((trial.number, best))
    return out


# -- collecting --
def collect(location: StoreLocation, study_name: str, *, read_mlflow: bool = True) -> ReportData:
    """Read the study, its MLflow runs and its final into a :class:`ReportData`.

    Raises:
        StudyNotFound: when the store holds no such study (the one failure a report cannot describe).
    """
    from orchestrator.study import load_study, open_existing_storage

    study = load_study(study_name, open_existing_storage(location, study_name))
    data = from_study(study)
    sweep = _stored_sweep(study, location, data)
    if sweep is not None:
        data.metric, data.direction = _first(sweep.study.metric), _first(sweep.study.direction)
        data.budget = sweep.study.n_trials
        if read_mlflow and sweep.tracking.enabled:
            _read_mlflow(data, sweep.tracking_location.uri, sweep.experiment_name)
        elif not sweep.tracking.enabled:
            data.gap_note = data.curves_note = (
                "MLflow tracking is off for this study (tracking.enabled: false): the per-epoch train and "
                "validation metrics were not kept"
            )
    data.final = read_final(location.study_dir(study_name) / "final")
    return data


def _first(value: Any) -> Any:
    """A study key's value, or its first item where a study of several objectives gives a list."""
    return value[0] if isinstance(value, list | tuple) and value else value


def _stored_sweep(study: optuna.Study, location: StoreLocation, data: ReportData) -> Any:
    from orchestrator.errors import UserError
    from orchestrator.study import stored_sweep

    try:
        return stored_sweep(study, location)
    except UserError as error:
        data.notes.append(f"the study's sweep file could not be read ({error}); MLflow was not read")
        return None


def from_study(study: optuna.Study) -> ReportData:
    """The trials, importances and search space of an Optuna study (no MLflow, no final)."""
    from optuna.distributions import FloatDistribution, IntDistribution

    from orchestrator.study import DEVICE_ATTR, RUN_ID_ATTR

    frozen = study.get_trials(deepcopy=False)
    # A study of several objectives: the figures draw its first one (and say so, below).
    direction = "maximize" if study.directions[0].name == "MAXIMIZE" else "minimize"
    metric = (study.metric_names or ["value"])[0]
    trials = [
        TrialRow(
            number=t.number,
            state=t.state.name,
            value=t.values[0] if t.values else None,
            params=dict(t.params),
            curve={int(step): float(v) for step, v in t.intermediate_values.items()},
            device=t.user_attrs.get(DEVICE_ATTR),
            start=t.datetime_start,
            end=t.datetime_complete,
            run_id=t.user_attrs.get(RUN_ID_ATTR),
            values=tuple(t.values) if t.values and len(study.directions) > 1 else (),
        )
        for t in frozen
    ]
    log_scale: dict[str, bool] = {}
    for trial in frozen:
        for name, distribution in trial.distributions.items():
            if isinstance(distribution, FloatDistribution | IntDistribution):
                log_scale.setdefault(name, bool(distribution.log))
    data = ReportData(study.study_name, metric, direction, None, trials, log_scale)
    if len(study.directions) > 1:
        _objectives(study, data)
    _importances(study, data)
    return data


def _objectives(study: optuna.Study, data: ReportData) -> None:
    """A study of several objectives: its metrics, its Pareto front (the trials it ran, as ``ftsweep best``
    shows it), and the note that the other figures draw the first objective."""
    from optuna.trial import TrialState

    from orchestrator.study import front_numbers, is_warm_started

    data.directions = ["maximize" if d.name == "MAXIMIZE" else "minimize" for d in study.directions]
    names = list(study.metric_names or [])
    data.metrics = (
        names
        if len(names) == len(data.directions)
        else [f"objective {i}" for i in range(len(data.directions))]
    )
    signs = [-1.0 if d == "maximize" else 1.0 for d in data.directions]
    costs = {
        t.number: [sign * float(v) for sign, v in zip(signs, t.values, strict=True)]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values and not is_warm_started(t) and all(math.isfinite(v) for v in t.values)
    }
    data.front = front_numbers(costs)
    data.notes.append(
        f"this study has {len(data.metrics)} objectives: the Pareto front figure draws {data.metrics[0]} "
        f"against {data.metrics[1]}; the other figures show the first one, {data.metrics[0]}"
    )


def figures(data: ReportData) -> tuple[tuple[str, str], ...]:
    """The figures of ``data``'s report: :data:`FIGURES`, and the Pareto front after the history for a
    study of several objectives."""
    if len(data.metrics) < 2:
        return FIGURES
    return (FIGURES[0], PARETO_FIGURE, *FIGURES[1:])


def _importances(study: optuna.Study, data: ReportData) -> None:
    """Optuna's default importance evaluator (PED-ANOVA: fast at any study size)."""
    import optuna

    data.importance_method = "Optuna's default evaluator (PED-ANOVA)"
    n_complete = len(data.complete)
    params = data.searched_params()
    if not params:
        data.importance_note = "no parameter was searched: nothing to rank"
        return
    if n_complete < 2:
        data.importance_note = f"needs at least 2 complete trials with parameters; the study has {n_complete}"
        return
    try:
        if len(study.directions) > 1:  # the first objective, lower is better for the evaluator
            sign = -1.0 if data.maximize else 1.0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "low target values": as meant
                importances = optuna.importance.get_param_importances(
                    study, target=lambda t: sign * t.values[0]
                )
        else:
            importances = optuna.importance.get_param_importances(study)
    except Exception as error:  # noqa: BLE001 - an evaluator's refusal is a note, not a failed report
        data.importance_note = f"Optuna could not rank the parameters: {error}"
        return
    if not importances:
        data.importance_note = "Optuna ranked no parameter (every complete trial has the same parameters?)"
        return
    data.importances = {name: float(value) for name, value in importances.items()}


def _read_mlflow(data: ReportData, tracking_uri: str, experiment: str) -> None:
    """Each trial's last generalization gap, and the top trials' per-epoch curves."""
    from orchestrator.storage import mask_text

    try:
        from orchestrator._tracking_writer import STUDY_TAG, mlflow_client

        client = mlflow_client(tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise LookupError(f"no experiment {experiment!r}")
        last = _last_metrics(client, found.experiment_id, data.study_name, STUDY_TAG)
    except Exception as error:  # noqa: BLE001 - MLflow raises many kinds; the report says what is missing
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        data.gap_note = data.curves_note = f"the study's MLflow runs could not be read ({mask_text(text)})"
        return
    gaps = {run_id: _gap(metrics) for run_id, metrics in last.items()}
    data.trials = [
        TrialRow(**{**t.__dict__, "gap": gaps.get(t.run_id) if t.run_id else None}) for t in data.trials
    ]
    if not any(t.gap is not None for t in data.trials):
        data.gap_note = (
            f"the trainer reports no {GAP_METRIC} and no train_X / val_X pair to MLflow: "
            "there is no gap to draw"
        )
    top = [t for t in data.ranked()[:N_TOP_CURVES] if t.run_id and t.run_id in last]
    try:
        data.top_curves = [_history(client, t, last[t.run_id or ""], data.metric) for t in top]
    except Exception as error:  # noqa: BLE001
        data.curves_note = (
            f"the top trials' metric history could not be read from MLflow ({type(error).__name__})"
        )
        return
    if not any(len(c.series) > 1 for c in data.top_curves):
        data.curves_note = (
            "the trainer reports no train_X metric beside its validation metric: only validation is drawn"
            if data.top_curves
            else "no complete trial has an MLflow run yet"
        )


def _last_metrics(
    client: Any, experiment_id: str, study_name: str, study_tag: str
) -> dict[str, dict[str, float]]:
    """{run id: its last value of each metric} for the study's trial runs (one query per 1,000 runs)."""
    quoted = study_name.replace("\\", "\\\\").replace("'", "\\'")
    query = f"tags.`{study_tag}` = '{quoted}' and tags.`ftsweep.role` = 'trial'"
    out: dict[str, dict[str, float]] = {}
    token = None
    while len(out) < MAX_MLFLOW_RUNS:
        page = client.search_runs([experiment_id], filter_string=query, max_results=1000, page_token=token)
        for run in page:
            out[run.info.run_id] = dict(run.data.metrics)
        token = page.token
        if not token:
            break
    return out


def metric_pairs(metrics: Sequence[str], study_metric: str) -> list[tuple[str, str]]:
    """(train metric, validation metric) pairs among ``metrics``; the study metric's pair first."""
    names = set(metrics)
    pairs = []
    for name in sorted(names):
        if not name.startswith("train_"):
            continue
        base = name[len("train_") :]
        for validation in (f"val_{base}", f"eval_{base}", base):
            if validation in names:
                pairs.append((name, validation))
                break
    pairs.sort(key=lambda pair: (pair[1] != study_metric, pair[0]))
    return pairs


def _gap(metrics: dict[str, float]) -> float | None:
    if GAP_METRIC in metrics and math.isfinite(metrics[GAP_METRIC]):
        return float(metrics[GAP_METRIC])
    pairs = metric_pairs(list(metrics), "")
    for train, validation in pairs:
        difference = metrics[train] - metrics[validation]
        # Losses grow apart the other way: validation loss above training loss is the gap.
        return -difference if train.endswith("loss") else difference
    return None


def _history(client: Any, trial: TrialRow, last: dict[str, float], study_metric: str) -> EpochCurves:
    keys: list[str] = []
    for train, validation in metric_pairs(list(last), study_metric)[:2]:
        keys += [train, validation]
    if not keys and study_metric in last:
        keys = [study_metric]
    series = {
        key: sorted((int(m.step), float(m.value)) for m in client.get_metric_history(trial.run_id, key))
        for key in keys
    }
    return EpochCurves(trial.number, trial.value, series)


def read_final(folder: Path) -> dict[str, Any] | None:
    """The complete final's report (``final.json``), or None when there is none (or it cannot be read)."""
    try:
        value = json.loads((folder / FINAL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


#: The report's figures, in order: (key, title). The key names the PNG file; the title heads the figure.
FIGURES = (
    ("history", "Optimization history"),
    ("importances", "Hyperparameter importances"),
    ("parallel", "Parallel coordinates"),
    ("curves", "Learning curves"),
    ("train_val", "Train vs validation of the top trials"),
    ("gap", "Generalization gap vs regularization"),
    ("timeline", "Device timeline"),
    ("top", "Top trials"),
    ("final", "Final: test metrics and baseline"),
)
#: A study of several objectives has this figure too (after the history): see :func:`figures`.
PARETO_FIGURE = ("pareto", "Pareto front")
#: Above this many trials a figure draws a sample or an aggregate, and says so.
MAX_CURVES = 200
MAX_PARALLEL = 500
MAX_SCATTER = 2000
MAX_TIMELINE_BARS = 300
#: How many of the best trials a sample always keeps.
N_BEST_KEPT = 20


def timeline_lanes(trials: Sequence[TrialRow], now: datetime.datetime) -> dict[int, str]:
    """{trial number: its row on the timeline}: the device it recorded, split into lanes where trials
    on one device overlap (several CPU workers record the same device name)."""
    lanes: dict[int, str] = {}
    ends: dict[str, list[datetime.datetime]] = {}
    for trial in sorted((t for t in trials if t.start is not None), key=lambda t: t.start):  # type: ignore[arg-type,return-value]
        device = trial.device or "unknown"
        busy_until = ends.setdefault(device, [])
        free = next((i for i, end in enumerate(busy_until) if end <= trial.start), None)  # type: ignore[operator]
        if free is None:
            busy_until.append(trial.end or now)
            free = len(busy_until) - 1
        else:
            busy_until[free] = trial.end or now
        lanes[trial.number] = device if free == 0 else f"{device} #{free + 1}"
    return lanes
