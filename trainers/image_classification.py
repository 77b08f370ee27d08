"""The image recipe: fine-tune a Hugging Face image classifier (ViT, DeiT, Swin, ConvNeXt, ResNet ...).

A short recipe on the building blocks: its settings and parameters (:mod:`trainers.image_settings`),
the images (:mod:`trainers.image_data`), the augmentations (:mod:`trainers.image_augment`, plain
torch), and one trial's image half, the :class:`~trainers.engine.TrainingTask` the epoch engine
trains (:mod:`trainers.image_trial`). The model is found as the text recipe finds its model
(:mod:`trainers.text_model`: a folder, a package's folder or the local hub cache) and loaded with
``AutoModelForImageClassification`` and ``AutoImageProcessor``; its head is rebuilt for the
training classes. ``freeze_depth`` counts the model's stages (ViT / DeiT: encoder layers; Swin,
ConvNeXt, ResNet: stages), found by :func:`trainers.regularization.find_blocks`.

With ``trainer.task: regression`` the label column of a table holds a number and the trial is
:class:`trainers.image_regression.ImageRegressionTrial` (one output, the standardized label,
``trainer.loss``, rmse / mae / r2); the study metric defaults to ``val_rmse``, minimized, and the
search space to ``image-regression`` (no label smoothing, class weights, mixup or cutmix).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ftsweep_common.errors import ModelError
from trainers.base import BaseTrainer, FinalFitRequest, Predictor, TrialContext
from trainers.image_settings import (
    IMAGE_METRIC_NAMES,
    IMAGE_REGRESSION_METRIC_NAMES,
    ImageClassificationParams,
    ImageClassificationSettings,
)
from trainers.text_model import load_config, require_weights, require_whole_weights, resolve_model


def stage_count(config: Any) -> int:
    """How many blocks :func:`trainers.regularization.find_blocks` finds, read from the config alone:
    ``len(config.depths)`` for staged models (Swin, ConvNeXt, ResNet), else ``num_hidden_layers``."""
    depths = getattr(config, "depths", None)
    if isinstance(depths, list | tuple) and depths:
        return len(depths)
    return int(config.num_hidden_layers)


class ImageClassificationTrainer(BaseTrainer):
    """Fine-tunes an image classifier on labelled images; see the module docstring."""

    name = "image-classification"
    Settings = ImageClassificationSettings
    Params = ImageClassificationParams
    metric_names = IMAGE_METRIC_NAMES
    settings_as_params = ("epochs", "batch_size")
    default_metric = "val_f1"
    default_direction = "maximize"
    default_search_space = "image-regularization"
    first_trials = (("default", {}),)
    preload_modules = (
        "torch",
        "transformers",
        "transformers.modeling_utils",
        "transformers.models.auto.modeling_auto",
        "transformers.models.auto.image_processing_auto",
        "trainers.image_classification",
        "trainers.image_trial",
    )

    settings: ImageClassificationSettings

    def __init__(self, settings: ImageClassificationSettings, base_dir: Path) -> None:
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
        """Read the images (their headers) and the model's config and image processor; no weights.

        Raises:
            DataError: for a data problem, naming the sweep key and the file.
            ModelError: when the model cannot be found, is not an image classifier, has a truncated
                weights file or no image processor.
        """
        from trainers.image_data import load_image_splits
        from trainers.image_geometry import load_image_geometry

        data = load_image_splits(self.settings.data, self.base_dir, task=self.settings.task)
        self._n_train = len(data.train)
        config = self.model_config()
        _require_image_classifier(self.settings.model, config)
        require_weights(self.settings.model, self.model_path)
        require_whole_weights(self.settings.model, self.model_path)
        load_image_geometry(self.model_path)

    def check_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        """``freeze_depth`` within the model's stages; ``drop_path`` only for a model that has it;
        the augmentations' own rules (one automatic policy); a regression task takes no class
        weights, label smoothing, mixup or cutmix."""
        problems: dict[str, str] = {}
        if self.settings.task == "regression":
            problems.update(
                {
                    key: f"{params[key]!r} has no meaning for trainer.task regression ({why}); allowed: "
                    f"{allowed} (remove it from the search space or the sweep's params)"
                    for key, allowed, why in _NOT_FOR_REGRESSION
                    if key in params and params[key] not in ("none", 0, 0.0)
                }
            )
        config = self.model_config()
        depth = params.get("freeze_depth")
        stages = stage_count(config)
        if isinstance(depth, int) and depth > stages:
            problems["freeze_depth"] = (
                f"{depth} is more than the {stages} stages of {self.settings.model!r}; allowed: 0 to "
                f"{stages} (a search space may say num_layers)"
            )
        drop_path = params.get("drop_path")
        if drop_path and not hasattr(config, "drop_path_rate"):
            problems["drop_path"] = (
                f"{type(config).__name__} of {self.settings.model!r} has no drop_path_rate (stochastic "
                "depth); remove drop_path for this model"
            )
        magnitude = params.get("randaugment_magnitude")
        if isinstance(magnitude, int) and magnitude > 0 and params.get("trivial_augment") is True:
            problems["trivial_augment"] = (
                f"true while randaugment_magnitude is {magnitude}: choose one automatic policy "
                "(trivial_augment false, or randaugment_magnitude 0)"
            )
        return problems

    def splits(self) -> dict[str, Path | None]:
        """train, validation (a folder or table, or None when split off the training images), test."""
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
        """The image folders / tables and, when it is a local folder, the model."""
        from trainers.data import resolve_path

        data = self.settings.data
        paths = [resolve_path(value, self.base_dir) for value in (data.train, data.validation) if value]
        model = Path(self.model_path)
        if model.is_absolute() and model.exists():
            paths.append(model)
        return paths

    def symbols(self) -> dict[str, float]:
        """``num_layers``: the model's stages (or encoder layers), the upper bound of ``freeze_depth``."""
        return {"num_layers": stage_count(self.model_config())}

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
        """``image-regression`` for ``task: regression``, else ``image-regularization``."""
        return "image-regression" if trainer.get("task") == "regression" else cls.default_search_space

    def reported_metrics(self) -> tuple[str, ...]:
        """Loss, accuracy and F1; loss, rmse, mae and r2 for ``task: regression``."""
        return IMAGE_REGRESSION_METRIC_NAMES if self.settings.task == "regression" else self.metric_names

    def max_epochs(self, params: Mapping[str, Any]) -> int | None:
        epochs = super().max_epochs(params)
        n_train = getattr(self, "_n_train", None)  # known after check(), which the planning step runs
        if epochs is None or n_train is None or not params.get("min_steps"):
            return epochs
        return ImageClassificationParams(**{**params, "epochs": epochs}).epochs_for(n_train)

    def on_out_of_memory(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """Half the per-step batch, twice the accumulation: the same effective batch in less memory."""
        steps = params.get("gradient_accumulation_steps")
        if steps is None:
            return None
        return {**params, "gradient_accumulation_steps": int(steps) * 2}

    def run(self, ctx: TrialContext) -> dict[str, float]:
        """Train one trial; see :class:`trainers.image_trial.ImageClassificationTrial`."""
        from trainers.image_trial import ImageClassificationTrial

        params = self.Params(**ctx.params)
        if self.settings.task == "regression":
            from trainers.image_regression import ImageRegressionTrial

            return ImageRegressionTrial(self, ctx, params).run()
        return ImageClassificationTrial(self, ctx, params).run()

    def final_fit(self, ctx: TrialContext, request: FinalFitRequest) -> dict[str, float]:
        """Train the final model, export it and predict every split (:mod:`trainers.image_final_fit`)."""
        from trainers.image_final_fit import final_fit

        return final_fit(self, ctx, request)

    @classmethod
    def load_predictor(cls, model_dir: Path, device: str) -> Predictor:
        """The model a final fit exported (:class:`trainers.image_final_fit.ImagePredictor`)."""
        from trainers.image_final_fit import ImagePredictor

        return ImagePredictor.load(model_dir, device)


_NO_MIXED_TARGETS = "mixed images would need mixed numeric targets, which this trainer does not train"
#: Parameters a regression task refuses: (key, the value that means off, why).
_NOT_FOR_REGRESSION = (
    ("class_weights", "none", "a numeric label has no classes"),
    ("label_smoothing", "0", "a numeric label has no classes"),
    ("mixup_alpha", "0", _NO_MIXED_TARGETS),
    ("cutmix_alpha", "0", _NO_MIXED_TARGETS),
)


def _require_image_classifier(value: str, config: Any) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    if config.model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        raise ModelError(
            f"trainer.model: {value!r} is a {config.model_type!r} model, which has no image-classification "
            "head in transformers; use an image classifier (ViT, DeiT, Swin, ConvNeXt, ResNet ...)"
        )
