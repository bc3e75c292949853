"""A second SFT model for an existing toy world: same tokenizer, pool and training instructions,
another seed (initialisation and demonstrations) and, optionally, fewer SFT epochs.

The cross-model comparison needs two SFT models that see the same pool; a world of another seed
would bring another pool too.
"""

from __future__ import annotations

from prefcurate import io
from prefcurate.checkpoint import save_checkpoint
from prefcurate.errors import ConfigError, StorageError
from prefcurate.toyworld.build import World, build_world, one_torch_thread
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.pool import split_instructions
from prefcurate.toyworld.sft import demonstrations, mean_quality, train_sft
from prefcurate.toyworld.tokenizer import build_tokenizer


def open_world(root: str) -> World:
    """The world built under `root` (reused as it is; its record says size and seed)."""
    marker = io.join(root, "world.json")
    if not io.exists(marker):
        raise StorageError(f"{root} holds no toy world (no world.json); build one with `prefcurate toyworld build`")
    spec = io.read_json(marker).get("spec", {})
    return build_world(root, seed=int(spec["seed"]), size=spec["size"])


def build_sft_variant(world: World, out_dir: str, *, seed: int, epochs: float | None = None) -> dict:
    """Train another SFT model for `world` and save it at `out_dir`; returns its fingerprint and oracle quality."""
    if seed == world.spec.seed and epochs in (None, world.spec.sft.epochs):
        raise ConfigError(f"seed {seed} with the world's own SFT epochs rebuilds the world's model; pick another seed or --epochs")
    spec = world.spec.sft if epochs is None else world.spec.sft.model_copy(update={"epochs": epochs})
    split = split_instructions(world.spec.pool, world.spec.seed)
    tokenizer = build_tokenizer()
    with one_torch_thread():
        model = build_model(tokenizer, world.spec.size, seed)
        model = train_sft(model, tokenizer, demonstrations(split.train, spec, seed), spec, seed)
        fingerprint = save_checkpoint(model, tokenizer, out_dir, metadata={
            "source": "prefcurate toy world SFT variant", "world_digest": world.spec.digest, "seed": seed,
            "sft_epochs": spec.epochs})  # fmt: skip
        quality = mean_quality(model, tokenizer, [row["instruction"] for row in io.read_json(world.eval_prompts)])
    return {"checkpoint_dir": out_dir, "fingerprint": fingerprint, "seed": seed, "epochs": spec.epochs,
            "mean_quality_greedy": round(quality, 4)}
