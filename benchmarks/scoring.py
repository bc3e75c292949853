"""Scoring benchmark: what exact influence costs next to LossDiff-IRM and a plain forward pass.

    python -m benchmarks.scoring                       # toy model, CPU
    python -m benchmarks.scoring --model qwen2-0.5b --pairs 16 --val-pairs 8 --turns 4
    python -m benchmarks.scoring --model qwen2-0.5b --device cuda --dtype bf16 --pairs 512

Every number of one table is measured in one run, on the same pool and the same model θ:
the product's own code paths (prefcurate.scoring.logps / influence / dpo) timed against a plain
batched forward of the same model over the same collated batches and against a
per-example gradient loop (the reference exact IF replaces). Peak memory is read in a
fresh subprocess per pool size (ru_maxrss, or torch.cuda.max_memory_allocated), so
scoring N and 4N pairs are compared honestly. Timings take the best of `--repeats`.

The real-architecture model is a Qwen2-0.5B-shaped config (hidden 896, 24 layers, 14
heads, 2 KV heads, intermediate 4864, vocab 151,936) randomly initialised from the config
alone — nothing is downloaded. Its pairs come from the toy task's tokenizer (ids are a
subset of the vocabulary): the cost per token is the real model's; `--turns` adds
earlier dialogue turns to lengthen the sequences.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from prefcurate import compute
from prefcurate.config import ComputeConfig, TrainingConfig
from prefcurate.data.pairs import pair_id, pairs_from_rows
from prefcurate.scoring.influence import ValidationGradient, influence_scores, trainable_parameters, validation_gradient
from prefcurate.scoring.logps import (
    compute_logps,
    dpo_loss,
    iter_batches,
    make_collator,
    reference_tensors,
    sequence_logps,
    tokenize_pairs,
)
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.task import all_instructions, imperfect_answer
from prefcurate.toyworld.tokenizer import build_tokenizer
from prefcurate.training.dpo import fit_dpo

QWEN2_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True)  # fmt: skip
GOALS = {"if_vs_ldirm": 1.4, "jvp_vs_loop": 5.0, "ldirm_vs_forward": 0.9, "if_vs_forward": 0.38}


# --- the pool and the model ---------------------------------------------------------------


def make_pairs(n: int, seed: int, turns: int):
    """`n` toy-task pairs (perfect answer vs a flawed one); `turns` > 1 prepends earlier exchanges."""
    rng = random.Random(seed)
    instructions = all_instructions()
    rows, seen = [], set()
    while len(rows) < n:
        history: list[dict] = []
        for _ in range(turns - 1):
            past = rng.choice(instructions)
            history += [{"role": "user", "content": past.text}, {"role": "assistant", "content": past.perfect_answer}]
        inst = rng.choice(instructions)
        prompt = history + [{"role": "user", "content": inst.text}]
        chosen = [{"role": "assistant", "content": inst.perfect_answer}]
        rejected = [{"role": "assistant", "content": imperfect_answer(inst, rng, 0.2)}]
        pid = pair_id(prompt, chosen, rejected)
        if rejected[0]["content"] == chosen[0]["content"] or pid in seen:
            continue
        seen.add(pid)
        rows.append({"pair_id": pid, "prompt": prompt, "chosen": chosen, "rejected": rejected,
                     "score_chosen": None, "score_rejected": None, "source": "benchmark", "prompt_id": None})
    return pairs_from_rows(rows)


def make_model(kind: str, tokenizer, layers: int | None, seed: int):
    """The toy Llama, or a randomly initialised Qwen2-0.5B-shaped model (eager attention)."""
    if kind == "toy":
        return build_model(tokenizer, "default", seed)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = {**QWEN2_05B, **({"num_hidden_layers": layers} if layers else {})}
    config = Qwen2Config(**shape, max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         attn_implementation="eager")  # fmt: skip
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def random_direction(model: torch.nn.Module, seed: int) -> ValidationGradient:
    """A fixed, seeded direction shaped like ∇L_val: jvp costs the same along any direction."""
    gen = torch.Generator().manual_seed(seed)
    return ValidationGradient({k: torch.randn(p.shape, generator=gen) for k, p in trainable_parameters(model).items()})


# --- timing helpers -----------------------------------------------------------------------


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def best_of(repeats: int, device: str, fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result of the last call, fastest wall time in seconds)."""
    out, times = round_robin(repeats, device, {"job": fn})
    return out["job"], times["job"][0]


