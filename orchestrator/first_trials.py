"""The first trials of a new study: the trainer's default configuration and its other presets.

A trainer names configurations worth trying before any sampling (:attr:`BaseTrainer.first_trials`:
for the text trainer, its defaults, a linear probe and LP-FT). They are queued in the study, in order,
when it is created (Optuna's ``enqueue_trial``), so the sampler's first asks return them and a sweep
can never end worse than either. They are queued once: ``resume`` queues nothing, and a queued
trial is consumed by the first ask that takes it, so no preset runs twice.

A preset is a point of the search space: the trainer's default for each searched parameter, with
the preset's own values over them. A default that is not a point of the space (``dropout: None``,
"the model's own"; a weight decay of 0 in a log range) is not sampled either: the trial is told to
keep the trainer's default for it (:data:`PRESET_DEFAULTS_ATTR`, read by the session's ask).
A preset whose own values are not all in the space (``strategy`` not searched, or fixed) is skipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search_spaces import contains, is_active

if TYPE_CHECKING:
    import optuna

    from orchestrator.plan import SweepPlan

#: Trial user attribute: the name of the preset a queued trial runs.
PRESET_ATTR = "preset"
#: Trial user attribute: searched parameters the preset leaves at the trainer's default (not sampled).
PRESET_DEFAULTS_ATTR = "preset_defaults"


def preset_points(plan: SweepPlan) -> list[tuple[str, dict[str, Any], list[str]]]:
    """``(name, parameters, parameters left at the trainer's default)`` of each preset that fits the space."""
    fields = plan.trainer_cls.Params.model_fields
    defaults = {name: field.default for name, field in fields.items() if not field.is_required()}
    points = []
    for name, values in plan.trainer_cls.first_trials:
        specs = plan.space.specs
        if not all(key in specs and contains(specs[key], value) for key, value in values.items()):
            continue
        params: dict[str, Any] = {}
        left: list[str] = []
        context = dict(plan.fixed_params)
        for key, spec in specs.items():
            if not is_active(spec, context):
                continue
            value = values.get(key, defaults.get(key))
            if value is not None and contains(spec, value):
                params[key] = value
                context[key] = value
            else:
                left.append(key)
        points.append((name, params, left))
    return points


def enqueue_first_trials(study: optuna.Study, plan: SweepPlan) -> list[str]:
    """Queue the presets in a new study, in order; the names of those queued."""
    queued = []
    for name, params, left in preset_points(plan):
        study.enqueue_trial(
            params, user_attrs={PRESET_ATTR: name, PRESET_DEFAULTS_ATTR: left}, skip_if_exists=True
        )
        queued.append(name)
    return queued
