"""Peer benchmark: exact IF by one jvp per batch against the ways other tools compute or approximate it.

    python -m benchmarks.peers                                # toy and 2-layer Qwen2-shaped, both parameter sets
    python -m benchmarks.peers --models toy --params linear --repeats 3

On one model θ, one pool, one validation set and one exact validation gradient ∇L_val(θ)
(π_ref = θ, as when the warm-up starts), every method scores the pool's DPO losses:

- jvp: prefcurate's `influence_scores` (exact; ∇L_val from `validation_gradient`);
- loop: one backward per pair, dotted with ∇L_val (exact; timed on `--loop-pairs` pairs);
- kronfluence identity: `strategy="identity"`, the query gradient aggregated over the
  validation set — the same quantity over the Linear modules it tracks;
- kronfluence EK-FAC: time only (another quantity: the inverse-Hessian-preconditioned IF);
- dense projection (LESS/TRAK style): per-pair gradients from the loop, projected by a
  dense Gaussian matrix of `--dense-dim` rows generated block by block (it cannot be stored:
  P × k entries, 494 M × k at 0.5 B parameters);
- factored projection (LogIX / bergson style, written here: bergson 2.5.1 needs torchvision,
  torchaudio, torchopt and bitsandbytes, which would replace the pinned torch): per Linear
  layer, the per-pair gradient Σ_t δ_t x_tᵀ is projected as Σ_t (P_out δ_t)(P_in x_t)ᵀ with
  `--factored-dim` rows per side, from forward/backward hooks, one backward per batch.

`--params linear`: only the decoder's Linear weights and biases are trainable (what
kronfluence and the factored projection track); `all`: every parameter, the tied embedding
included (the hook-based peers then track every Linear, the output head too, but not the
embedding lookup or the norms). Agreement is against exact IF (jvp) on the same pairs:
max |error| / max |IF| and Spearman rank correlation. The hook-based peers run the model's
own full-logits forward (their hooks need one row per sequence); prefcurate and the loop use
the answer-only head. Times include the validation side (∇L_val or its projection);
loop and dense are timed on a subset and extrapolated to the pool.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import tempfile
import time

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset as TorchDataset

from benchmarks.scoring import loop_influence, make_model, make_pairs, round_robin
from prefcurate.scoring.influence import influence_scores, trainable_parameters, validation_gradient
from prefcurate.scoring.logps import (
    completion_logps,
    compute_logps,
    dpo_loss,
    iter_batches,
    make_collator,
    reference_index,
    sequence_logps,
    tokenize_pairs,
)
from prefcurate.toyworld.tokenizer import build_tokenizer

SIZES = {  # pool, validation pairs, batch, loop/dense pairs, dense rows
    "toy": dict(pairs=256, val=64, batch=64, loop=256, dense_dim=512),
    "qwen2-2l": dict(pairs=32, val=8, batch=8, loop=8, dense_dim=64),
}


# --- the setting every method shares ------------------------------------------------------


def linear_modules(model: torch.nn.Module, params: str) -> dict[str, torch.nn.Linear]:
    """The Linear modules a hook-based method tracks: the decoder's, plus the output head with `all`."""
    head = model.get_output_embeddings()
    return {n: m for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and (params == "all" or m is not head)}  # fmt: skip