def round_robin(repeats: int, device: str, jobs: dict[str, Callable[[], Any]]) -> tuple[dict, dict]:
    """Run the jobs in turn `repeats` times; per job the last result and the fastest (wall, CPU) seconds.

    Interleaving spreads load from other processes on a shared machine over every job
    alike, so the ratios between jobs stay fair even when absolute times drift.
    """
    outs: dict[str, Any] = {}
    best = {name: (float("inf"), float("inf")) for name in jobs}
    for _ in range(repeats):
        for name, fn in jobs.items():
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            outs[name] = fn()
            sync(device)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return outs, best


def plain_forward(model: torch.nn.Module, batches: list[dict]) -> None:
    """The floor: the model's forward over the same collated batches, nothing else."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        for batch in batches:
            model(input_ids=batch["input_ids"].to(device), use_cache=False)


def loop_influence(model, tokenizer, tokenized, ref_logps, gradient: ValidationGradient, beta: float) -> np.ndarray:
    """The reference exact IF: one backward per pair, dotted with the gradient."""
    params = trainable_parameters(model)
    device = next(model.parameters()).device
    tangent = {k: gradient.tensors[k].to(device=device, dtype=p.dtype) for k, p in params.items()}
    collator = make_collator(tokenizer, None, "keep_start")
    out = []
    for row in tokenized:
        batch = collator([{k: row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}])
        chosen, rejected = sequence_logps(model, batch["input_ids"].to(device), batch["completion_mask"].to(device)).chunk(2)
        ref_c, ref_r = (t.to(device) for t in reference_tensors(ref_logps, [row["pair_id"]]))
        loss, _ = dpo_loss(chosen, rejected, ref_c, ref_r, beta)
        grads = torch.autograd.grad(loss.sum(), list(params.values()))
        out.append(sum(float(torch.vdot(g.flatten(), tangent[k].flatten())) for k, g in zip(params, grads)))
    return np.array(out)


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


# --- memory: one fresh process per pool size ---------------------------------------------


def probe_memory(args: argparse.Namespace) -> None:
    """Child process: set up, then score `args.pairs` pairs; print peak memory as JSON."""
    tokenizer, model, pairs = setup(args, args.pairs)
    tokenized = tokenize_pairs(pairs, tokenizer)
    ref = compute_logps(model, tokenizer, tokenized, batch_size=args.batch_size, max_length=None, desc=None)
    val_model = copy.deepcopy(model)
    gradient = random_direction(model, args.seed)
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start, cpu = time.perf_counter(), time.process_time()
    score(model, val_model, tokenizer, tokenized, ref, gradient, args)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    after_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"rss_before_mb": before_kb / 1024, "rss_peak_mb": after_kb / 1024, "seconds": seconds, "cpu_seconds": cpu}
    if args.device == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["cuda_scoring_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    print("MEMORY " + json.dumps(out))


def memory_run(args: argparse.Namespace, n: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "benchmarks.scoring", "--probe-memory", "--pairs", str(n)]
    for flag in ("model", "layers", "device", "dtype", "batch_size", "turns", "seed", "threads"):
        value = getattr(args, flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("MEMORY ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"memory probe for {n} pairs failed:\n{done.stderr[-2000:]}")
    return json.loads(line.removeprefix("MEMORY "))


# --- the measured run --------------------------------------------------------------------


def setup(args: argparse.Namespace, n_pairs: int):
    """Tokenizer, θ and the pool. π_ref is θ itself (as when the warm-up starts)."""
    tokenizer = build_tokenizer()
    model = compute.place(make_model(args.model, tokenizer, args.layers, args.seed), compute_config(args))
    model.eval()
    return tokenizer, model, make_pairs(n_pairs, args.seed, args.turns)


def score(model, val_model, tokenizer, tokenized, ref, gradient, args) -> None:
    """What the scoring stage runs per pool: θ's log-probs + IF (one jvp pass), θ_val's log-probs."""
    influence_scores(model, tokenizer, tokenized, ref, gradient, beta=args.beta, batch_size=args.batch_size,
                     max_length=None, desc=None)  # fmt: skip
    compute_logps(val_model, tokenizer, tokenized, batch_size=args.batch_size, max_length=None, desc=None)


@dataclass
class Row:
    name: str
    value: float | str
    unit: str = ""
    goal: str = ""
    met: str = ""


def timed(name: str, seconds: tuple[float, float]) -> Row:
    wall, cpu = seconds
    return Row(name, f"{wall:.3f} s (CPU {cpu:.1f} s)")


def ratio_row(name: str, value: float, goal: float, at_most: bool, cpu: float | None = None) -> Row:
    """A ratio of wall times (judged against the goal), with the same ratio of CPU times beside it: on a
    loaded machine a one-thread job's CPU time is the steadier measure."""
    ok = value <= goal if at_most else value >= goal
    shown = f"{value:.2f} x" + (f" (CPU {cpu:.2f} x)" if cpu is not None else "")
    return Row(name, shown, "", f"{'<=' if at_most else '>='} {goal}", "yes" if ok else "NO")


