"""The SFT bootstrap: a tiny model trained with TRL's SFTTrainer on noisy demonstrations.

The demonstrations come from writers of middling skill, so the SFT model is decent but
imperfect — the starting point preference curation is meant to improve, as a real SFT
checkpoint would be.
"""

from __future__ import annotations

import random
import tempfile

import torch
from datasets import Dataset
from datasets.utils import logging as ds_logging
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging
from trl import SFTConfig, SFTTrainer

from prefcurate.toyworld.task import Instruction, imperfect_answer, quality
from prefcurate.training.quiet import quiet_trainer


class SFTSpec(BaseModel):
    """How the bootstrap model is trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_rows: int = Field(default=3000, ge=1, description="Demonstrations (drawn with repetition from the training instructions).")
    skill: tuple[float, float] = Field(default=(0.6, 0.8), description="Range of the demonstrators' skill: mostly good, not perfect.")
    epochs: float = Field(default=3.0, gt=0.0, description="Passes over the demonstrations.")
    learning_rate: float = Field(default=2e-3, gt=0.0, description="AdamW learning rate.")
    batch_size: int = Field(default=32, ge=1, description="Demonstrations per optimiser step.")


def demonstrations(instructions: list[Instruction], spec: SFTSpec, seed: int) -> Dataset:
    """Conversational (`messages`) rows: a training instruction and an imperfect answer."""
    rng = random.Random(seed)
    rows = []
    for _ in range(spec.n_rows):
        inst = rng.choice(instructions)
        answer = imperfect_answer(inst, rng, rng.uniform(*spec.skill))
        rows.append({"messages": [{"role": "user", "content": inst.text}, {"role": "assistant", "content": answer}]})
    return Dataset.from_list(rows)


def train_sft(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: Dataset, spec: SFTSpec, seed: int
) -> PreTrainedModel:
    """Train `model` in place on `data` with loss on assistant tokens only; returns it.

    The trainer writes nothing: the caller saves the model as a checkpoint.
    """
    with tempfile.TemporaryDirectory(prefix="prefcurate-sft-") as scratch:
        config = SFTConfig(
            output_dir=scratch,
            num_train_epochs=spec.epochs,
            learning_rate=spec.learning_rate,
            per_device_train_batch_size=spec.batch_size,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,
            assistant_only_loss=True,
            max_length=64,
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            seed=seed,
            data_seed=seed,
            use_cpu=True,
            activation_checkpointing=False,  # TRL turns it on by default; a tiny model only pays its cost
            dataloader_num_workers=0,
            disable_tqdm=False,
        )
        # Quiet: no per-step logs or dataset-map bars; the training bar stays.
        verbosity, bars = hf_logging.get_verbosity(), ds_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        ds_logging.disable_progress_bar()
        try:
            trainer = quiet_trainer(SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer))
            trainer.train()
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                ds_logging.enable_progress_bar()
    model.eval()
    return trainer.model


@torch.no_grad()
def answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    instructions: list[str],
    *,
    sample: bool = False,
    seed: int = 0,
    max_new_tokens: int = 12,
) -> list[str]:
    """The model's answers through the chat template (greedy, or sampled at temperature 1).

    Used to measure the bootstrap under the oracle; sampling shows the demonstrators' noise
    the model has learnt, which greedy decoding hides.
    """
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    try:
        batch = tokenizer.apply_chat_template(
            [[{"role": "user", "content": text}] for text in instructions],
            add_generation_prompt=True,
            padding=True,
            return_tensors="pt",
            return_dict=True,
        )
    finally:
        tokenizer.padding_side = side
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            top_k=None,
            top_p=None,
            temperature=1.0,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def mean_quality(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, instructions: list[str], *, sample: bool = False, seed: int = 0
) -> float:
    """Mean oracle quality of the model's answers to `instructions`."""
    outputs = answers(model, tokenizer, instructions, sample=sample, seed=seed)
    return sum(quality(inst, out) for inst, out in zip(instructions, outputs)) / len(instructions)
