"""The trainer interface and the trainer registry.

A trainer runs one trial: it reads its settings (the ``trainer`` section of the sweep
file) once, is given the trial's parameters and a :class:`TrialContext`, trains, and
reports each epoch's metrics through ``ctx.report``. The orchestrator never looks inside.

Built-in trainers are chosen by name from :data:`BUILTIN_TRAINERS`; a team plugs in its
own model family with an import path, ``my_pkg.module:MyTrainer``.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from ftsweep_common.errors import ConfigError

#: Built-in trainers by name. Values are import paths so that naming one imports only it.
BUILTIN_TRAINERS: dict[str, str] = {
    "text-classification": "trainers.text_classification:TextClassificationTrainer",
    "image-classification": "trainers.image_classification:ImageClassificationTrainer",
    "noop": "trainers.noop:NoopTrainer",
}


class TrialPruned(Exception):  # noqa: N818 - the name Optuna users know
    """Raised by :meth:`TrialContext.report` when the study decides to stop the trial."""


class TrialDiverged(Exception):  # noqa: N818
    """Raised by a trainer when the loss became NaN or infinite; the trial is pruned as ``diverged``."""


class StrictModel(BaseModel):
    """Base for settings and parameter models: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class EmptySettings(StrictModel):
    """Settings of a trainer that takes none."""


