"""The project's own instruction-following prompt set, generated from hand-written templates.

Every prompt is a task about a topic ("Explain to a beginner how composting at home works.") followed by
one to three verifiable constraints rendered by ``ml.judge.constraints`` ("Answer in fewer than 40
words. Do not use any commas."). Topics, tasks, word lists and the sampling rules below were written
for this project; no benchmark prompt is copied. Generation is a pure function of (n, seed), so the
same files come out on every machine, and the split is by a hash of the prompt text, so a prompt's
side never depends on which other prompts were made.

Rows: {"id", "prompt", "constraints": [{"id", "kwargs"}], "topic", "task", "split"}.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

from ml.judge.constraints import render

# topic -> words that naturally come up when writing about it (used for keyword constraints, so
# "include X" and "do not use Y" are real constraints on an on-topic answer).
TOPICS: dict[str, list[str]] = {
    "composting at home": ["soil", "waste", "garden", "worms", "bin"],
    "how rainbows form": ["light", "rain", "colors", "sun", "water"],
    "the history of the bicycle": ["wheels", "pedals", "invention", "speed", "road"],
    "saving money on groceries": ["budget", "list", "prices", "store", "food"],
    "learning to play the guitar": ["chords", "practice", "strings", "fingers", "music"],
    "why the sky is blue": ["light", "air", "scattering", "sun", "color"],
    "keeping houseplants alive": ["water", "light", "pots", "leaves", "soil"],
    "preparing for a job interview": ["questions", "company", "practice", "confidence", "clothes"],
    "how vaccines work": ["immune", "body", "virus", "protection", "cells"],
    "the water cycle": ["rain", "clouds", "evaporation", "oceans", "water"],
    "starting a morning running habit": ["shoes", "pace", "breakfast", "distance", "routine"],
    "writing a good email": ["subject", "reader", "clear", "reply", "tone"],
    "how bees make honey": ["nectar", "flowers", "hive", "wax", "honey"],
    "reducing screen time": ["phone", "sleep", "habits", "apps", "evening"],
    "the basics of photosynthesis": ["sunlight", "leaves", "sugar", "oxygen", "plants"],
    "planning a weekend camping trip": ["tent", "fire", "food", "map", "weather"],
    "how a refrigerator keeps food cold": ["heat", "gas", "coils", "temperature", "door"],
    "caring for a new puppy": ["food", "training", "walks", "vet", "toys"],
    "the invention of the printing press": ["books", "ink", "paper", "press", "history"],
    "making bread from scratch": ["flour", "yeast", "dough", "oven", "water"],
    "how earthquakes happen": ["plates", "ground", "energy", "faults", "shaking"],
    "staying focused while studying": ["notes", "breaks", "goals", "phone", "time"],
    "recycling plastic": ["bottles", "bins", "plastic", "waste", "sorting"],
    "how the moon affects tides": ["gravity", "ocean", "moon", "water", "earth"],
    "choosing a first pet": ["time", "space", "cost", "care", "family"],
    "the benefits of drinking water": ["body", "energy", "skin", "thirst", "health"],
    "how solar panels make electricity": ["sunlight", "cells", "power", "roof", "energy"],
    "teaching a child to ride a bike": ["balance", "helmet", "pedals", "patience", "park"],
    "keeping a kitchen clean": ["sink", "dishes", "counters", "soap", "trash"],
    "how airplanes stay in the air": ["wings", "lift", "air", "engines", "speed"],
    "writing a short story": ["characters", "plot", "ending", "setting", "conflict"],
    "the life of a honeybee colony": ["queen", "workers", "hive", "eggs", "flowers"],
    "packing for a long flight": ["bag", "snacks", "passport", "headphones", "water"],
    "how volcanoes erupt": ["magma", "lava", "pressure", "gas", "mountain"],
    "learning a new language": ["words", "practice", "grammar", "speaking", "daily"],
    "organising a small closet": ["shelves", "boxes", "clothes", "space", "labels"],
    "why we need sleep": ["brain", "rest", "dreams", "body", "night"],
    "how coffee is grown": ["beans", "farms", "plants", "harvest", "roasting"],
    "the rules of chess": ["king", "board", "pieces", "moves", "checkmate"],
    "making a budget for a small party": ["guests", "food", "drinks", "cost", "list"],
    "how maps are made": ["land", "scale", "roads", "satellites", "survey"],
    "growing tomatoes on a balcony": ["pots", "sun", "water", "seeds", "fruit"],
}

# {topic} is filled in; each template reads as one natural request.
TASKS: list[str] = [
    "Explain {topic} to a curious beginner.",
    "Describe {topic} for a ten-year-old.",
    "Give practical advice about {topic}.",
    "Write a short note to a friend about {topic}.",
    "Summarise the key ideas of {topic}.",
    "List the most useful tips about {topic}.",
    "Write a short blog introduction about {topic}.",
    "Tell me what most people get wrong about {topic}.",
    "Write a friendly message that teaches someone about {topic}.",
    "Answer this question from a student: what should I know about {topic}?",
    "Write a short paragraph for a school newsletter about {topic}.",
    "Give a clear explanation of {topic} in plain language.",
]

END_PHRASES = [
    "Thanks for reading.",
    "Hope this helps.",
    "That is all.",
    "Have a great day.",
    "Let me know if you have questions.",
]
FIRST_WORDS = ["Yes", "Sure", "Today", "Imagine", "First", "Here", "Well"]

# Constraints that cannot both be met, or that make each other awkward (a JSON answer has no title,
# bullets, paragraphs...). Symmetric; checked when a constraint is added.
_EXCLUSIVE = {
    "detectable_format:json_format": {
        "detectable_format:number_bullet_lists",
        "congweb:paragraphs",
        "detectable_format:title",
        "startend:quotation",
        "congweb:first_word",
        "startend:end_checker",
        "detectable_content:postscript",
        "length_constraints:number_sentences",
    },
    "change_case:english_lowercase": {"change_case:english_capital"},
    "detectable_format:number_bullet_lists": {"congweb:paragraphs"},
    "startend:quotation": {"detectable_content:postscript", "detectable_format:title"},
    "startend:end_checker": {"detectable_content:postscript"},
}


def _exclusive(a: str, b: str) -> bool:
    return b in _EXCLUSIVE.get(a, ()) or a in _EXCLUSIVE.get(b, ())


# How often each kind is drawn (easier, more common constraints more often).
_WEIGHTS: dict[str, int] = {
    "length_constraints:number_words": 5,
    "length_constraints:number_sentences": 3,
    "keywords:existence": 4,
    "keywords:forbidden_words": 4,
    "keywords:frequency": 2,
    "detectable_format:number_bullet_lists": 3,
    "detectable_format:json_format": 1,
    "change_case:english_lowercase": 2,
    "change_case:english_capital": 1,
    "startend:end_checker": 3,
    "congweb:first_word": 3,
    "congweb:paragraphs": 2,
    "detectable_format:title": 2,
    "punctuation:no_comma": 3,
    "detectable_content:postscript": 2,
    "startend:quotation": 1,
}


def _kwargs_for(kind: str, rng: random.Random, words: list[str], used_words: set[str]) -> dict[str, Any] | None:
    free = [w for w in words if w not in used_words]
    if kind == "length_constraints:number_words":
        if rng.random() < 0.6:
            return {"relation": "less than", "num_words": rng.choice([30, 40, 50, 60, 80])}
        return {"relation": "at least", "num_words": rng.choice([15, 20, 30])}
    if kind == "length_constraints:number_sentences":
        if rng.random() < 0.6:
            return {"relation": "less than", "num_sentences": rng.choice([3, 4, 5])}
        return {"relation": "at least", "num_sentences": rng.choice([2, 3])}
    if kind == "keywords:existence":
        if not free:
            return None
        chosen = rng.sample(free, k=min(len(free), rng.choice([1, 2])))
        used_words.update(chosen)
        return {"keywords": chosen}
    if kind == "keywords:forbidden_words":
        if not free:
            return None
        chosen = rng.sample(free, k=min(len(free), rng.choice([1, 2])))
        used_words.update(chosen)
        return {"forbidden_words": chosen}
    if kind == "keywords:frequency":
        if not free:
            return None
        w = rng.choice(free)
        used_words.add(w)
        return {"keyword": w, "relation": "at least", "frequency": rng.choice([2, 3])}
    if kind == "detectable_format:number_bullet_lists":
        return {"num_bullets": rng.choice([2, 3, 4, 5])}
    if kind == "startend:end_checker":
        return {"end_phrase": rng.choice(END_PHRASES)}
    if kind == "congweb:first_word":
        return {"first_word": rng.choice(FIRST_WORDS)}
    if kind == "congweb:paragraphs":
        return {"num_paragraphs": rng.choice([2, 3])}
    if kind == "detectable_content:postscript":
        return {"postscript_marker": rng.choice(["P.S.", "P.P.S."])}
    return {}  # json, lowercase, capital, title, no_comma, quotation take no arguments


def _make_one(rng: random.Random) -> dict[str, Any]:
    topic = rng.choice(sorted(TOPICS))
    task = rng.choice(TASKS)
    n = rng.choices([1, 2, 3], weights=[2, 4, 3])[0]
    kinds, weights = zip(*sorted(_WEIGHTS.items()))
    constraints: list[dict[str, Any]] = []
    used_words: set[str] = set()
    tries = 0
    while len(constraints) < n and tries < 50:
        tries += 1
        kind = rng.choices(kinds, weights=weights)[0]
        if any(c["id"] == kind or _exclusive(c["id"], kind) for c in constraints):
            continue
        kwargs = _kwargs_for(kind, rng, TOPICS[topic], used_words)
        if kwargs is None:
            continue
        constraints.append({"id": kind, "kwargs": kwargs})
    text = task.format(topic=topic) + " " + " ".join(render(c) for c in constraints)
    return {"prompt": text, "constraints": constraints, "topic": topic, "task": task}


def split_of(prompt: str, heldout_fraction: float = 0.2) -> str:
    """'heldout' or 'train', from a hash of the text alone (stable whatever else is generated)."""
    h = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8], 16)
    return "heldout" if h / 0xFFFFFFFF < heldout_fraction else "train"


def build_prompts(n: int = 500, seed: int = 0, heldout_fraction: float = 0.2) -> list[dict[str, Any]]:
    """n distinct prompts, deterministic in (n, seed); a larger n extends a smaller one's list."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n:
            raise ValueError(f"could not make {n} distinct prompts; ask for fewer")
        row = _make_one(rng)
        if row["prompt"] in seen:
            continue
        seen.add(row["prompt"])
        rows.append({"id": f"if-{seed}-{len(rows):05d}", **row, "split": split_of(row["prompt"], heldout_fraction)})
    return rows


def write_splits(out_dir: str | Path, n: int = 500, seed: int = 0, heldout_fraction: float = 0.2) -> dict[str, Any]:
    """Write out_dir/train.jsonl and out_dir/heldout.jsonl (and a small manifest); returns the manifest."""
    from ml.io import write_json, write_jsonl

    out = Path(out_dir)
    rows = build_prompts(n, seed, heldout_fraction)
    train = [r for r in rows if r["split"] == "train"]
    held = [r for r in rows if r["split"] == "heldout"]
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "heldout.jsonl", held)
    manifest = {
        "n": n,
        "seed": seed,
        "heldout_fraction": heldout_fraction,
        "train": str(out / "train.jsonl"),
        "heldout": str(out / "heldout.jsonl"),
        "n_train": len(train),
        "n_heldout": len(held),
        "gold": "if:judge",
    }
    write_json(out / "manifest.json", manifest)
    return manifest