def set_trainable(model: torch.nn.Module, params: str) -> None:
    keep = {id(p) for m in linear_modules(model, "linear").values() for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(params == "all" or id(p) in keep)


class Setting:
    def __init__(self, kind: str, params: str, seed: int = 0):
        size = SIZES[kind]
        self.kind, self.params, self.beta, self.bs = kind, params, 0.5, size["batch"]
        self.tok = build_tokenizer()
        self.model = make_model("toy" if kind == "toy" else "qwen2-0.5b", self.tok, None if kind == "toy" else 2, seed)
        self.model.eval()
        set_trainable(self.model, params)
        self.pairs = tokenize_pairs(make_pairs(size["pairs"], seed, 1), self.tok)
        self.val = tokenize_pairs(make_pairs(size["val"], seed + 1, 1), self.tok)
        logps = lambda d: compute_logps(self.model, self.tok, d, batch_size=self.bs, max_length=None, desc=None)  # noqa: E731
        self.ref, self.ref_val = logps(self.pairs), logps(self.val)
        self.loop_pairs, self.dense_dim = size["loop"], size["dense_dim"]
        self.n_params = sum(p.numel() for p in trainable_parameters(self.model).values())
        self.fixed: dict[str, float] = {}  # validation-side seconds of the methods timed on a subset

    def gradient(self):
        return validation_gradient(self.model, self.tok, self.val, self.ref_val, beta=self.beta, batch_size=self.bs,
                                   max_length=None, desc=None)  # fmt: skip

    def batches(self, data, ref):
        """(collated batch, ref chosen, ref rejected) per batch, in pool order."""
        index = reference_index(ref)
        for ids, batch, _ in iter_batches(data, self.bs, make_collator(self.tok, None, "keep_start")):
            rows = index.loc[ids]
            yield batch, *(torch.tensor(rows[c].to_numpy(), dtype=torch.float32) for c in ("chosen_logps", "rejected_logps"))

    def full_logits_losses(self, model, batch, ref_c, ref_r):
        logits = model(input_ids=batch["input_ids"], use_cache=False).logits
        chosen, rejected = completion_logps(logits, batch["input_ids"], batch["completion_mask"]).chunk(2)
        return dpo_loss(chosen, rejected, ref_c, ref_r, self.beta)[0]


# --- the methods --------------------------------------------------------------------------


def jvp_if(s: Setting) -> np.ndarray:
    gradient = s.gradient()
    scores = influence_scores(s.model, s.tok, s.pairs, s.ref, gradient, beta=s.beta, batch_size=s.bs,
                              max_length=None, desc=None)  # fmt: skip
    return scores["if"].to_numpy()


def loop_if(s: Setting) -> np.ndarray:
    start = time.perf_counter()
    gradient = s.gradient()
    s.fixed["loop"] = time.perf_counter() - start
    return loop_influence(s.model, s.tok, s.pairs.select(range(s.loop_pairs)), s.ref, gradient, s.beta)


def pair_gradients(s: Setting, data, ref):
    """Flattened per-pair gradients (one backward per pair), as LESS / TRAK form them."""
    params = list(trainable_parameters(s.model).values())
    collator = make_collator(s.tok, None, "keep_start")
    index = reference_index(ref)
    for row in data:
        batch = collator([{k: row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}])
        chosen, rejected = sequence_logps(s.model, batch["input_ids"], batch["completion_mask"]).chunk(2)
        ref_c, ref_r = (torch.tensor([index.loc[row["pair_id"], c]], dtype=torch.float32)
                        for c in ("chosen_logps", "rejected_logps"))  # fmt: skip
        loss, _ = dpo_loss(chosen, rejected, ref_c, ref_r, s.beta)
        yield torch.cat([g.flatten() for g in torch.autograd.grad(loss.sum(), params)])


def dense_project(vectors: torch.Tensor, dim: int, seed: int, block: int = 2**20) -> torch.Tensor:
    """vectors (B × P) @ Rᵀ / √dim for a Gaussian R (dim × P) generated block by block, never stored whole."""
    out = torch.zeros(vectors.shape[0], dim)
    gen = torch.Generator()
    for i, start in enumerate(range(0, vectors.shape[1], block)):
        gen.manual_seed(seed * 100_003 + i)
        cols = vectors[:, start : start + block]
        out += cols @ torch.randn(dim, cols.shape[1], generator=gen).T
    return out / math.sqrt(dim)


def dense_if(s: Setting, memory_budget: float = 3.5e9) -> np.ndarray:
    """Per-pair gradients, `group` at a time (∇L_val rides in the first group), one projection per group."""
    start = time.perf_counter()
    pending = [torch.cat([g.flatten() for g in s.gradient().tensors.values()])]
    s.fixed["dense"] = time.perf_counter() - start
    group = max(1, int(memory_budget // (4 * s.n_params)))  # gradients held at once
    projected = []
    for g in pair_gradients(s, s.pairs.select(range(s.loop_pairs)), s.ref):
        pending.append(g)
        if len(pending) >= group:
            projected.append(dense_project(torch.stack(pending), s.dense_dim, 0))
            pending = []
    if pending:
        projected.append(dense_project(torch.stack(pending), s.dense_dim, 0))
    val, *pairs = torch.cat(projected)
    return (torch.stack(pairs) @ val).double().numpy()


def factored_if(s: Setting, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Per-layer factored projection from hooks (one backward per batch), scored against the projected ∇L_val."""
    modules = linear_modules(s.model, s.params)
    gen = torch.Generator().manual_seed(seed)
    proj = {n: (torch.randn(dim, m.in_features + (m.bias is not None), generator=gen) / math.sqrt(dim),
                torch.randn(dim, m.out_features, generator=gen) / math.sqrt(dim)) for n, m in modules.items()}  # fmt: skip

    def projected(batch, ref_c, ref_r, scale=1.0):
        """(rows, modules·dim²): each row's projected gradient of scale × Σ losses."""
        inputs, outputs = {}, {}

        def hook(name):
            def fn(module, args, out):
                x = args[0]
                if module.bias is not None:
                    x = torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1)
                inputs[name], outputs[name] = x.detach() @ proj[name][0].T, out
            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
        try:
            loss = s.full_logits_losses(s.model, batch, ref_c, ref_r).sum() * scale
        finally:
            for h in handles:
                h.remove()
        names = list(outputs)
        deltas = torch.autograd.grad(loss, [outputs[n] for n in names])
        return torch.cat([torch.einsum("rto,rti->roi", d @ proj[n][1].T, inputs[n]).flatten(1)
                          for n, d in zip(names, deltas)], dim=1)  # fmt: skip

    val = sum(projected(b, c, r, 1.0 / len(s.val)).sum(0) for b, c, r in s.batches(s.val, s.ref_val))
    out = []
    for batch, ref_c, ref_r in s.batches(s.pairs, s.ref):
        rows = projected(batch, ref_c, ref_r)
        n = len(ref_c)
        out.append((rows[:n] + rows[n:]) @ val)  # a pair's gradient is the sum of its two rows'
    return torch.cat(out).double().numpy()


class _Rows(TorchDataset):
    """One item per sequence, in collated order (a batch's chosen rows, then its rejected rows), so that
    kronfluence's per-sample dimension is the sequence, and a loader of 2 × batch items is our batch."""

    def __init__(self, s: Setting, data, ref):
        self.items = []
        for batch, ref_c, ref_r in s.batches(data, ref):
            for r, ref_row in enumerate(torch.cat([ref_c, ref_r])):
                self.items.append((batch["input_ids"][r], batch["completion_mask"][r], ref_row))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def kronfluence_if(s: Setting, strategy: str) -> np.ndarray:
    from kronfluence import Analyzer, FactorArguments, ScoreArguments, Task, prepare_model
    from kronfluence.utils.dataset import DataLoaderKwargs

    def losses(batch, model):
        ids, mask, ref = batch
        n = len(ids) // 2
        return s.full_logits_losses(model, {"input_ids": ids, "completion_mask": mask}, ref[:n], ref[n:])

    class DPOTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            return losses(batch, model).sum()

        def compute_measurement(self, batch, model):
            return losses(batch, model).sum() / len(s.val)  # Σ over batches: ∇ of the mean validation loss

        def get_influence_tracked_modules(self):
            return list(linear_modules(s.model, s.params))

    assert len(s.pairs) % s.bs == 0 and len(s.val) % s.bs == 0, "kronfluence batches must be whole pairs"
    train, query = _Rows(s, s.pairs, s.ref), _Rows(s, s.val, s.ref_val)
    task = DPOTask()
    model = prepare_model(copy.deepcopy(s.model), task)
    with tempfile.TemporaryDirectory() as tmp:
        analyzer = Analyzer("peers", model, task, cpu=True, disable_tqdm=True, output_dir=tmp, log_level=logging.WARNING)
        loader = DataLoaderKwargs(collate_fn=lambda items: tuple(torch.stack(x) for x in zip(*items)))
        analyzer.set_dataloader_kwargs(loader)
        factor_args = FactorArguments(strategy=strategy, use_empirical_fisher=True)
        analyzer.fit_all_factors("f", train, per_device_batch_size=2 * s.bs, factor_args=factor_args, overwrite_output_dir=True)
        analyzer.compute_pairwise_scores("s", "f", query, train, per_device_query_batch_size=2 * s.bs,
                                         per_device_train_batch_size=2 * s.bs, overwrite_output_dir=True,
                                         score_args=ScoreArguments(aggregate_query_gradients=True))  # fmt: skip
        rows = analyzer.load_pairwise_scores("s")["all_modules"].sum(0).double()
    per_batch = rows.view(-1, 2, s.bs)  # [batch][chosen/rejected][pair]
    return per_batch.sum(1).flatten().numpy()


# --- the table ----------------------------------------------------------------------------


def agreement(got: np.ndarray, exact: np.ndarray) -> tuple[str, str]:
    exact = exact[: len(got)]
    err = np.abs(got - exact).max() / max(np.abs(exact).max(), 1e-30)
    rho = pd.Series(got).corr(pd.Series(exact), method="spearman")
    return f"{err:.1e}", f"{rho:.4f}"


def run(kind: str, params: str, repeats: int, skip: set[str]) -> list[str]:
    s = Setting(kind, params)
    n = len(s.pairs)
    head_rows = s.model.get_output_embeddings().weight.shape[0]
    ekfac_ok = params == "linear" or head_rows <= 8192  # EK-FAC of the head: a vocabulary² gradient covariance
    jobs = {
        "prefcurate jvp (+ ∇L_val)": (lambda: jvp_if(s), n, "the trainable set"),
        "kronfluence identity": (lambda: kronfluence_if(s, "identity"), n, "Linear modules"),
        "factored projection (16 × 16 / layer)": (lambda: factored_if(s), n, "Linear modules"),
        "per-example loop (+ ∇L_val)": (lambda: loop_if(s), s.loop_pairs, "the trainable set"),
        f"dense projection (k = {s.dense_dim}, + ∇L_val)": (lambda: dense_if(s), s.loop_pairs, "the trainable set"),
    }
    if ekfac_ok:
        jobs["kronfluence EK-FAC (factors + scores)"] = (lambda: kronfluence_if(s, "ekfac"), n, "Linear modules")
    jobs = {k: v for k, v in jobs.items() if not any(k.startswith(x) for x in skip)}
    heavy = {k for k in jobs if "loop" in k or "dense" in k or "EK-FAC" in k}
    outs, best = round_robin(repeats, "cpu", {k: v[0] for k, v in jobs.items() if k not in heavy})
    for k in heavy:
        o, b = round_robin(1, "cpu", {k: jobs[k][0]})
        outs.update(o)
        best.update(b)
    exact = outs["prefcurate jvp (+ ∇L_val)"]
    t_jvp, c_jvp = best["prefcurate jvp (+ ∇L_val)"]
    t_val = round_robin(1, "cpu", {"val": s.gradient})[1]["val"][0]
    lines = [
        f"**{kind}, {params} parameters** — {s.n_params / 1e6:.2f} M trainable; pool {n} pairs, validation "
        f"{len(s.val)} pairs, batch {s.bs}; ∇L_val alone {t_val:.2f} s",
        "",
        "| method | covers | pairs timed | time, s (CPU s) | pool time / jvp's (CPU) | max rel. error vs exact | Spearman vs exact |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (_, k, covers) in jobs.items():
        t, c = best[name]
        fixed = s.fixed.get("loop" if "loop" in name else "dense", 0.0)  # its validation side, not extrapolated
        pool_t, pool_c = (t, c) if k == n else (fixed + (t - fixed) * n / k, fixed + (c - fixed) * n / k)
        err, rho = agreement(outs[name], exact) if "EK-FAC" not in name else ("(another quantity)", "")
        if name.startswith("prefcurate"):
            err, rho = "(exact)", ""
        lines.append(f"| {name} | {covers} | {k} | {t:.2f} ({c:.2f}) | {pool_t / t_jvp:.2f} x ({pool_c / c_jvp:.2f} x) "
                     f"| {err} | {rho} |")
    if not ekfac_ok:
        lines.append(f"| kronfluence EK-FAC | | not run | | | a {head_rows:,}² gradient covariance for the head | |")
    loop = outs.get("per-example loop (+ ∇L_val)")
    if loop is not None:
        lines.append(f"\njvp vs loop on {len(loop)} pairs: max rel. error {agreement(exact[: len(loop)], loop)[0]}")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n")[0])
    p.add_argument("--models", default="toy,qwen2-2l", help="toy, qwen2-2l (Qwen2-0.5B-shaped, 2 layers)")
    p.add_argument("--params", default="linear,all")
    p.add_argument("--repeats", type=int, default=2, help="Best of this many (loop, dense, EK-FAC: once).")
    p.add_argument("--skip", default="", help="Comma-separated method name prefixes to leave out.")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    one, five, _ = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); load {one:.1f}/{five:.1f} on {os.cpu_count()} cores\n")
    for kind in args.models.split(","):
        for params in args.params.split(","):
            start = time.perf_counter()
            print("\n".join(run(kind, params, args.repeats, {x for x in args.skip.split(",") if x})), flush=True)
            print(f"\n({time.perf_counter() - start:.0f} s)\n", flush=True)


if __name__ == "__main__":
    main()