def compute_config(args: argparse.Namespace) -> ComputeConfig:
    """--device/--dtype as the product's `compute` section: bf16 is fp32 weights under autocast, as the stages run it."""
    return ComputeConfig(device=args.device, dtype=args.dtype)


def run(args: argparse.Namespace) -> list[Row]:
    with compute.autocast(compute_config(args)):
        return measure(args)


def measure(args: argparse.Namespace) -> list[Row]:
    dev, reps, bs = args.device, args.repeats, args.batch_size
    # Memory first, in child processes, so they never share the machine with this one's models.
    mem = {k: memory_run(args, k * args.pairs) for k in (1, 2, 4)} if args.memory else None
    tokenizer, model, pairs = setup(args, args.pairs)
    val_pairs = make_pairs(args.val_pairs, args.seed + 1, args.turns)
    tokenized, t_tok = best_of(1, dev, lambda: tokenize_pairs(pairs, tokenizer))
    ref = compute_logps(model, tokenizer, tokenized, batch_size=bs, max_length=None, desc=None)
    ref_val = compute_logps(model, tokenizer, val_pairs, batch_size=bs, max_length=None, desc=None)
    training = TrainingConfig(batch_size=min(bs, args.val_pairs), bf16=args.dtype == "bf16", max_length=None, beta=args.beta)

    def train_val():
        return fit_dpo(copy.deepcopy(model), tokenizer, val_pairs, training, epochs=1.0, ref_logps=ref_val,
                       device=args.device).model

    val_model, t_train = best_of(1, dev, train_val)
    gradient = validation_gradient(model, tokenizer, val_pairs, ref_val, beta=args.beta, batch_size=bs, max_length=None, desc=None)

    def ldirm():
        policy = compute_logps(model, tokenizer, tokenized, batch_size=bs, max_length=None, desc=None)
        val = compute_logps(val_model, tokenizer, tokenized, batch_size=bs, max_length=None, desc=None)
        ref_c, ref_r = reference_tensors(ref, list(tokenized["pair_id"]))
        as_t = lambda s: torch.tensor(s.to_numpy(), dtype=torch.float32)  # noqa: E731
        loss_w, irm = dpo_loss(as_t(policy.chosen_logps), as_t(policy.rejected_logps), ref_c, ref_r, args.beta)
        loss_v, _ = dpo_loss(as_t(val.chosen_logps), as_t(val.rejected_logps), ref_c, ref_r, args.beta)
        return loss_w - loss_v, irm

    batches = [b for _, b, _ in iter_batches(tokenized, bs, make_collator(tokenizer, None, "keep_start"))]
    outs, best = round_robin(reps, dev, {
        "ref": lambda: compute_logps(model, tokenizer, tokenized, batch_size=bs, max_length=None, desc=None),
        "grad": lambda: validation_gradient(model, tokenizer, val_pairs, ref_val, beta=args.beta, batch_size=bs,
                                            max_length=None, desc=None),
        "ldirm": ldirm,
        "if": lambda: influence_scores(model, tokenizer, tokenized, ref, gradient, beta=args.beta, batch_size=bs,
                                       max_length=None, desc=None),
        "fwd": lambda: plain_forward(model, batches),
    })  # fmt: skip
    jvp_scores = outs["if"]
    t_grad, t_ldirm, t_if, t_fwd = (best[k][0] for k in ("grad", "ldirm", "if", "fwd"))
    c_ldirm, c_if, c_fwd = (best[k][1] for k in ("ldirm", "if", "fwd"))
    k = min(args.loop_pairs, len(tokenized))
    subset = tokenized.select(range(k))
    loop_out, loop_best = round_robin(1, dev, {"loop": lambda: loop_influence(model, tokenizer, subset, ref, gradient, args.beta)})
    loop, (t_loop, c_loop) = loop_out["loop"], loop_best["loop"]
    jvp_k = jvp_scores["if"].to_numpy()[:k]
    rel_err = float(np.abs(jvp_k - loop).max() / max(np.abs(loop).max(), 1e-30))

    n = len(tokenized)
    tokens = int(sum(b["input_ids"].numel() for b in batches))
    n_params = sum(p.numel() for p in model.parameters())

    rows = [
        Row("model", f"{args.model}{f' ({args.layers} layers)' if args.layers else ''}, {n_params / 1e6:.1f} M params, "
                     f"{args.device} {args.dtype}, {torch.get_num_threads()} threads"),
        Row("pool", f"{n} pairs ({tokens} tokens incl. padding, {tokens / (2 * n):.1f}/sequence), batch {bs}; "
                    f"validation {args.val_pairs} pairs"),
        Row("load average at start", args.load_at_start),
        Row("tokenize pool", round(t_tok, 3), "s"),
        timed("π_ref log-probs (once per pool, reused by DPO)", best["ref"]),
        Row("train θ_val (1 DPO epoch on validation)", round(t_train, 3), "s"),
        timed("validation gradient ∇L_val(θ)", best["grad"]),
        timed("LossDiff-IRM scoring (θ + θ_val log-probs)", best["ldirm"]),
        timed("exact IF (jvp, θ log-probs included)", best["if"]),
        timed("plain batched forward of θ", best["fwd"]),
        Row(f"per-example gradient loop ({k} pairs)", round(t_loop, 3), "s"),
        Row("jvp IF vs loop IF, max relative difference", f"{rel_err:.1e}"),
        ratio_row("exact IF time / LossDiff-IRM time", t_if / t_ldirm, GOALS["if_vs_ldirm"], True, c_if / c_ldirm),
        Row("  with θ_val training / ∇L_val included", round((t_if + t_grad) / (t_ldirm + t_train), 2), "x"),
        ratio_row("jvp IF throughput / per-example loop throughput", (n / t_if) / (k / t_loop), GOALS["jvp_vs_loop"],
                  False, (n / c_if) / (k / c_loop)),
        ratio_row("LossDiff-IRM throughput / its 2 plain forwards", (2 * t_fwd) / t_ldirm, GOALS["ldirm_vs_forward"],
                  False, (2 * c_fwd) / c_ldirm),
        ratio_row("IF throughput / plain forward throughput", t_fwd / t_if, GOALS["if_vs_forward"], False, c_fwd / c_if),
    ]
    if mem:
        key = "cuda_scoring_mb" if args.device == "cuda" else None
        for k, m in mem.items():
            extra = f", scoring {m[key]:.0f} MB on GPU" if key else ""
            rows.append(Row(f"pool {k}N = {k * n} pairs: peak memory, scoring time (fresh process)",
                            f"{m['rss_peak_mb']:.0f} MB RSS, {m['rss_peak_mb'] - m['rss_before_mb']:.0f} MB above set-up{extra}; "
                            f"{m['seconds']:.2f} s (CPU {m['cpu_seconds']:.2f} s)"))
        grow = (mem[4][key] / mem[1][key]) if key else (mem[4]["rss_peak_mb"] / mem[1]["rss_peak_mb"])
        rows.append(Row("peak memory 4N / N", round(grow, 2), "x", "~1 (flat)", "yes" if grow < 1.1 else "NO"))
        linear = mem[4]["cpu_seconds"] / (4 * mem[1]["cpu_seconds"])  # CPU: the probes do not run interleaved
        rows.append(Row("scoring CPU time 4N / (4 × time N)", round(linear, 2), "x", "~1 (linear)",
                        "yes" if 0.8 < linear < 1.2 else "NO"))
    return rows


