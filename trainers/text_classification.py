"""The built-in trainer: fine-tune a Hugging Face encoder for text classification.

One trial loads the data and the model, applies the regularization knobs of its parameters
(:mod:`trainers.regularization`), trains for ``epochs`` epochs and reports, after each, the
training and validation loss, accuracy and macro F1. State is checkpointed after every epoch,
so a trial interrupted by a crash or a preemption resumes where it stopped and reports the same
numbers an uninterrupted trial would have.

Speed matters on CPU-only machines, so: each split is tokenized once per study (the ids are
cached in the study's ``cache_dir``); batches are padded to their own longest text and grouped by
length; the loss and the training predictions are summed on the device and read back once per
epoch (no per-step host synchronisation); batches go to a GPU from pinned memory without
blocking; evaluation runs under ``torch.inference_mode``; a GPU that supports bfloat16 computes
under bfloat16 autocast; L1 / L2-SP add their gradients directly instead of through autograd.

Frozen layers. ``freeze_depth`` k freezes the embeddings and the lowest k encoder blocks, which
then run in eval mode: dropout does not act inside frozen layers (the ``dropout`` parameters
reach only the trainable ones). Their output is therefore a pure function of the input, and with
``feature_cache`` on (the default) it is computed once per example and reused by every epoch and
every later trial with the same k (:mod:`trainers.feature_cache`): a trial's metrics are the
same with the cache on and off, up to float rounding. The training split is cached only without
token-level augmentation (augmented ids differ every epoch); validation and test always are.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ftsweep_common.errors import ConfigError, ModelError
from trainers.base import BaseTrainer, FinalFitRequest, Predictor, StrictModel, TrialContext, TrialDiverged
from trainers.data import DataSettings, LabelledData, load_splits
from trainers.final_fit import MODEL_INFO, PREDICTIONS, TextPredictor, write_predictions
from trainers.hf_loading import hub_offline, quiet_transformers
from trainers.hf_loading import hub_options as _hub_options
from trainers.splits import Split

if TYPE_CHECKING:
    import numpy as np
    import torch

    from trainers.feature_cache import FrozenFeatureCache

PACKAGE_SCHEME = "package:"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
CHECKPOINT_FORMAT = 1
#: What a checkpoint's state holds (see ``_Trial._state``).
_STATE_KEYS = ("epoch", "trainable", "optimizer", "scheduler", "rng", "history", "early_stopping", "best")
#: A freshly initialised head learns little at an encoder's learning rate within a few hundred steps.
DEFAULT_HEAD_LEARNING_RATE = 1e-3


class TextClassificationSettings(StrictModel):
    """The ``trainer`` section of a text-classification sweep."""

    model: str = Field(
        min_length=1,
        description=(
            "A folder saved with save_pretrained (relative to the sweep file), "
            "'package:<python_package>/<folder>' for a model shipped inside an installed package, "
            "or a Hugging Face id already in the local cache."
        ),
    )
    data: DataSettings = Field(description="The labelled data: files and columns.")
    max_length: int = Field(128, ge=2, description="Texts are truncated to this many tokens.")
    epochs: int = Field(3, ge=1, description="Epochs per trial (the parameter 'epochs').")
    batch_size: int = Field(32, ge=1, description="Training batch size (the parameter 'batch_size').")
    eval_batch_size: int | None = Field(
        None, ge=1, description="Evaluation batch size; default twice batch_size."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description=(
            "auto: bfloat16 autocast on a GPU that supports it, float32 on CPU; bf16: autocast on CPU too "
            "(about twice as fast on CPUs with AVX512-BF16 or AMX, slower elsewhere); fp32: never."
        ),
    )
    feature_cache: bool = Field(
        True,
        description=(
            "With freeze_depth k > 0, compute the output of the frozen layers (embeddings and the lowest k "
            "blocks) once per example and reuse it in every epoch and every later trial with the same k; a "
            "deeper k starts from a shallower cache. Frozen layers run in eval mode (dropout does not act "
            "inside them), so the metrics are the same with the cache on and off. The training split is "
            "cached only when augmentation is none; validation and test always."
        ),
    )
    feature_cache_memory_mb: int = Field(
        1024,
        ge=0,
        description=(
            "Megabytes of cached features a trial keeps in memory; beyond it they are memory-mapped from the "
            "study's cache folder on disk (or a temporary folder when the trial has none)."
        ),
    )
    feature_cache_intermediate_mb: int = Field(
        4096,
        ge=0,
        description=(
            "Megabytes of extra disk one fill of one split may use to also store the shallower depths it "
            "passes through (so later trials with a smaller freeze_depth load them); 0 stores only the "
            "trial's own depth. Nothing is stored while it would leave less than 1 GiB free."
        ),
    )
    feature_cache_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description=(
            "How cached features are stored. auto: float32 for float32 trials (metrics equal the uncached "
            "trial's to float rounding), bfloat16 under bfloat16 autocast; float16 / bfloat16 halve memory "
            "and disk at the cost of half-precision rounding of the frozen layers' output."
        ),
    )


class TextClassificationParams(StrictModel):
    """Everything a search space may tune or a sweep may fix, with its default."""

    learning_rate: float = Field(
        3e-5, gt=0, description="Peak AdamW learning rate (of the head, with layer-wise decay)."
    )
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Share of the steps the learning rate warms up over."
    )
    batch_size: int = Field(32, ge=1, description="Examples per optimizer step.")
    epochs: int = Field(3, ge=1, description="Passes over the training data.")
    max_grad_norm: float = Field(
        1.0, ge=0, description="Clip the gradient norm to this; 0 turns clipping off."
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        description=(
            "Split each batch into this many forward passes; the step still sees batch_size examples."
        ),
    )
    weight_decay: float = Field(
        0.0, ge=0, description="Decoupled weight decay (not on biases and norm weights)."
    )
    regularizer: Literal["none", "l1", "l2sp"] = Field(
        "none", description="Extra penalty: l1 (sum |w|) or l2sp (distance from the pre-trained weights)."
    )
    reg_strength: float = Field(0.0, ge=0, description="Weight of the regularizer's penalty in the loss.")
    dropout: float | None = Field(
        None, ge=0, lt=1, description="Hidden and classifier dropout; unset keeps the model's own."
    )
    attention_dropout: float | None = Field(
        None, ge=0, lt=1, description="Dropout on attention probabilities; unset follows dropout."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the training loss.")
    freeze_depth: int = Field(
        0,
        ge=0,
        description=(
            "Freeze the embeddings and this many lowest encoder layers; num_layers trains only the head."
        ),
    )
    layerwise_lr_decay: float = Field(
        1.0, gt=0, le=1, description="Each layer further below the head learns this factor slower."
    )
    early_stopping_patience: int = Field(
        0,
        ge=0,
        description="Stop after this many epochs without improvement of the study metric; 0 never stops.",
    )
    early_stopping_min_delta: float = Field(
        0.0, ge=0, description="The least change that counts as improvement."
    )
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="balanced weighs each class's loss by n / (classes * count)."
    )
    augmentation: Literal["none", "token_dropout", "word_swap"] = Field(
        "none", description="Token-level augmentation of the training batches."
    )
    augmentation_prob: float = Field(
        0.1, ge=0, lt=1, description="Per-token probability of the augmentation."
    )
    seed: int = Field(0, description="Seeds initialization, shuffling, dropout and augmentation.")
    strategy: Literal["finetune", "linear_probe", "lp_ft"] = Field(
        "finetune",
        description=(
            "finetune: train the model (less its frozen layers); linear_probe: fit only the head, a logistic "
            "regression on the frozen model's features (one epoch); lp_ft: fit that probe first, then "
            "fine-tune from it (Kumar et al., ICLR 2022)."
        ),
    )
    pooling: Literal["auto", "cls", "mean"] = Field(
        "auto",
        description=(
            "What the head reads: cls (the architecture's own head, the first token), mean (the masked mean "
            "of the last layer's tokens), auto (mean for sentence-embedding models, else cls)."
        ),
    )
    head_learning_rate: float | None = Field(
        None,
        gt=0,
        description=(
            "Peak learning rate of the head (pooler and classifier); unset: "
            f"max({DEFAULT_HEAD_LEARNING_RATE:g}, learning_rate), or learning_rate under lp_ft (the probed "
            "head is already fitted)."
        ),
    )
    min_steps: int = Field(
        0,
        ge=0,
        description=(
            "At least this many optimizer steps: on a small training set the trial runs more epochs than "
            "'epochs' to reach them (0: exactly 'epochs')."
        ),
    )
    probe_l2: float = Field(
        1e-3, ge=0, description="L2 strength of the linear probe's logistic regression (linear_probe, lp_ft)."
    )

    def epochs_for(self, n_train: int) -> int:
        """Epochs a trial on ``n_train`` training examples runs: ``epochs``, or more for ``min_steps``."""
        steps_per_epoch = max(1, math.ceil(n_train / self.batch_size))
        return max(self.epochs, math.ceil(self.min_steps / steps_per_epoch))

    def head_lr(self) -> float:
        """The head's learning rate these parameters give (see ``head_learning_rate``)."""
        if self.head_learning_rate is not None:
            return self.head_learning_rate
        if self.strategy == "lp_ft":
            return self.learning_rate
        return max(DEFAULT_HEAD_LEARNING_RATE, self.learning_rate)


