"""Per-pair scores of a pool: IF/TIF, LossDiff, IRM and the log-probs behind them.

Per `training.loss_type` ℓ (`logps.dpo_loss`): IF(d) = ⟨∇ℓ(θ; d), ∇L_val(θ)⟩ with L_val the mean ℓ
over the validation set, LossDiff(d) = ℓ(θ; d) − ℓ(θ_val; d) (`loss_warmup` − `loss_val`), and
IRM(d) = β·m_θ(d), the implicit reward margin, the same for every loss type.

Scoring runs in shards so an orchestrator can cache each shard, resume after a crash and
map shards over workers: `score_shard` scores a subset with no pool-wide state, and
`finalize_scores` adds what needs the whole pool (TIF's IF percentiles). π_ref's
log-probs are never recomputed here; they come from the stored reference frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from prefcurate.checkpoint import load_checkpoint
from prefcurate.compute import place
from prefcurate.config import ComputeConfig, ScoringConfig, TrainingConfig
from prefcurate.errors import ScoringError
from prefcurate.scoring.influence import ValidationGradient, influence_scores
from prefcurate.scoring.logps import (
    compute_logps,
    dpo_loss,
    frame_lengths,
    reference_index,
    reference_tensors,
    tokenize_pairs,
)
from prefcurate.selection.band import band_mask

SCORE_COLUMNS = [
    "pair_id", "if", "tif", "lossdiff", "irm",
    "ref_chosen_logps", "ref_rejected_logps",
    "policy_chosen_logps", "policy_rejected_logps",
    "val_chosen_logps", "val_rejected_logps",
    "loss_warmup", "loss_val", "chosen_len", "rejected_len", "truncated",
    "score_chosen", "score_rejected",
]  # fmt: skip


@dataclass
class ScoringModels:
    """The warm-up model θ and θ_val (base + their adapters when training is LoRA)."""

    tokenizer: PreTrainedTokenizerBase
    policy: Any
    val: Any
    policy_fingerprint: str | None = None
    val_fingerprint: str | None = None


def load_scoring_models(warmup_dir: str, val_dir: str, compute: ComputeConfig | None = None) -> ScoringModels:
    """Load θ and θ_val from their checkpoints, placed per `compute` (default: where they load, CPU, fp32);
    θ's trainable parameters are the set IF is taken over."""
    warmup = load_checkpoint(warmup_dir)
    val = load_checkpoint(val_dir)
    policy, val_model = warmup.model, val.model
    if compute is not None:
        policy, val_model = place(policy, compute), place(val_model, compute)
    return ScoringModels(warmup.tokenizer, policy, val_model, warmup.fingerprint, val.fingerprint)


