"""Build the whole toy world under one directory from a seed: SFT checkpoint, preference
pool with planted defects, clean validation pool, held-out eval prompts.

`world.json` is written last and carries the spec digest, so its presence means a whole
world; a second build with the same spec reuses it instead of training again.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prefcurate import io
from prefcurate.checkpoint import METADATA_FILE, save_checkpoint
from prefcurate.errors import ConfigError, StorageError
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.pool import PoolSpec, build_preference_data
from prefcurate.toyworld.sft import SFTSpec, demonstrations, mean_quality, train_sft
from prefcurate.toyworld.task import quality
from prefcurate.toyworld.tokenizer import build_tokenizer

# Bump when the generators change what a spec produces, so stale cached worlds are rebuilt.
WORLD_VERSION = 2
Size = Literal["small", "default"]

FILES = {
    "checkpoint_dir": "model",
    "pool_parquet": "data/pool.parquet",
    "pool_jsonl": "data/pool.jsonl",
    "validation_parquet": "data/validation.parquet",
    "eval_prompts": "data/eval_prompts.json",
    "defects_parquet": "data/defects.parquet",
}


class WorldSpec(BaseModel):
    """Everything that determines a world: same spec, same files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: Size = Field(description="Model size (toyworld.model.SIZES) and data scale.")
    seed: int = Field(description="Seed of every random choice: instruction split, pool, demonstrations, init, training.")
    pool: PoolSpec
    sft: SFTSpec

    @property
    def digest(self) -> str:
        return io.sha256_json({"version": WORLD_VERSION, "spec": self.model_dump(mode="json")})


def world_spec(size: str = "default", seed: int = 0, proxy_overfit_rate: float = 0.0) -> WorldSpec:
    """The preset for `size`: `default` as measured in DESIGN §4, `small` for tests and quick demos;
    `proxy_overfit_rate` plants the proxy-overfit kind (0 leaves the preset's pool and validation as they were)."""
    if size == "default":
        pool, sft = PoolSpec(), SFTSpec()
    elif size == "small":
        pool = PoolSpec(n_pairs=240, n_validation=48, n_validation_instructions=48, n_eval_prompts=32)
        sft = SFTSpec(n_rows=1000, epochs=4, learning_rate=1e-2, batch_size=64)
    else:
        raise ConfigError(f"unknown toy world size '{size}'; use 'small' or 'default'")
    if proxy_overfit_rate:
        try:
            pool = PoolSpec(**{**pool.model_dump(), "proxy_overfit_rate": proxy_overfit_rate})
        except ValidationError as exc:
            raise ConfigError(f"proxy_overfit_rate {proxy_overfit_rate}: {exc.errors()[0]['msg']}") from exc
    return WorldSpec(size=size, seed=seed, pool=pool, sft=sft)


@dataclass(frozen=True)
class World:
    """Where a built world's artifacts are (URIs under `root`) and what it was built from."""

    root: str
    checkpoint_dir: str
    pool_parquet: str
    pool_jsonl: str
    validation_parquet: str
    eval_prompts: str
    defects_parquet: str
    spec: WorldSpec
    stats: dict[str, Any]

    @property
    def world_json(self) -> str:
        return io.join(self.root, "world.json")


def _world(root: str, spec: WorldSpec, stats: dict[str, Any]) -> World:
    return World(root=root, spec=spec, stats=stats, **{key: io.join(root, rel) for key, rel in FILES.items()})


def _cached(root: str, spec: WorldSpec) -> World | None:
    """The whole world already under `root` for this spec; None when there is none to reuse."""
    marker = io.join(root, "world.json")
    if not io.exists(marker):
        return None
    try:
        found = io.read_json(marker)
        digest = found["digest"]
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"{marker} is not a toy world record ({exc}); delete {root} and build again") from exc
    if digest != spec.digest:
        built = found.get("spec", {})
        raise ConfigError(
            f"{root} holds a toy world built from another spec (size={built.get('size')}, seed={built.get('seed')}, "
            f"version={found.get('version')}); choose another output directory or delete it"
        )
    world = _world(root, spec, found["stats"])
    whole = [getattr(world, key) for key in FILES if key != "checkpoint_dir"]
    whole.append(io.join(world.checkpoint_dir, METADATA_FILE))  # written last by save_checkpoint
    return world if all(io.exists(uri) for uri in whole) else None  # files deleted since: build again