class TextClassificationTrainer(BaseTrainer):
    """Fine-tunes a sequence-classification model on labelled text; see the module docstring."""

    name = "text-classification"
    Settings = TextClassificationSettings
    Params = TextClassificationParams
    metric_names = (
        "train_loss",
        "train_accuracy",
        "train_f1",
        "val_loss",
        "val_accuracy",
        "val_f1",
        "generalization_gap",
    )
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
            self._config = _load_config(self.settings.model, self.model_path, self.base_dir)
        return self._config

    def check(self) -> None:
        """Read the data and the model's config and tokenizer; no weights.

        Raises:
            DataError: for a data problem, naming the file and the key.
            ModelError: when the model cannot be found, is not a sequence classifier, has a
                truncated or corrupt weights file, or a tokenizer that does not fit the data.
            ConfigError: when ``max_length`` exceeds what the model supports.
        """
        data = load_splits(self.settings.data, self.base_dir)
        self._n_train = len(data.train.texts)
        config = self.model_config()
        _require_classifier_family(self.settings.model, config)
        _require_weights(self.settings.model, self.model_path)
        _require_whole_weights(self.settings.model, self.model_path)
        limit = getattr(config, "max_position_embeddings", None)
        if isinstance(limit, int) and self.settings.max_length > limit:
            raise ConfigError(
                f"trainer.max_length: {self.settings.max_length} is more than the {limit} positions "
                f"{self.settings.model!r} supports"
            )
        tokenizer = _load_tokenizer(self.settings.model, self.model_path, self.base_dir)
        _require_plausible_tokenizer(self.settings.model, self.model_path, tokenizer, data.train.texts)

    def check_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        """``freeze_depth`` may not exceed the model's number of encoder layers."""
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
        """Losses and the generalization gap shrink as the model gets better; accuracy and F1 grow."""
        return "minimize" if metric.endswith("loss") or metric == "generalization_gap" else "maximize"

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
        steps = params.get("gradient_accumulation_steps")
        if steps is None:
            return None
        return {**params, "gradient_accumulation_steps": int(steps) * 2}

    def run(self, ctx: TrialContext) -> dict[str, float]:
        """Train one trial; see :class:`_Trial`."""
        params = self.Params(**ctx.params)
        return _Trial(self, ctx, params).run()

    def final_fit(self, ctx: TrialContext, request: FinalFitRequest) -> dict[str, float]:
        """Train the final model, export it and predict every split (:mod:`trainers.final_fit`)."""
        return _final_fit(self, ctx, request)

    @classmethod
    def load_predictor(cls, model_dir: Path, device: str) -> Predictor:
        """The model a final fit exported into ``model_dir`` (:class:`trainers.final_fit.TextPredictor`)."""
        return TextPredictor.load(model_dir, device)