def shard_ranges(n_pairs: int, shard_size: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) row ranges (deterministic, so a shard's cache key is stable)."""
    return [(start, min(start + shard_size, n_pairs)) for start in range(0, n_pairs, shard_size)]


def _passthrough(pairs: Dataset, name: str) -> np.ndarray:
    if name not in pairs.column_names:
        return np.full(len(pairs), np.nan)
    return np.array([np.nan if v is None else float(v) for v in pairs[name]], dtype=float)


def score_shard(
    pairs: Dataset,
    *,
    models: ScoringModels,
    ref_logps: pd.DataFrame,
    gradient: ValidationGradient | None,
    training: TrainingConfig,
    scoring: ScoringConfig,
) -> pd.DataFrame:
    """Scores of one shard: every SCORE_COLUMNS column except `tif` (pool-wide, see finalize_scores).
    `pairs` may come tokenized already (`tokenize_pairs`), e.g. when π_ref's log-probs were just taken on them."""
    tokenized = tokenize_pairs(pairs, models.tokenizer)
    shape = dict(batch_size=scoring.batch_size, max_length=training.max_length, truncation_mode=training.truncation_mode,
                 max_tokens_per_batch=scoring.max_tokens_per_batch)  # fmt: skip
    ids = list(tokenized["pair_id"])
    ref_logps = reference_index(ref_logps)
    ref_c, ref_r = reference_tensors(ref_logps, ids)
    if scoring.compute_if:
        if gradient is None:
            raise ScoringError("compute_if is on but no validation gradient was given; compute it first or set scoring.compute_if=false")
        policy = influence_scores(
            models.policy, models.tokenizer, tokenized, ref_logps, gradient,
            beta=training.beta, loss_type=training.loss_type, cosine=scoring.cosine, desc="θ log-probs + IF (jvp)", **shape,
        )  # fmt: skip
    else:
        policy = compute_logps(models.policy, models.tokenizer, tokenized, desc="θ log-probs", **shape)
        loss, irm = dpo_loss(_t(policy.chosen_logps), _t(policy.rejected_logps), ref_c, ref_r, training.beta,
                             loss_type=training.loss_type, lengths=frame_lengths(policy))
        policy["loss"], policy["irm"], policy["if"] = loss.double().numpy(), irm.double().numpy(), math.nan
    val = compute_logps(models.val, models.tokenizer, tokenized, desc="θ_val log-probs", **shape)
    loss_val, _ = dpo_loss(_t(val.chosen_logps), _t(val.rejected_logps), ref_c, ref_r, training.beta,
                           loss_type=training.loss_type, lengths=frame_lengths(val))
    frame = pd.DataFrame(
        {
            "pair_id": ids,
            "if": policy["if"].to_numpy(dtype=float),
            "lossdiff": policy["loss"].to_numpy() - loss_val.double().numpy(),
            "irm": policy["irm"].to_numpy(),
            "ref_chosen_logps": ref_c.double().numpy(),
            "ref_rejected_logps": ref_r.double().numpy(),
            "policy_chosen_logps": policy["chosen_logps"].to_numpy(),
            "policy_rejected_logps": policy["rejected_logps"].to_numpy(),
            "val_chosen_logps": val["chosen_logps"].to_numpy(),
            "val_rejected_logps": val["rejected_logps"].to_numpy(),
            "loss_warmup": policy["loss"].to_numpy(),
            "loss_val": loss_val.double().numpy(),
            "chosen_len": policy["chosen_len"].to_numpy(),
            "rejected_len": policy["rejected_len"].to_numpy(),
            "truncated": policy["truncated"].to_numpy(dtype=bool),
            "score_chosen": _passthrough(pairs, "score_chosen"),
            "score_rejected": _passthrough(pairs, "score_rejected"),
        }
    )
    if "grad_norm" in policy:
        frame["grad_norm"] = policy["grad_norm"].to_numpy()
    _check_frame(frame)
    return frame


def _t(series: pd.Series) -> torch.Tensor:
    return torch.tensor(series.to_numpy(), dtype=torch.float32)


def _check_frame(frame: pd.DataFrame) -> None:
    numeric = ["lossdiff", "irm", "loss_warmup", "loss_val", "ref_chosen_logps", "ref_rejected_logps",
               "policy_chosen_logps", "policy_rejected_logps", "val_chosen_logps", "val_rejected_logps"]  # fmt: skip
    bad = ~np.isfinite(frame[numeric].to_numpy()).all(axis=1)
    if bad.any():
        ids = frame.loc[bad, "pair_id"].tolist()
        raise ScoringError(
            f"non-finite scores for {len(ids)} pairs: {ids[:10]}; "
            "check these pairs and the stored reference log-probs (a diverged model gives NaN everywhere)"
        )


def finalize_scores(frames: Iterable[pd.DataFrame], tif_band: tuple[float, float]) -> pd.DataFrame:
    """Join shard frames into the pool's score table and add `tif` = q_lo < IF < q_hi.

    Without IF (`compute_if` off) `tif` is missing (NA), never a made-up value.
    """
    frames = list(frames)
    if not frames:
        raise ScoringError("no scored shards to combine; score at least one shard")
    scores = pd.concat(frames, ignore_index=True)
    dupes = scores["pair_id"][scores["pair_id"].duplicated()].unique().tolist()
    if dupes:
        raise ScoringError(f"{len(dupes)} pair ids scored twice (e.g. {dupes[:5]}); shards must not overlap")
    influence = scores["if"]
    if influence.isna().all():
        scores["tif"] = pd.array([pd.NA] * len(scores), dtype="boolean")
    else:
        if influence.isna().any():
            raise ScoringError("IF is missing for some shards only; rescore them with the same scoring.compute_if")
        inside, _, _ = band_mask(influence.to_numpy(dtype=float), tif_band)
        scores["tif"] = pd.array(inside, dtype="boolean")
    extra = [c for c in scores.columns if c not in SCORE_COLUMNS]
    return scores[SCORE_COLUMNS + extra]


def score_pool(
    pairs: Dataset,
    *,
    models: ScoringModels,
    ref_logps: pd.DataFrame,
    gradient: ValidationGradient | None,
    training: TrainingConfig,
    scoring: ScoringConfig,
) -> pd.DataFrame:
    """Score every shard in this process and finalize: the pool's score table."""
    frames = [
        score_shard(shard, models=models, ref_logps=ref_logps, gradient=gradient, training=training, scoring=scoring)
        for shard in (pairs.select(range(*rows)) for rows in shard_ranges(len(pairs), scoring.shard_size))
    ]
    return finalize_scores(frames, scoring.tif_band)
