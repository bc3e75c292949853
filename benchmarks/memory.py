"""Peak scoring memory against sequence length, answer-only head vs the full-logits head it replaced.

    python -m benchmarks.memory --threads 1                          # 2-layer Qwen2-shaped, 16 → 512 tokens
    python -m benchmarks.memory --threads 1 --lengths 16,128,512 --batch-size 8 --layers 2

Each (length, head) point runs in a fresh subprocess: build the Qwen2-0.5B-shaped model
(vocabulary 151,936, tied embeddings; `--layers` deep), a pool of token-id pairs whose
sequences are `length` tokens (a long prompt and answers of `--answer` tokens), a random
direction shaped like ∇L_val and stored reference log-probs of zero (jvp's cost does not
depend on their values) — that is the set-up; then score the pool as the scoring stage
does (θ's jvp IF + log-probs, θ_val's log-probs) and read the peak RSS (`ru_maxrss`) or
`torch.cuda.max_memory_allocated`. "full" swaps in the previous implementation (the model's
[batch × length × vocabulary] logits and a log-softmax at every position) to show what the
answer-only head saves; the product has only the answer-only path.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

import pandas as pd
import torch
from datasets import Dataset

from prefcurate.scoring import influence as influence_module
from prefcurate.scoring import logps as logps_module
from prefcurate.scoring.influence import ValidationGradient, influence_scores, trainable_parameters
from prefcurate.scoring.logps import AnswerLogps, completion_logps, compute_logps
from prefcurate.toyworld.tokenizer import build_tokenizer

QWEN2_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True)  # fmt: skip


class FullLogits(AnswerLogps):
    """The previous head, for comparison only: full logits, log-softmax at every position, masked after."""

    def forward(self, input_ids, positions, labels, valid_or_rows):
        mask = torch.zeros_like(input_ids)
        if positions.dim() == 1:  # packed answer tokens: flat indices into (rows × length)
            mask.view(-1)[positions + 1] = 1
        else:
            mask.scatter_(1, positions + 1, valid_or_rows.long())
            mask[:, 0] = 0
        logits = self.model(input_ids=input_ids, use_cache=False).logits
        return completion_logps(logits, input_ids, mask)


def make_model(layers: int, max_positions: int, pad_id: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**{**QWEN2_05B, "num_hidden_layers": layers}, max_position_embeddings=max_positions,
                         pad_token_id=pad_id, attn_implementation="eager")  # fmt: skip
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


def token_pairs(n: int, length: int, answer: int, vocab: int, seed: int = 0) -> Dataset:
    """`n` pairs of `length`-token sequences: prompt of length − answer, answers of `answer` and answer − 2 tokens."""
    rng = random.Random(seed)
    answer = min(answer, length - 2)
    rows = []
    for i in range(n):
        ids = lambda k: [rng.randrange(3, vocab) for _ in range(k)]  # noqa: E731
        rows.append({"pair_id": f"m{i}", "prompt_ids": ids(length - answer), "chosen_ids": ids(answer),
                     "rejected_ids": ids(max(answer - 2, 1))})  # fmt: skip
    return Dataset.from_list(rows)


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        return next(int(ln.split()[1]) for ln in fh if ln.startswith(field + ":")) / 1024


def reset_peak() -> float:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS and return it, in MB (Linux ≥ 4.0)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _rss_mb("VmRSS")


def probe(args: argparse.Namespace) -> None:
    """Child: set up, score, print peak memory as JSON."""
    if args.head == "full":
        logps_module.AnswerLogps = FullLogits
        influence_module.AnswerLogps = FullLogits
    tok = build_tokenizer()
    model = make_model(args.layers, max(args.length + 8, 64), tok.pad_token_id).to(args.device)
    pairs = token_pairs(args.pairs, args.length, args.answer, model.config.vocab_size)
    ref = pd.DataFrame({"pair_id": pairs["pair_id"], "chosen_logps": 0.0, "rejected_logps": 0.0})
    gen = torch.Generator().manual_seed(0)
    gradient = ValidationGradient({k: torch.randn(p.shape, generator=gen) for k, p in trainable_parameters(model).items()})
    kwargs = dict(batch_size=args.batch_size, max_length=None, max_tokens_per_batch=args.max_tokens_per_batch, desc=None)
    before = reset_peak()  # set-up's own transient peak (model init) must not hide scoring's
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t, cpu = time.perf_counter(), time.process_time()
    influence_scores(model, tok, pairs, ref, gradient, beta=0.5, **kwargs)
    compute_logps(model, tok, pairs, **kwargs)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    out = {"rss_before_mb": before, "rss_peak_mb": _rss_mb("VmHWM"),
           "seconds": seconds, "cpu_seconds": cpu}  # fmt: skip
    if args.device == "cuda":
        out["cuda_scoring_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    print("MEMORY " + json.dumps(out))


def measure(args: argparse.Namespace, length: int, head: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.memory", "--probe", "--length", str(length), "--head", head]
    for flag in ("layers", "pairs", "batch_size", "answer", "threads", "device", "max_tokens_per_batch"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("MEMORY ")), None)
    if done.returncode != 0 or line is None:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"rc {done.returncode}"}
    return json.loads(line.removeprefix("MEMORY "))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n")[0])
    p.add_argument("--lengths", default="16,64,128,256,512")
    p.add_argument("--heads", default="answer,full", help="answer (the product), full (the previous head).")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--pairs", type=int, default=8, help="Pool size (one batch at the default batch size).")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--answer", type=int, default=32, help="Tokens of the chosen answer (rejected: 2 fewer).")
    p.add_argument("--max-tokens-per-batch", type=int, default=None,
                   help="scoring.max_tokens_per_batch: split batches by padded tokens (default: off, whole batches).")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--skip-full-above", type=int, default=10**9, help="Do not run the full head above this length.")
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--head", default="answer", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.probe:
        probe(args)
        return
    one, five, _ = os.getloadavg()
    print(f"Qwen2-0.5B-shaped, {args.layers} layers, {args.pairs} pairs (batch {args.batch_size}, "
          f"{2 * args.batch_size} sequences), answers {args.answer}/{args.answer - 2} tokens, {args.device}, "
          f"{args.threads} thread(s), max_tokens_per_batch {args.max_tokens_per_batch}; "
          f"load {one:.1f}/{five:.1f} on {os.cpu_count()} cores")  # fmt: skip
    heads = args.heads.split(",")
    print("| sequence tokens | " + " | ".join(f"{h}: peak above set-up | {h}: scoring time" for h in heads) + " |")
    print("|---|" + "---|---|" * len(heads))
    for length in (int(x) for x in args.lengths.split(",")):
        cells = []
        for head in heads:
            if head == "full" and length > args.skip_full_above:
                cells += ["not run", ""]
                continue
            m = measure(args, length, head)
            if "error" in m:
                cells += [f"failed: {m['error'][:60]}", ""]
                continue
            key = m.get("cuda_scoring_mb")
            above = key if key is not None else m["rss_peak_mb"] - m["rss_before_mb"]
            cells += [f"{above:.0f} MB", f"{m['seconds']:.2f} s (CPU {m['cpu_seconds']:.2f} s)"]
        print(f"| {length} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