# --------------------------------------------------------------------------------------------
# Resolving and checking the model
# --------------------------------------------------------------------------------------------


def resolve_model(value: str, base_dir: Path) -> str:
    """The folder or hub id ``trainer.model`` names.

    ``package:<package>/<folder>`` is a folder inside an installed Python package; an absolute
    path is taken as is; a relative path resolves against ``base_dir`` when that folder exists;
    anything else that could be a hub id (``name`` or ``org/name``) is returned unchanged.

    Raises:
        ModelError: for a package or folder that does not exist.
    """
    if value.startswith(PACKAGE_SCHEME):
        return str(_package_folder(value))
    path = Path(value).expanduser()
    if path.is_absolute():
        if not path.is_dir():
            raise ModelError(f"trainer.model: {value!r}: there is no folder {path}")
        return str(path)
    candidate = Path(base_dir) / path
    if candidate.is_dir():
        return str(candidate)
    if _looks_like_path(value):
        raise ModelError(f"trainer.model: {value!r}: there is no folder {candidate}")
    return value


def _package_folder(value: str) -> Path:
    package, _, sub = value[len(PACKAGE_SCHEME) :].partition("/")
    try:
        spec = importlib.util.find_spec(package) if package else None
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ModelError(f"trainer.model: {value!r}: no installed Python package {package!r}")
    roots = list(spec.submodule_search_locations or []) or (
        [str(Path(spec.origin).parent)] if spec.origin else []
    )
    for root in roots:
        folder = Path(root) / sub
        if folder.is_dir():
            return folder
    raise ModelError(
        f"trainer.model: {value!r}: the package {package!r} has no folder {sub!r} (looked in {roots[0]})"
    )


def _looks_like_path(value: str) -> bool:
    """True for values no hub id can be (hub ids are ``name`` or ``org/name``)."""
    return value.startswith((".", "~")) or value.endswith("/") or "\\" in value or value.count("/") > 1


def _loading_error(value: str, path: str, base_dir: Path, error: BaseException) -> ModelError:
    detail = str(error).strip().splitlines()
    reason = detail[0] if detail else type(error).__name__
    if Path(path).is_dir():
        if not (Path(path) / "config.json").exists():
            reason = "it has no config.json; save the model with save_pretrained"
        return ModelError(f"trainer.model: cannot load {value!r} from the folder {path}: {reason}")
    if hub_offline():  # the library's reason would only say it could not connect
        return ModelError(
            f"trainer.model: {value!r} is neither a folder (there is no {Path(base_dir) / value}) "
            "nor a model in the local Hugging Face cache (HF_HUB_OFFLINE is set)"
        )
    return ModelError(
        f"trainer.model: {value!r} is neither a folder (there is no {Path(base_dir) / value}) "
        f"nor a model the Hugging Face hub has: {reason}"
    )


def _load_config(value: str, path: str, base_dir: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, **_hub_options())
    except (OSError, ValueError, KeyError) as error:
        raise _loading_error(value, path, base_dir, error) from error


def _load_tokenizer(value: str, path: str, base_dir: Path | None = None) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, **_hub_options())
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _loading_error(value, path, base_dir or Path("."), error) from error


def _require_classifier_family(value: str, config: Any) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    if config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise ModelError(
            f"trainer.model: {value!r} is a {config.model_type!r} model, which has no "
            "sequence-classification head in transformers (AutoModelForSequenceClassification)"
        )


def _require_weights(value: str, path: str) -> None:
    folder = Path(path)
    if folder.is_dir() and not any((folder / name).exists() for name in WEIGHT_FILES):
        raise ModelError(
            f"trainer.model: {value!r}: the folder {folder} has no weights (expected one of: "
            f"{', '.join(WEIGHT_FILES)})"
        )


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _require_whole_weights(value: str, path: str) -> None:
    """Every safetensors weights file of a local model folder is whole (its header read, not its tensors).

    A download or a copy cut short otherwise shows up only inside every trial, as a failed trial each.
    """
    from trainers.safetensors_file import SafetensorsProblem, read_header

    folder = Path(path)
    if not folder.is_dir():
        return
    files = [folder / "model.safetensors"] if (folder / "model.safetensors").exists() else []
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ModelError(
                f"trainer.model: {value!r}: {index} is not a readable weights index ({error}); "
                "save the model again with save_pretrained"
            ) from None
        for shard in shards:
            if not (folder / shard).is_file():
                raise ModelError(
                    f"trainer.model: {value!r}: {index} names the weights file {shard}, which is missing; "
                    "download or copy the model again"
                )
        files += [folder / shard for shard in shards]
    for file in files:
        try:
            read_header(file)
        except SafetensorsProblem as problem:
            raise ModelError(
                f"trainer.model: {value!r}: the weights file {file} is damaged: {problem}; "
                "download or copy the model again"
            ) from None
        except OSError as error:
            raise ModelError(
                f"trainer.model: {value!r}: cannot read the weights file {file}: {error}"
            ) from None


