"""`prefcurate curate` end to end on the real model: LoRA, 36 pairs, short sequences, a tiny
reward-model judge (its verdicts mean nothing; the path is what is checked)."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from prefcurate.flows.cli import app

pytestmark = [pytest.mark.real_model, pytest.mark.slow]


def reward_model(path):
    """A 1-layer sequence-classification model with the toy tokenizer: a judge that answers fast."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from prefcurate.toyworld.tokenizer import build_tokenizer

    tok = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=256, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def real_config(smollm2_dir, data, root) -> dict:
    return {
        "root": str(root / "runs"), "run_name": "real", "cache_dir": str(root / "cache"),
        "model": {"uri": str(smollm2_dir)},
        "data": {"pool_uri": str(data.pool), "validation_uri": str(data.validation), "eval_prompts_uri": str(data.eval_prompts)},
        "training": {"lora": {"r": 4, "alpha": 8}, "max_length": 48, "batch_size": 12, "learning_rate": 1e-3,
                     "warmup_epochs": 1, "val_epochs": 1, "final_epochs": 1, "logging_steps": 1},
        "scoring": {"batch_size": 12},
        "evaluation": {"baselines": ["sft"], "single_score": False,
                       "generation": {"max_new_tokens": 8, "batch_size": 4},
                       "judge": {"kind": "reward-model", "model": str(reward_model(root / "rm"))}},
        "tracking": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "real-model", "register_model": "real-selected"},
        "scaleout": {"torch_threads": 1},
    }  # fmt: skip


def tree_size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_curate_end_to_end_with_lora(smollm2_dir, real_data, prefect_harness, tmp_path):
    config_file = tmp_path / "real.yaml"
    config_file.write_text(yaml.safe_dump(real_config(smollm2_dir, real_data, tmp_path)))
    result = CliRunner().invoke(app, ["curate", "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    assert "token lengths of 36 pairs" in result.output.splitlines()[0]  # printed before the first stage
    # the 40-token prompts (SmolLM2's system turn) leave 8 response tokens: every pair is cut, none dropped
    assert "max_length 48 (keep_start): 36 pairs truncated, 0 dropped" in result.output
    run = tmp_path / "runs" / "real"
    for rel in ("scores/scores.parquet", "selection/selection.json", "eval/leaderboard.csv", "report.md"):
        assert (run / rel).exists(), rel
    sizes = {p.name: tree_size(p) for p in sorted((run / "models").rglob("*")) if p.is_dir() and (p / "prefcurate.json").exists()}
    print(f"run root {tree_size(run) / 1e6:.1f} MB, models {({k: round(v / 1e6, 1) for k, v in sizes.items()})}, "
          f"mlflow artifacts {tree_size(tmp_path / 'mlruns') / 1e6 if (tmp_path / 'mlruns').exists() else 0:.1f} MB")
    # LoRA keeps the run small: every trained model is an adapter on the SFT model (538 MB merged before)
    assert sizes and all(v < 20e6 for v in sizes.values()), sizes
    for model in (p for p in (run / "models").rglob("prefcurate.json")):
        assert (model.parent / "adapter_model.safetensors").is_file() and not (model.parent / "model.safetensors").exists()
    # verify, in float64, holds the stored fp32 scores of the real architecture (30 layers, a 49k vocabulary,
    # LoRA) against an exact reference at the default tolerances (measured on all 36 pairs: IF 1.0e-5,
    # LossDiff 1.5e-5, IRM 5.4e-6, ∇L_val 2.9e-6; float32 autograd: 1.3e-5, 1.6e-5, 8.5e-6, 5.2e-6)
    from prefcurate.verify import verify_run

    report = verify_run(str(run), sample=12, float64=True)
    print(report.render())
    assert report.passed and {c.name for c in report.checks} >= {"if", "lossdiff", "irm", "selection"}, report.render()
