"""The first trials of a new study: the user's configurations, then the trainer's presets.

When ``ftsweep run`` creates a study, and never again (``resume`` queues nothing), it queues:

1. ``study.enqueue``: the user's configurations, in the order written (the configuration a team
   runs today, say, as trial 0, so every report shows how far the search moved from it);
2. the trainer's presets (:attr:`BaseTrainer.first_trials`: for the text trainer, its defaults, a
   linear probe and LP-FT), in order, less any configuration the user's list already holds.

The user's list comes first because the user named those configurations; the presets are the
same for everyone. Before either, :mod:`orchestrator.warm_start` adds the finished trials of an
earlier study (``study.warm_start``); a configuration among them is not queued again.

Both are queued with Optuna's ``enqueue_trial``, so the sampler's first asks return them and a
sweep can never end worse than any of them. A queued trial is consumed by the first ask that
takes it, and a trial interrupted by a crash is re-queued once by :mod:`orchestrator.recovery`
(with its preset's attributes), so no configuration runs to completion twice.

A first trial is a point of the search space: the trainer's default for each searched parameter,
with the configuration's own values over them. A default that is not a point of the space
(``dropout: None``, "the model's own"; a weight decay of 0 in a log range) is not sampled either:
the trial is told to keep the trainer's default for it (:data:`PRESET_DEFAULTS_ATTR`, read by the
session's ask). A preset whose own values are not all in the space (``strategy`` not searched, or
fixed) is skipped; a user's configuration that is not is refused while planning
(:mod:`orchestrator.plan`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from search_spaces import contains, is_active

if TYPE_CHECKING:
    import optuna

    from orchestrator.plan import SweepPlan
    from search_spaces import ParamSpec

#: Trial user attribute: the name of the configuration a queued trial runs (a preset's name, or
#: ``study.enqueue[N]`` for the user's).
PRESET_ATTR = "preset"
#: Trial user attribute: searched parameters the preset leaves at the trainer's default (not sampled).
PRESET_DEFAULTS_ATTR = "preset_defaults"


@dataclass(frozen=True)
class FirstTrial:
    """One configuration to queue.

    Attributes:
        name: ``study.enqueue[N]`` or the preset's name.
        params: the searched parameters it sets (a point of the space).
        keep_default: searched parameters left at the trainer's default, which is no point of the space.
    """

    name: str
    params: dict[str, Any]
    keep_default: list[str]

    def same_configuration(self, other: FirstTrial) -> bool:
        return self.params == other.params and sorted(self.keep_default) == sorted(other.keep_default)


def value_problem(spec: ParamSpec, value: Any) -> str | None:
    """Why ``value`` is not a point of the (resolved) parameter ``spec``, or None when it is one."""
    if spec.type == "categorical":
        return None if contains(spec, value) else f"{value!r} is not one of the choices {spec.choices}"
    allowed = space_range(spec)
    kind = "a whole number" if spec.type == "int" else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"{value!r} is not {kind}; allowed: {allowed}"
    if spec.type == "int" and int(value) != value:
        return f"{value!r} is not {kind}; allowed: {allowed}"
    if not contains(spec, value):
        return f"{value!r} is outside {allowed}"
    if spec.step is not None:
        steps = (float(value) - float(spec.low)) / spec.step  # type: ignore[arg-type]
        if abs(steps - round(steps)) > 1e-9:
            return f"{value!r} is between the steps of {allowed}"
    return None


def space_range(spec: ParamSpec) -> str:
    """``1e-05..0.0003 (log)``, ``0..12 in steps of 2``: a numeric parameter's values, in words."""
    text = f"{float(spec.low):g}..{float(spec.high):g}"  # type: ignore[arg-type]
    if spec.log:
        text += " (log)"
    if spec.step is not None:
        text += f" in steps of {spec.step:g}"
    return text


def as_space_value(spec: ParamSpec, value: Any) -> Any:
    """``value`` as the suggest call of ``spec`` returns it (``2.0`` -> ``2`` for an int parameter)."""
    if spec.type == "int":
        return int(value)
    if spec.type == "float":
        return float(value)
    return value


def configuration(plan: SweepPlan, name: str, values: Mapping[str, Any]) -> FirstTrial:
    """The point of the space that ``values`` sets, the trainer's defaults elsewhere."""
    fields = plan.trainer_cls.Params.model_fields
    defaults = {key: field.default for key, field in fields.items() if not field.is_required()}
    params: dict[str, Any] = {}
    left: list[str] = []
    context = dict(plan.fixed_params)
    for key, spec in plan.space.specs.items():
        if not is_active(spec, context):
            continue
        value = values.get(key, defaults.get(key))
        if value is not None and contains(spec, value):
            params[key] = as_space_value(spec, value)
            context[key] = params[key]
        else:
            left.append(key)
    return FirstTrial(name, params, left)


def enqueued(plan: SweepPlan) -> list[FirstTrial]:
    """The user's configurations (``study.enqueue``), in order (checked by :mod:`orchestrator.plan`)."""
    return [
        configuration(plan, f"study.enqueue[{index}]", entry)
        for index, entry in enumerate(plan.sweep.study.enqueue)
    ]


def preset_points(plan: SweepPlan) -> list[FirstTrial]:
    """The trainer's presets that fit the space."""
    specs = plan.space.specs
    return [
        configuration(plan, name, values)
        for name, values in plan.trainer_cls.first_trials
        if all(key in specs and contains(specs[key], value) for key, value in values.items())
    ]


def first_trials(plan: SweepPlan) -> list[FirstTrial]:
    """What a new study queues: the user's configurations, then each preset none of them already is."""
    chosen = enqueued(plan)
    for preset in preset_points(plan):
        if not any(preset.same_configuration(earlier) for earlier in chosen):
            chosen.append(preset)
    return chosen


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def enqueue_first_trials(
    study: optuna.Study, plan: SweepPlan, say: Callable[[str], None] = _to_stderr
) -> list[str]:
    """Start a new study: add the warm start's trials, then queue :func:`first_trials`, in order.

    The one place that queues a new study's configurations. A configuration already in the study
    (a warm-started trial with the same parameters) is not queued again.

    Returns:
        the names of the configurations queued.
    """
    from optuna.trial import TrialState

    if plan.warm_start is not None:
        plan.warm_start.add_to(study, say)
    queued = []
    for first in first_trials(plan):
        before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        study.enqueue_trial(
            first.params,
            user_attrs={PRESET_ATTR: first.name, PRESET_DEFAULTS_ATTR: first.keep_default},
            skip_if_exists=True,
        )
        if len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) > before:
            queued.append(first.name)
    return queued