@dataclass
class TrialContext:
    """What a trainer is given for one trial.

    Attributes:
        trial_number: the Optuna trial number.
        params: every parameter of the trial, fixed and sampled, validated by the trainer's
            ``Params`` model.
        device: ``"cuda"`` when the trial was given a GPU (already pinned through
            ``CUDA_VISIBLE_DEVICES``), else ``"cpu"``.
        reporter: called with ``(epoch, metrics)``; returns True when the trial should stop.
        checkpoint_dir: a folder of this trial's own, or None when checkpoints are off.
        n_threads: how many CPU threads this trial may use.
        cache_dir: a folder shared by every trial of the study (and every worker on a shared
            file system) for what a trial can reuse from another: tokenized data, features of
            frozen layers. None when caching is off.
        metric: the study's metric (early stopping watches it), e.g. ``val_f1``.
        direction: ``"maximize"`` or ``"minimize"``: which way ``metric`` improves.
        logger: where :meth:`log` sends a line (the worker's log).
    """

    trial_number: int
    params: dict[str, Any]
    device: str = "cpu"
    reporter: Callable[[int, dict[str, float]], bool] | None = None
    checkpoint_dir: Path | None = None
    n_threads: int = 1
    cache_dir: Path | None = None
    metric: str | None = None
    direction: str = "maximize"
    logger: Callable[[str], None] = field(default=lambda message: None)
    _reports: list[tuple[int, dict[str, float]]] = field(default_factory=list, repr=False)

    def report(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Report one epoch's metrics (epochs count from 1). Call it after ``save_checkpoint``.

        Raises:
            TrialPruned: when the study (pruner) says this trial should stop.
        """
        values = {key: float(value) for key, value in metrics.items()}
        if self.checkpoint_dir is not None:
            from trainers.checkpoint import save_reports

            self._reports.append((int(epoch), values))
            save_reports(self.checkpoint_dir, self._reports)
        if self.reporter is not None and self.reporter(epoch, values):
            raise TrialPruned(f"pruned after epoch {epoch}")

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Save the trial's state atomically; a later run of the same trial gets it back.

        Args:
            state: what the trial needs to continue: None, bools, numbers, strings, lists, tuples,
                dicts, torch tensors and numpy arrays (:mod:`trainers.checkpoint`). Nothing is
                pickled, so a checkpoint someone else wrote cannot run code here.

        Raises:
            TypeError: for a value of any other kind.
        """
        if self.checkpoint_dir is None:
            return
        from trainers.checkpoint import save_checkpoint

        save_checkpoint(self.checkpoint_dir, state)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The state last saved for this trial, or None when there is none.

        A trial that continues from a checkpoint first replays the epochs it had reported, so
        that the study sees every epoch exactly once even when the process died between
        saving an epoch and reporting it.

        A checkpoint that cannot be loaded (truncated, corrupt, or of the old pickle-based format,
        which is never opened) is reported in the trial's log with its path, and None is
        returned: the trial starts over from its first epoch instead of failing.

        Raises:
            TrialPruned: when the replayed epochs already condemn the trial.
        """
        if self.checkpoint_dir is None:
            return None
        from trainers.checkpoint import CheckpointUnreadable, load_checkpoint, load_reports

        try:
            state = load_checkpoint(self.checkpoint_dir)
        except CheckpointUnreadable as error:
            self.log(f"WARNING: {error}; it is ignored and the trial starts over from epoch 0")
            self._reports = []
            return None
        if state is None:
            return None
        self._reports = load_reports(self.checkpoint_dir)
        for epoch, values in self._reports:
            if self.reporter is not None and self.reporter(epoch, values):
                raise TrialPruned(f"pruned after epoch {epoch}")
        return state

    def log(self, message: str) -> None:
        self.logger(message)


@dataclass(frozen=True)
class FinalFitRequest:
    """What ``ftsweep final`` asks of one fit of the chosen (or the default) parameters.

    Attributes:
        refit: ``"train"``: train on the training split and keep the best validation epoch (as the
            trial did); ``"train+val"``: train on the training and validation splits together for
            exactly ``epochs`` epochs (no split is left to choose an epoch with).
        epochs: the epoch count of a ``train+val`` fit (the trial's best epoch); None for ``train``.
        output_dir: the fit's own folder. The fit writes the model a user can load into
            ``output_dir / "model"`` and the predicted class probabilities of each split into
            ``output_dir / "predictions.json"`` (:func:`trainers.final_fit.write_predictions`); the
            orchestrator computes every test metric from them.
        evaluate_test: read and predict the test split (False when the data has none).
    """

    refit: Literal["train", "train+val"]
    epochs: int | None
    output_dir: Path
    evaluate_test: bool = True


class Predictor(Protocol):
    """A model exported by :meth:`BaseTrainer.final_fit`, loaded for ``ftsweep predict``.

    Optional: ``predict_frame(inputs) -> pandas.DataFrame``, the columns ``ftsweep predict`` and the
    MLflow model add to each input row (``predicted_label`` and ``probability_<class>`` for a classifier,
    ``prediction`` in the label's units for a regression model; see ``trainers.final_fit``). A predictor
    without it is scored through :meth:`predict_proba`.
    """

    #: The class names, in the order of the probability columns.
    labels: list[str]
    #: The input column the model reads (the training data's text column).
    input_column: str

    def predict_proba(self, texts: list[str]) -> Any:
        """Class probabilities, one row per text (an array of shape ``(len(texts), len(labels))``)."""
        ...


class BaseTrainer(ABC):
    """A family of models ftsweep can tune.

    Subclasses set :attr:`name`, :attr:`Settings` (the keys of the sweep file's ``trainer``
    section besides ``name`` and ``params``), :attr:`Params` (every parameter a search
    space may name or the sweep may fix, with defaults) and :attr:`metric_names`.

    A trainer object is built in the driver (to check the data and the model before any
    trial starts) and again in each trial's process; keep ``__init__`` cheap.
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type[StrictModel]] = EmptySettings
    Params: ClassVar[type[StrictModel]] = StrictModel
    #: The metrics every epoch reports; empty when the trainer cannot say in advance.
    metric_names: ClassVar[tuple[str, ...]] = ()
    #: Settings keys that are defaults for parameters of the same name (``trainer.epochs``).
    settings_as_params: ClassVar[tuple[str, ...]] = ()
    #: Modules a worker process imports once, before it forks trials.
    preload_modules: ClassVar[tuple[str, ...]] = ()
    #: The study's metric when the sweep file names none (``study.metric``); None: the file must name one.
    default_metric: ClassVar[str | None] = None
    #: Which way a metric improves when the sweep file does not say (``study.direction``);
    #: :meth:`direction_of` may answer per metric.
    default_direction: ClassVar[Literal["maximize", "minimize"]] = "maximize"
    #: The shipped search space (``search_space``) when the sweep file gives none; None: it must give one.
    default_search_space: ClassVar[str | None] = None
    #: Configurations a new study tries first, in order, by name: each is the trainer's defaults with
    #: these values over them (``{}``: the defaults themselves), tried when every value it sets is in
    #: the search space. So a sweep never ends worse than what a user gets without one.
    first_trials: ClassVar[tuple[tuple[str, dict[str, Any]], ...]] = ()

    def __init__(self, settings: StrictModel, base_dir: Path) -> None:
        """Args:
        settings: the validated ``trainer`` section.
        base_dir: the folder of the sweep file; relative paths resolve against it.
        """
        self.settings = settings
        self.base_dir = Path(base_dir)

    def check(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Check, in the driver, that the data and the model can be used.

        Raises:
            ftsweep_common.errors.UserError: naming the file and the field at fault.
        """

    @classmethod
    def default_metric_for(cls, trainer: Mapping[str, Any]) -> str | None:
        """The study metric when the sweep file names none, given its ``trainer`` section as written.

        The default answers :attr:`default_metric`; a trainer whose settings change what it reports
        (the text recipe's ``task: regression`` reports ``val_rmse``, not ``val_f1``) overrides it.
        ``trainer`` is not validated yet: read it defensively.
        """
        return cls.default_metric

    @classmethod
    def default_search_space_for(cls, trainer: Mapping[str, Any]) -> str | None:
        """The search space when the sweep file gives none, given its ``trainer`` section as written;
        :attr:`default_search_space` unless a trainer's settings call for another."""
        return cls.default_search_space

    def final_unavailable(self) -> str | None:
        """Why ``ftsweep final`` cannot fit this trainer's configuration (one line, for the user), or None.

        Checked before a final fit starts, after :meth:`implements_final`; the default finds nothing.
        """
        return None

    def reported_metrics(self) -> tuple[str, ...]:
        """The metrics every epoch of this trainer's trials reports (with its settings); empty when it
        cannot say in advance. Default: :attr:`metric_names`."""
        return self.metric_names

    @classmethod
    def direction_of(cls, metric: str) -> Literal["maximize", "minimize"]:
        """Which way ``metric`` improves, for a sweep file that names the metric but not the direction.

        The default answers :attr:`default_direction` for every metric; a trainer that reports
        losses overrides it.
        """
        return cls.default_direction

    def check_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        """Problems of a trial's parameters with this trainer's data and model, by parameter name.

        Called in the driver while planning, after :meth:`check`, once with the parameters the
        sweep file fixes and once with each searched parameter at each end of its range (each
        choice), so a value no trial could run with (``freeze_depth`` above the model's layers)
        stops the sweep before its first trial. The default finds none.

        Args:
            params: the trial's parameters (the fixed ones and at most one searched one).

        Returns:
            parameter name -> what is wrong and what is allowed, e.g.
            ``{"freeze_depth": "5 is more than the 2 layers of ...; allowed: 0 to 2"}``.
        """
        return {}

    def splits(self) -> dict[str, Path | None]:
        """The splits of the data, by name (``train``, ``validation``, ``test``), with the file of each.

        ``ftsweep final`` tests only when ``test`` is among them, and refuses ``--refit train+val``
        without ``validation``. A split with no file of its own (validation taken from the training
        file) maps to None. The default: training and validation splits, no files named.
        """
        return {"train": None, "validation": None}

    def input_paths(self) -> list[Path]:
        """Local files and folders every trial reads (data, model): on a cluster, every node must see them."""
        return []

    def symbols(self) -> dict[str, float]:
        """Names a search space may use as a bound, e.g. ``num_layers`` for ``freeze_depth``."""
        return {}

    def fixed_params(self) -> dict[str, Any]:
        """Parameter values the sweep file fixes through settings (``trainer.epochs`` is ``epochs``).

        Only keys the file sets: a setting's default must not hide the parameter from a search space.
        """
        values = self.settings.model_dump()
        given = self.settings.model_fields_set
        return {
            key: values[key]
            for key in self.settings_as_params
            if key in given and values.get(key) is not None
        }

    def max_epochs(self, params: Mapping[str, Any]) -> int | None:
        """How many epochs a trial with these parameters reports at most (pruners use it)."""
        value = params.get("epochs")
        if value is None and "epochs" in self.Params.model_fields:
            value = self.Params.model_fields["epochs"].default
        return int(value) if isinstance(value, int | float) else None

    def on_out_of_memory(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """The parameters to retry the trial with after an out-of-memory error.

        The trial runner calls it once, when ``run`` ran out of accelerator memory; the trial is
        retried with what it returns.

        Args:
            params: the trial's parameters, as ``run`` was given them.

        Returns:
            the parameters of a trial that needs less memory (for the same result, ideally), or
            None when this trainer cannot use less memory; the default returns None.
        """
        return None

    # -- the final model (``ftsweep final`` / ``ftsweep predict``); optional hooks --
    def final_fit(self, ctx: TrialContext, request: FinalFitRequest) -> dict[str, float]:
        """Fit the final model once, export it and predict every split (see :class:`FinalFitRequest`).

        Called in a trial process exactly as :meth:`run` is (device, log, checkpoints, ``ctx.report``
        after each epoch), so a killed fit continues from its last checkpoint when ``final`` is run
        again. A trainer that does not override it cannot take part in ``ftsweep final``.

        Returns:
            the fit's own figures (``best_epoch``, ``epochs_run``, validation metrics).
        """
        raise NotImplementedError(f"trainer {self.name!r} has no final_fit hook (see implements_final)")

    def baseline_params(self) -> dict[str, Any]:
        """The parameters a user would get without a search (``ftsweep final --baseline``).

        The default: every parameter's default value, with the values the sweep file fixes.
        """
        defaults = self.Params().model_dump() if _all_defaulted(self.Params) else {}
        return {**defaults, **self.fixed_params()}

    @classmethod
    def load_predictor(cls, model_dir: Path, device: str) -> Predictor:
        """The model that :meth:`final_fit` exported into ``model_dir``, ready to predict on ``device``.

        Raises:
            ftsweep_common.errors.UserError: when ``model_dir`` holds no model this trainer exported.
        """
        raise NotImplementedError(f"trainer {cls.name!r} has no load_predictor hook (see implements_final)")

    @classmethod
    def implements_final(cls) -> bool:
        """True when the trainer overrides :meth:`final_fit` and :meth:`load_predictor`."""
        return (
            cls.final_fit is not BaseTrainer.final_fit
            and cls.load_predictor.__func__ is not BaseTrainer.load_predictor.__func__  # type: ignore[attr-defined]
        )

    @abstractmethod
    def run(self, ctx: TrialContext) -> dict[str, float]:
        """Train one trial, calling ``ctx.report`` after every epoch.

        Returns:
            the metrics of the trial's best epoch (``best_epoch`` among them).

        Raises:
            TrialPruned: from ``ctx.report``; let it through.
            TrialDiverged: when the loss is not finite.
        """


def _all_defaulted(model: type[StrictModel]) -> bool:
    return all(not field.is_required() for field in model.model_fields.values())


def registered_trainers() -> list[str]:
    """The names of the built-in trainers."""
    return sorted(BUILTIN_TRAINERS)


def load_trainer_class(spec: str) -> type[BaseTrainer]:
    """The trainer class named by ``spec``: a built-in name or ``package.module:Class``.

    Raises:
        ConfigError: for ``trainer.name`` when the name is unknown or the import fails.
    """
    path = BUILTIN_TRAINERS.get(spec)
    if path is None:
        if ":" not in spec:
            raise ConfigError(
                f"trainer.name: unknown trainer {spec!r}; allowed: {', '.join(registered_trainers())}, "
                "or your own class as 'package.module:ClassName'"
            )
        path = spec
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"trainer.name: cannot import module {module_name!r} for trainer {spec!r} ({error}); "
            "is its package installed or on PYTHONPATH?"
        ) from error
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseTrainer)):
        raise ConfigError(
            f"trainer.name: {path!r} is not a subclass of trainers.base.BaseTrainer; "
            "a trainer is a class deriving from it"
        )
    return cls