#: A tokenizer with fewer ordinary (not special) tokens than this holds only what transformers
#: makes up for a folder without tokenizer files. Deliberately low: a character-level or small
#: domain vocabulary is legitimate; the unknown-token share below catches a poor fit.
MIN_REGULAR_TOKENS = 16
#: Largest share of the tokens of a sample of training texts that may be the unknown token.
MAX_UNKNOWN_SHARE = 0.5
#: How many training texts the unknown-token check tokenizes.
TOKENIZER_SAMPLE = 200


def _require_plausible_tokenizer(value: str, path: str, tokenizer: Any, texts: list[str]) -> None:
    """Refuse a tokenizer that would turn the training texts into unknown tokens.

    transformers builds a tokenizer of special tokens only for a model folder without tokenizer
    files, and a tokenizer of another model or language maps most words to its unknown token:
    either way every trial would train on noise and report a plausible-looking score.
    """
    where = f"the folder {path}" if Path(path).is_dir() else repr(value)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    regular = len(tokenizer) - len(special)
    if regular < MIN_REGULAR_TOKENS:
        raise ModelError(
            f"trainer.model: {value!r}: the tokenizer of {where} has only {len(tokenizer)} tokens "
            f"({regular} besides its special tokens): its tokenizer files (tokenizer.json, vocab.txt, ...) "
            "are missing; save the model's tokenizer into it with tokenizer.save_pretrained"
        )
    unknown_id = getattr(tokenizer, "unk_token_id", None)
    if unknown_id is None or not texts:
        return
    sample = random.Random(0).sample(texts, min(TOKENIZER_SAMPLE, len(texts)))
    ids = tokenizer(sample, add_special_tokens=False, truncation=True, max_length=512)["input_ids"]
    total = sum(len(row) for row in ids)
    unknown = sum(row.count(unknown_id) for row in ids)
    if total and unknown / total > MAX_UNKNOWN_SHARE:
        raise ModelError(
            f"trainer.model: {value!r}: the tokenizer of {where} maps {unknown / total:.0%} of the tokens of "
            f"{len(sample)} training texts to its unknown token {tokenizer.unk_token!r}: it does not fit "
            "this data (another model's tokenizer, or another language); "
            "use the tokenizer the model was trained with"
        )


def accuracy_and_macro_f1(confusion: torch.Tensor) -> tuple[float, float]:
    """Accuracy and macro F1 from a confusion matrix (rows: true class, columns: predicted).

    Macro F1 averages over the classes that occur among the true labels or the predictions, as
    scikit-learn does by default; a class absent from both says nothing about the model.
    """
    counts = confusion.double()
    total = counts.sum().item()
    true_positive = counts.diagonal()
    per_true = counts.sum(dim=1)
    per_predicted = counts.sum(dim=0)
    denominator = per_true + per_predicted
    present = denominator > 0
    f1 = (2 * true_positive[present] / denominator[present]).mean().item() if bool(present.any()) else 0.0
    return (true_positive.sum().item() / total if total else 0.0), f1


def generalization_gap(metrics: dict[str, float], metric: str | None) -> float:
    """``train_x - val_x`` for the study metric's family (f1, accuracy); else ``val_loss - train_loss``."""
    family = (metric or "").rpartition("_")[2]
    if family in ("f1", "accuracy"):
        return metrics[f"train_{family}"] - metrics[f"val_{family}"]
    return metrics["val_loss"] - metrics["train_loss"]


