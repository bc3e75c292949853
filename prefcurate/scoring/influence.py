"""Exact first-order influence IF(d) = ⟨∇ℓ(θ; d), ∇L_val(θ)⟩ without per-pair gradients.

ℓ is the per-pair loss of the configured `loss_type` (`logps.dpo_loss`: sigmoid, hinge or
ipo) and L_val the mean of the same loss over the validation set, so IF is the first-order
change of the validation loss the DPO stages minimise. For hinge, a pair already past the
margin (β·m ≥ 1) has zero gradient and IF 0.

The validation gradient is one fixed direction, so the IF of every pair in a batch is the
directional derivative of the vector of per-pair losses along it: one forward-mode pass
(`torch.func.jvp`) costs a small multiple of a forward and yields the losses, log-probs
and IF of the whole batch. Gradients are over the model's trainable parameters: all of
them for full fine-tuning; for LoRA, the adapter of θ — both A and B, as the warm-up trained
them — with the base frozen. That is the parameter set the next stages (θ_val, the final
models) keep training, so IF is the first-order effect of a step on `d` in those stages.
(Fresh adapters with B = 0, as before, make ∂ℓ/∂A = 0: IF was then over B alone.)
IF over all base weights would describe full fine-tuning from θ, which a LoRA run never
does, so it is not offered.

Cosine influence divides by the per-pair gradient norm, which needs per-sample gradients
(`vmap(grad)`): a backward per pair and memory of `cosine_chunk × trainable parameters`,
so it is opt-in.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import pandas as pd
import torch
from datasets import Dataset
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch.func import functional_call, grad, jvp, vmap
from transformers import PreTrainedTokenizerBase

from prefcurate import io
from prefcurate.config import LossType
from prefcurate.errors import ScoringError
from prefcurate.scoring.logps import (
    AnswerLogps,
    check_finite,
    dpo_loss,
    iter_batches,
    make_collator,
    reference_index,
    reference_tensors,
    tokenize_pairs,
    truncation_flags,
)

FORMAT = "prefcurate.validation_gradient.v1"


@dataclass
class ValidationGradient:
    """∇L_val(θ) over named trainable parameters, tied to the model it was taken at."""

    tensors: dict[str, torch.Tensor]
    model_fingerprint: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def norm(self) -> float:
        return float(torch.sqrt(sum((t.double() ** 2).sum() for t in self.tensors.values())))


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters gradients are taken over: those with requires_grad (all, or a loaded LoRA adapter's A and B)."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ScoringError("the model has no trainable parameters; unfreeze it or wrap it with LoRA adapters")
    return params


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _losses(head: AnswerLogps, params, input_ids, answer, ref_chosen, ref_rejected, beta, loss_type, lengths):
    """Per-pair losses of `loss_type` (and log-probs as aux) with `params` (keys of `head.model`) swapped in.

    `answer` is `AnswerLogps.answer_tokens(input_ids, completion_mask)` (or `answer_positions`,
    padded per row, under `vmap`): only those positions meet the output head.
    """
    swapped = {f"model.{k}": v for k, v in params.items()}
    logps = functional_call(head, swapped, (input_ids, *answer)) if swapped else head(input_ids, *answer)
    chosen, rejected = logps.chunk(2, dim=0)
    loss, margin = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type=loss_type, lengths=lengths)
    return loss, (chosen, rejected, margin)


def validation_gradient(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    val_pairs: Dataset,
    ref_logps: pd.DataFrame,
    *,
    beta: float,
    loss_type: LossType = "sigmoid",
    batch_size: int = 64,
    max_length: int | None = 512,
    truncation_mode: str = "keep_start",
    max_tokens_per_batch: int | None = None,
    model_fingerprint: str | None = None,
    desc: str | None = "validation gradient",
) -> ValidationGradient:
    """∇ of the mean `loss_type` loss over `val_pairs` at `model`, reference log-probs from `ref_logps`."""
    was_training = model.training
    model.eval()
    params = trainable_parameters(model)
    names = list(params)
    # accumulated in fp32 at least (a float64 model keeps float64: the tests' reference precision)
    total = {name: torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32)) for name, p in params.items()}
    tokenized = tokenize_pairs(val_pairs, tokenizer)
    ref_logps = reference_index(ref_logps)
    n, loss_sum = len(tokenized), 0.0
    device = _device(model)
    # backward through the answer-only head: each chunk's logits are recomputed in the
    # backward pass instead of being kept for the whole batch
    head = AnswerLogps(model, checkpoint_head=True)
    collator = make_collator(tokenizer, max_length, truncation_mode)
    try:
        for ids, batch, _ in iter_batches(tokenized, batch_size, collator, desc, max_tokens_per_batch):
            ref_c, ref_r = (t.to(device) for t in reference_tensors(ref_logps, ids))
            input_ids = batch["input_ids"].to(device)
            mask = batch["completion_mask"].to(device)
            answer = AnswerLogps.answer_tokens(input_ids, mask)
            loss, _ = _losses(head, {}, input_ids, answer, ref_c, ref_r, beta, loss_type, mask.sum(-1).chunk(2))
            check_finite(ids, validation_loss=loss)
            grads = torch.autograd.grad(loss.sum() / n, [params[k] for k in names])
            for name, g in zip(names, grads):
                total[name] += g.to(total[name].dtype)
            loss_sum += float(loss.detach().sum())
    finally:
        model.train(was_training)
    meta = {"format": FORMAT, "n_pairs": str(n), "val_loss": repr(loss_sum / n), "beta": repr(beta),
            "loss_type": loss_type}
    return ValidationGradient({k: v.cpu().contiguous() for k, v in total.items()}, model_fingerprint, meta)


def save_gradient(gradient: ValidationGradient, uri: str) -> str:
    """Write the gradient as safetensors (atomic, local or s3://) with the model fingerprint in its metadata."""
    meta = {**gradient.metadata, "format": FORMAT, "model_fingerprint": gradient.model_fingerprint or ""}
    return io.write_bytes(uri, save_safetensors(gradient.tensors, metadata=meta))


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob (an 8-byte little-endian header size, then JSON)."""
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]).get("__metadata__", {})


def load_gradient(uri: str, expected_fingerprint: str | None = None) -> ValidationGradient:
    """Read a saved gradient; refuse it when it was taken at another model than `expected_fingerprint`."""
    data = io.read_bytes(uri)
    try:
        tensors = load_safetensors(data)
        meta = _safetensors_metadata(data)
    except Exception as exc:
        raise ScoringError(f"{uri} is not a validation gradient file ({exc}); recompute it") from exc
    if meta.get("format") != FORMAT:
        raise ScoringError(f"{uri} is not a prefcurate validation gradient (format {meta.get('format')!r}); recompute it")
    fingerprint = meta.get("model_fingerprint") or None
    if expected_fingerprint is not None and fingerprint != expected_fingerprint:
        raise ScoringError(
            f"{uri} was computed at model {fingerprint}, not at {expected_fingerprint}; "
            "recompute the validation gradient for the current warm-up model"
        )
    return ValidationGradient(tensors, fingerprint, meta)


def _aligned(gradient: ValidationGradient, params: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    missing = sorted(set(params) - set(gradient.tensors))
    extra = sorted(set(gradient.tensors) - set(params))
    if missing or extra:
        raise ScoringError(
            f"validation gradient does not match the model's trainable parameters "
            f"(missing {missing[:3]}, unexpected {extra[:3]}); recompute it with the same LoRA/full setting"
        )
    out = {}
    for name, p in params.items():
        t = gradient.tensors[name]
        if t.shape != p.shape:
            raise ScoringError(f"validation gradient for {name} has shape {tuple(t.shape)}, the model {tuple(p.shape)}; recompute it")
        out[name] = t.to(device=device, dtype=p.dtype)
    return out


def _per_pair_grad_norms(head, params, input_ids, answer, ref_c, ref_r, beta, loss_type, lengths, chunk):
    """‖∇ℓ(θ; d)‖ for each pair of the batch from per-sample gradients (vmap over grad)."""
    n = ref_c.shape[0]
    ids = torch.stack([input_ids[:n], input_ids[n:]], dim=1)  # (pairs, 2, L)
    per_pair = [torch.stack([t[:n], t[n:]], dim=1) for t in answer]  # positions, labels, valid: (pairs, 2, K)
    lengths = torch.stack([lengths[:n], lengths[n:]], dim=1)  # (pairs, 2)

    def single(p, ids_i, positions_i, labels_i, valid_i, rc, rr, len_i):
        loss, _ = _losses(head, p, ids_i, (positions_i, labels_i, valid_i), rc.reshape(1), rr.reshape(1), beta,
                          loss_type, len_i.chunk(2))
        return loss.sum()

    grads = vmap(grad(single), in_dims=(None, 0, 0, 0, 0, 0, 0, 0), chunk_size=chunk)(params, ids, *per_pair, ref_c, ref_r,
                                                                                        lengths)
    return torch.sqrt(sum((g.double() ** 2).flatten(1).sum(-1) for g in grads.values()))


def influence_scores(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Dataset,
    ref_logps: pd.DataFrame,
    gradient: ValidationGradient,
    *,
    beta: float,
    loss_type: LossType = "sigmoid",
    batch_size: int = 64,
    max_length: int | None = 512,
    truncation_mode: str = "keep_start",
    cosine: bool = False,
    cosine_chunk: int = 8,
    max_tokens_per_batch: int | None = None,
    desc: str | None = "influence (jvp)",
) -> pd.DataFrame:
    """IF of every pair at `model` (one jvp per batch), with the pair's `loss_type` loss and log-probs.

    `gradient` must be ∇L_val of the same loss type (its metadata says which; another is refused).

    Columns: pair_id, if, loss, irm, chosen_logps, rejected_logps, chosen_len,
    rejected_len, truncated; with `cosine`, `if` is divided by ‖∇ℓ(θ; d)‖·‖∇L_val‖ (0 when
    a norm is 0) and `grad_norm` is added.
    """
    was_training = model.training
    model.eval()
    device = _device(model)
    params = {k: v.detach() for k, v in trainable_parameters(model).items()}
    taken_with = gradient.metadata.get("loss_type", "sigmoid")  # gradients saved before loss types were sigmoid
    if taken_with != loss_type:
        raise ScoringError(f"the validation gradient is of the {taken_with} loss, scoring asks for {loss_type}; "
                           "recompute it with the same training.loss_type")
    tangent = _aligned(gradient, params, device)
    val_norm = gradient.norm() if cosine else None  # a float64 pass over every parameter: only when used
    tokenized = tokenize_pairs(pairs, tokenizer)
    ref_logps = reference_index(ref_logps)
    collator = make_collator(tokenizer, max_length, truncation_mode)
    head = AnswerLogps(model)
    frames = []
    try:
        for ids, batch, examples in iter_batches(tokenized, batch_size, collator, desc, max_tokens_per_batch):
            ref_c, ref_r = (t.to(device) for t in reference_tensors(ref_logps, ids))
            input_ids = batch["input_ids"].to(device)
            mask = batch["completion_mask"].to(device)
            answer = AnswerLogps.answer_tokens(input_ids, mask)
            lengths = mask.sum(-1)

            def losses(p):
                return _losses(head, p, input_ids, answer, ref_c, ref_r, beta, loss_type, lengths.chunk(2))

            with torch.no_grad():
                loss, influence, (chosen, rejected, margin) = jvp(losses, (params,), (tangent,), has_aux=True)
            check_finite(ids, loss=loss, influence=influence, chosen_logps=chosen, rejected_logps=rejected)
            n, counts = len(ids), lengths.cpu()
            frame = pd.DataFrame(
                {
                    "pair_id": ids,
                    "if": influence.double().cpu().numpy(),
                    "loss": loss.double().cpu().numpy(),
                    "irm": margin.double().cpu().numpy(),
                    "chosen_logps": chosen.double().cpu().numpy(),
                    "rejected_logps": rejected.double().cpu().numpy(),
                    "chosen_len": counts[:n].numpy().astype("int64"),
                    "rejected_len": counts[n:].numpy().astype("int64"),
                    "truncated": [truncation_flags(e, max_length) for e in examples],
                }
            )
            if cosine:
                padded = AnswerLogps.answer_positions(input_ids, mask)  # fixed shapes per pair, for vmap
                norms = _per_pair_grad_norms(head, params, input_ids, padded, ref_c, ref_r, beta, loss_type, lengths,
                                             cosine_chunk)
                frame["grad_norm"] = norms.cpu().numpy()
                denom = frame["grad_norm"] * val_norm
                frame["if"] = (frame["if"] / denom).where(denom > 0, 0.0)
            frames.append(frame)
    finally:
        model.train(was_training)
    return pd.concat(frames, ignore_index=True)
