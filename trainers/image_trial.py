"""One image-classification trial: the image half of the recipe, on the epoch engine.

:class:`ImageClassificationTrial` is the :class:`trainers.engine.TrainingTask` of the image recipe:
it reads the images (:mod:`trainers.image_data`), loads the image classifier with a head over the
training classes, freezes the stem and the lowest ``freeze_depth`` stages
(:func:`trainers.regularization.find_blocks`), sets dropout and drop-path, and supplies the batches
(decoded and augmented in DataLoader workers, :mod:`trainers.image_augment`; mixup / cutmix per
batch), the cross-entropy loss (soft labels from mixup / cutmix, label smoothing, class weights)
and accuracy / macro F1. :class:`trainers.engine.Engine` does the rest.

Validation (and test) images go through the evaluation transform only: resize, centre crop,
normalize. They are decoded once per trial and kept in memory when they fit in
``eval_cache_mb``. With ``freeze_depth`` > 0 the frozen stages' output is computed once per image
and served back (:mod:`trainers.image_features`): for validation always, for training when no
augmentation acts before the frozen part.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ftsweep_common.errors import DataError
from trainers.engine import Engine, timed_trial
from trainers.hf_loading import hub_options, quiet_transformers
from trainers.image_data import ImageDataset, LabelledImages, load_image_splits
from trainers.image_settings import IMAGE_METRIC_NAMES, ImageClassificationParams, ImageClassificationSettings
from trainers.metrics import accuracy_and_macro_f1

if TYPE_CHECKING:
    import torch

    from trainers.base import TrialContext
    from trainers.image_features import FrozenImageFeatures

#: One training micro-batch: images (or the frozen stages' states when served from the feature cache),
#: hard labels, soft targets (None without mixup / cutmix), the step's normalizer.
MicroBatch = tuple["torch.Tensor", "torch.Tensor", "torch.Tensor | None", float]


class ImageRecipe(Protocol):
    """What a trial needs of its trainer (the image-classification trainer)."""

    @property
    def settings(self) -> ImageClassificationSettings:
        """The ``trainer`` section of the sweep."""
        ...

    @property
    def base_dir(self) -> Path:
        """The folder relative paths resolve against."""
        ...

    @property
    def model_path(self) -> str:
        """The model folder (or hub id)."""
        ...


def one_line_worker_error(error: BaseException) -> DataError:
    """A :class:`DataError` raised in a DataLoader worker as the one line it was.

    torch re-raises a worker's exception with a multi-line text ("Caught DataError in DataLoader
    worker process 0. Original Traceback ..."); its last line holds the original message.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else type(error).__name__
    _, marker, message = last.partition("DataError: ")
    return DataError(message if marker else last)


