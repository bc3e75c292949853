"""A tiny Llama-architecture causal LM for the toy world, built from a config alone.

Eager attention on purpose: torch.func (the jvp behind exact influence) fails with sdpa
and an explicit attention mask (DESIGN §8).
"""

from __future__ import annotations

from typing import Literal

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

SIZES = {
    # name: (layers, hidden, intermediate, heads)
    "small": (1, 64, 128, 4),
    "default": (2, 128, 256, 4),
}


def build_model(
    tokenizer: PreTrainedTokenizerBase, size: Literal["small", "default"] = "default", seed: int = 0
) -> LlamaForCausalLM:
    """A randomly initialised Llama sized for 2 CPU cores (default: 2 layers, hidden 128)."""
    layers, hidden, intermediate, heads = SIZES[size]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