def profile(args: argparse.Namespace) -> str:
    """Where one batch's time goes: the jvp IF pass against a plain forward (torch.profiler, self CPU time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    tokenizer, model, pairs = setup(args, args.batch_size)
    tokenized = tokenize_pairs(pairs, tokenizer)
    ref = compute_logps(model, tokenizer, tokenized, batch_size=args.batch_size, max_length=None, desc=None)
    gradient = random_direction(model, args.seed)
    batches = [b for _, b, _ in iter_batches(tokenized, args.batch_size, make_collator(tokenizer, None, "keep_start"))]
    jobs = {
        "plain forward": lambda: plain_forward(model, batches),
        "jvp IF": lambda: influence_scores(model, tokenizer, tokenized, ref, gradient, beta=args.beta,
                                           batch_size=args.batch_size, max_length=None, desc=None),
    }  # fmt: skip
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    out = []
    for name, job in jobs.items():
        job()  # warm up
        with torch_profile(activities=activities) as prof:
            job()
        sort = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
        out.append(f"== {name} ==\n{prof.key_averages().table(sort_by=sort, row_limit=12)}")
    return "\n".join(out)


def render(rows: list[Row]) -> str:
    """A Markdown table (pastes into benchmarks/README.md as is)."""
    lines = ["| measurement | value | goal | met |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.value}{' ' + r.unit if r.unit else ''} | {r.goal} | {r.met} |")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scoring", description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["toy", "qwen2-0.5b"], default="toy")
    p.add_argument("--layers", type=int, default=None, help="Shrink the Qwen2-shaped model to this many layers.")
    p.add_argument("--pairs", type=int, default=None, help="Pool size N (default: 512 toy, 16 qwen2-0.5b).")
    p.add_argument("--val-pairs", type=int, default=None, help="Validation pairs (default: 64 toy, 8 qwen2-0.5b).")
    p.add_argument("--turns", type=int, default=1, help="Dialogue turns per prompt (longer sequences).")
    p.add_argument("--batch-size", type=int, default=None, help="Pairs per batch (default: 64 toy, 8 qwen2-0.5b).")
    p.add_argument("--loop-pairs", type=int, default=32, help="Pairs timed in the per-example gradient loop.")
    p.add_argument("--repeats", type=int, default=3, help="Timings take the best of this many runs.")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice). Use 1 on a shared machine: OpenMP threads "
                        "competing with other processes for the cores slow small kernels down many times over.")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory", dest="memory", action="store_false", help="Skip the N vs 4N memory subprocesses.")
    p.add_argument("--json", help="Also write the rows as JSON to this path.")
    p.add_argument("--profile", action="store_true", help="Profile one batch of jvp IF against a plain forward instead.")
    p.add_argument("--probe-memory", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    small = args.model == "toy"
    args.pairs = args.pairs or (512 if small else 16)
    args.val_pairs = args.val_pairs or (64 if small else 8)
    args.batch_size = args.batch_size or (64 if small else 8)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch on this machine")
    if args.dtype == "bf16" and args.device == "cpu":
        p.error("--dtype bf16 is for --device cuda; CPU runs in fp32")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe_memory:
        probe_memory(args)
        return
    if args.profile:
        print(profile(args))
        return
    args.load_at_start = load_average()
    rows = run(args)
    print(render(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([r.__dict__ for r in rows], fh, indent=2)


if __name__ == "__main__":
    main()
