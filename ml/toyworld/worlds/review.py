"""The review world: a graded preference the generic corpus leans against.

Prompt:   ``review SUBJ NOUN_a NOUN_b :``  (SUBJ from one of 6 topics, both nouns from that topic)
Response: ``the SUBJ was ADJ .`` then 2-3 sentences, each one of
          ``the NOUN was ADJ .`` | ``the NOUN was ADJ and ADJ .`` | ``it had a ADJ NOUN .``
          with 3-6 adjective slots in all.
Gold:     (#positive - #negative) / #adjectives, minus 1 for a broken template, a wrong subject or a
          noun from another topic, minus 0.5 x the fraction of the prompt's two nouns not mentioned.
          A perfect review (all positive, both nouns mentioned, well formed) scores 1.0.

Why the prior matters: contrastive decoding samples roughly in proportion to
p_pre^(alpha/T) * (p_post/p_pre)^(1/T), so beyond the learned log-ratio it removes pi_pre's prior.
That helps exactly where the prior works against the preference, which is what ``prior`` controls:
the default corpus is 30% positive / 50% negative / 20% neutral per slot; the balanced control
(``review_balanced``) is 40/40/20, where CD is expected to add nothing.
"""

from __future__ import annotations

import random

from .base import ModelRecipe, Recipe, WeakAlignRecipe, World, strong_stage_overrides, tiny_recipe, words

TOPICS: dict[str, tuple[list[str], list[str]]] = {
    # topic: (subjects, nouns)
    "food": (
        ["pizza", "soup", "curry", "salad", "burger"],
        ["taste", "sauce", "crust", "portion", "price", "smell", "spice", "texture"],
    ),
    "film": (
        ["movie", "drama", "thriller", "comedy", "documentary"],
        ["plot", "acting", "ending", "music", "dialogue", "pacing", "scenery", "cast"],
    ),
    "hotel": (
        ["hotel", "hostel", "resort", "inn", "motel"],
        ["room", "bed", "staff", "breakfast", "view", "pool", "lobby", "shower"],
    ),
    "phone": (
        ["phone", "tablet", "laptop", "camera", "watch"],
        ["screen", "battery", "speaker", "keyboard", "charger", "case", "button", "lens"],
    ),
    "book": (
        ["novel", "memoir", "poem", "textbook", "comic"],
        ["story", "chapter", "hero", "cover", "prose", "index", "author", "villain"],
    ),
    "trip": (
        ["cruise", "tour", "flight", "hike", "safari"],
        ["guide", "route", "weather", "seat", "boat", "trail", "bus", "ticket"],
    ),
}
POSITIVE = [
    "good",
    "great",
    "excellent",
    "superb",
    "lovely",
    "wonderful",
    "fantastic",
    "pleasant",
    "delightful",
    "brilliant",
    "charming",
    "perfect",
    "fresh",
    "amazing",
    "solid",
    "neat",
    "splendid",
    "terrific",
    "fine",
    "superior",
]
NEGATIVE = [
    "bad",
    "awful",
    "terrible",
    "poor",
    "horrible",
    "dull",
    "weak",
    "boring",
    "nasty",
    "cheap",
    "broken",
    "dirty",
    "bland",
    "clumsy",
    "lousy",
    "mediocre",
    "dreadful",
    "noisy",
    "stale",
    "shabby",
]
NEUTRAL = ["okay", "average", "typical", "ordinary", "standard", "usual", "plain", "normal"]
FUNCTION_WORDS = ["review", ":", "the", "was", ".", "and", "it", "had", "a"]

SUBJECT_TOPIC = {s: t for t, (subs, _) in TOPICS.items() for s in subs}
NOUN_TOPIC = {n: t for t, (_, nouns) in TOPICS.items() for n in nouns}
POS_SET, NEG_SET, NEU_SET = set(POSITIVE), set(NEGATIVE), set(NEUTRAL)
ADJ_SET = POS_SET | NEG_SET | NEU_SET


def parse_prompt(prompt: str) -> tuple[str, str, str]:
    toks = prompt.split()
    if len(toks) != 5 or toks[0] != "review" or toks[4] != ":":
        raise ValueError(f"not a review prompt: {prompt!r} (want 'review SUBJ NOUN NOUN :')")
    return toks[1], toks[2], toks[3]


def parse_response(toks: list[str]) -> tuple[str, list[str], list[str]] | None:
    """(subject, nouns, adjectives) of a well-formed response, or None if the template is broken."""
    if len(toks) < 5 or toks[0] != "the" or toks[2] != "was" or toks[3] not in ADJ_SET or toks[4] != ".":
        return None
    subject, nouns, adjs = toks[1], [], [toks[3]]
    i, sentences = 5, 0
    while i < len(toks):
        t = toks[i:]
        if (
            len(t) >= 7
            and t[0] == "the"
            and t[2] == "was"
            and t[3] in ADJ_SET
            and t[4] == "and"
            and t[5] in ADJ_SET
            and t[6] == "."
        ):
            nouns.append(t[1])
            adjs += [t[3], t[5]]
            i += 7
        elif len(t) >= 5 and t[0] == "the" and t[2] == "was" and t[3] in ADJ_SET and t[4] == ".":
            nouns.append(t[1])
            adjs.append(t[3])
            i += 5
        elif len(t) >= 6 and t[0] == "it" and t[1] == "had" and t[2] == "a" and t[3] in ADJ_SET and t[5] == ".":
            nouns.append(t[4])
            adjs.append(t[3])
            i += 6
        else:
            return None
        sentences += 1
    if sentences not in (2, 3) or not 3 <= len(adjs) <= 6:
        return None
    return subject, nouns, adjs


