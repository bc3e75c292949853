"""The offline real model: the converted checkpoint is the GGUF model, saved as a plain safetensors
checkpoint with its chat template, and a second session reuses it instead of converting again."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file

from prefcurate.checkpoint import load_checkpoint
from tests.real_model import smollm2

pytestmark = pytest.mark.real_model


def test_converted_checkpoint_is_the_gguf_model(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    ckpt = load_checkpoint(str(smollm2_dir))
    assert ckpt.architecture == "LlamaForCausalLM" and 134e6 < ckpt.n_parameters < 135e6
    assert ckpt.model.dtype == torch.float32

    prompt = ckpt.tokenizer.apply_chat_template(smollm2.PROBE_PROMPT, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nWhat is the capital" in prompt
    probe = load_file(str(smollm2_dir / smollm2.PROBE))  # computed by the dequantised GGUF model itself
    ids = ckpt.tokenizer(prompt, return_tensors="pt").input_ids
    assert torch.equal(ids, probe["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(ids).logits, probe["logits"], rtol=0, atol=1e-4)


def test_second_use_reuses_the_cache(smollm2_dir):
    weights = smollm2_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    start = time.perf_counter()
    assert smollm2.checkpoint_dir() == smollm2_dir
    assert time.perf_counter() - start < 1.0 and weights.stat().st_mtime_ns == before
