"""One text-classification trial: the text half of the recipe, on the epoch engine.

:class:`TextClassificationTrial` is the :class:`trainers.engine.TrainingTask` of the text recipe:
it tokenizes the splits (cached per study), loads the sequence classifier with its head and
pooling, freezes and sets dropout, fits the linear probe (``linear_probe``, ``lp_ft``), serves
frozen layers from the feature cache, and supplies the batches (grouped by length, augmented at
the token level), the cross-entropy loss (label smoothing, class weights) and accuracy / macro F1.
:class:`trainers.engine.Engine` does the rest (optimizer, epochs, early stopping, checkpoints).

Frozen layers. ``freeze_depth`` k freezes the embeddings and the lowest k encoder blocks, which
then run in eval mode: dropout does not act inside frozen layers. Their output is therefore a pure
function of the input, and with ``feature_cache`` on it is computed once per example and reused
by every epoch and every later trial with the same k (:mod:`trainers.feature_cache`). The training
split is cached only without token-level augmentation; validation and test always are.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from trainers.data import LabelledData, load_splits
from trainers.engine import Engine, timed_trial
from trainers.hf_loading import hub_options, quiet_transformers
from trainers.metrics import accuracy_and_macro_f1
from trainers.splits import Split
from trainers.text_model import load_tokenizer
from trainers.text_settings import TEXT_METRIC_NAMES, TextClassificationParams, TextClassificationSettings

if TYPE_CHECKING:
    import torch

    from trainers.base import TrialContext
    from trainers.feature_cache import FrozenFeatureCache

#: One training micro-batch: token ids, labels, row numbers and the step's loss normalizer.
MicroBatch = tuple[list[list[int]], "torch.Tensor", list[int], float]


class TextRecipe(Protocol):
    """What a trial needs of its trainer (:class:`trainers.text_classification.TextClassificationTrainer`)."""

    @property
    def name(self) -> str:
        """The trainer's registered name."""
        ...

    @property
    def settings(self) -> TextClassificationSettings:
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


