"""Generate the synthetic marketing-campaign response data set (train.csv, val.csv, test.csv).

Every row is a short, made-up marketing message (8-25 words) and a label, ``responded`` or
``ignored``. Nothing here comes from real customers: the messages are assembled from templates and
word lists, and the label follows a stated rule on features that can be read from the text.

The rule
--------
A message's score is the sum of

* discount size: none 0, 5% +0.2, 10% +0.6, 15% +0.9, 20% +1.2, 25% +1.5, 30% +1.8, 40% +2.1,
  50% +2.4 (written as "20% off", "save 20%", "20 percent off", ...);
* personalisation, a greeting with the customer's first name ("Hi Sam,", "Dear Priya,"): +1.0
  (a generic greeting such as "Hi there," or "Dear customer," counts 0);
* free shipping or delivery: +0.8;
* loyalty points ("earn double points", ...): +0.5;
* urgency ("ends tonight", "last chance", ...): +0.7, but only when a discount of 10% or more is
  offered (urgency on its own counts 0);
* product category: from -0.6 (insurance, extended warranties, timeshares) to +0.4 (coffee,
  sneakers, ...), see ``CATEGORIES``;
* pushy phrasing ("BUY NOW", "don't miss out", "act now", ...): -1.2 for each such phrase;
* exclamation marks: -0.4 for each one beyond the second in the whole message.

Channel phrasing ("Reply STOP to opt out", "Tap the link", ...) and generic filler count 0.
The customer responds when the score is at least ``THRESHOLD`` (2.1), which holds for about 25% of
the messages (class imbalance). Then each label is flipped with probability ``NOISE`` (0.08, label
noise), so the observed share of ``responded`` is about 29% and no model can be right on every row.

The script is deterministic for a seed: one ``random.Random(seed)`` draws train, then validation,
then test; a text never appears twice in the whole data set. CSV files use ``\\n`` line endings.

Usage: ``python examples/campaign/make_data.py [--out DIR] [--seed 0] [--n-train 2400]
[--n-validation 600] [--n-test 600]``
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

THRESHOLD = 2.1
NOISE = 0.08
MIN_WORDS, MAX_WORDS = 8, 25

DISCOUNT_POINTS = {0: 0.0, 5: 0.2, 10: 0.6, 15: 0.9, 20: 1.2, 25: 1.5, 30: 1.8, 40: 2.1, 50: 2.4}
DISCOUNT_WEIGHTS = {0: 30, 5: 8, 10: 12, 15: 10, 20: 12, 25: 8, 30: 8, 40: 6, 50: 6}
NAME_POINTS = 1.0
SHIPPING_POINTS = 0.8
LOYALTY_POINTS = 0.5
URGENCY_POINTS = 0.7
URGENCY_MIN_DISCOUNT = 10
PUSHY_POINTS = -1.2
EXCLAMATION_POINTS = -0.4
FREE_EXCLAMATIONS = 2

# category phrase -> affinity points
CATEGORIES = {
    "coffee beans": 0.4,
    "sneakers": 0.4,
    "running shoes": 0.3,
    "board games": 0.3,
    "skincare": 0.2,
    "headphones": 0.2,
    "yoga mats": 0.2,
    "winter jackets": 0.1,
    "kitchen knives": 0.1,
    "books": 0.1,
    "bed linen": 0.0,
    "phone cases": 0.0,
    "vitamins": 0.0,
    "garden tools": 0.0,
    "pet food": 0.0,
    "office chairs": -0.1,
    "printer ink": -0.3,
    "car accessories": -0.2,
    "mobile plans": -0.4,
    "extended warranties": -0.6,
    "insurance": -0.6,
    "timeshares": -0.6,
}

NAMES = [
    "Sam",
    "Priya",
    "Alex",
    "Maria",
    "Jonas",
    "Aisha",
    "Tom",
    "Mei",
    "Lucas",
    "Fatima",
    "Noah",
    "Elena",
    "Omar",
    "Hannah",
    "Kenji",
    "Sofia",
    "Ben",
    "Chloe",
    "Diego",
    "Ingrid",
    "Ravi",
    "Zoe",
]
PERSONAL_GREETINGS = [
    "Hi {name},",
    "Dear {name},",
    "{name},",
    "Hello {name},",
    "Hey {name},",
    "Good news, {name}:",
]
GENERIC_GREETINGS = [
    "Hi there,",
    "Dear customer,",
    "Hello,",
    "Hey friend,",
    "Dear valued member,",
    "Good news:",
]

OPENERS = [
    "our new {cat} collection is here",
    "fresh {cat} just landed in store",
    "check out this week's {cat} picks",
    "we restocked your favourite {cat}",
    "discover the {cat} everyone is talking about",
    "the {cat} range has been updated",
    "new arrivals in {cat} are waiting for you",
    "see what's new in {cat}",
    "our {cat} experts picked a few favourites",
    "upgrade your {cat} this season",
    "{cat} for every budget, online now",
]
DISCOUNT_PHRASES = [
    "take {d}% off",
    "save {d}%",
    "get {d} percent off",
    "enjoy {d}% off your order",
    "{d}% off selected items",
    "use code SAVE{d} for {d}% off",
    "members get {d}% off",
    "a {d}% discount applies at checkout",
]
NO_DISCOUNT_PHRASES = [
    "prices as usual",
    "full range available",
    "new styles added weekly",
    "quality you can trust",
    "",
    "",
    "",
]
SHIPPING_PHRASES = [
    "free shipping on all orders",
    "free delivery to your door",
    "it ships free",
    "plus free shipping",
]
LOYALTY_PHRASES = [
    "earn double loyalty points",
    "collect 2x points",
    "bonus points for members",
    "earn reward points",
]
URGENCY_PHRASES = [
    "ends tonight",
    "last chance",
    "only 24 hours left",
    "today only",
    "offer ends Sunday",
    "while stocks last",
]
PUSHY_PHRASES = [
    "BUY NOW",
    "don't miss out",
    "act now",
    "you won't believe this",
    "HURRY",
    "order immediately",
    "LIMITED TIME",
]
CHANNEL_PHRASES = [
    "Reply STOP to opt out.",
    "Tap the link to shop.",
    "See the app for details.",
    "Visit any store near you.",
    "Terms apply.",
    "View online.",
    "Shop via the link in your email.",
    "Open the app to browse.",
]
FILLER_PHRASES = [
    "Thanks for being with us.",
    "We think you'll like it.",
    "Have a lovely week.",
    "Happy shopping.",
    "Something for everyone.",
    "See you soon.",
    "Made with care.",
    "Take a look.",
]
ENDINGS = ["."] * 10 + ["!"] * 4 + ["!!"] + ["!!!"]


def capitalise(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:] if sentence else sentence


def score(features: dict) -> float:
    """The stated rule: see the module docstring."""
    total = DISCOUNT_POINTS[features["discount"]]
    total += NAME_POINTS if features["name"] else 0.0
    total += SHIPPING_POINTS if features["shipping"] else 0.0
    total += LOYALTY_POINTS if features["loyalty"] else 0.0
    if features["urgency"] and features["discount"] >= URGENCY_MIN_DISCOUNT:
        total += URGENCY_POINTS
    total += CATEGORIES[features["category"]]
    total += PUSHY_POINTS * features["pushy"]
    total += EXCLAMATION_POINTS * max(0, features["exclamations"] - FREE_EXCLAMATIONS)
    return total


def draw_message(rng: random.Random) -> tuple[str, dict]:
    """One message and the features the rule reads from it."""
    category = rng.choice(list(CATEGORIES))
    discount = rng.choices(list(DISCOUNT_WEIGHTS), weights=list(DISCOUNT_WEIGHTS.values()))[0]
    greeting_kind = rng.choices(["personal", "generic", "none"], weights=[35, 30, 35])[0]
    shipping = rng.random() < 0.3
    loyalty = rng.random() < 0.2
    urgency = rng.random() < 0.35
    pushy = rng.choices([0, 1, 2], weights=[70, 22, 8])[0]

    greeting = ""
    if greeting_kind == "personal":
        greeting = rng.choice(PERSONAL_GREETINGS).format(name=rng.choice(NAMES))
    elif greeting_kind == "generic":
        greeting = rng.choice(GENERIC_GREETINGS)

    # Sentences that carry features; each gets its own ending punctuation.
    core = [rng.choice(OPENERS).format(cat=category)]
    offer = rng.choice(DISCOUNT_PHRASES).format(d=discount) if discount else rng.choice(NO_DISCOUNT_PHRASES)
    if offer:
        core.append(offer)
    extras = []
    if shipping:
        extras.append(rng.choice(SHIPPING_PHRASES))
    if loyalty:
        extras.append(rng.choice(LOYALTY_PHRASES))
    if urgency:
        extras.append(rng.choice(URGENCY_PHRASES))
    extras.extend(rng.sample(PUSHY_PHRASES, pushy))
    rng.shuffle(extras)
    sentences = core + extras
    if len(sentences) > 2 and rng.random() < 0.5:
        # now and then join the second and third sentence into one
        sentences[1:3] = [
            f"{sentences[1]}, {sentences[2]}" if rng.random() < 0.5 else f"{sentences[1]} and {sentences[2]}"
        ]
    body = [capitalise(sentence) + rng.choice(ENDINGS) for sentence in sentences]
    if greeting.endswith(","):
        body[0] = body[0][:1].lower() + body[0][1:]

    # Neutral filler to vary length; dropped or added to stay within MIN_WORDS..MAX_WORDS.
    filler = []
    if rng.random() < 0.6:
        filler.append(rng.choice(CHANNEL_PHRASES))
    if rng.random() < 0.4:
        filler.append(rng.choice(FILLER_PHRASES))

    def assemble() -> str:
        head = [greeting] if greeting else []
        return " ".join(head + body + filler)

    while len(assemble().split()) > MAX_WORDS and filler:
        filler.pop()
    while len(assemble().split()) < MIN_WORDS:
        filler.append(rng.choice(FILLER_PHRASES + CHANNEL_PHRASES))
    text = assemble()
    features = {
        "category": category,
        "discount": discount,
        "name": greeting_kind == "personal",
        "shipping": shipping,
        "loyalty": loyalty,
        "urgency": urgency,
        "pushy": pushy,
        "exclamations": text.count("!"),
    }
    return text, features


def make_split(rng: random.Random, n: int, seen: set[str]) -> list[dict[str, str]]:
    rows = []
    while len(rows) < n:
        text, features = draw_message(rng)
        if text in seen or not MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            continue
        seen.add(text)
        responded = score(features) >= THRESHOLD
        if rng.random() < NOISE:
            responded = not responded
        rows.append({"text": text, "label": "responded" if responded else "ignored"})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=["text", "label"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=2400)
    parser.add_argument("--n-validation", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=600)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    seen: set[str] = set()
    args.out.mkdir(parents=True, exist_ok=True)
    for filename, n in (
        ("train.csv", args.n_train),
        ("val.csv", args.n_validation),
        ("test.csv", args.n_test),
    ):
        rows = make_split(rng, n, seen)
        write_csv(args.out / filename, rows)
        share = sum(row["label"] == "responded" for row in rows) / max(1, len(rows))
        print(f"{args.out / filename}: {len(rows)} rows, {share:.1%} responded")


if __name__ == "__main__":
    main()
