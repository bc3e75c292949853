"""The toy world's preference data: a noisy pool with planted defects, a clean validation
pool and held-out evaluation prompts.

The pool is in the UltraFeedback-binarized schema (string `prompt`, `prompt_id`, full
conversations in `chosen`/`rejected`, 1–10 ratings) so the toy world exercises the same
ingest path as the real data set. Which rows are defective is known only from a side
table, never from the pool itself, so curation has to find them the way it would in real
data; the side table is what lets tests and reports measure how well it did.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from prefcurate.data.pairs import pair_id
from prefcurate.errors import ConfigError
from prefcurate.toyworld.task import (
    DONE,
    JUNK,
    WORDS,
    Instruction,
    all_instructions,
    imperfect_answer,
    junk_answer,
    quality,
)

DEFECT_COLUMNS = ["pair_id", "prompt_id", "pair_index", "defect"]
POOL_COLUMNS = ["prompt", "prompt_id", "chosen", "rejected", "score_chosen", "score_rejected"]


class PoolSpec(BaseModel):
    """Sizes and planted-defect rates of the preference data (rates are shares of `n_pairs`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_pairs: int = Field(default=1000, ge=1, description="Pairs in the training pool, defects included.")
    n_validation: int = Field(default=150, ge=1, description="Pairs in the clean validation pool.")
    n_validation_instructions: int = Field(default=96, ge=1, description="Instructions reserved for validation pairs.")
    n_eval_prompts: int = Field(default=100, ge=1, description="Held-out evaluation instructions.")
    flip_rate: float = Field(default=0.30, ge=0.0, le=1.0, description="Share of pairs with chosen and rejected swapped.")
    near_duplicate_rate: float = Field(default=0.05, ge=0.0, le=1.0, description="Share of pairs that copy another pair but for one token.")
    extreme_contrast_rate: float = Field(default=0.08, ge=0.0, le=1.0, description="Share of perfect-vs-junk pairs rated 10 vs 1: an extreme contrast the SFT model already fits, so its IF is low.")
    proxy_overfit_rate: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="Share of pairs that teach only the validation set's narrow proxy (the proxy word), not the task; "
        "when above 0 the validation set over-represents that word (see proxy_validation_share).",
    )
    proxy_validation_share: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="Share of validation pairs on the proxy word's instructions; used only when proxy_overfit_rate > 0.",
    )
    writer_skill: tuple[float, float] = Field(default=(0.1, 0.9), description="Range of the skill of the writers of pool answers.")

    @model_validator(mode="after")
    def _consistent(self) -> "PoolSpec":
        if self.n_near_duplicates + self.n_extreme_contrast + self.n_proxy_overfit >= self.n_pairs:
            raise ValueError("near_duplicate_rate + extreme_contrast_rate + proxy_overfit_rate must leave some ordinary pairs")
        if self.n_flips > self.n_ordinary - self.n_near_duplicates:
            raise ValueError("flip_rate is too high: flips and near-duplicate sources must be distinct ordinary pairs")
        lo, hi = self.writer_skill
        if not 0.0 <= lo <= hi < 1.0:
            raise ValueError("writer_skill must satisfy 0 <= lo <= hi < 1 (skill 1 never errs, so no pair differs)")
        if self.n_eval_prompts + self.n_validation_instructions >= len(all_instructions()):
            raise ValueError(f"eval and validation instructions must leave training instructions (the task has {len(all_instructions())})")
        return self

    @property
    def n_flips(self) -> int:
        return round(self.flip_rate * self.n_pairs)

    @property
    def n_near_duplicates(self) -> int:
        return round(self.near_duplicate_rate * self.n_pairs)

    @property
    def n_extreme_contrast(self) -> int:
        return round(self.extreme_contrast_rate * self.n_pairs)

    @property
    def n_proxy_overfit(self) -> int:
        return round(self.proxy_overfit_rate * self.n_pairs)

    @property
    def n_ordinary(self) -> int:
        """Pairs of two imperfect answers (flipped ones included)."""
        return self.n_pairs - self.n_near_duplicates - self.n_extreme_contrast - self.n_proxy_overfit


@dataclass(frozen=True)
class InstructionSplit:
    """Disjoint instruction sets: a training instruction is never evaluated on."""

    train: list[Instruction]
    validation: list[Instruction]
    eval: list[Instruction]


@dataclass(frozen=True)
class PreferenceData:
    split: InstructionSplit
    pool: pd.DataFrame
    validation: pd.DataFrame
    eval_prompts: list[dict[str, str]]
    defects: pd.DataFrame