class TextClassificationTrial:
    """The state of one trial: data, model, and the task the engine trains.

    Args:
        trainer: the trainer (its settings and base folder).
        ctx: the trial's context.
        params: the validated parameters.
    """

    #: The metrics this trial reports (one of them is the study metric), and its default.
    metric_names: tuple[str, ...] = TEXT_METRIC_NAMES
    default_metric = "val_f1"

    def __init__(self, trainer: TextRecipe, ctx: TrialContext, params: TextClassificationParams) -> None:
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
        self.features: FrozenFeatureCache | None = None

    def _keep(self) -> Literal["best", "last"]:
        """Which epoch's weights the trial keeps (the engine's ``keep``)."""
        return "best"

    # ---- what callers read -----------------------------------------------------------------

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The engine's optimizer (its parameter groups)."""
        return self.engine.optimization.optimizer

    @property
    def best(self) -> dict[str, Any]:
        """The kept epoch: ``epoch``, ``value`` and its ``weights``."""
        return self.engine.best

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Put ``weights`` (e.g. the kept epoch's, ``best["weights"]``) back into the model."""
        self.engine.load_weights(weights)

    # ---- setup ---------------------------------------------------------------------------

    def run(self) -> dict[str, float]:
        """Set up, resume from a checkpoint if any, train the remaining epochs; the best epoch's metrics."""
        from trainers.runtime import start_runtime

        with timed_trial(self.ctx):
            params = self.params
            runtime = start_runtime(self.ctx.device, self.settings.precision, self.ctx.n_threads, params.seed)
            self.runtime = runtime
            self.device, self.on_cuda, self.compute = runtime.device, runtime.on_cuda, runtime.compute
            self.autocast, self._to_device = runtime.autocast, runtime.to_device
            self.engine = Engine(self.ctx, params, runtime, self.metric, keep=self._keep())
            self._setup_data()
            self._setup_model()
            try:
                if params.strategy != "finetune":
                    self._fit_probe()
                if params.strategy == "linear_probe":
                    return self.engine.report_fitted(self, self.probe_metrics, self.new_parameters)
                self._setup_features()
                return self.engine.train(self, self.new_parameters)
            finally:
                if self.features is not None:
                    self.features.close()

    def _setup_data(self) -> None:

        from trainers.batching import PadCollator
        from trainers.regularization import class_weights
        from trainers.tokenization_cache import tokenize_cached, tokenizer_fingerprint

        data = self._load_data()
        self.labels = data.labels
        self.tokenizer = load_tokenizer(self.settings.model, self.trainer.model_path, self.trainer.base_dir)
        self.collate = PadCollator.for_tokenizer(self.tokenizer)
        self.special_ids = frozenset(self.tokenizer.all_special_ids)
        token_dir = Path(self.ctx.cache_dir) / "tokens" if self.ctx.cache_dir is not None else None
        fingerprint = tokenizer_fingerprint(self.tokenizer) if token_dir is not None else None
        splits = {"train": data.train, "validation": data.validation, "test": data.test}
        #: Each split's token ids (and their digest, which keys the features of frozen layers).
        self.tokens = {}
        for name, split in splits.items():
            if split is None:
                continue
            try:
                self.tokens[name] = tokenize_cached(
                    self.tokenizer, split.texts, self.settings.max_length, token_dir, fingerprint=fingerprint
                )
            except OSError as error:  # a full or read-only disk costs the cache, not the trial
                self.ctx.log(f"token cache off for {name}: {error}")
                self.tokens[name] = tokenize_cached(
                    self.tokenizer, split.texts, self.settings.max_length, None
                )
        cached = [name for name, tokens in self.tokens.items() if tokens.cached]
        if cached:
            self.ctx.log(f"token ids of {', '.join(cached)} read from the study's cache")
        self.train_ids = self.tokens["train"].ids
        self.n_train = len(self.train_ids)
        self.train_lengths = [len(ids) for ids in self.train_ids]
        self.train_labels = self._label_tensor(data.train)
        weights = class_weights(self.train_labels.tolist(), len(self.labels), self.params.class_weights)
        self.class_weights_cpu = weights
        self.class_weights = weights.to(self.device) if weights is not None else None
        self.eval_size = self.settings.eval_batch_size or 2 * self.params.batch_size
        self.validation = self._eval_batches(
            self.tokens["validation"].ids, self._label_tensor(data.validation)
        )

    def _load_data(self) -> LabelledData:
        """The splits this run trains and scores on: a trial never reads the test split."""
        return load_splits(
            self.settings.data, self.trainer.base_dir, include_test=False, task=self.settings.task
        )

    def _label_tensor(self, split: Split) -> torch.Tensor:
        """The split's labels as the loss reads them: class ids (a regression trial: standardized numbers)."""
        import torch

        return torch.tensor(split.label_ids(self.labels), dtype=torch.long)

    def _head_config(self) -> dict[str, Any]:
        """The model config's head arguments: one output per class, named."""
        return {
            "num_labels": len(self.labels),
            "id2label": dict(enumerate(self.labels)),
            "label2id": {label: index for index, label in enumerate(self.labels)},
        }

    def _eval_batches(
        self, ids: list[list[int]], labels: torch.Tensor
    ) -> list[tuple[dict[str, torch.Tensor], torch.Tensor, list[int]]]:
        """The split collated once, on the device, in length order: ``(inputs, labels, rows)`` per batch."""
        from trainers.batching import sorted_batches

        batches = []
        for rows in sorted_batches([len(sequence) for sequence in ids], self.eval_size):
            inputs = self.collate([ids[row] for row in rows])
            batches.append((self._to_device(inputs), self._to_device(labels[rows]), rows))
        return batches

    def _setup_model(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification

        from trainers.heads import classifier_layer, install_mean_pooling, resolve_pooling
        from trainers.regularization import find_blocks, freeze, set_config_dropout, set_dropout

        params = self.params
        attention = params.attention_dropout if params.attention_dropout is not None else params.dropout
        path = self.trainer.model_path
        head_config = self._head_config()
        config = AutoConfig.from_pretrained(path, **head_config, **hub_options())
        set_config_dropout(config, hidden=params.dropout, attention=attention, classifier=params.dropout)
        with quiet_transformers():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, config=config, dtype=torch.float32, output_loading_info=True, **hub_options()
            )
        self.new_parameters = list(info.get("missing_keys", []))
        self.pooling = resolve_pooling(params.pooling, path)
        if self.pooling == "mean":
            install_mean_pooling(model)
        self.head = classifier_layer(model, head_config["num_labels"])
        self.n_layers = len(find_blocks(model)[1])
        probe_only = params.strategy == "linear_probe"
        self.frozen = freeze(model, self.n_layers if probe_only else params.freeze_depth)
        if probe_only:  # the pooler too: only the head's last layer is fitted
            model.requires_grad_(False)
            self.head.requires_grad_(True)
        set_dropout(model, hidden=params.dropout, attention=attention, classifier=params.dropout)
        self.model = model.to(self.device)

    def _setup_features(self) -> None:
        """Serve the frozen layers' output from the feature cache (see :mod:`trainers.feature_cache`)."""
        params = self.params
        if not self.settings.feature_cache or params.freeze_depth == 0:
            return
        # Augmented training ids differ every epoch: only the splits the model sees as they are.
        augmented = params.augmentation != "none" and params.augmentation_prob > 0
        if augmented:
            self.ctx.log(
                f"feature cache: train not cached ({params.augmentation} augmentation changes its ids)"
            )
        names = [name for name in ("train", "validation", "test") if name in self.tokens]
        self.features = self._attach_cache(
            params.freeze_depth, [name for name in names if not (name == "train" and augmented)]
        )

    def _attach_cache(self, depth: int, names: list[str]) -> FrozenFeatureCache | None:
        """A feature cache of the model frozen to ``depth``, filled for the splits ``names``; None if off."""
        from trainers.feature_cache import CHECK_EXAMPLES, FrozenFeatureCache

        settings = self.settings
        dtype = settings.feature_cache_dtype
        if dtype == "auto":
            dtype = "bfloat16" if self.compute == "bf16" else "float32"
        cache = FrozenFeatureCache.attach(
            self.model,
            depth,
            forward=self._forward_only,
            collate=self.collate,
            to_device=self._to_device,
            root=Path(self.ctx.cache_dir) / "features" if self.ctx.cache_dir is not None else None,
            memory_bytes=settings.feature_cache_memory_mb * 2**20,
            intermediate_bytes=settings.feature_cache_intermediate_mb * 2**20,
            dtype=dtype,
            compute=self.compute,
            max_length=settings.max_length,
            log=self.ctx.log,
        )
        if cache is None:
            return None
        validation = self.tokens["validation"]
        probe_rows = list(range(min(CHECK_EXAMPLES, len(validation.ids))))
        try:
            cache.probe(self.collate([validation.ids[row] for row in probe_rows]))
            for name in names:
                tokens = self.tokens[name]
                cache.prepare(name, tokens.ids, tokens.digest, self.eval_size)
            ok = cache.verify("validation", probe_rows)
        except OSError as error:  # a full or read-only disk costs the cache, not the trial
            self.ctx.log(f"feature cache off: {error}")
            ok = False
        except BaseException:
            cache.close()
            raise
        if not ok:
            cache.close()
            return None
        return cache

    def _forward_only(self, inputs: dict[str, torch.Tensor]) -> Any:
        """The model on a CPU batch, moved to the device, under the trial's autocast (feature cache)."""
        with self.autocast():
            return self.model(**self._to_device(inputs))

    def _serving(self, name: str, rows: list[int]) -> contextlib.AbstractContextManager[None]:
        """Within the block, the model starts after the frozen layers when ``name`` has cached features."""
        if self.features is None:
            return contextlib.nullcontext()
        return self.features.serving(name, rows)

    # ---- the linear probe (strategies linear_probe and lp_ft; see trainers.linear_probe) ----------

    def _fit_probe(self) -> None:
        """Fit the head's last layer on what the frozen model feeds it (:mod:`trainers.linear_probe`)."""
        from trainers.linear_probe import set_head

        features = self._probe_features()
        weight, bias, self.probe_metrics = self._probe_fit(
            {"train": features["train"], "val": features["validation"]},
            {"train": self.train_labels, "val": self._validation_labels()},
        )
        set_head(self.head, weight, bias)
        self.ctx.log(
            f"linear probe ({self.pooling} pooling, probe_l2={self.params.probe_l2:g}): "
            + ", ".join(f"{key}={value:.4f}" for key, value in self.probe_metrics.items())
        )

    def _probe_fit(
        self, features: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """A logistic regression (class-weighted) on the training features, scored on each split."""
        from trainers.linear_probe import fit_classification_probe
        from trainers.regularization import class_weights

        weights = class_weights(self.train_labels.tolist(), len(self.labels), self.params.class_weights)
        return fit_classification_probe(features, labels, len(self.labels), self.params.probe_l2, weights)

    def _probe_features(self) -> dict[str, torch.Tensor]:
        """What the head's last layer receives for every train and validation row, the model frozen.

        The whole encoder is frozen for the features (served from the feature cache at full depth,
        so later probes of the study cost seconds); what trains afterwards is set back as it was.
        """

        from trainers.batching import sorted_batches
        from trainers.linear_probe import head_inputs
        from trainers.regularization import freeze

        trainable = {name: p.requires_grad for name, p in self.model.named_parameters()}
        freeze(self.model, self.n_layers)
        splits = {"train": self.train_ids, "validation": self.tokens["validation"].ids}
        cache = self._attach_cache(self.n_layers, list(splits)) if self.settings.feature_cache else None
        features: dict[str, torch.Tensor] = {}
        try:
            for name, ids in splits.items():
                batches = [
                    (self._to_device(self.collate([ids[row] for row in rows])), rows)
                    for rows in sorted_batches([len(sequence) for sequence in ids], self.eval_size)
                ]

                def serving(rows: list[int], name: str = name) -> contextlib.AbstractContextManager[None]:
                    return cache.serving(name, rows) if cache is not None else contextlib.nullcontext()

                features[name] = head_inputs(self.model, self.head, batches, serving, self.autocast, len(ids))
        finally:
            if cache is not None:
                cache.close()
            for name, parameter in self.model.named_parameters():
                parameter.requires_grad_(trainable[name])
        return features

    def _validation_labels(self) -> torch.Tensor:
        import torch

        labels = torch.zeros(
            sum(len(rows) for _, _, rows in self.validation), dtype=self.validation[0][1].dtype
        )
        for _, batch_labels, rows in self.validation:
            labels[torch.as_tensor(rows)] = batch_labels.cpu()
        return labels

    # ---- the task the engine trains (trainers.engine.TrainingTask) ---------------------------

    def train_steps(self, epoch: int) -> Iterator[list[MicroBatch]]:
        """The epoch's batches, grouped by length and augmented; each split into micro-batches."""
        import torch

        from trainers.batching import bucketed_batches, epoch_seed
        from trainers.text_augmentation import augment

        params = self.params
        generator = torch.Generator().manual_seed(epoch_seed(params.seed, epoch))
        augmenter = random.Random(epoch_seed(params.seed, epoch))
        self._reset_train_metrics()
        micro = params.micro_batch_size
        for rows in bucketed_batches(self.train_lengths, params.batch_size, generator):
            sequences = [self.train_ids[row] for row in rows]
            if params.augmentation != "none":
                sequences = augment(
                    sequences, params.augmentation, params.augmentation_prob, self.special_ids, augmenter
                )
            labels = self.train_labels[rows]
            # The step's loss is the mean over the whole batch, however many passes it takes.
            normalizer = (
                float(self.class_weights_cpu[labels].sum())
                if self.class_weights_cpu is not None
                else len(rows)
            )
            yield [
                (
                    sequences[start : start + micro],
                    labels[start : start + micro],
                    rows[start : start + micro],
                    normalizer,
                )
                for start in range(0, len(rows), micro)
            ]

    def _reset_train_metrics(self) -> None:
        """Zero the epoch's running training metrics (on the device)."""
        import torch

        n_classes = len(self.labels)
        self._sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # plain CE, training objective
        self._confusion = torch.zeros(n_classes * n_classes, dtype=torch.long, device=self.device)

    def train_loss(self, batch: MicroBatch) -> torch.Tensor:
        """Cross-entropy (weighted, smoothed) of one micro-batch over its step's normalizer."""
        import torch
        import torch.nn.functional as F  # noqa: N812 - the usual name

        sequences, labels, rows, normalizer = batch
        inputs = self._to_device(self.collate(sequences))
        labels = self._to_device(labels)
        with self.autocast(), self._serving("train", rows):
            logits = self.model(**inputs).logits.float()
        per_example = F.cross_entropy(
            logits,
            labels,
            weight=self.class_weights,
            label_smoothing=self.params.label_smoothing,
            reduction="none",
        )
        loss = per_example.sum() / normalizer
        with torch.no_grad():
            objective = per_example.sum()
            plain = (
                objective
                if self.class_weights is None and self.params.label_smoothing == 0
                else F.cross_entropy(logits, labels, reduction="sum")
            )
            self._sums += torch.stack([plain, objective]).double()
            n_classes = len(self.labels)
            self._confusion.index_add_(0, labels * n_classes + logits.argmax(dim=-1), torch.ones_like(labels))
        return loss

    def train_metrics(self) -> dict[str, float]:
        """The epoch's loss, accuracy and macro F1, read back from the device once."""
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
        """Loss, accuracy and macro F1 on the validation split."""
        loss, accuracy, f1 = self._evaluate(self.validation, "validation")
        return {"val_loss": loss, "val_accuracy": accuracy, "val_f1": f1}

    def baseline_metrics(self, metric: str) -> dict[str, float]:
        """``majority_<metric>``: the validation score of always predicting the training data's most
        frequent class (the session prunes a trial stuck there as ``no progress``)."""
        import torch

        from ftsweep_common.trial_metrics import MAJORITY_PREFIX

        if metric not in ("val_f1", "val_accuracy"):
            return {}
        n_classes = len(self.labels)
        majority = int(torch.bincount(self.train_labels, minlength=n_classes).argmax())
        confusion = torch.bincount(self._validation_labels() * n_classes + majority, minlength=n_classes**2)
        accuracy, f1 = accuracy_and_macro_f1(confusion.view(n_classes, n_classes))
        return {MAJORITY_PREFIX + metric: f1 if metric == "val_f1" else accuracy}

    def _evaluate(
        self, batches: list[tuple[dict[str, torch.Tensor], torch.Tensor, list[int]]], name: str
    ) -> tuple[float, float, float]:
        """Loss, accuracy and macro F1 over pre-collated batches of split ``name``, with dropout off."""
        import torch
        import torch.nn.functional as F  # noqa: N812

        n_classes = len(self.labels)
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        confusion = torch.zeros(n_classes * n_classes, dtype=torch.long, device=self.device)
        count = 0
        with torch.inference_mode(), self.autocast():
            for inputs, labels, rows in batches:
                with self._serving(name, rows):
                    logits = self.model(**inputs).logits.float()
                loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
                confusion.index_add_(0, labels * n_classes + logits.argmax(dim=-1), torch.ones_like(labels))
                count += len(labels)
        accuracy, f1 = accuracy_and_macro_f1(confusion.view(n_classes, n_classes).cpu())
        return loss_sum.item() / max(count, 1), accuracy, f1