def _jsonl(frame) -> str:
    return "".join(json.dumps(record) + "\n" for record in frame.to_dict(orient="records"))


def _pool_stats(pool, defects) -> dict[str, Any]:
    q_chosen = [quality(p, c[-1]["content"]) for p, c in zip(pool["prompt"], pool["chosen"])]
    q_rejected = [quality(p, r[-1]["content"]) for p, r in zip(pool["prompt"], pool["rejected"])]
    return {
        "n_pairs": len(pool),
        "mean_quality_chosen": round(sum(q_chosen) / len(pool), 4),
        "mean_quality_rejected": round(sum(q_rejected) / len(pool), 4),
        "share_correctly_ordered": round(sum(c > r for c, r in zip(q_chosen, q_rejected)) / len(pool), 4),
        "defects": {str(k): int(v) for k, v in defects["defect"].value_counts().sort_index().items()},
    }


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run on one intra-op thread: the toy model is too small to gain from more, and on a
    shared machine two spinning threads made SFT up to 20x slower (11 s vs 207 s measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_world(out_dir: str, seed: int = 0, size: str = "default", proxy_overfit_rate: float = 0.0) -> World:
    """Build (or reuse) the toy world for `size` and `seed` under `out_dir` (a path or URI)."""
    root = str(out_dir).rstrip("/")
    spec = world_spec(size, seed, proxy_overfit_rate)
    cached = _cached(root, spec)
    if cached is not None:
        return cached
    with one_torch_thread():
        stats = _build(root, spec)
    return _world(root, spec, stats)


def _build(root: str, spec: WorldSpec) -> dict[str, Any]:
    world, seed = _world(root, spec, {}), spec.seed
    start = time.perf_counter()

    data = build_preference_data(spec.pool, seed)
    io.write_parquet(world.pool_parquet, data.pool)
    io.write_text(world.pool_jsonl, _jsonl(data.pool))
    io.write_parquet(world.validation_parquet, data.validation)
    io.write_json(world.eval_prompts, data.eval_prompts)
    io.write_parquet(world.defects_parquet, data.defects)

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, spec.size, seed)
    eval_texts = [row["instruction"] for row in data.eval_prompts]
    untrained = mean_quality(model, tokenizer, eval_texts)
    demos = demonstrations(data.split.train, spec.sft, seed)
    model = train_sft(model, tokenizer, demos, spec.sft, seed)
    fingerprint = save_checkpoint(
        model, tokenizer, world.checkpoint_dir, metadata={"source": "prefcurate toy world", "world_digest": spec.digest}
    )

    demo_quality = [quality(m[0]["content"], m[1]["content"]) for m in demos["messages"]]
    stats = {
        "pool": _pool_stats(data.pool, data.defects),
        "validation": {"n_pairs": len(data.validation)},
        "eval_prompts": len(data.eval_prompts),
        "sft": {
            "n_rows": len(demos),
            "mean_quality_demonstrations": round(sum(demo_quality) / len(demo_quality), 4),
            "mean_quality_untrained_greedy": round(untrained, 4),
            "mean_quality_greedy": round(mean_quality(model, tokenizer, eval_texts), 4),
            "mean_quality_sampled": round(mean_quality(model, tokenizer, eval_texts, sample=True, seed=seed), 4),
            "fingerprint": fingerprint,
        },
    }
    record = {
        "version": WORLD_VERSION,
        "digest": spec.digest,
        "spec": spec.model_dump(mode="json"),
        "files": FILES,
        "stats": stats,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    io.write_json(world.world_json, record)  # last: its presence means the world is whole
    return stats
