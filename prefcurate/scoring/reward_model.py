"""An external reward model: one scalar per conversation from a sequence-classification head.

The same scores serve two purposes: the `reward-model` selection baseline (each pool pair's
chosen − rejected margin, the paper's reward-model filtering) and the reward-model judge. A
conversation is rendered through the reward model's own chat template, as TRL's RewardTrainer
renders its training pairs; a tokenizer without one gets the turns joined by blank lines.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any, Sequence

import pandas as pd
import torch

from prefcurate import compute
from prefcurate.checkpoint import load_reward_model
from prefcurate.errors import CheckpointError
from prefcurate.progress import track

Conversation = list[dict[str, str]]
REWARD_COLUMNS = ["pair_id", "reward_chosen", "reward_rejected", "reward_margin", "truncated"]


def conversation(instruction: str, output: str) -> Conversation:
    """One user turn and one assistant answer."""
    return [{"role": "user", "content": instruction}, {"role": "assistant", "content": output}]


class RewardModel:
    """A sequence-classification model with one output (num_labels=1) and its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, *, uri: str, fingerprint: str, batch_size: int = 16,
                 compute_config: Any = None):
        if model.config.num_labels != 1:
            raise CheckpointError(f"reward model {uri} has {model.config.num_labels} labels; a reward model outputs one "
                                  "score (num_labels=1)")
        self.uri, self.fingerprint, self.batch_size, self.compute = uri, fingerprint, batch_size, compute_config
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.model = (compute.place(model, compute_config) if compute_config is not None else model).eval()
        self.max_length = min(tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None) or 1 << 30)

    @classmethod
    def load(cls, source: Any, *, cache_dir: str | os.PathLike | None = None, batch_size: int = 16,
             compute_config: Any = None) -> "RewardModel":
        """A local, s3:// or hub reward model (a ModelSource or its uri), loaded like any checkpoint: safetensors
        only unless allowed, no remote code unless asked."""
        loaded = load_reward_model(source, cache_dir=cache_dir)
        return cls(loaded.model, loaded.tokenizer, uri=str(getattr(source, "uri", source)), fingerprint=loaded.fingerprint,
                   batch_size=batch_size, compute_config=compute_config)

    def _text(self, messages: Conversation) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n\n".join(m["content"] for m in messages)

    def rewards(self, conversations: Sequence[Conversation], desc: str | None = None) -> tuple[list[float], list[bool]]:
        """The reward of each conversation, and whether it was cut to the model's `max_length` to fit."""
        rewards: list[float] = []
        truncated: list[bool] = []
        batches = [conversations[i : i + self.batch_size] for i in range(0, len(conversations), self.batch_size)]
        for batch in track(batches, desc=desc, unit="batches"):
            texts = [self._text(m) for m in batch]
            lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length,
                                 add_special_tokens=False).to(self.model.device)
            with torch.inference_mode(), compute.autocast(self.compute) if self.compute is not None else nullcontext():
                logits = self.model(**enc).logits
            rewards += [float(v) for v in logits[:, 0].float().cpu()]
            truncated += [n > self.max_length for n in lengths]
        return rewards, truncated


def pair_rewards(model: RewardModel, pairs: Any) -> pd.DataFrame:
    """Per pool pair (TRL explicit-prompt schema): the reward of prompt + chosen and of prompt + rejected, and
    their margin."""
    prompts, chosen, rejected = pairs["prompt"], pairs["chosen"], pairs["rejected"]
    conversations = [list(p) + list(c) for p, c in zip(prompts, chosen)] + [list(p) + list(r) for p, r in zip(prompts, rejected)]
    values, cut = model.rewards(conversations, desc=f"Reward model on {len(prompts)} pairs")
    n = len(prompts)
    frame = pd.DataFrame({"pair_id": list(pairs["pair_id"]), "reward_chosen": values[:n], "reward_rejected": values[n:]})
    frame["reward_margin"] = frame["reward_chosen"] - frame["reward_rejected"]
    frame["truncated"] = [a or b for a, b in zip(cut[:n], cut[n:])]
    return frame[REWARD_COLUMNS]
