"""Seeded, deterministic distractor insertion for GSM8K questions.

Each question gets one irrelevant but plausible sentence (often with a number)
before its final sentence. The choice and place depend only on the seed and the
question text, so every run and every model sees the same perturbed set.
"""

from __future__ import annotations

import hashlib
import random
import re

DISTRACTORS = (
    "The shop around the corner opened 12 years ago.",
    "Her neighbour owns 3 cats and a parrot.",
    "It rained for 2 hours on Tuesday.",
    "The bus ride to town takes 25 minutes.",
    "His sister is 7 years older than his cousin.",
    "The library has 48 new books this month.",
    "A nearby bakery sells croissants for $4 each.",
    "The park has 6 benches along the lake.",
    "Their school day starts at 8 o'clock.",
    "The weather forecast predicted 30 degrees for Sunday.",
    "Her favourite colour has always been green.",
    "The town held a fair 5 weeks earlier.",
    "A local team scored 14 points last weekend.",
    "The road to the farm is 9 miles long.",
    "His phone battery was at 60 percent.",
    "The garden fence was painted 2 summers ago.",
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9$])")


def insert_distractor(question: str, seed: int = 0) -> str:
    """The question with one distractor sentence placed before its last sentence."""
    digest = hashlib.sha256(f"{seed}\x00{question}".encode()).digest()
    rng = random.Random(digest)
    sentence = rng.choice(DISTRACTORS)
    parts = _SENTENCE_END.split(question.strip())
    if len(parts) < 2:
        return f"{sentence} {question.strip()}"
    at = rng.randrange(1, len(parts))
    return " ".join(parts[:at] + [sentence] + parts[at:])


def perturb(dataset, seed: int = 0):
    """A datasets.Dataset whose `question` column carries distractors."""
    return dataset.map(lambda row: {"question": insert_distractor(row["question"], seed)})
