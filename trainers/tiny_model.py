"""Build a tiny BERT from a config, for tests, the demo's fallback and benchmarks.

The model is saved with ``save_pretrained`` next to a WordPiece vocabulary built from the
given texts, so it loads back through exactly the path a user's model takes
(``AutoTokenizer`` / ``AutoModelForSequenceClassification.from_pretrained``). Nothing is
downloaded.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_vocabulary(texts: Iterable[str], max_words: int = 2000) -> list[str]:
    """Special tokens, then the most frequent lower-cased words and punctuation marks of ``texts``."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    words = [word for word, _ in counts.most_common(max_words)]
    return SPECIAL_TOKENS + sorted(words)


def build_tiny_model(
    folder: Path,
    texts: Iterable[str],
    *,
    num_layers: int = 2,
    hidden_size: int = 32,
    num_heads: int = 2,
    max_position: int = 128,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised tiny BERT and its tokenizer to ``folder``; return ``folder``."""
    import torch
    from transformers import BertConfig, BertModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = build_vocabulary(texts)
    (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    _wordpiece_tokenizer(vocabulary).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocabulary),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=max_position,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    return folder


def _wordpiece_tokenizer(vocabulary: list[str]):
    """A BERT-style fast tokenizer over ``vocabulary``, built with the ``tokenizers`` library."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {token: index for index, token in enumerate(vocabulary)}
    backend = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
