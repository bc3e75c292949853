"""Independent re-computation of a finished run's numbers (`prefcurate verify RUN_URI`).

Scoring takes IF as one forward-mode derivative per batch (`torch.func.jvp`) through an
answer-only head, in batches without an attention mask, from π_ref's stored log-probs. Verify
gets the same numbers another way and compares them with what the run stored:

- `val-gradient`: ∇L_val(θ) as the mean of per-pair `loss.backward()` gradients, against
  gradients/val_grad.safetensors;
- `if`: ⟨∇ℓ(θ; d), ∇L_val(θ)⟩ from one `loss.backward()` per pair, on a seeded sample of the
  pool (cosine-normalised when the run was), against scores.parquet;
- `lossdiff`, `irm`: every pair's, from θ, θ_val and π_ref's log-probs taken again from the SFT model;
- `tif`: the IF band applied again to the stored IF;
- `selection`: the run's rule and every comparison rule applied again to the stored scores
  (and the stored reward-model margins, not recomputed), against selection/ and selection/rules/<rule>/.

ℓ is the run's `training.loss_type` as its warm-up manifest recorded it, from `logps.dpo_loss` (the
formula the tests pin to TRL's trainer; what verify re-derives is everything under it), with the
completion lengths ipo needs counted again from verify's own collated batches.

Every model runs through its own HF forward (full logits, attention mask, sdpa attention), so
neither the answer-only head nor the mask-free batching is taken on trust. `float64` runs every
model in double precision: the recomputed side is then exact far below fp32 rounding and what
is left is the run's own error — how a user tells, on a deep model where fp32 jvp and fp32
autograd disagree, which one is off (sdpa, because eager attention takes its softmax in fp32).

Errors are scale-relative: max |stored − recomputed| / max |recomputed| over the check (a
per-value ratio explodes on scores near zero); for `tif` and `selection`, the pairs that differ
over the pool size. Measured on the small toy world (240 pairs, every pair's IF): IF 1.6e-6
(float32) and 1.2e-6 (float64), ∇L_val 5e-7 / 8e-7, IRM 2.9e-6, LossDiff 1.0e-5 / 1.4e-5 (a
small difference of two losses, so fp32 rounding of the log-probs weighs more); fp32 autograd
itself is 1.8e-6 from float64. TOLERANCES sits 30–120× above that: 1e-4, and 1e-3 for LossDiff.
On SmolLM2-135M (30 layers, LoRA, 48 tokens) they hold 7× over: IF 1.3e-5 (float32) / 1.0e-5
(float64). Before loosening `if` on another model, run with `float64`: it measures the stored
(jvp) IF against an exact reference, so a pass means fp32 autograd was the one off, a failure
that the stored IF is.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, Field, ValidationError, computed_field

from prefcurate import io
from prefcurate.checkpoint import load_checkpoint
from prefcurate.config import ModelSource, ScoringConfig, SelectionConfig, TrainingConfig
from prefcurate.data.pairs import read_pairs
from prefcurate.data.stage import IngestOut
from prefcurate.errors import VerifyError, first_line
from prefcurate.manifest import MANIFEST_DIR, StageOutput, manifest_uri, read_manifest
from prefcurate.progress import track
from prefcurate.scoring.influence import load_gradient, trainable_parameters
from prefcurate.scoring.logps import dpo_loss, make_collator, tokenize_pairs
from prefcurate.scoring.stage import GradientOut, RewardOut, ScoreOut
from prefcurate.selection.band import band_mask
from prefcurate.selection.rules import select
from prefcurate.selection.selection import SELECTION_PARQUET
from prefcurate.selection.stage import SelectOut, comparison_selections, with_rewards
from prefcurate.training.stage import ModelOut

log = logging.getLogger("prefcurate.verify")

TOLERANCES = {"val-gradient": 1e-4, "if": 1e-4, "lossdiff": 1e-3, "irm": 1e-4, "tif": 0.0, "selection": 0.0}
BATCH = 8  # pairs per forward of the log-prob passes (each holds its full logits)

Out = TypeVar("Out", bound=StageOutput)


class Check(BaseModel):
    """One recomputed quantity against the run's stored one."""

    name: str = Field(description="What was recomputed (a key of TOLERANCES).")
    n: int = Field(description="Values compared: pairs, or parameter entries for val-gradient.")
    max_abs_error: float = Field(description="max |stored − recomputed|; pairs that differ for tif and selection.")
    max_rel_error: float = Field(description="max_abs_error / max |recomputed|; share of the pool for tif and selection.")
    tolerance: float = Field(description="The largest max_rel_error that passes.")
    detail: str = Field(default="", description="Where the largest error is.")

    @computed_field
    @property
    def passed(self) -> bool:
        return bool(self.max_rel_error <= self.tolerance)  # NaN fails