class ReviewWorld(World):
    description = "graded preference (positive reviews); the corpus prior leans against it"

    def __init__(
        self, name: str = "review", prior: tuple[float, float, float] = (0.3, 0.5, 0.2), mention_p: float = 0.6
    ) -> None:
        if abs(sum(prior) - 1.0) > 1e-9 or min(prior) < 0:
            raise ValueError(f"prior {prior} must be three non-negative numbers summing to 1 (pos, neg, neutral)")
        self.name = name
        self.prior = prior
        self.mention_p = mention_p
        if prior[0] >= prior[1]:
            self.description = "balanced-prior control: the corpus prior does not lean against the preference"

    def vocab(self) -> list[str]:
        v = list(FUNCTION_WORDS)
        for subs, nouns in TOPICS.values():
            v += subs + nouns
        return v + POSITIVE + NEGATIVE + NEUTRAL

    def sample_prompt(self, rng: random.Random) -> str:
        topic = rng.choice(sorted(TOPICS))
        subs, nouns = TOPICS[topic]
        a, b = rng.sample(nouns, 2)
        return f"review {rng.choice(subs)} {a} {b} :"

    def _adj(self, rng: random.Random) -> str:
        u = rng.random()
        pool = POSITIVE if u < self.prior[0] else NEGATIVE if u < self.prior[0] + self.prior[1] else NEUTRAL
        return rng.choice(pool)

    def sample_response(self, prompt: str, rng: random.Random) -> str:
        subj, na, nb = parse_prompt(prompt)
        topic_nouns = TOPICS[SUBJECT_TOPIC[subj]][1]
        while True:
            k = rng.choice((2, 3))
            forms = [rng.choice(("one", "two", "had")) for _ in range(k)]
            n_adj = 1 + sum(2 if f == "two" else 1 for f in forms)
            if 3 <= n_adj <= 6:
                break
        # The corpus mentions each prompt noun only sometimes: mentioning both is part of the gold
        # preference that weak alignment has to pick up.
        nouns = [n if rng.random() < self.mention_p else rng.choice(topic_nouns) for n in (na, nb)]
        while len(nouns) < k:
            nouns.append(rng.choice(topic_nouns))
        rng.shuffle(nouns)
        out = [f"the {subj} was {self._adj(rng)} ."]
        for f, noun in zip(forms, nouns):
            if f == "one":
                out.append(f"the {noun} was {self._adj(rng)} .")
            elif f == "two":
                out.append(f"the {noun} was {self._adj(rng)} and {self._adj(rng)} .")
            else:
                out.append(f"it had a {self._adj(rng)} {noun} .")
        return " ".join(out)

    def gold(self, prompt: str, response: str) -> float:
        subj, na, nb = parse_prompt(prompt)
        toks = words(response)
        parsed = parse_response(toks)
        adjs = parsed[2] if parsed else [t for t in toks if t in ADJ_SET]
        score = (sum(a in POS_SET for a in adjs) - sum(a in NEG_SET for a in adjs)) / len(adjs) if adjs else 0.0
        if not self._well_formed(subj, parsed):
            score -= 1.0
        mentioned = set(parsed[1]) if parsed else set(toks)
        score -= 0.5 * sum(n not in mentioned for n in (na, nb)) / 2
        return score

    proxy_description = "sentiment only: (#positive - #negative) / #adjectives, blind to the template and the nouns"

    def proxy(self, prompt: str, response: str) -> float:
        toks = words(response)
        parsed = parse_response(toks)
        adjs = parsed[2] if parsed else [t for t in toks if t in ADJ_SET]
        return (sum(a in POS_SET for a in adjs) - sum(a in NEG_SET for a in adjs)) / len(adjs) if adjs else 0.0

    def valid(self, prompt: str, response: str) -> bool:
        subj, _, _ = parse_prompt(prompt)
        return self._well_formed(subj, parse_response(words(response)))

    @staticmethod
    def _well_formed(subj: str, parsed: tuple[str, list[str], list[str]] | None) -> bool:
        if parsed is None:
            return False
        r_subj, nouns, _ = parsed
        topic = SUBJECT_TOPIC[subj]
        return r_subj == subj and all(NOUN_TOPIC.get(n) == topic for n in nouns)

    def recipe(self, size: str = "default") -> Recipe:
        if size == "tiny":
            return tiny_recipe()
        return Recipe(
            weak=ModelRecipe(n_layer=2, n_embd=64, n_head=2, steps=800, batch_size=64, lr=3e-3),
            strong=ModelRecipe(n_layer=4, n_embd=128, n_head=4, steps=400, batch_size=32, lr=3e-3),
            weak_align=WeakAlignRecipe(n_prompts=960, samples_per_prompt=5, beta=0.1, lr=5e-5, steps=60, batch_size=32),
            corpus_lines=30000,
            n_train_prompts=400,
            n_heldout_prompts=200,
            n_positions=48,
            stages=strong_stage_overrides(max_length=48),
        )


def review_world() -> ReviewWorld:
    return ReviewWorld("review", prior=(0.3, 0.5, 0.2))


def review_balanced_world() -> ReviewWorld:
    return ReviewWorld("review_balanced", prior=(0.4, 0.4, 0.2))