class ImageClassificationTrial:
    """The state of one trial: data, model, and the task the engine trains.

    Args:
        trainer: the trainer (its settings, base folder and model path).
        ctx: the trial's context.
        params: the validated parameters.
    """

    metric_names: tuple[str, ...] = IMAGE_METRIC_NAMES
    default_metric = "val_f1"

    def __init__(self, trainer: ImageRecipe, ctx: TrialContext, params: ImageClassificationParams) -> None:
        self.trainer = trainer
        self.settings = trainer.settings
        self.ctx = ctx
        self.params = params
        self.metric = ctx.metric or self.default_metric
        if self.metric not in self.metric_names:
            raise ValueError(
                f"study metric {self.metric!r} is not one this trainer reports; "
                f"allowed: {', '.join(self.metric_names)}"
            )
        self._loader: Any = None
        self.features: FrozenImageFeatures | None = None
        #: The frozen stages' states of the training images in index order, when training is served.
        self.train_states: torch.Tensor | None = None

    # ---- setup ---------------------------------------------------------------------------

    def run(self) -> dict[str, float]:
        """Set up, resume from a checkpoint if any, train the remaining epochs; the best epoch's metrics."""
        with timed_trial(self.ctx):
            self.setup()
            try:
                return self.engine.train(self, self.new_parameters)
            finally:
                self.close()

    def setup(self) -> None:
        """The runtime (seeded), the engine, the data and the model; nothing trained yet."""
        from trainers.runtime import start_runtime

        params = self.params
        self.runtime = start_runtime(
            self.ctx.device, self.settings.precision, self.ctx.n_threads, params.seed
        )
        self.device = self.runtime.device
        self.channels_last = self.runtime.on_cuda and self.settings.channels_last
        self.engine = Engine(self.ctx, params, self.runtime, self.metric, keep=self._keep())
        self._setup_data()
        self._setup_model()
        self._setup_features()

    def _keep(self) -> Literal["best", "last"]:
        """Which epoch's weights the trial keeps (the engine's ``keep``)."""
        return "best"

    def _load_data(self) -> LabelledImages:
        """The splits this run trains and scores on: a trial never reads the test split."""
        return load_image_splits(
            self.settings.data,
            self.trainer.base_dir,
            include_test=False,
            check_images=False,
            task=self.settings.task,
        )

    def _setup_data(self) -> None:
        import torch

        from trainers.image_augment import build_transforms
        from trainers.image_geometry import load_image_geometry
        from trainers.regularization import class_weights

        data = self._load_data()
        self.labels = data.labels
        self.geometry = load_image_geometry(self.trainer.model_path)
        self.train_transform, self.eval_transform = build_transforms(self.params, self.geometry)
        classes = self._dataset_classes()
        self.train_set = ImageDataset(data.train, classes, self.train_transform, self.params.seed)
        self.validation_set = ImageDataset(data.validation, classes, self.eval_transform, self.params.seed)
        self.n_train = len(self.train_set)
        target_type = torch.long if classes is not None else torch.float64
        self.train_labels = torch.tensor(self.train_set.label_ids, dtype=target_type)
        self.validation_labels = torch.tensor(self.validation_set.label_ids, dtype=target_type)
        weights = class_weights(self.train_labels.tolist(), len(self.labels), self.params.class_weights)
        self.class_weights_cpu = weights
        self.class_weights = weights.to(self.device) if weights is not None else None
        self.eval_size = self.settings.eval_batch_size or 2 * self.params.batch_size
        self.validation = self._eval_batches(self.validation_set)

    def _dataset_classes(self) -> list[str] | None:
        """The classes a dataset's targets index (None: the targets are numbers, for regression)."""
        return self.labels

    def _head_config(self) -> dict[str, Any]:
        """What the model's config is loaded with: a head over the training classes."""
        return {
            "num_labels": len(self.labels),
            "id2label": dict(enumerate(self.labels)),
            "label2id": {label: index for index, label in enumerate(self.labels)},
        }

    def _loader_for(self, dataset: ImageDataset, batch_size: int, shuffle: bool, epoch: int = 0) -> Any:
        """A DataLoader over ``dataset`` keyed by :class:`trainers.image_data.EpochSampler`."""
        from torch.utils.data import DataLoader

        from trainers.image_data import EpochSampler

        sampler = EpochSampler(len(dataset), self.params.seed, shuffle=shuffle)
        sampler.set_epoch(epoch)
        workers = self.settings.num_workers
        return DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.runtime.on_cuda,
            persistent_workers=workers > 0,
        )

    def _batches(self, loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The loader's batches; a DataError from a worker as its one line."""
        try:
            yield from loader
        except DataError as error:
            raise one_line_worker_error(error) from None

    def _eval_batches(self, dataset: ImageDataset) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The split's batches decoded once, when they fit in ``eval_cache_mb``; None: decode each epoch."""
        size = 4 * 3 * self.geometry.height * self.geometry.width * len(dataset)
        if size > self.settings.eval_cache_mb * 2**20:
            return None
        return list(self._batches(self._loader_for(dataset, self.eval_size, shuffle=False)))

    def _setup_model(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForImageClassification

        from trainers.regularization import find_blocks, freeze, set_config_dropout, set_dropout

        params = self.params
        path = self.trainer.model_path
        config = AutoConfig.from_pretrained(path, **self._head_config(), **hub_options())
        set_config_dropout(config, hidden=params.dropout, attention=params.dropout, classifier=params.dropout)
        if params.drop_path is not None and hasattr(config, "drop_path_rate"):
            config.drop_path_rate = float(params.drop_path)
        with quiet_transformers():
            model, info = AutoModelForImageClassification.from_pretrained(
                path,
                config=config,
                dtype=torch.float32,
                ignore_mismatched_sizes=True,
                output_loading_info=True,
                **hub_options(),
            )
        mismatched = [entry[0] for entry in info.get("mismatched_keys", [])]
        self.new_parameters = list(info.get("missing_keys", [])) + mismatched
        self.n_stages = len(find_blocks(model)[1])
        self.frozen = freeze(model, params.freeze_depth)
        set_dropout(model, hidden=params.dropout, attention=params.dropout, classifier=params.dropout)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    def _setup_features(self) -> None:
        """Serve the frozen stages from memory (see :mod:`trainers.image_features`) where that is exact."""
        import torch

        from trainers.image_features import FrozenImageFeatures, batched_states

        params, settings = self.params, self.settings
        if not settings.feature_cache or params.freeze_depth == 0:
            return
        if self.validation is None:
            self.ctx.log("feature cache off: the validation images exceed eval_cache_mb")
            return
        features = FrozenImageFeatures(
            self.model, params.freeze_depth, self.runtime.autocast, self.runtime.to_device
        )
        probe_images = self.validation[0][0]
        if not features.probe(probe_images):
            features.close()
            self.ctx.log("feature cache off: the model's output differs when its frozen stages are served")
            return
        limit = settings.feature_cache_mb * 2**20
        one = features.states(probe_images[:1])
        per_image = one.element_size() * one.numel()
        if per_image * len(self.validation_set) > limit:
            features.close()
            self.ctx.log(
                f"feature cache off: the validation states exceed feature_cache_mb ({limit >> 20} MB)"
            )
            return
        self.features = features
        self.validation = batched_states(features, self.validation)
        served = ["validation"]
        if params.per_image or params.per_batch:
            self.ctx.log("feature cache: train not cached (an augmentation acts before the frozen stages)")
        elif per_image * (len(self.validation_set) + self.n_train) <= limit:
            batches = self._batches(self._loader_for(self.train_set, self.eval_size, shuffle=False))
            self.train_states = torch.cat([features.states(images) for images, _ in batches])
            served.append("train")
        self.ctx.log(f"feature cache: frozen stages served from memory for {', '.join(served)}")

    def _model_inputs(
        self, inputs: torch.Tensor, served: bool
    ) -> contextlib.AbstractContextManager[torch.Tensor]:
        """Within the block, the images to call the model with: ``inputs`` themselves, or, when
        ``served``, placeholders while ``inputs`` (the frozen stages' states) are served."""
        if not served or self.features is None:
            return contextlib.nullcontext(inputs)
        return self.features.serving(inputs)

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        import torch

        images = self.runtime.to_device(images)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    # ---- the task the engine trains (trainers.engine.TrainingTask) ---------------------------

    def train_steps(self, epoch: int) -> Iterator[list[MicroBatch]]:
        """The epoch's batches (shuffled, augmented, mixed); each split into micro-batches."""
        import torch

        from trainers.batching import epoch_seed
        from trainers.image_augment import BatchMixer

        params = self.params
        mixer = BatchMixer(params.mixup_alpha, params.cutmix_alpha, len(self.labels))
        generator = torch.Generator().manual_seed(epoch_seed(params.seed, epoch))
        self._reset_train_metrics()
        micro = params.micro_batch_size
        for images, labels in self._epoch_batches(epoch):
            targets: torch.Tensor | None = None
            if mixer.enabled:
                images, targets = mixer(images, labels, generator)
            normalizer = self._normalizer(labels, targets)
            yield [
                (
                    images[start : start + micro],
                    labels[start : start + micro],
                    targets[start : start + micro] if targets is not None else None,
                    normalizer,
                )
                for start in range(0, len(labels), micro)
            ]

    def _reset_train_metrics(self) -> None:
        """Zero the epoch's training sums: plain cross-entropy, the training objective, the confusion."""
        import torch

        n_classes = len(self.labels)
        self._sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        self._confusion = torch.zeros(n_classes * n_classes, dtype=torch.long, device=self.device)

    def _epoch_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's ``(images, labels)`` batches; ``(states, labels)`` when training is served (the
        same rows in the same order: the DataLoader's sampler)."""
        from trainers.image_data import EpochSampler

        if self.train_states is not None:
            sampler = EpochSampler(self.n_train, self.params.seed, shuffle=True)
            sampler.set_epoch(epoch)
            order = [index for index, _ in sampler]
            size = self.params.batch_size
            for start in range(0, len(order), size):
                rows = order[start : start + size]
                yield self.train_states[rows], self.train_labels[rows]
            return
        if self._loader is None:  # one loader per trial: its workers persist across epochs
            self._loader = self._loader_for(self.train_set, self.params.batch_size, shuffle=True, epoch=epoch)
        self._loader.sampler.set_epoch(epoch)
        yield from self._batches(self._loader)

    def _normalizer(self, labels: torch.Tensor, targets: torch.Tensor | None) -> float:
        """What the step's summed loss is divided by: the batch's (class-weighted) size."""
        weights = self.class_weights_cpu
        if weights is None:
            return float(len(labels))
        if targets is None:
            return float(weights[labels].sum())
        return float((targets @ weights).sum())

    def train_loss(self, batch: MicroBatch) -> torch.Tensor:
        """Cross-entropy (soft labels, weighted, smoothed) of one micro-batch over its step's normalizer."""
        import torch
        import torch.nn.functional as F  # noqa: N812 - the usual name

        images, labels, targets, normalizer = batch
        labels = self.runtime.to_device(labels)
        with self._model_inputs(images, self.train_states is not None) as inputs, self.runtime.autocast():
            logits = self.model(pixel_values=self._to_device(inputs)).logits.float()
        target = self.runtime.to_device(targets) if targets is not None else labels
        per_example = F.cross_entropy(
            logits,
            target,
            weight=self.class_weights,
            label_smoothing=self.params.label_smoothing,
            reduction="none",
        )
        loss = per_example.sum() / normalizer
        with torch.no_grad():
            objective = per_example.sum()
            plain = (
                objective
                if targets is None and self.class_weights is None and self.params.label_smoothing == 0
                else F.cross_entropy(logits, labels, reduction="sum")
            )
            self._sums += torch.stack([plain, objective]).double()
            n_classes = len(self.labels)
            self._confusion.index_add_(0, labels * n_classes + logits.argmax(dim=-1), torch.ones_like(labels))
        return loss

    def train_metrics(self) -> dict[str, float]:
        """The epoch's loss, accuracy and macro F1 (against the unmixed labels), read back once."""
        n_classes = len(self.labels)
        ce_sum, objective_sum = self._sums.tolist()
        accuracy, f1 = accuracy_and_macro_f1(self._confusion.view(n_classes, n_classes).cpu())
        return {
            "train_loss": ce_sum / self.n_train,
            "train_accuracy": accuracy,
            "train_f1": f1,
            "train_objective": objective_sum / self.n_train,
        }

    def validation_metrics(self) -> dict[str, float]:
        """Loss, accuracy and macro F1 on the validation split (evaluation transform only)."""
        batches: Any = self.validation
        if batches is None:
            batches = self._batches(self._loader_for(self.validation_set, self.eval_size, shuffle=False))
        loss, accuracy, f1 = self._evaluate(batches)
        return {"val_loss": loss, "val_accuracy": accuracy, "val_f1": f1}

    def baseline_metrics(self, metric: str) -> dict[str, float]:
        """``majority_<metric>``: the validation score of always predicting the most frequent class."""
        import torch

        from ftsweep_common.trial_metrics import MAJORITY_PREFIX

        if metric not in ("val_f1", "val_accuracy"):
            return {}
        n_classes = len(self.labels)
        majority = int(torch.bincount(self.train_labels, minlength=n_classes).argmax())
        confusion = torch.bincount(self.validation_labels * n_classes + majority, minlength=n_classes**2)
        accuracy, f1 = accuracy_and_macro_f1(confusion.view(n_classes, n_classes))
        return {MAJORITY_PREFIX + metric: f1 if metric == "val_f1" else accuracy}

    def _evaluate(self, batches: Any) -> tuple[float, float, float]:
        """Loss, accuracy and macro F1 over ``(images, labels)`` batches, with dropout off."""
        import torch
        import torch.nn.functional as F  # noqa: N812

        n_classes = len(self.labels)
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        confusion = torch.zeros(n_classes * n_classes, dtype=torch.long, device=self.device)
        count = 0
        with torch.inference_mode(), self.runtime.autocast():
            served = self.features is not None  # the kept validation batches hold states then
            for images, labels in batches:
                labels = self.runtime.to_device(labels)
                with self._model_inputs(images, served) as inputs:
                    logits = self.model(pixel_values=self._to_device(inputs)).logits.float()
                loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
                confusion.index_add_(0, labels * n_classes + logits.argmax(dim=-1), torch.ones_like(labels))
                count += len(labels)
        accuracy, f1 = accuracy_and_macro_f1(confusion.view(n_classes, n_classes).cpu())
        return loss_sum.item() / max(count, 1), accuracy, f1

    def close(self) -> None:
        """Stop the DataLoader's workers; give the model its own forward back."""
        with contextlib.suppress(Exception):
            iterator = getattr(self._loader, "_iterator", None)
            if iterator is not None:
                iterator._shutdown_workers()
        self._loader = None
        if self.features is not None:
            self.features.close()
            self.features = None