class VerifyReport(BaseModel):
    """Every check of one run, and those that could not apply to it."""

    run_uri: str
    dtype: str = Field(description="The precision the models ran in: float64 when asked, else as the checkpoints load.")
    sample: int = Field(description="Pairs whose IF was recomputed.")
    n_pool: int
    seed: int
    checks: list[Check]
    skipped: dict[str, str] = Field(default_factory=dict, description="Check → why it does not apply to this run.")

    @computed_field
    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.passed]

    def render(self) -> str:
        """The table the CLI prints, a line per failed check saying where, and the skipped checks."""
        lines = [f"Verify {self.run_uri} ({self.dtype}; IF on {self.sample} of {self.n_pool} pairs, seed {self.seed})",
                 f"  {'check':<13} {'n':>7} {'max abs err':>12} {'max rel err':>12} {'tolerance':>10}  result"]
        for c in self.checks:
            lines.append(f"  {c.name:<13} {c.n:>7} {c.max_abs_error:>12.3g} {c.max_rel_error:>12.3g} {c.tolerance:>10.3g}  "
                         f"{'ok' if c.passed else 'FAILED'}")
        lines += [f"  {c.name}: {c.detail}" for c in self.checks if not c.passed and c.detail]
        lines += [f"  {name}: skipped, {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


# --- the run ---------------------------------------------------------------------------------


@dataclass
class _Run:
    """The finished stages of one run directory, read from its manifests."""

    uri: str
    ingest: IngestOut
    warmup: ModelOut
    val: ModelOut
    gradient: GradientOut | None
    score: ScoreOut
    select: SelectOut
    rewards: RewardOut | None = None

    def at(self, output: StageOutput, uri: str) -> str:
        """`uri` under this run directory: a run copied or moved elsewhere keeps its manifests' paths."""
        base = output.meta.run_uri.rstrip("/") if output.meta is not None else None
        if base is None or not (uri == base or uri.startswith(base + "/")):
            return uri
        rest = uri[len(base):].strip("/")
        return io.join(self.uri, rest) if rest else self.uri


def _manifest(run: str, stage: str, kind: type[Out]) -> Out:
    uri = manifest_uri(run, stage)
    if not io.exists(uri):
        raise VerifyError(f"{run} has no finished `{stage}` stage ({uri} is missing); verify needs a run that "
                          "`prefcurate curate` scored and selected")
    try:
        return read_manifest(kind, uri)
    except ValueError as exc:  # pydantic's ValidationError and bad JSON alike
        raise VerifyError(f"{uri} is not a readable `{stage}` manifest ({first_line(exc)}); rerun the stage") from exc


def _section(output: StageOutput, name: str) -> dict[str, Any]:
    """Config section `name` as the stage that wrote `output` read it (whole, or dotted fields)."""
    config = output.meta.config if output.meta is not None else {}
    if name in config:
        return config[name]
    return {k[len(name) + 1:]: v for k, v in config.items() if k.startswith(name + ".")}


def _configs(run: _Run) -> tuple[TrainingConfig, ScoringConfig, SelectionConfig]:
    try:
        return (TrainingConfig.model_validate(_section(run.warmup, "training")),
                ScoringConfig.model_validate(_section(run.score, "scoring")),
                SelectionConfig.model_validate(_section(run.select, "selection")))
    except ValidationError as exc:
        raise VerifyError(f"{run.uri}: a manifest's recorded config does not load ({first_line(exc)}); "
                          "verify it with the prefcurate version that made the run") from exc


def open_run(uri: str) -> _Run:
    """The stages verify reads, or a one-line VerifyError naming the first one missing."""
    run = uri.rstrip("/") if io.is_remote(uri) else os.path.abspath(uri)
    if not io.exists(io.join(run, MANIFEST_DIR)):
        raise VerifyError(f"{run} holds no {MANIFEST_DIR}/: not a prefcurate run directory "
                          "(give <root>/<run>, e.g. runs/default)")
    score, select = _manifest(run, "score", ScoreOut), _manifest(run, "select", SelectOut)
    with_if = ScoringConfig.model_validate(_section(score, "scoring")).compute_if
    rated = bool(_section(select, "selection").get("reward_model"))  # an external reward model's margins too
    return _Run(uri=run, ingest=_manifest(run, "ingest", IngestOut), warmup=_manifest(run, "warmup", ModelOut),
                val=_manifest(run, "val", ModelOut),
                gradient=_manifest(run, "val-gradient", GradientOut) if with_if else None,
                score=score, select=select, rewards=_manifest(run, "reward-scores", RewardOut) if rated else None)


# --- the independent forward and backward -----------------------------------------------------


@dataclass
class _Pairs:
    ids: list[str]
    examples: list[dict]


def _pairs(pairs: Any, tokenizer: Any) -> _Pairs:
    tokenized = tokenize_pairs(pairs, tokenizer)
    columns = [tokenized[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")]
    return _Pairs(list(tokenized["pair_id"]),
                  [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in zip(*columns)])


def _model(source: ModelSource | str, float64: bool, device: torch.device) -> tuple[Any, Any]:
    """A checkpoint with sdpa attention in verify's precision (an adapter checkpoint: base + adapter,
    whose trainable A and B are the parameters the scoring stage's IF is taken over)."""
    ckpt = load_checkpoint(source, attn_implementation="sdpa")
    model = ckpt.model
    if float64:
        model = model.to(torch.float64)
    return model.to(device).eval(), ckpt.tokenizer


def _sequence_logps(model: Any, batch: dict, device: torch.device) -> torch.Tensor:
    """Summed completion log-probs of each row from the model's own forward: full logits, attention mask."""
    ids = batch["input_ids"].to(device)
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(device), use_cache=False).logits[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    token = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    mask = batch["completion_mask"][:, 1:].to(device).bool()
    return torch.where(mask, token, torch.zeros_like(token)).sum(-1)


@torch.no_grad()
def _logps(model: Any, pairs: _Pairs, collator: Any, device: torch.device, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """(chosen, rejected) summed log-probs of every pair, float64."""
    chosen, rejected = [], []
    for start in track(range(0, len(pairs.ids), BATCH), desc=desc):
        c, r = _sequence_logps(model, collator(pairs.examples[start:start + BATCH]), device).chunk(2)
        chosen.append(c.double().cpu())
        rejected.append(r.double().cpu())
    return torch.cat(chosen).numpy(), torch.cat(rejected).numpy()


def _completion_lengths(pairs: _Pairs, collator: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) completion tokens of every pair after truncation (the ipo loss's normaliser)."""
    counts = [collator([e])["completion_mask"].sum(-1) for e in pairs.examples]
    return torch.stack([c[0] for c in counts]), torch.stack([c[1] for c in counts])


def _pair_gradient(model: Any, params: dict[str, torch.Tensor], example: dict, collator: Any, ref: tuple[float, float],
                   beta: float, loss_type: str, device: torch.device) -> dict[str, torch.Tensor]:
    """∇ℓ(θ; d) over `params` for one pair: its own forward and `loss.backward()`, float64."""
    model.zero_grad(set_to_none=True)
    batch = collator([example])
    chosen, rejected = _sequence_logps(model, batch, device).chunk(2)
    ref_c, ref_r = (torch.tensor([v], dtype=chosen.dtype, device=device) for v in ref)
    lengths = batch["completion_mask"].to(device).sum(-1).chunk(2)
    loss, _ = dpo_loss(chosen, rejected, ref_c, ref_r, beta, loss_type=loss_type, lengths=lengths)
    loss.sum().backward()
    return {name: (torch.zeros_like(p) if p.grad is None else p.grad).detach().double() for name, p in params.items()}


def sample_rows(pair_ids: list[str], n: int, seed: int) -> list[int]:
    """Rows of `n` pairs drawn with `seed` from the pool sorted by pair_id (the same pairs whatever
    the row order), in pool order."""
    order = np.argsort(np.asarray(pair_ids, dtype=str), kind="stable")
    return sorted(np.random.default_rng(seed).choice(order, size=min(n, len(order)), replace=False).tolist())


# --- comparisons ------------------------------------------------------------------------------


def _compare(name: str, stored: np.ndarray, recomputed: np.ndarray, ids: list[str], tolerance: float) -> Check:
    stored, recomputed = np.asarray(stored, dtype=float), np.asarray(recomputed, dtype=float)
    diff = np.abs(stored - recomputed)
    diff[~np.isfinite(diff)] = np.inf
    i = int(np.argmax(diff))
    scale = float(np.abs(recomputed).max())
    worst = float(diff[i])
    rel = worst / scale if scale > 0 else (0.0 if worst == 0 else math.inf)
    detail = f"largest at pair {ids[i]}: stored {stored[i]:.9g}, recomputed {recomputed[i]:.9g}"
    return Check(name=name, n=len(ids), max_abs_error=worst, max_rel_error=rel, tolerance=tolerance, detail=detail)


def _gradient_check(stored: dict[str, torch.Tensor], recomputed: dict[str, torch.Tensor], tolerance: float) -> Check:
    n = sum(t.numel() for t in recomputed.values())
    odd = sorted(set(stored) ^ set(recomputed)) + sorted(k for k in recomputed if k in stored
                                                         and stored[k].shape != recomputed[k].shape)
    if odd:
        return Check(name="val-gradient", n=n, max_abs_error=math.inf, max_rel_error=math.inf, tolerance=tolerance,
                     detail=f"the stored gradient is over other parameters than θ's trainable ones (e.g. {odd[:3]})")
    worst, where, scale = 0.0, "", 0.0
    for name, value in recomputed.items():
        diff = float(torch.nan_to_num((stored[name].to(value) - value).abs(), nan=math.inf).max())
        scale = max(scale, float(value.abs().max()))
        if diff > worst or not where:
            worst, where = diff, name
    rel = worst / scale if scale > 0 else (0.0 if worst == 0 else math.inf)
    return Check(name="val-gradient", n=n, max_abs_error=worst, max_rel_error=rel, tolerance=tolerance,
                 detail=f"largest in {where}")


def _tif_check(scores: pd.DataFrame, scoring: ScoringConfig, tolerance: float) -> Check:
    """TIF again from the stored IF and the run's band."""
    inside, q_lo, q_hi = band_mask(scores["if"].to_numpy(dtype=float), scoring.tif_band)
    differ = (scores["tif"].astype("boolean") != inside).fillna(True).to_numpy(dtype=bool)
    ids = scores["pair_id"].astype(str)[differ].head(3).tolist()
    return Check(name="tif", n=len(scores), max_abs_error=float(differ.sum()), max_rel_error=float(differ.mean()),
                 tolerance=tolerance, detail=f"IF band ({q_lo:.6g}, {q_hi:.6g}); pairs flagged otherwise, e.g. {ids}")


def _selection_check(run: _Run, scores: pd.DataFrame, config: SelectionConfig, tolerance: float) -> Check:
    """The run's rule and every comparison rule applied again to the stored scores, against the kept ids it wrote."""
    again = {config.rule: select(scores, config)}
    again.update(comparison_selections(scores, config, again[config.rule].n_kept))
    dirs = {config.rule: run.select.selection.uri, **{rule: ref.uri for rule, ref in run.select.rules.items()}}
    stored = {rule: set(io.read_parquet(io.join(run.at(run.select, d), SELECTION_PARQUET))["pair_id"].astype(str))
              for rule, d in dirs.items()}
    differ = {rule: len(stored.get(rule, set()) ^ set(again[rule].kept_ids if rule in again else ()))
              for rule in sorted(set(stored) | set(again))}
    worst = max(differ.values())
    bad = ", ".join(f"{rule} ({n} pairs)" for rule, n in differ.items() if n)
    return Check(name="selection", n=len(scores), max_abs_error=float(worst), max_rel_error=worst / len(scores),
                 tolerance=tolerance, detail=f"kept pairs differ for {bad}" if bad else f"{len(differ)} selections")


# --- the whole check --------------------------------------------------------------------------


def _influence(policy: Any, pool: _Pairs, validation: _Pairs, ref_pool: tuple, ref_val: tuple, rows: list[int],
               collator: Any, beta: float, loss_type: str, cosine: bool,
               device: torch.device) -> tuple[dict[str, torch.Tensor], list[float]]:
    """∇L_val(θ) as the mean of per-pair gradients, and the IF of the pool's `rows` against it."""
    params = trainable_parameters(policy)
    val_grad = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in params.items()}
    for i in track(range(len(validation.ids)), desc="∇L_val (per-pair backward)", unit="pairs"):
        g = _pair_gradient(policy, params, validation.examples[i], collator, (ref_val[0][i], ref_val[1][i]), beta, loss_type,
                           device)
        for name in val_grad:
            val_grad[name] += g[name] / len(validation.ids)
    val_norm = math.sqrt(sum(float((t**2).sum()) for t in val_grad.values()))
    influence = []
    for i in track(rows, desc="IF (per-pair backward)", unit="pairs"):
        g = _pair_gradient(policy, params, pool.examples[i], collator, (ref_pool[0][i], ref_pool[1][i]), beta, loss_type,
                           device)
        value = sum(float((g[name] * val_grad[name]).sum()) for name in g)
        if cosine:
            norm = math.sqrt(sum(float((t**2).sum()) for t in g.values()))
            value = value / (norm * val_norm) if norm * val_norm > 0 else 0.0
        influence.append(value)
    return val_grad, influence


def verify_run(uri: str, *, sample: int = 64, seed: int = 0, float64: bool = False,
               tolerances: dict[str, float] | None = None, device: str | None = None) -> VerifyReport:
    """Recompute the run at `uri` (`<root>/<run>`, local or s3://) independently and compare.

    `sample` pairs (drawn with `seed`) get the per-pair autograd IF; LossDiff and IRM are
    recomputed for every pair. `tolerances` overrides TOLERANCES by check name. `device`:
    where the models run (default: cuda when available).
    """
    unknown = sorted(set(tolerances or {}) - set(TOLERANCES))
    if unknown:
        raise VerifyError(f"no check named {unknown}; tolerances are set for {sorted(TOLERANCES)}")
    if sample < 1:
        raise VerifyError(f"sample={sample}: recompute the IF of at least one pair")
    tol = {**TOLERANCES, **(tolerances or {})}
    run = open_run(uri)
    training, scoring, selection = _configs(run)
    scores = io.read_parquet(run.at(run.score, run.score.scores.uri))
    by_id = scores.set_index("pair_id")
    rewards = io.read_parquet(run.at(run.rewards, run.rewards.rewards.uri)) if run.rewards is not None else None
    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pool_pairs = read_pairs(run.at(run.ingest, run.ingest.train.uri))
    val_pairs = read_pairs(run.at(run.ingest, run.ingest.validation.uri))

    # π_ref as the reference stage ran it (the SFT model's tokenizer), θ and θ_val as scoring did (the warm-up's)
    log.info("verify: π_ref log-probs again from the SFT model")
    sft, tokenizer = _model(run.ingest.sft, float64, where)
    collator = make_collator(tokenizer, training.max_length, training.truncation_mode)
    ref_pool = _logps(sft, _pairs(pool_pairs, tokenizer), collator, where, "π_ref log-probs (pool)")
    ref_val = _logps(sft, _pairs(val_pairs, tokenizer), collator, where, "π_ref log-probs (validation)")
    del sft

    log.info("verify: θ (warm-up) log-probs, ∇L_val and per-pair IF")
    policy, tokenizer = _model(run.at(run.warmup, run.warmup.model.uri), float64, where)
    collator = make_collator(tokenizer, training.max_length, training.truncation_mode)
    pool, validation = _pairs(pool_pairs, tokenizer), _pairs(val_pairs, tokenizer)
    theta = _logps(policy, pool, collator, where, "θ log-probs")
    dtype = str(next(policy.parameters()).dtype).removeprefix("torch.")
    rows = sample_rows(pool.ids, sample, seed)
    checks, skipped = [], {}
    if run.gradient is not None:
        val_grad, influence = _influence(policy, pool, validation, ref_pool, ref_val, rows, collator, training.beta,
                                         training.loss_type, scoring.cosine, where)
        stored_grad = load_gradient(run.at(run.gradient, run.gradient.gradient.uri)).tensors
        checks.append(_gradient_check(stored_grad, val_grad, tol["val-gradient"]))
        ids = [pool.ids[i] for i in rows]
        checks.append(_compare("if", by_id["if"].reindex(ids).to_numpy(dtype=float), np.array(influence), ids, tol["if"]))
    else:
        skipped = {name: "the run computed no IF (scoring.compute_if=false)" for name in ("val-gradient", "if", "tif")}
    del policy

    log.info("verify: θ_val log-probs")
    val_model, _ = _model(run.at(run.val, run.val.model.uri), float64, where)
    theta_val = _logps(val_model, pool, collator, where, "θ_val log-probs")
    del val_model

    ref_c, ref_r = (torch.from_numpy(a) for a in ref_pool)
    loss_of = dict(loss_type=training.loss_type, lengths=_completion_lengths(pool, collator))
    loss, irm = dpo_loss(*(torch.from_numpy(a) for a in theta), ref_c, ref_r, training.beta, **loss_of)
    loss_val, _ = dpo_loss(*(torch.from_numpy(a) for a in theta_val), ref_c, ref_r, training.beta, **loss_of)
    stored = by_id.reindex(pool.ids)
    checks.append(_compare("lossdiff", stored["lossdiff"].to_numpy(dtype=float), (loss - loss_val).numpy(), pool.ids,
                           tol["lossdiff"]))
    checks.append(_compare("irm", stored["irm"].to_numpy(dtype=float), irm.numpy(), pool.ids, tol["irm"]))
    if run.gradient is not None:
        checks.append(_tif_check(scores, scoring, tol["tif"]))
    checks.append(_selection_check(run, with_rewards(scores, rewards), selection, tol["selection"]))
    return VerifyReport(run_uri=run.uri, dtype=dtype, sample=len(rows), n_pool=len(pool.ids), seed=seed,
                        checks=checks, skipped=skipped)
