"""Incremental nightly scoring: a night that scores only the new pairs against a full rescoring.

    python -m benchmarks.incremental --threads 1                   # default toy world, +5 % pairs
    python -m benchmarks.incremental --threads 1 --new 0.10 --repeats 3

One run, the product's own stages (`prefcurate.scoring.incremental`, run through the stage
runner without Prefect or MLflow): night 1 is the default toy pool, night 2 the same pool
plus `--new` of new pairs (`toyworld.pool.new_pairs`). The scoring bundle (θ, θ_val, ∇L_val)
is trained once on night 1 (its stages are timed too: what a refresh night costs). Then,
alternating `--repeats` times on the night-2 pool, each in a fresh run directory:

- full:        choose the bundle, new-pairs + score-new shards on an empty store (every pair), the pool's table
- incremental: the same on a store holding night 1's scores (so score-new scores the new pairs)

and both selections (`lossdiff-irm` and every other rule) must be identical.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from prefcurate.config import NightlyConfig
from prefcurate.data.stage import INGEST
from prefcurate.scoring.bundle import BUNDLE
from prefcurate.scoring.incremental import NEW_PAIRS, POOL_SCORES, SCORE_NEW_SHARD, choose_bundle, new_shard_stage_name
from prefcurate.scoring.reference import REFERENCE
from prefcurate.scoring.scores import shard_ranges
from prefcurate.scoring.stage import GRADIENT
from prefcurate.selection.rules import select
from prefcurate.stage import run_stage
from prefcurate.toyworld.build import build_world
from prefcurate.toyworld.pool import new_pairs
from prefcurate.training.stage import VALIDATION_MODEL, WARMUP


def config_for(world, pool_uri: str, root: Path, store: Path) -> NightlyConfig:
    return NightlyConfig.model_validate({
        "root": str(root), "cache_dir": str(root / ".cache"), "store_uri": str(store),
        "model": {"uri": world.checkpoint_dir},
        "data": {"pool_uri": pool_uri, "validation_uri": world.validation_parquet, "eval_prompts_uri": world.eval_prompts},
    })  # fmt: skip


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def night(config: NightlyConfig, run: str, ingest, bundle):
    """What a night does after ingest: choose the bundle (reading the store), score-new, the pool's table."""
    choose_bundle(config, ingest)
    new = run_stage(NEW_PAIRS, run, config, inputs={"ingest": ingest, "bundle": bundle})
    shards = [run_stage(SCORE_NEW_SHARD, run, config, inputs={"rows": rows, "ingest": ingest, "new": new, "bundle": bundle},
                        stage=new_shard_stage_name(i)) for i, rows in enumerate(shard_ranges(new.n_new, config.scoring.shard_size))]
    score = run_stage(POOL_SCORES, run, config, inputs={"ingest": ingest, "bundle": bundle, "new": new, "shards": shards})
    return new, pd.read_parquet(score.scores.uri)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.incremental", description=__doc__.split("\n")[0])
    p.add_argument("--size", default="default", choices=["default", "small"], help="Toy world size.")
    p.add_argument("--new", type=float, default=0.05, help="Share of new pairs on night 2.")
    p.add_argument("--repeats", type=int, default=2, help="Full / incremental runs, alternating.")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads.")
    p.add_argument("--workdir", default=None, help="Keep the world and runs here (default: a temp dir).")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-incremental-"))
    world = build_world(str(work / "world"), seed=0, size=args.size)
    pool = pd.read_parquet(world.pool_parquet)
    grown = pd.concat([pool, new_pairs(world.spec.pool, 0, pool, n=round(args.new * len(pool)))], ignore_index=True)
    pools = {1: work / "pool-1.parquet", 2: work / "pool-2.parquet"}
    pool.to_parquet(pools[1])
    grown.to_parquet(pools[2])
    store = work / "store"

    one = config_for(world, str(pools[1]), work / "runs", store)
    run1 = str(work / "runs" / "night-1")
    ingest1 = run_stage(INGEST, run1, one)
    refresh: dict[str, float] = {}
    ref, refresh["π_ref log-probs"] = timed(lambda: run_stage(REFERENCE, run1, one, inputs={"ingest": ingest1}))
    warmup, refresh["warm-up θ"] = timed(lambda: run_stage(WARMUP, run1, one, inputs={"ingest": ingest1, "ref": ref}))
    val, refresh["θ_val"] = timed(lambda: run_stage(VALIDATION_MODEL, run1, one, inputs={"ingest": ingest1, "ref": ref, "warmup": warmup}))
    grad, refresh["∇L_val"] = timed(lambda: run_stage(GRADIENT, run1, one, inputs={"ingest": ingest1, "ref": ref, "warmup": warmup}))
    bundle = run_stage(BUNDLE, run1, one, inputs={"ingest": ingest1, "warmup": warmup, "val": val, "gradient": grad, "reason": "bench"})
    night(one, run1, ingest1, bundle)  # night 1's scores into the store
    seeded = work / "store-after-night-1"
    shutil.copytree(store, seeded)

    times: dict[str, list[float]] = {"full": [], "incremental": []}
    tables: dict[str, pd.DataFrame] = {}
    counts: dict[str, int] = {}
    ingest2 = None
    for r in range(args.repeats):
        for kind in ("full", "incremental"):
            target = work / f"store-{kind}-{r}"
            if kind == "incremental":
                shutil.copytree(seeded, target)
            two = config_for(world, str(pools[2]), work / "runs", target)
            run = str(work / "runs" / f"night-2-{kind}-{r}")
            ingest2 = ingest2 or run_stage(INGEST, run, two)
            (new, table), seconds = timed(lambda: night(two, run, ingest2, bundle))
            times[kind].append(seconds)
            tables[kind], counts[kind] = table, new.n_new

    full, inc = min(times["full"]), min(times["incremental"])
    same = {rule: select(tables["full"], one.selection.model_copy(update={"rule": rule})).kept_ids
            == select(tables["incremental"], one.selection.model_copy(update={"rule": rule})).kept_ids
            for rule in ("lossdiff-irm", "tif", "lossdiff-band", "irm-band", "if-top")}
    refresh_total = sum(refresh.values()) + full
    print(f"\nIncremental scoring — {args.size} toy world, night 1 {len(pool)} pairs, night 2 +{len(grown) - len(pool)} "
          f"new ({args.new:.0%}); torch threads {args.threads}; best of {args.repeats}\n")
    print(f"| {'night 2 scoring':<44} | {'pairs scored':>12} | {'seconds':>8} | {'vs full':>8} |")
    print(f"|{'-' * 46}|{'-' * 14}|{'-' * 10}|{'-' * 10}|")
    print(f"| {'full rescoring at the bundle':<44} | {counts['full']:>12} | {full:>8.2f} | {1:>8.3f} |")
    print(f"| {'incremental (store read + new pairs)':<44} | {counts['incremental']:>12} | {inc:>8.2f} | {inc / full:>8.3f} |")
    print(f"| {'refresh night (bundle stages + full scoring)':<44} | {counts['full']:>12} | {refresh_total:>8.2f} | "
          f"{refresh_total / full:>8.3f} |")
    print("\nBundle stages (night 1): " + ", ".join(f"{k} {v:.1f} s" for k, v in refresh.items()))
    print("Selections identical (incremental vs full): " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()))
    print(f"Goal: incremental ≤ 0.10 of full — {'met' if inc / full <= 0.10 else 'missed'} ({inc / full:.3f})")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
