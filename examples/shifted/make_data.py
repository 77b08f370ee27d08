"""Generate a small customer-reply data set with a train / test shift (train.csv, val.csv, test.csv).

Every row is a short, made-up reply of a customer to a marketing message and its intent:
``interested``, ``not_interested`` or ``question``. Nothing here comes from real customers: replies
are assembled from phrase lists by a stated rule, so anyone can regenerate the files from a seed.

The rule
--------
A reply is ``<channel> <greeting?> <intent phrase> <about the product?> <sign-off?>``, e.g.
``"via sms: Hi, count me in for the running shoes. Cheers"``. The intent phrase carries the label.
Three shifts separate the training split from the validation and test splits (which share one
distribution, as a deployed model's validation data would come from where it is used):

* **Different wording.** Training replies draw their intent phrase from ``TRAIN_PHRASES``;
  validation and test replies from ``SHIFTED_PHRASES``, paraphrases with other words ("count me
  in" vs "put me down for one"). A model must know what the words mean, not which words occurred.
* **A spurious feature only in training.** Each reply starts with the channel it came through
  (``via sms:``, ``via email:``, ``via app:``). In training the channel agrees with the intent
  (``interested`` -> sms, ``not_interested`` -> email, ``question`` -> app) for ``SPURIOUS``
  (85%) of the rows and is random otherwise; in validation and test it is always random, so a
  model that learned the channel word is wrong there.
* **Label noise.** Each training label is replaced by a uniformly drawn other label with
  probability ``NOISE`` (0.10); validation and test labels are clean.

Classes are drawn with probabilities 0.4 / 0.35 / 0.25 (interested / not_interested / question).
One ``random.Random(seed)`` draws train, then validation, then test; a text never appears twice.

Usage: ``python examples/shifted/make_data.py [--out DIR] [--seed 0] [--n-train 300]
[--n-validation 150] [--n-test 300]``
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

LABELS = ("interested", "not_interested", "question")
CLASS_WEIGHTS = (0.40, 0.35, 0.25)
CHANNEL_OF = {"interested": "sms", "not_interested": "email", "question": "app"}
CHANNELS = ("sms", "email", "app")
SPURIOUS = 0.85
NOISE = 0.10

TRAIN_PHRASES = {
    "interested": [
        "yes please send me the details",
        "sounds good, sign me up",
        "I would like to order",
        "count me in",
        "I'm interested, how do I buy",
        "great offer, I'll take it",
        "yes, I want this",
        "please reserve one for me",
    ],
    "not_interested": [
        "no thanks",
        "please stop sending these",
        "not interested",
        "unsubscribe me",
        "I don't need this",
        "remove me from the list",
        "no, I will not buy it",
        "stop messaging me",
    ],
    "question": [
        "how much does it cost",
        "what sizes do you have",
        "when does the offer end",
        "does it ship abroad",
        "can I pay in instalments",
        "is this available in blue",
        "how long is the warranty",
        "where is your nearest shop",
    ],
}
SHIFTED_PHRASES = {
    "interested": [
        "absolutely, where do I sign",
        "that works for me, go ahead",
        "keen to get one",
        "happy to purchase",
        "love it, let's do it",
        "put me down for one",
        "I'd gladly buy that",
        "go on then, I'm in",
    ],
    "not_interested": [
        "I'll pass",
        "leave me alone",
        "I no longer want these messages",
        "this isn't for me",
        "take me off your mailing list",
        "never contact me again",
        "not something I'd ever buy",
        "please quit texting me",
    ],
    "question": [
        "what's the price",
        "which colours are there",
        "until what date is the deal valid",
        "do you deliver overseas",
        "is there a payment plan",
        "could you tell me about the sizes",
        "what guarantee comes with it",
        "which store stocks it",
    ],
}
GREETINGS = ["", "", "Hi,", "Hello,", "Hey,", "Good morning,", "Dear team,"]
PRODUCTS = [
    "the running shoes",
    "the coffee subscription",
    "the winter jacket",
    "the headphones",
    "the phone plan",
    "the yoga mat",
    "the garden tools",
    "the skincare set",
    "the board game",
    "the kitchen knives",
]
ABOUT = ["", "", "for {p}", "about {p}", "regarding {p}", "re {p}"]
SIGN_OFFS = ["", "", "Thanks.", "Cheers", "Regards, Sam", "Best, Priya", "Thank you!", "Ta"]


def reply(rng: random.Random, label: str, phrases: dict[str, list[str]], spurious: float) -> str:
    """One reply of intent ``label``: the channel agrees with it with probability ``spurious``."""
    channel = CHANNEL_OF[label] if rng.random() < spurious else rng.choice(CHANNELS)
    about = rng.choice(ABOUT).format(p=rng.choice(PRODUCTS))
    body = " ".join(part for part in (rng.choice(phrases[label]), about) if part)
    parts = [f"via {channel}:", rng.choice(GREETINGS), body + ".", rng.choice(SIGN_OFFS)]
    return " ".join(part for part in parts if part)


def split(
    rng: random.Random, n: int, phrases: dict[str, list[str]], spurious: float, noise: float, seen: set[str]
) -> list[dict[str, str]]:
    """``n`` rows with texts not in ``seen`` (which grows)."""
    rows: list[dict[str, str]] = []
    while len(rows) < n:
        label = rng.choices(LABELS, weights=CLASS_WEIGHTS)[0]
        text = reply(rng, label, phrases, spurious)
        if text in seen:
            continue
        seen.add(text)
        if rng.random() < noise:
            label = rng.choice([other for other in LABELS if other != label])
        rows.append({"text": text, "label": label})
    return rows


def generate(
    seed: int = 0, n_train: int = 300, n_validation: int = 150, n_test: int = 300
) -> dict[str, list[dict[str, str]]]:
    """The three splits, deterministic for ``seed``."""
    rng = random.Random(seed)
    seen: set[str] = set()
    # Validation and test come from the shifted distribution: a random channel, clean labels.
    return {
        "train": split(rng, n_train, TRAIN_PHRASES, SPURIOUS, NOISE, seen),
        "val": split(rng, n_validation, SHIFTED_PHRASES, 0.0, 0.0, seen),
        "test": split(rng, n_test, SHIFTED_PHRASES, 0.0, 0.0, seen),
    }


def write(rows: list[dict[str, str]], path: Path) -> None:
    """A CSV file with columns ``text,label`` and ``\\n`` line endings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=["text", "label"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    """Write train.csv, val.csv and test.csv."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-validation", type=int, default=150)
    parser.add_argument("--n-test", type=int, default=300)
    args = parser.parse_args(argv)
    splits = generate(args.seed, args.n_train, args.n_validation, args.n_test)
    for name, rows in splits.items():
        write(rows, args.out / f"{name}.csv")
        print(f"{args.out / f'{name}.csv'}: {len(rows)} rows")


if __name__ == "__main__":
    main()
