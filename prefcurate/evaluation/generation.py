"""Answers to evaluation instructions, in AlpacaEval's `model_outputs.json` format.

Each instruction is rendered with the model's own chat template (as one user turn plus the
generation prompt), batched with left padding so every answer starts right after its
prompt, and decoded greedily or by seeded sampling. The seed is set per batch inside a
forked RNG, so the same inputs, config and seed give the same answers and the caller's
global RNG is left untouched.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prefcurate import io
from prefcurate.config import GenerationConfig
from prefcurate.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    instructions: Sequence[str],
    config: GenerationConfig,
    generator: str,
    *,
    progress: Progress | None = None,
) -> list[dict]:
    """One AlpacaEval row per (instruction, sample): instruction, output, generator, sample.

    `progress(done, total)` is called after each batch with the number of prompts done.
    """
    _check_inputs(tokenizer, instructions, config)
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        for text in instructions
    ]
    rows: list[dict] = []
    total = len(prompts)
    was_training = model.training
    padding_side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    model.eval()
    try:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        bar = tqdm(total=total, desc=f"generate {generator}", unit="prompt", leave=False)
        for start in range(0, total, config.batch_size):
            batch = prompts[start : start + config.batch_size]
            outputs = _generate_batch(model, tokenizer, batch, config, seed=config.seed + start)
            for i, text in enumerate(instructions[start : start + config.batch_size]):
                for sample in range(config.n_samples):
                    rows.append(
                        {
                            "instruction": text,
                            "output": outputs[i * config.n_samples + sample],
                            "generator": generator,
                            "sample": sample,
                        }
                    )
            bar.update(len(batch))
            if progress is not None:
                progress(min(start + len(batch), total), total)
        bar.close()
    finally:
        tokenizer.padding_side, tokenizer.pad_token = padding_side, pad_token
        model.train(was_training)
    return rows


def _check_inputs(tokenizer: PreTrainedTokenizerBase, instructions: Sequence[str], config: GenerationConfig) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise CheckpointError(
            "the tokenizer has no chat template; set model.chat_template to a Jinja template for this model"
        )
    if config.n_samples > 1 and not config.do_sample:
        raise ConfigError(
            "generation.n_samples > 1 needs generation.do_sample=true: greedy decoding gives the same answer every time"
        )
    bad = [i for i, text in enumerate(instructions) if not isinstance(text, str) or not text.strip()]
    if bad:
        raise DataError(f"{len(bad)} evaluation instructions are empty or not text (first at index {bad[0]}); fix the prompt file")


def _generate_batch(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], config: GenerationConfig, seed: int
) -> list[str]:
    """Decoded answers (new tokens only), `n_samples` consecutive answers per prompt."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    kwargs: dict = {"max_new_tokens": config.max_new_tokens, "do_sample": config.do_sample}
    if config.do_sample:
        # top_k=0 turns off the top-50 default so temperature and top_p alone shape the distribution.
        kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=0, num_return_sequences=config.n_samples)
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []), torch.inference_mode():
        torch.manual_seed(seed)
        out = model.generate(
            **enc, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **kwargs
        )
    new_tokens = out[:, enc["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def write_model_outputs(rows: list[dict], uri: str) -> str:
    """Write AlpacaEval `model_outputs.json` (atomically, local or s3://); returns `uri`."""
    return io.write_json(uri, rows)


def read_model_outputs(uri: str) -> list[dict]:
    """Read a `model_outputs.json`; every row needs a text `instruction` and `output`."""
    rows = io.read_json(uri)
    if not isinstance(rows, list):
        raise DataError(f"{uri} is not a list of rows; expected AlpacaEval model_outputs.json")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str) or not isinstance(row.get("output"), str):
            raise DataError(
                f"{uri} row {i} lacks a text 'instruction' or 'output'; expected AlpacaEval model_outputs.json rows"
            )
    return rows