def split_instructions(spec: PoolSpec, seed: int) -> InstructionSplit:
    """Shuffle the task's instructions by `seed` and cut eval, validation and train sets."""
    instructions = all_instructions()
    random.Random(seed).shuffle(instructions)
    n_eval, n_val = spec.n_eval_prompts, spec.n_validation_instructions
    return InstructionSplit(
        eval=instructions[:n_eval],
        validation=instructions[n_eval : n_eval + n_val],
        train=instructions[n_eval + n_val :],
    )


def proxy_word(split: InstructionSplit) -> str:
    """The validation set's narrow proxy: the word most frequent among its instructions
    (first in `WORDS` on a tie), which the validation pool over-represents when the
    proxy-overfit kind is planted."""
    words = [inst.word for inst in split.validation]
    return max(WORDS, key=words.count)


def _proxy_overfit_pair(inst: Instruction, proxy: str, rng: random.Random) -> tuple[str, str]:
    """A pair that teaches the validation proxy and nothing of the task.

    Chosen repeats the proxy word, rejected another wrong word, both the right number of
    times and closed: under the oracle both score 0 (no slot holds the instruction's word),
    so the pair does not say how to answer `inst`. What it does say is "write the proxy word
    rather than another": the validation loss, half of it on prompts that ask for the proxy
    word, rewards exactly that, so the pair's gradient was meant to lean along ∇L_val and
    its IF to be high for the proxy, not the task (the paper's over-scoring). That is a
    hypothesis, not a property: at 8 % the small and default worlds measured their IF *below*
    clean pairs (AUROC 0.31 and 0.27), perhaps because writing a word the prompt did not ask
    for also fights the copying the rest of the validation set rewards.
    """
    other = rng.choice([w for w in WORDS if w not in (inst.word, proxy)])
    return " ".join([proxy] * inst.n + [DONE]), " ".join([other] * inst.n + [DONE])


def rating(q: float) -> float:
    """An UltraFeedback-style 1–10 rating of an oracle quality in [0, 1]."""
    return round(1.0 + 9.0 * q, 2)


