"""The task: "repeat <word> <n>" answered by <word> n times and the closing token `done`.

`quality` is the ground truth every judgment in the toy world rests on; `imperfect_answer`
produces the kind of flawed responses a weak model writes (wrong counts, substituted words,
junk tokens, a missing close), so a pool of answers spans the whole quality range.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

WORDS = [
    "apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "rocket",
    "forest", "candle", "silver", "garden", "window", "violet", "harbor", "pepper",
    "meadow", "falcon", "copper", "thunder", "marble", "orchid", "canyon", "willow",
]
NUMBERS = ["one", "two", "three", "four", "five", "six"]
JUNK = ["um", "uh", "blah", "hmm", "oops", "eh"]
FILLERS = ["", "please", "now", "kindly"]
VERB = "repeat"
DONE = "done"


@dataclass(frozen=True)
class Instruction:
    word: str
    n: int
    filler: str = ""

    @property
    def text(self) -> str:
        parts = [self.filler] if self.filler else []
        return " ".join(parts + [VERB, self.word, NUMBERS[self.n - 1]])

    @property
    def perfect_answer(self) -> str:
        return " ".join([self.word] * self.n + [DONE])


def all_instructions() -> list[Instruction]:
    """Every distinct instruction of the task (24 words × 6 counts × 4 fillers)."""
    return [Instruction(w, n, f) for f in FILLERS for w in WORDS for n in range(1, len(NUMBERS) + 1)]


def parse_instruction(text: str) -> Instruction | None:
    """The instruction behind `text`, or None when it is not one of this task's."""
    tokens = text.split()
    filler = ""
    if tokens and tokens[0] in FILLERS[1:]:
        filler, tokens = tokens[0], tokens[1:]
    if len(tokens) != 3 or tokens[0] != VERB or tokens[1] not in WORDS or tokens[2] not in NUMBERS:
        return None
    return Instruction(tokens[1], NUMBERS.index(tokens[2]) + 1, filler)


def quality(instruction: str | Instruction, response: str) -> float:
    """Ground-truth quality of `response` in [0, 1]; 1 only for the perfect answer.

    Half the credit is the share of the n slots holding the right word, 0.3 is for the
    right count of that word, 0.2 for closing with `done` right after the last slot;
    each junk or foreign token costs 0.1.
    """
    inst = parse_instruction(instruction) if isinstance(instruction, str) else instruction
    if inst is None:
        raise ValueError(f"not a toy-world instruction: {instruction!r}")
    tokens = response.split()
    n, word = inst.n, inst.word
    slots = sum(1 for i in range(min(n, len(tokens))) if tokens[i] == word) / n
    count_error = abs(tokens.count(word) - n)
    count_score = max(0.0, 1.0 - count_error / n)
    closed = 1.0 if tokens[n:] == [DONE] and tokens[:n] == [word] * n else 0.0
    foreign = sum(1 for t in tokens if t not in (word, DONE))
    score = 0.5 * slots + 0.3 * count_score + 0.2 * closed - 0.1 * foreign
    return round(min(1.0, max(0.0, score)), 6)


def imperfect_answer(inst: Instruction, rng: random.Random, skill: float) -> str:
    """A response by a writer of the given skill in [0, 1] (1 always answers perfectly).

    Each kind of flaw occurs with probability (1 - skill) times its own weight, so the
    answers of one writer spread over many quality levels.
    """
    miss = 1.0 - skill
    count = inst.n
    if rng.random() < miss * 0.6:
        count = max(1, min(len(NUMBERS) + 2, count + rng.choice([-2, -1, 1, 2])))
    tokens = [inst.word] * count
    if rng.random() < miss * 0.5:
        tokens[rng.randrange(count)] = rng.choice([w for w in WORDS if w != inst.word])
    if rng.random() < miss * 0.5:
        for _ in range(rng.randint(1, 2)):
            tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(JUNK))
    if rng.random() >= miss * 0.4:
        tokens.append(DONE)
    return " ".join(tokens)


def junk_answer(rng: random.Random, length: int = 6) -> str:
    """Pure junk: what a degenerate model writes (used for the extreme-contrast pairs)."""
    return " ".join(rng.choice(JUNK) for _ in range(length))


def vocabulary() -> list[str]:
    """Every plain word the task can produce, in a fixed order (the tokenizer's vocabulary)."""
    return [VERB, DONE] + [f for f in FILLERS if f] + NUMBERS + WORDS + JUNK
