"""A reward model for a built toy world, for the `reward-model` baseline.

An external reward model is trained on other preference data than the pool it filters. Here it
is the world's SFT model with a one-output head (`LlamaForSequenceClassification`, the
InstructGPT recipe), trained with TRL's RewardTrainer on fresh pairs of the world's training
instructions, each ordered by the oracle — pairs of its own, drawn apart from the pool, never
the pool itself or its validation set.
"""

from __future__ import annotations

import random
import tempfile
from typing import Any

import torch
from datasets import Dataset
from datasets.utils import logging as ds_logging
from pydantic import BaseModel, ConfigDict, Field
from transformers import AutoModelForSequenceClassification
from transformers.utils import logging as hf_logging
from trl import RewardConfig, RewardTrainer

from prefcurate import io
from prefcurate.checkpoint import METADATA_FILE, save_checkpoint
from prefcurate.errors import ConfigError
from prefcurate.scoring.reward_model import RewardModel
from prefcurate.toyworld.build import World, one_torch_thread
from prefcurate.toyworld.pool import ordinary_pair, split_instructions
from prefcurate.toyworld.task import quality
from prefcurate.toyworld.tokenizer import build_tokenizer
from prefcurate.training.quiet import quiet_trainer


class RewardSpec(BaseModel):
    """How the toy reward model is trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_pairs: int = Field(default=2000, ge=2, description="Oracle-ordered training pairs (training instructions, fresh draws).")
    epochs: float = Field(default=2.0, gt=0.0, description="Passes over the pairs.")
    learning_rate: float = Field(default=1e-3, gt=0.0, description="AdamW learning rate.")
    batch_size: int = Field(default=32, ge=1, description="Pairs per optimiser step.")


def reward_pairs(world: World, spec: RewardSpec, seed: int) -> Dataset:
    """Explicit-prompt conversational pairs (TRL's schema) on the world's training instructions, the better
    answer (by the oracle) chosen; drawn with a seed of their own, so they are not the pool's pairs."""
    split = split_instructions(world.spec.pool, world.spec.seed)
    rng = random.Random(f"{seed}-reward-model")
    rows = []
    for _ in range(spec.n_pairs):
        inst = rng.choice(split.train)
        chosen, rejected = ordinary_pair(inst, rng, world.spec.pool.writer_skill)
        rows.append({"prompt": [{"role": "user", "content": inst.text}],
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}]})
    return Dataset.from_list(rows)


def _train(model: Any, tokenizer: Any, data: Dataset, spec: RewardSpec, seed: int) -> Any:
    """TRL's RewardTrainer (the Bradley–Terry loss) on `data`; the trainer writes nothing, the caller saves."""
    with tempfile.TemporaryDirectory(prefix="prefcurate-rm-") as scratch:
        args = RewardConfig(
            output_dir=scratch, num_train_epochs=spec.epochs, learning_rate=spec.learning_rate,
            per_device_train_batch_size=spec.batch_size, lr_scheduler_type="cosine", warmup_steps=0.05, max_length=128,
            save_strategy="no", logging_strategy="no", report_to="none", seed=seed, data_seed=seed, use_cpu=True,
            activation_checkpointing=False, dataloader_num_workers=0, disable_tqdm=False,
        )  # fmt: skip
        bars = ds_logging.is_progress_bar_enabled()
        ds_logging.disable_progress_bar()
        try:
            trainer = quiet_trainer(RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer))
            trainer.train()
        finally:
            if bars:
                ds_logging.enable_progress_bar()
    return trainer.model.eval()


def accuracy(model: RewardModel, conversations_chosen: list, conversations_rejected: list) -> float:
    """Share of pairs whose chosen conversation the reward model scores above the rejected one."""
    chosen = model.rewards([list(c) for c in conversations_chosen])[0]
    rejected = model.rewards([list(r) for r in conversations_rejected])[0]
    return sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)


def oracle_accuracy(model: RewardModel, frame: Any) -> float:
    """`accuracy` against the oracle's order of a frame of full conversations (UltraFeedback schema): each pair
    ordered by true quality, ties left out — so a flipped label counts for the model that catches it."""
    better, worse = [], []
    for prompt, chosen, rejected in zip(frame["prompt"], frame["chosen"], frame["rejected"]):
        q_chosen, q_rejected = quality(prompt, chosen[-1]["content"]), quality(prompt, rejected[-1]["content"])
        if q_chosen != q_rejected:
            better.append(chosen if q_chosen > q_rejected else rejected)
            worse.append(rejected if q_chosen > q_rejected else chosen)
    return accuracy(model, better, worse)


def build_reward_model(world: World, out_dir: str, *, seed: int | None = None, spec: RewardSpec | None = None) -> dict:
    """Train the toy reward model for `world` and save it at `out_dir` (reused when built from the same world,
    seed and spec); returns its fingerprint and its accuracy against the oracle on the pool and validation set."""
    spec = spec or RewardSpec()
    seed = world.spec.seed if seed is None else seed
    digest = io.sha256_json({"world": world.spec.digest, "seed": seed, "spec": spec.model_dump(mode="json")})
    marker = io.join(out_dir, METADATA_FILE)
    if io.exists(marker):
        meta = io.read_json(marker)
        if meta.get("reward_digest") != digest:
            raise ConfigError(f"{out_dir} holds another model than this world's reward model of seed {seed}; "
                              "choose another --out or delete it")
        return {**meta["stats"], "fingerprint": meta["fingerprint"], "checkpoint_dir": out_dir}
    tokenizer = build_tokenizer()
    with one_torch_thread():
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "score.weight newly initialized" is the point: a fresh reward head
        try:
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(world.checkpoint_dir, num_labels=1,
                                                                       use_safetensors=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        model.config.pad_token_id = tokenizer.pad_token_id
        model = _train(model, tokenizer, reward_pairs(world, spec, seed), spec, seed)
        scorer = RewardModel(model, tokenizer, uri=out_dir, fingerprint="", batch_size=64)
        stats = {"seed": seed, "n_pairs": spec.n_pairs, "epochs": spec.epochs,
                 "oracle_accuracy_pool": round(oracle_accuracy(scorer, io.read_parquet(world.pool_parquet)), 4),
                 "oracle_accuracy_validation": round(oracle_accuracy(scorer, io.read_parquet(world.validation_parquet)), 4)}
        fingerprint = save_checkpoint(model, tokenizer, out_dir, metadata={
            "source": "prefcurate toy world reward model", "world_digest": world.spec.digest, "reward_digest": digest,
            "stats": stats})  # fmt: skip
    return {**stats, "fingerprint": fingerprint, "checkpoint_dir": out_dir}