def prompt_id(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def _row(inst: Instruction, chosen: str, rejected: str) -> dict:
    prompt = inst.text

    def conversation(answer: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]

    return {
        "prompt": prompt,
        "prompt_id": prompt_id(prompt),
        "chosen": conversation(chosen),
        "rejected": conversation(rejected),
        "score_chosen": rating(quality(inst, chosen)),
        "score_rejected": rating(quality(inst, rejected)),
    }


def ordinary_pair(inst: Instruction, rng: random.Random, skill: tuple[float, float]) -> tuple[str, str]:
    """Two answers by writers of random skill; the better one is chosen (ties are redrawn)."""
    while True:
        a = imperfect_answer(inst, rng, rng.uniform(*skill))
        b = imperfect_answer(inst, rng, rng.uniform(*skill))
        qa, qb = quality(inst, a), quality(inst, b)
        if qa != qb:
            return (a, b) if qa > qb else (b, a)


def _one_token_edit(answer: str, rng: random.Random) -> str:
    """`answer` with one junk token inserted: a near-copy that is never better than the original.

    Inserting shifts later tokens right and adds a foreign token, so under the oracle the
    edited answer scores at most what the original did; the pair's order stays right.
    """
    tokens = answer.split()
    tokens.insert(rng.randrange(len(tokens) + 1), rng.choice(JUNK))
    return " ".join(tokens)


def _unique(draw, seen: set, tries: int = 1000) -> tuple:
    """Redraw until the pair is new: ingest rejects exact duplicates, so the pool has none."""
    for _ in range(tries):
        if (pair := draw()) not in seen:
            seen.add(pair)
            return pair
    raise ConfigError(
        f"cannot draw a pair unlike the {len(seen)} already drawn after {tries} tries; "
        "lower n_pairs or reserve fewer eval/validation instructions"
    )


def build_pool(split: InstructionSplit, spec: PoolSpec, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training pool (shuffled) and its defect table (pair_id, prompt_id, pair_index, defect)."""
    rng = random.Random(seed)
    seen: set[tuple[Instruction, str, str]] = set()

    def ordinary() -> tuple[Instruction, str, str]:
        inst = rng.choice(split.train)
        return (inst, *ordinary_pair(inst, rng, spec.writer_skill))

    # (instruction, chosen, rejected, defect) before rendering, so defects can copy a pair.
    pairs = [(*_unique(ordinary, seen), None) for _ in range(spec.n_ordinary)]
    picked = rng.sample(range(len(pairs)), spec.n_flips + spec.n_near_duplicates)
    for i in picked[spec.n_flips :]:
        inst, chosen, rejected, _ = pairs[i]
        pairs.append((*_unique(lambda: (inst, chosen, _one_token_edit(rejected, rng)), seen), "near_duplicate"))
    for i in picked[: spec.n_flips]:
        inst, chosen, rejected, _ = pairs[i]
        pairs[i] = (inst, rejected, chosen, "label_flip")  # scores follow: the file stays self-consistent
    for _ in range(spec.n_extreme_contrast):
        inst = rng.choice(split.train)
        pairs.append((*_unique(lambda: (inst, inst.perfect_answer, junk_answer(rng)), seen), "extreme_contrast"))
    if spec.n_proxy_overfit:
        proxy = proxy_word(split)
        off_proxy = [inst for inst in split.train if inst.word != proxy]

        def planted() -> tuple[Instruction, str, str]:
            inst = rng.choice(off_proxy)
            return (inst, *_proxy_overfit_pair(inst, proxy, rng))

        pairs.extend((*_unique(planted, seen), "proxy_overfit") for _ in range(spec.n_proxy_overfit))

    rng.shuffle(pairs)
    pool = pd.DataFrame([_row(inst, chosen, rejected) for inst, chosen, rejected, _ in pairs], columns=POOL_COLUMNS)
    defects = pd.DataFrame(
        [
            {
                "pair_id": pair_id(pool.at[i, "chosen"][:-1], pool.at[i, "chosen"][-1:], pool.at[i, "rejected"][-1:]),
                "prompt_id": pool.at[i, "prompt_id"],
                "pair_index": i,
                "defect": defect,
            }
            for i, (_, _, _, defect) in enumerate(pairs)
            if defect is not None
        ],
        columns=DEFECT_COLUMNS,
    )
    return pool, defects


def _cycle(instructions: list[Instruction], n: int) -> list[Instruction]:
    """`n` instructions cycling through `instructions`, so each is used before any repeats."""
    return [instructions[i % len(instructions)] for i in range(n)]


def build_validation(split: InstructionSplit, spec: PoolSpec, seed: int) -> pd.DataFrame:
    """A clean pool on the validation instructions: every pair ordered by the oracle.

    With the proxy-overfit kind planted, `proxy_validation_share` of the pairs are on the
    proxy word's instructions: still clean, but a narrow proxy of the task. Its pairs are
    redrawn until new, as in the pool (few proxy instructions make repeats likely).
    """
    n = spec.n_validation
    if spec.n_proxy_overfit:
        proxy = proxy_word(split)
        on = [inst for inst in split.validation if inst.word == proxy]
        off = [inst for inst in split.validation if inst.word != proxy] or on
        n_on = round(spec.proxy_validation_share * n)
        instructions = _cycle(on, n_on) + _cycle(off, n - n_on)
    else:
        instructions = _cycle(split.validation, n)
    rng = random.Random(seed)
    # Only the proxy validation set is redrawn until new: the presets' validation sets stay as
    # they were (the default one holds one repeated pair, which ingest drops).
    seen: set[tuple[Instruction, str, str]] | None = set() if spec.n_proxy_overfit else None

    def draw(inst: Instruction) -> tuple[Instruction, str, str]:
        def pair() -> tuple[Instruction, str, str]:
            return (inst, *ordinary_pair(inst, rng, spec.writer_skill))

        return pair() if seen is None else _unique(pair, seen)

    rows = [_row(*draw(inst)) for inst in instructions]
    return pd.DataFrame(rows, columns=POOL_COLUMNS)


def build_preference_data(spec: PoolSpec, seed: int) -> PreferenceData:
    """Pool, validation pool, eval prompts and defect table, all from `seed`."""
    split = split_instructions(spec, seed)
    pool, defects = build_pool(split, spec, seed + 1)
    return PreferenceData(
        split=split,
        pool=pool,
        validation=build_validation(split, spec, seed + 2),
        eval_prompts=[{"instruction": inst.text} for inst in split.eval],
        defects=defects,
    )


def new_pairs(spec: PoolSpec, seed: int, pool: pd.DataFrame, n: int, night: int = 1) -> pd.DataFrame:
    """`n` ordinary pairs on the world's training instructions that `pool` does not hold yet:
    one night's new data for a growing pool (the nightly flow's tests and benchmark)."""
    split = split_instructions(spec, seed)
    rng = random.Random(f"{seed}-night-{night}")
    seen = {(p, c[-1]["content"], r[-1]["content"]) for p, c, r in zip(pool["prompt"], pool["chosen"], pool["rejected"])}
    rows = []
    for _ in range(1000 * n):
        if len(rows) == n:
            break
        inst = rng.choice(split.train)
        chosen, rejected = ordinary_pair(inst, rng, spec.writer_skill)
        if (inst.text, chosen, rejected) not in seen:
            seen.add((inst.text, chosen, rejected))
            rows.append(_row(inst, chosen, rejected))
    if len(rows) < n:
        raise ConfigError(f"only {len(rows)} of {n} new pairs could be drawn unlike the pool's; ask for fewer")
    return pd.DataFrame(rows, columns=POOL_COLUMNS)