def _is_better(value: float, best: float | None, direction: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value > best + min_delta if direction == "maximize" else value < best - min_delta


# --------------------------------------------------------------------------------------------
# One trial
# --------------------------------------------------------------------------------------------


class _Trial:
    """The state of one trial: data, model, optimizer and the epoch loop.

    Args:
        trainer: the trainer (its settings and base folder).
        ctx: the trial's context.
        params: the validated parameters.
    """

    def __init__(
        self, trainer: TextClassificationTrainer, ctx: TrialContext, params: TextClassificationParams
    ) -> None:
        self.trainer = trainer
        self.settings = trainer.settings
        self.ctx = ctx
        self.params = params
        self.metric = ctx.metric or "val_f1"
        if self.metric not in TextClassificationTrainer.metric_names:
            raise ValueError(
                f"study metric {self.metric!r} is not one this trainer reports; "
                f"allowed: {', '.join(TextClassificationTrainer.metric_names)}"
            )
        self.history: list[dict[str, float]] = []
        self.best: dict[str, Any] = {"epoch": None, "value": None, "weights": None}
        self.stopping: dict[str, Any] = {"best": None, "bad_epochs": 0}

    # ---- setup ---------------------------------------------------------------------------

    def run(self) -> dict[str, float]:
        """Set up, resume from a checkpoint if any, train the remaining epochs; the best epoch's metrics."""
        import torch

        started, cpu_started = time.perf_counter(), time.process_time()
        torch.set_num_threads(max(1, int(self.ctx.n_threads)))
        _seed_everything(self.params.seed)
        self._setup_device()
        self._setup_data()
        self._setup_model()
        self.features: FrozenFeatureCache | None = None
        try:
            if self.params.strategy != "finetune":
                self._fit_probe()
            if self.params.strategy == "linear_probe":
                self._setup_optimization()
                if self._resume() == 1:
                    self._report_probe()
                return self._result()
            self._setup_features()
            self._setup_optimization()
            start = self._resume()
            for epoch in range(start, self.n_epochs + 1):
                if self._should_stop():
                    break
                self._run_epoch(epoch)
            return self._result()
        finally:
            if self.features is not None:
                self.features.close()
            self.ctx.log(
                f"trial took {time.perf_counter() - started:.1f} s "
                f"({time.process_time() - cpu_started:.1f} s of CPU time in this process)"
            )

    def _setup_device(self) -> None:
        import torch

        if self.ctx.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("the trial was given a GPU (device 'cuda') but torch sees no CUDA device")
        self.device = torch.device("cuda" if self.ctx.device == "cuda" else "cpu")
        self.on_cuda = self.device.type == "cuda"
        precision = self.settings.precision
        if precision == "bf16" and self.on_cuda and not torch.cuda.is_bf16_supported():
            raise ValueError(
                "trainer.precision: bf16, but this GPU does not support bfloat16; use auto or fp32"
            )
        use_bf16 = precision == "bf16" or (
            precision == "auto" and self.on_cuda and torch.cuda.is_bf16_supported()
        )
        self.compute = "bf16" if use_bf16 else "fp32"
        # Autocast keeps float32 master weights and runs matrix products in bfloat16.
        device_type = self.device.type
        self.autocast = (
            (lambda: torch.autocast(device_type, dtype=torch.bfloat16))
            if use_bf16
            else contextlib.nullcontext
        )

    def _setup_data(self) -> None:
        import torch

        from trainers.batching import PadCollator
        from trainers.tokenization_cache import tokenize_cached, tokenizer_fingerprint

        data = self._load_data()
        self.labels = data.labels
        self.tokenizer = _load_tokenizer(self.settings.model, self.trainer.model_path, self.trainer.base_dir)
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
        self.train_lengths = [len(ids) for ids in self.train_ids]
        self.train_labels = torch.tensor(data.train.label_ids(self.labels), dtype=torch.long)
        self.n_epochs = self.params.epochs_for(len(self.train_ids))
        if self.n_epochs > self.params.epochs:
            self.ctx.log(
                f"{self.n_epochs} epochs instead of {self.params.epochs}: "
                f"min_steps {self.params.min_steps} on {len(self.train_ids)} training examples"
            )
        self.eval_size = self.settings.eval_batch_size or 2 * self.params.batch_size
        self.validation = self._eval_batches(
            self.tokens["validation"].ids, data.validation.label_ids(self.labels)
        )
        self.test = (
            self._eval_batches(self.tokens["test"].ids, data.test.label_ids(self.labels))
            if data.test is not None
            else None
        )

    def _load_data(self) -> LabelledData:
        """The splits this run trains and scores on: a trial never reads the test split."""
        return load_splits(self.settings.data, self.trainer.base_dir, include_test=False)

    def _eval_batches(
        self, ids: list[list[int]], label_ids: list[int]
    ) -> list[tuple[dict[str, torch.Tensor], torch.Tensor, list[int]]]:
        """The split collated once, on the device, in length order: ``(inputs, labels, rows)`` per batch."""
        import torch

        from trainers.batching import sorted_batches

        labels = torch.tensor(label_ids, dtype=torch.long)
        batches = []
        for rows in sorted_batches([len(sequence) for sequence in ids], self.eval_size):
            inputs = self.collate([ids[row] for row in rows])
            batches.append((self._to_device(inputs), self._to_device(labels[rows]), rows))
        return batches

    def _setup_model(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification

        from trainers.heads import classifier_layer, install_mean_pooling, resolve_pooling
        from trainers.regularization import find_encoder_blocks, freeze, set_config_dropout, set_dropout

        params = self.params
        attention = params.attention_dropout if params.attention_dropout is not None else params.dropout
        path = self.trainer.model_path
        config = AutoConfig.from_pretrained(
            path,
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            label2id={label: index for index, label in enumerate(self.labels)},
            **_hub_options(),
        )
        set_config_dropout(config, hidden=params.dropout, attention=attention, classifier=params.dropout)
        with quiet_transformers():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, config=config, dtype=torch.float32, output_loading_info=True, **_hub_options()
            )
        self.new_parameters = list(info.get("missing_keys", []))
        self.pooling = resolve_pooling(params.pooling, path)
        if self.pooling == "mean":
            install_mean_pooling(model)
        self.head = classifier_layer(model, len(self.labels))
        self.n_layers = len(find_encoder_blocks(model)[1])
        probe_only = params.strategy == "linear_probe"
        self.frozen = freeze(model, self.n_layers if probe_only else params.freeze_depth)
        if probe_only:  # the pooler too: only the head's last layer is fitted
            model.requires_grad_(False)
            self.head.requires_grad_(True)
        set_dropout(model, hidden=params.dropout, attention=attention, classifier=params.dropout)
        self.model = model.to(self.device)
        self.trainable = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]

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

    # ---- the linear probe (strategies linear_probe and lp_ft; see trainers.linear_probe) ----------

    def _fit_probe(self) -> None:
        """Fit the head's last layer, a logistic regression, on what the frozen model feeds it.

        The whole encoder is frozen for the features (served from the feature cache at full depth,
        so later probes of the study cost seconds); what trains afterwards is set back as it was.
        """
        import torch

        from trainers.batching import sorted_batches
        from trainers.linear_probe import fit_logistic_regression, head_inputs, set_head
        from trainers.regularization import class_weights, freeze

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
        weights = class_weights(self.train_labels.tolist(), len(self.labels), self.params.class_weights)
        weight, bias = fit_logistic_regression(
            features["train"], self.train_labels, len(self.labels), self.params.probe_l2, weights
        )
        set_head(self.head, weight, bias)
        self.probe_metrics: dict[str, float] = {}
        for name, prefix, labels in (
            ("train", "train", self.train_labels),
            ("validation", "val", self._validation_labels()),
        ):
            logits = features[name] @ weight.T + bias
            n_classes = len(self.labels)
            confusion = torch.bincount(labels * n_classes + logits.argmax(dim=-1), minlength=n_classes**2)
            accuracy, f1 = accuracy_and_macro_f1(confusion.view(n_classes, n_classes))
            loss = torch.nn.functional.cross_entropy(logits, labels).item()
            self.probe_metrics.update(
                {f"{prefix}_loss": loss, f"{prefix}_accuracy": accuracy, f"{prefix}_f1": f1}
            )
        self.ctx.log(
            f"linear probe ({self.pooling} pooling, probe_l2={self.params.probe_l2:g}): "
            + ", ".join(f"{key}={value:.4f}" for key, value in self.probe_metrics.items())
        )

    def _report_probe(self) -> None:
        """A linear probe's one epoch: the fitted head's metrics, checkpointed and reported."""
        metrics = dict(self.probe_metrics)
        metrics["generalization_gap"] = generalization_gap(metrics, self.metric)
        self.history.append(metrics)
        self._track_best(1, metrics[self.metric])
        self.ctx.save_checkpoint(self._state(1))
        self.ctx.report(1, {**metrics, **self._majority_metrics(1)})

    def _validation_labels(self) -> torch.Tensor:
        import torch

        labels = torch.zeros(sum(len(rows) for _, _, rows in self.validation), dtype=torch.long)
        for _, batch_labels, rows in self.validation:
            labels[torch.as_tensor(rows)] = batch_labels.cpu()
        return labels

    def _majority_metrics(self, epoch: int) -> dict[str, float]:
        """With the first epoch, ``majority_<metric>``: the validation score of always predicting the
        training data's most frequent class (the session prunes a trial stuck there as ``no progress``)."""
        import torch

        from ftsweep_common.trial_metrics import MAJORITY_PREFIX

        if epoch != 1 or self.metric not in ("val_f1", "val_accuracy"):
            return {}
        n_classes = len(self.labels)
        majority = int(torch.bincount(self.train_labels, minlength=n_classes).argmax())
        confusion = torch.bincount(self._validation_labels() * n_classes + majority, minlength=n_classes**2)
        accuracy, f1 = accuracy_and_macro_f1(confusion.view(n_classes, n_classes))
        return {MAJORITY_PREFIX + self.metric: f1 if self.metric == "val_f1" else accuracy}

    def _forward_only(self, inputs: dict[str, torch.Tensor]) -> Any:
        """The model on a CPU batch, moved to the device, under the trial's autocast (feature cache)."""
        with self.autocast():
            return self.model(**self._to_device(inputs))

    def _serving(self, name: str, rows: list[int]) -> contextlib.AbstractContextManager[None]:
        """Within the block, the model starts after the frozen layers when ``name`` has cached features."""
        if self.features is None:
            return contextlib.nullcontext()
        return self.features.serving(name, rows)

    def _setup_optimization(self) -> None:
        import torch
        from transformers import get_linear_schedule_with_warmup

        from trainers.regularization import (
            L2SP,
            class_weights,
            decay_parameters,
            parameter_groups,
            pretrained_parameters,
        )

        params = self.params
        groups = parameter_groups(
            self.model,
            params.weight_decay,
            params.learning_rate,
            params.layerwise_lr_decay,
            head_learning_rate=params.head_lr(),
        )
        # The fused kernel (CPU and CUDA) updates all parameters in one pass: on CPU it is ~5x
        # faster than the default for-loop, which otherwise costs as much as the backward pass.
        self.optimizer = torch.optim.AdamW(groups, lr=params.learning_rate, fused=True)
        self.steps_per_epoch = math.ceil(len(self.train_ids) / params.batch_size)
        total = self.steps_per_epoch * self.n_epochs
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(params.warmup_ratio * total), total
        )
        weights = class_weights(self.train_labels.tolist(), len(self.labels), params.class_weights)
        self.class_weights_cpu = weights
        self.class_weights = weights.to(self.device) if weights is not None else None
        # L2-SP's reference is the pre-trained weights: taken now, before any step or restore.
        self.l2sp = (
            L2SP(pretrained_parameters(self.model, self.new_parameters))
            if params.regularizer == "l2sp"
            else None
        )
        # L1 spares biases and norm weights, as weight decay does: shrinking those to zero only hurts.
        self.l1_params = decay_parameters(self.model) if params.regularizer == "l1" else []

    # ---- checkpoints ---------------------------------------------------------------------

    def _state(self, epoch: int) -> dict[str, Any]:
        import numpy as np
        import torch

        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if self.on_cuda:
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": CHECKPOINT_FORMAT,
            "params": self.params.model_dump(),
            "epoch": epoch,
            "trainable": {name: p.detach() for name, p in self.trainable},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "history": self.history,
            "early_stopping": self.stopping,
            # When this epoch is the best, its weights are "trainable": not stored twice.
            "best": {**self.best, "weights": None} if self.best["epoch"] == epoch else self.best,
        }

    def _resume(self) -> int:
        """Restore the last checkpoint if there is one for these parameters; the epoch to start at."""
        state = self.ctx.load_checkpoint()
        if not state:
            return 1
        if state.get("format") != CHECKPOINT_FORMAT or state.get("params") != self.params.model_dump():
            self.ctx.log("checkpoint ignored: it was written for other parameters; starting afresh")
            return 1
        problem = self._checkpoint_problem(state)
        if problem is None:
            try:
                self.optimizer.load_state_dict(state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
            except (KeyError, TypeError, ValueError, RuntimeError) as error:
                problem = f"its optimizer or scheduler state does not fit ({type(error).__name__}: {error})"
                # A fresh optimizer: the failed load may have left part of its state behind.
                self._setup_optimization()
        if problem is not None:
            self.ctx.log(
                f"WARNING: checkpoint in {self.ctx.checkpoint_dir} cannot be used: {problem}; "
                "it is ignored and the trial starts over from epoch 0"
            )
            return 1
        self._load_weights(state["trainable"])
        self.history = list(state["history"])
        self.stopping = dict(state["early_stopping"])
        self.best = dict(state["best"])
        if self.best["weights"] is None:
            self.best["weights"] = {name: tensor.clone() for name, tensor in state["trainable"].items()}
        _restore_rng(state["rng"], self.on_cuda)
        self.ctx.log(f"resumed from the checkpoint of epoch {state['epoch']}")
        return int(state["epoch"]) + 1

    def _checkpoint_problem(self, state: dict[str, Any]) -> str | None:
        """What makes a loaded state unusable for this trial, or None; checked before anything is restored."""
        import torch

        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            return f"it lacks {', '.join(missing)}"
        rng = state["rng"]
        if not isinstance(rng, dict) or not {"python", "numpy", "torch"} <= set(rng):
            return "its random-generator states are incomplete"
        weights = state["trainable"]
        best = state["best"]
        if not isinstance(weights, dict) or not isinstance(best, dict) or "weights" not in best:
            return "its weights are not a mapping of tensors"
        for stored in (weights, best["weights"]):
            if stored is None and stored is best["weights"]:
                continue
            for name, parameter in self.trainable:
                tensor = stored.get(name) if isinstance(stored, dict) else None
                if not isinstance(tensor, torch.Tensor) or tensor.shape != parameter.shape:
                    return f"it holds no weights of the right shape for {name}"
        return None

    def _load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        import torch

        with torch.no_grad():
            for name, parameter in self.trainable:
                parameter.copy_(weights[name])

    # ---- the epoch loop ------------------------------------------------------------------

    def _run_epoch(self, epoch: int) -> None:
        started = time.perf_counter()
        train = self._train_epoch(epoch)
        train_seconds = time.perf_counter() - started
        val_loss, val_accuracy, val_f1 = self._evaluate(self.validation, "validation")
        val_seconds = time.perf_counter() - started - train_seconds
        metrics = {**train, "val_loss": val_loss, "val_accuracy": val_accuracy, "val_f1": val_f1}
        for key in ("train_loss", "train_objective", "val_loss"):
            if not math.isfinite(metrics[key]):
                raise TrialDiverged(f"diverged: loss is {metrics[key]} at epoch {epoch}")
        del metrics["train_objective"]
        metrics["generalization_gap"] = generalization_gap(metrics, self.metric)
        self.history.append(metrics)
        self._track_best(epoch, metrics[self.metric])
        self.ctx.log(
            f"epoch {epoch}: "
            + ", ".join(f"{key}={value:.4f}" for key, value in metrics.items())
            + f"; {len(self.train_ids) / train_seconds:.1f} training samples/s"
            + f" (training {train_seconds:.2f} s, validation {val_seconds:.2f} s)"
        )
        # Checkpoint first: a trial pruned or killed while reporting resumes after this epoch.
        self.ctx.save_checkpoint(self._state(epoch))
        self.ctx.report(epoch, {**metrics, **self._majority_metrics(epoch)})

    def _track_best(self, epoch: int, value: float) -> None:
        direction = self.ctx.direction
        if _is_better(value, self.best["value"], direction):
            self.best = {"epoch": epoch, "value": value, "weights": self._weights_copy()}
        if _is_better(value, self.stopping["best"], direction, self.params.early_stopping_min_delta):
            self.stopping = {"best": value, "bad_epochs": 0}
        else:
            self.stopping = {**self.stopping, "bad_epochs": self.stopping["bad_epochs"] + 1}

    def _should_stop(self) -> bool:
        patience = self.params.early_stopping_patience
        if patience and self.stopping["bad_epochs"] >= patience:
            self.ctx.log(f"early stopping: no improvement of {self.metric} for {patience} epoch(s)")
            return True
        return False

    def _weights_copy(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().to("cpu", copy=True) for name, p in self.trainable}

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training data; the loss and predictions are read back once, at the end."""
        import torch

        from trainers.batching import bucketed_batches, epoch_seed
        from trainers.regularization import augment, train_mode

        params = self.params
        train_mode(self.model, self.frozen)
        generator = torch.Generator().manual_seed(epoch_seed(params.seed, epoch))
        augmenter = random.Random(epoch_seed(params.seed, epoch))
        n_classes = len(self.labels)
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # plain CE, training objective
        confusion = torch.zeros(n_classes * n_classes, dtype=torch.long, device=self.device)
        micro = max(1, params.batch_size // params.gradient_accumulation_steps)
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
            for start in range(0, len(rows), micro):
                self._train_pass(
                    sequences[start : start + micro],
                    labels[start : start + micro],
                    rows[start : start + micro],
                    normalizer,
                    sums,
                    confusion,
                )
            self._optimizer_step()
        ce_sum, objective_sum = sums.tolist()
        accuracy, f1 = accuracy_and_macro_f1(confusion.view(n_classes, n_classes).cpu())
        count = len(self.train_ids)
        return {
            "train_loss": ce_sum / count,
            "train_accuracy": accuracy,
            "train_f1": f1,
            "train_objective": objective_sum / count,
        }

    def _train_pass(
        self,
        sequences: list[list[int]],
        labels: torch.Tensor,
        rows: list[int],
        normalizer: float,
        sums: torch.Tensor,
        confusion: torch.Tensor,
    ) -> None:
        """Forward and backward one (micro-)batch; add its loss and predictions to the running sums."""
        import torch
        import torch.nn.functional as F  # noqa: N812 - the usual name

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
        (per_example.sum() / normalizer).backward()
        with torch.no_grad():
            objective = per_example.sum()
            plain = (
                objective
                if self.class_weights is None and self.params.label_smoothing == 0
                else F.cross_entropy(logits, labels, reduction="sum")
            )
            sums += torch.stack([plain, objective]).double()
            n_classes = len(self.labels)
            confusion.index_add_(0, labels * n_classes + logits.argmax(dim=-1), torch.ones_like(labels))

    def _optimizer_step(self) -> None:
        import torch

        from trainers.regularization import add_l1_gradient

        params = self.params
        if params.reg_strength > 0:
            if self.l2sp is not None:
                self.l2sp.add_gradient(params.reg_strength)
            elif params.regularizer == "l1":
                add_l1_gradient(self.l1_params, params.reg_strength)
        if params.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for _, p in self.trainable], params.max_grad_norm, foreach=True)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

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

    def _to_device(self, value: Any) -> Any:
        if not self.on_cuda:
            return value
        if isinstance(value, dict):
            return {key: self._to_device(tensor) for key, tensor in value.items()}
        return value.pin_memory().to(self.device, non_blocking=True)

    # ---- the result ----------------------------------------------------------------------

    def _result(self) -> dict[str, float]:
        """The best epoch's metrics, ``best_epoch`` and ``epochs_run`` (validation only: no ``test_*``)."""
        if not self.history:
            return {}
        best_epoch = self.best["epoch"]
        return {
            **self.history[best_epoch - 1],
            "best_epoch": float(best_epoch),
            "epochs_run": float(len(self.history)),
        }


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too


def _restore_rng(state: dict[str, Any], on_cuda: bool) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if on_cuda and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------
# The final fit (`ftsweep final`): a trial that may train on train+val, reads the test split and exports.


def _final_fit(
    trainer: TextClassificationTrainer, ctx: TrialContext, request: FinalFitRequest
) -> dict[str, float]:
    """Train, export and predict as :meth:`trainers.base.BaseTrainer.final_fit` describes."""
    params = TextClassificationParams(**ctx.params)
    if request.refit == "train+val":
        if request.epochs is None:
            raise ValueError("a train+val fit needs its epoch count")
        # No validation split is left to stop on or to pick an epoch with: exactly `epochs` epochs.
        update: dict[str, Any] = {"epochs": int(request.epochs), "early_stopping_patience": 0}
        if "min_steps" in TextClassificationParams.model_fields:
            update["min_steps"] = 0  # the trial's epoch count already includes what min_steps added
        params = params.model_copy(update=update)
    return _FinalFit(trainer, ctx, params, request).run()


class _FinalFit(_Trial):
    """A trial that may train on train+val, reads the test split, and exports its model at the end."""

    def __init__(
        self,
        trainer: TextClassificationTrainer,
        ctx: TrialContext,
        params: TextClassificationParams,
        request: FinalFitRequest,
    ) -> None:
        super().__init__(trainer, ctx, params)
        self.request = request

    def _load_data(self) -> LabelledData:
        data = load_splits(self.settings.data, self.trainer.base_dir, include_test=self.request.evaluate_test)
        self.train_split = data.train
        if self.request.refit == "train+val":
            merged = Split(
                data.train.texts + data.validation.texts,
                data.train.labels + data.validation.labels,
                f"{data.train.source} + {data.validation.source}",
            )
            data = LabelledData(train=merged, validation=data.validation, test=data.test, labels=data.labels)
            self.train_split = merged
        self.data = data
        return data

    def _track_best(self, epoch: int, value: float) -> None:
        if self.request.refit == "train+val":
            # The validation rows are training rows here: the last epoch is the model, by design.
            self.best = {"epoch": epoch, "value": value, "weights": self._weights_copy()}
            return
        super()._track_best(epoch, value)

    def run(self) -> dict[str, float]:
        result = super().run()  # trains (or resumes); the feature cache is closed when it returns
        self.features = None
        self._load_weights(self.best["weights"])
        out = Path(self.request.output_dir)
        splits: dict[str, tuple[list[int], Any]] = {}
        named = [("train", self.train_split)]
        if self.request.refit == "train":
            named.append(("validation", self.data.validation))
        if self.data.test is not None:
            named.append(("test", self.data.test))
        for name, split in named:
            true = split.label_ids(self.labels)
            splits[name] = (true, self._probabilities(split.texts))
        self._export(out / "model")
        write_predictions(out / PREDICTIONS, self.labels, splits)
        self.ctx.log(f"final fit: exported to {out / 'model'}; predictions of {', '.join(splits)} written")
        return result

    def _probabilities(self, texts: list[str]) -> np.ndarray:
        """Class probabilities of ``texts`` under the current weights, with dropout off."""
        import numpy as np
        import torch

        from trainers.batching import sorted_batches
        from trainers.tokenization_cache import tokenize_texts

        ids = tokenize_texts(self.tokenizer, texts, self.settings.max_length)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        self.model.eval()
        with torch.inference_mode(), self.autocast():
            for rows in sorted_batches([len(sequence) for sequence in ids], self.eval_size):
                inputs = self._to_device(self.collate([ids[row] for row in rows]))
                logits = self.model(**inputs).logits.float()
                out[rows] = torch.softmax(logits, dim=-1).double().cpu().numpy()
        return out

    def _export(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        info = {
            "trainer": self.trainer.name,
            "input_column": self.settings.data.text_column,
            "label_column": self.settings.data.label_column,
            "max_length": self.settings.max_length,
            "labels": self.labels,
            # Mean pooling is not a transformers option: TextPredictor.load puts it back (see the model card).
            "pooling": str(getattr(self, "pooling", "cls")),
        }
        (folder / MODEL_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
