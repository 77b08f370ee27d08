"""The built-in recipe: fine-tune a Hugging Face encoder for text classification.

A short recipe on the building blocks: its settings and parameters (:mod:`trainers.text_settings`),
the model's loading and checks (:mod:`trainers.text_model`), one trial's text half, the
:class:`~trainers.engine.TrainingTask` the epoch engine trains (:mod:`trainers.text_trial`), and the
final fit (:mod:`trainers.text_final_fit`). One trial loads the data and the model, applies the
regularization knobs of its parameters, trains for ``epochs`` epochs and reports, after each, the
training and validation loss, accuracy and macro F1. With ``trainer.task: regression`` the label is a
number and the trial is :class:`trainers.text_regression.TextRegressionTrial` (one output, the
standardized label, ``trainer.loss``, rmse / mae / r2; the study metric defaults to ``val_rmse``,
minimized, and the search space to ``regression``). The engine (:mod:`trainers.engine`) checkpoints
every epoch, so a trial interrupted by a crash or a preemption resumes where it stopped and
reports the same numbers an uninterrupted trial would have.

Speed matters on CPU-only machines, so: each split is tokenized once per study (the ids are
cached in the study's ``cache_dir``); batches are padded to their own longest text and grouped by
length; the loss and the training predictions are summed on the device and read back once per
epoch (no per-step host synchronisation); batches go to a GPU from pinned memory without
blocking; evaluation runs under ``torch.inference_mode``; a GPU that supports bfloat16 computes
under bfloat16 autocast; L1 / L2-SP add their gradients directly instead of through autograd;
frozen layers are served from the feature cache (:mod:`trainers.feature_cache`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ftsweep_common.errors import ConfigError
from trainers.base import BaseTrainer, FinalFitRequest, Predictor, TrialContext
from trainers.data import load_splits
from trainers.final_fit import TextPredictor
from trainers.metrics import accuracy_and_macro_f1, generalization_gap
from trainers.text_final_fit import final_fit
from trainers.text_model import (
    load_config,
    load_tokenizer,
    require_classifier_family,
    require_plausible_tokenizer,
    require_weights,
    require_whole_weights,
    resolve_model,
)
from trainers.text_settings import (
    TEXT_METRIC_NAMES,
    TEXT_REGRESSION_METRIC_NAMES,
    TextClassificationParams,
    TextClassificationSettings,
)
from trainers.text_trial import TextClassificationTrial
from trainers.training_params import DEFAULT_HEAD_LEARNING_RATE, retry_with_less_memory

#: Names other modules and benchmarks import from here, kept where they were before the split.
_Trial = TextClassificationTrial
_load_tokenizer = load_tokenizer
__all__ = [
    "DEFAULT_HEAD_LEARNING_RATE",
    "TextClassificationParams",
    "TextClassificationSettings",
    "TextClassificationTrainer",
    "accuracy_and_macro_f1",
    "generalization_gap",
    "resolve_model",
]


class TextClassificationTrainer(BaseTrainer):
    """Fine-tunes a sequence-classification model on labelled text; see the module docstring."""

    name = "text-classification"
    Settings = TextClassificationSettings
    Params = TextClassificationParams
    metric_names = TEXT_METRIC_NAMES
    settings_as_params = ("epochs", "batch_size")
    default_metric = "val_f1"
    default_direction = "maximize"
    default_search_space = "regularization"
    first_trials = (
        ("default", {}),
        ("linear probe", {"strategy": "linear_probe"}),
        ("LP-FT", {"strategy": "lp_ft"}),
    )
    # transformers imports its model machinery lazily, on the first from_pretrained (over a
    # second); importing it once per worker, before trials fork, takes that off every trial.
    preload_modules = (
        "torch",
        "transformers",
        "transformers.modeling_utils",
        "transformers.activations",
        "transformers.models.auto.modeling_auto",
        "transformers.models.auto.tokenization_auto",
        "trainers.text_classification",
    )

    settings: TextClassificationSettings

    def __init__(self, settings: TextClassificationSettings, base_dir: Path) -> None:
        super().__init__(settings, base_dir)
        self._model_path: str | None = None
        self._config: Any = None

    @property
    def model_path(self) -> str:
        """The model folder (or hub id) ``trainer.model`` resolves to."""
        if self._model_path is None:
            self._model_path = resolve_model(self.settings.model, self.base_dir)
        return self._model_path

    def model_config(self) -> Any:
        """The model's configuration, loaded once (no weights).

        Raises:
            ModelError: when it cannot be loaded.
        """
        if self._config is None:
            self._config = load_config(self.settings.model, self.model_path, self.base_dir)
        return self._config

    def check(self) -> None:
        """Read the data and the model's config and tokenizer; no weights.

        Raises:
            DataError: for a data problem, naming the file and the key.
            ModelError: when the model cannot be found, is not a sequence classifier, has a
                truncated or corrupt weights file, or a tokenizer that does not fit the data.
            ConfigError: when ``max_length`` exceeds what the model supports.
        """
        data = load_splits(self.settings.data, self.base_dir, task=self.settings.task)
        self._n_train = len(data.train.texts)
        config = self.model_config()
        require_classifier_family(self.settings.model, config)
        require_weights(self.settings.model, self.model_path)
        require_whole_weights(self.settings.model, self.model_path)
        limit = getattr(config, "max_position_embeddings", None)
        if isinstance(limit, int) and self.settings.max_length > limit:
            raise ConfigError(
                f"trainer.max_length: {self.settings.max_length} is more than the {limit} positions "
                f"{self.settings.model!r} supports"
            )
        tokenizer = load_tokenizer(self.settings.model, self.model_path, self.base_dir)
        require_plausible_tokenizer(self.settings.model, self.model_path, tokenizer, data.train.texts)

    def check_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        """``freeze_depth`` may not exceed the model's number of encoder layers; a regression task takes
        no class weights and no label smoothing."""
        if self.settings.task == "regression":
            problems = {
                key: f"{params[key]!r} has no meaning for trainer.task regression (a numeric label has no "
                f"classes); allowed: {allowed} (remove it from the search space or the sweep's params)"
                for key, allowed in (("class_weights", "none"), ("label_smoothing", "0"))
                if key in params and params[key] not in ("none", 0, 0.0)
            }
            if problems:
                return problems
        depth = params.get("freeze_depth")
        layers = int(self.model_config().num_hidden_layers)
        if isinstance(depth, int) and depth > layers:
            return {
                "freeze_depth": f"{depth} is more than the {layers} encoder layers of "
                f"{self.settings.model!r}; allowed: 0 to {layers} (a search space may say num_layers)"
            }
        return {}

    def splits(self) -> dict[str, Path | None]:
        """train, validation (a file, or None when split off the training file) and test when given."""
        from trainers.data import resolve_path

        data = self.settings.data
        found: dict[str, Path | None] = {
            "train": resolve_path(data.train, self.base_dir),
            "validation": resolve_path(data.validation, self.base_dir) if data.validation else None,
        }
        if data.test:
            found["test"] = resolve_path(data.test, self.base_dir)
        return found

    def input_paths(self) -> list[Path]:
        """The data files and, when it is a local folder, the model: what every node must see."""
        from trainers.data import resolve_path

        data = self.settings.data
        # Not the test file: trials never read it (only `ftsweep final`, on this machine, does).
        files = [data.train, data.validation]
        paths = [resolve_path(value, self.base_dir) for value in files if value]
        model = Path(self.model_path)
        if model.is_absolute() and model.exists():
            paths.append(model)
        return paths

    def symbols(self) -> dict[str, float]:
        """``num_layers``: how many encoder layers the model has (the upper bound of ``freeze_depth``)."""
        return {"num_layers": int(self.model_config().num_hidden_layers)}

    @classmethod
    def direction_of(cls, metric: str) -> Literal["maximize", "minimize"]:
        """Losses, errors (rmse, mae) and the generalization gap shrink as the model gets better;
        accuracy, F1 and r2 grow."""
        shrinks = metric.endswith(("loss", "_rmse", "_mae")) or metric == "generalization_gap"
        return "minimize" if shrinks else "maximize"

    @classmethod
    def default_metric_for(cls, trainer: Mapping[str, Any]) -> str | None:
        """``val_rmse`` for ``task: regression``, else ``val_f1``."""
        return "val_rmse" if trainer.get("task") == "regression" else cls.default_metric

    @classmethod
    def default_search_space_for(cls, trainer: Mapping[str, Any]) -> str | None:
        """``regression`` (no label smoothing) for ``task: regression``, else ``regularization``."""
        return "regression" if trainer.get("task") == "regression" else cls.default_search_space

    def reported_metrics(self) -> tuple[str, ...]:
        """Loss, accuracy and F1; loss, rmse, mae and r2 for ``task: regression``."""
        return TEXT_REGRESSION_METRIC_NAMES if self.settings.task == "regression" else self.metric_names

    def max_epochs(self, params: Mapping[str, Any]) -> int | None:
        """A linear probe is fitted (and reports) once; every other strategy trains ``epochs`` epochs."""
        if params.get("strategy") == "linear_probe":
            return 1
        epochs = super().max_epochs(params)
        n_train = getattr(self, "_n_train", None)  # known after check(), which the planning step runs
        if epochs is None or n_train is None or not params.get("min_steps"):
            return epochs
        return TextClassificationParams(**{**params, "epochs": epochs}).epochs_for(n_train)

    def on_out_of_memory(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """Half the per-step batch, twice the accumulation: the same effective batch in less memory."""
        return retry_with_less_memory(params)

    def run(self, ctx: TrialContext) -> dict[str, float]:
        """Train one trial; see :class:`trainers.text_trial.TextClassificationTrial`."""
        params = self.Params(**ctx.params)
        if self.settings.task == "regression":
            from trainers.text_regression import TextRegressionTrial

            return TextRegressionTrial(self, ctx, params).run()
        return TextClassificationTrial(self, ctx, params).run()

    def final_fit(self, ctx: TrialContext, request: FinalFitRequest) -> dict[str, float]:
        """Train the final model, export it and predict every split (:mod:`trainers.final_fit`)."""
        return final_fit(self, ctx, request)

    @classmethod
    def load_predictor(cls, model_dir: Path, device: str) -> Predictor:
        """The model a final fit exported into ``model_dir`` (:class:`trainers.final_fit.TextPredictor`)."""
        return TextPredictor.load(model_dir, device)
