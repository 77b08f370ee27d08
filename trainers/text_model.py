"""The text recipe's model: finding it (a folder, a package's folder, the local hub cache) and checking it.

Everything here runs while planning (:meth:`TextClassificationTrainer.check`) or when a trial loads
its tokenizer: a model that cannot be found, is not a sequence classifier, has truncated weights
or a tokenizer that does not fit the data is one :class:`ModelError` naming ``trainer.model``,
before any trial starts.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from typing import Any

from ftsweep_common.errors import ModelError
from trainers.hf_loading import hub_offline
from trainers.hf_loading import hub_options as _hub_options

PACKAGE_SCHEME = "package:"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


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


def load_config(value: str, path: str, base_dir: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, **_hub_options())
    except (OSError, ValueError, KeyError) as error:
        raise _loading_error(value, path, base_dir, error) from error


def load_tokenizer(value: str, path: str, base_dir: Path | None = None) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, **_hub_options())
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _loading_error(value, path, base_dir or Path("."), error) from error


def require_classifier_family(value: str, config: Any) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    if config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise ModelError(
            f"trainer.model: {value!r} is a {config.model_type!r} model, which has no "
            "sequence-classification head in transformers (AutoModelForSequenceClassification)"
        )


def require_weights(value: str, path: str) -> None:
    folder = Path(path)
    if folder.is_dir() and not any((folder / name).exists() for name in WEIGHT_FILES):
        raise ModelError(
            f"trainer.model: {value!r}: the folder {folder} has no weights (expected one of: "
            f"{', '.join(WEIGHT_FILES)})"
        )


def require_whole_weights(value: str, path: str) -> None:
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


def require_plausible_tokenizer(value: str, path: str, tokenizer: Any, texts: list[str]) -> None:
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
