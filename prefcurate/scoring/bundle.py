"""Scoring bundles: the models every score is taken at (θ, θ_val, ∇L_val), versioned in the store.

Training θ and θ_val is most of a night's cost, and a pair's scores only mean something
against the bundle that produced them. So a full `curate` (with `store_uri`) or a nightly
refresh saves its bundle under the store, and later nights reuse the latest bundle of their
SFT model until the refresh policy says otherwise (`refresh_reason`):

    <store>/bundles/<sft>/<bundle-id>/{models/warmup,models/val,val_grad.safetensors,bundle.json}
    <store>/bundles/<sft>/latest          the id of the newest bundle, written last

A bundle is content-addressed (its id hashes the models and the gradient) and verified file by
file before reuse; a damaged one is refreshed, never used.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from pydantic import Field, ValidationError

from prefcurate import io
from prefcurate.config import RefreshConfig
from prefcurate.data.stage import IngestOut
from prefcurate.errors import ScoringError, StorageError, first_line
from prefcurate.manifest import FileRef, StageOutput
from prefcurate.scoring.reference import REFERENCE
from prefcurate.scoring.stage import GRADIENT, GradientOut
from prefcurate.stage import StageContext, StageSpec, read_config
from prefcurate.training.stage import VALIDATION_MODEL, WARMUP, ModelOut

log = logging.getLogger("prefcurate.scoring.bundle")

LATEST = "latest"
BUNDLE_JSON = "bundle.json"


class BundleOut(StageOutput):
    """θ, θ_val and ∇L_val as stored for reuse, and what they were trained from."""

    VOLATILE = frozenset({"created_at", "source_run", "reason"})

    id: str
    sft_fingerprint: str
    validation_sha256: str = Field(description="Content hash of the validation set θ_val and ∇L_val were taken on.")
    recipe: str = Field(description="Digest of the config fields that trained θ and θ_val and took ∇L_val.")
    n_pool: int = Field(description="Pairs θ was trained on.")
    warmup: ModelOut
    val: ModelOut
    gradient: GradientOut | None
    created_at: datetime
    source_run: str = Field(description="The run whose stages trained these models.")
    reason: str = Field(default="", description="Why this bundle was made (the refresh policy's reason).")


def bundles_uri(store_uri: str, sft_fingerprint: str) -> str:
    return io.join(store_uri, "bundles", sft_fingerprint[:16])


def recipe(config: Any) -> str:
    """What the bundle's models depend on besides data: the stages' config fields."""
    reads = sorted({*REFERENCE.reads, *WARMUP.reads, *VALIDATION_MODEL.reads, *GRADIENT.reads})
    return io.sha256_json(read_config(config, tuple(reads)))


def latest_bundle(store_uri: str, sft_fingerprint: str) -> tuple[BundleOut | None, str | None]:
    """The newest bundle of this SFT model and, when it cannot be used, why (None, None: there is none)."""
    root = bundles_uri(store_uri, sft_fingerprint)
    pointer = io.join(root, LATEST)
    if not io.exists(pointer):
        return None, None
    try:
        bundle_id = io.read_text(pointer).strip()
        bundle = BundleOut.model_validate_json(io.read_text(io.join(root, bundle_id, BUNDLE_JSON)))
    except (StorageError, ValidationError, ValueError) as exc:
        return None, f"the latest bundle in {root} is unreadable ({first_line(exc)})"
    for name, ref in bundle.file_refs():
        problem = ref.problem()
        if problem is not None:
            return bundle, f"bundle {bundle.id}: {name} ({ref.uri}) failed its check: {problem}"
    return bundle, None


def refresh_reason(bundle: BundleOut | None, problem: str | None, ingest: IngestOut, config: Any, n_new: int,
                   now: datetime | None = None) -> str | None:
    """Why the scoring bundle must be trained again tonight, or None to reuse `bundle`.

    No bundle, a damaged one, or one of another recipe (training or scoring config) is always
    refreshed; the policy (`refresh.policy`) decides the rest.
    """
    policy: RefreshConfig = config.refresh
    if problem is not None:
        return problem
    if bundle is None:
        return f"no scoring bundle for SFT model {ingest.sft_fingerprint[:12]} in {config.store_uri} yet"
    if bundle.recipe != recipe(config):
        return f"the training or scoring config differs from bundle {bundle.id}'s"
    if policy.policy == "never":
        return None
    if bundle.validation_sha256 != ingest.validation.sha256:
        return f"the validation set changed since bundle {bundle.id}"
    age_days = ((now or datetime.now(timezone.utc)) - bundle.created_at).total_seconds() / 86400
    if policy.policy == "every-n-days" and age_days >= policy.days:
        return f"bundle {bundle.id} is {age_days:.1f} days old (refresh.days={policy.days:g})"
    share = n_new / max(ingest.n_train, 1)
    if policy.policy == "new-fraction" and share > policy.new_fraction:
        return (f"{n_new} of {ingest.n_train} pairs ({share:.1%}) are new to bundle {bundle.id} "
                f"(refresh.new_fraction={policy.new_fraction:g})")
    return None


def _copy(ref: FileRef, target: str) -> FileRef:
    """Copy a verified file or directory to `target`; the copy must hash as the source did."""
    if ref.files:
        for name in ref.files:
            io.write_bytes(io.join(target, name), io.read_bytes(io.join(ref.uri, name)))
    else:
        io.write_bytes(target, io.read_bytes(ref.uri))
    copied = FileRef.of(target)
    if copied.sha256 != ref.sha256:
        raise ScoringError(f"{ref.uri} changed while it was copied to the bundle {target} (sha256 differs); run again")
    return copied


def _save_bundle(ctx: StageContext, ingest: IngestOut, warmup: ModelOut, val: ModelOut, gradient: GradientOut | None,
                 reason: str = "") -> BundleOut:
    config = ctx.config
    bundle_id = "b-" + io.sha256_json([warmup.model.sha256, val.model.sha256,
                                       gradient.gradient.sha256 if gradient else None])[:12]
    root = io.join(bundles_uri(config.store_uri, ingest.sft_fingerprint), bundle_id)
    bundle = BundleOut(
        id=bundle_id, sft_fingerprint=ingest.sft_fingerprint, validation_sha256=ingest.validation.sha256,
        recipe=recipe(config), n_pool=ingest.n_train,
        warmup=warmup.model_copy(update={"model": _copy(warmup.model, io.join(root, "models", "warmup"))}),
        val=val.model_copy(update={"model": _copy(val.model, io.join(root, "models", "val"))}),
        gradient=None if gradient is None else gradient.model_copy(
            update={"gradient": _copy(gradient.gradient, io.join(root, "val_grad.safetensors"))}),
        created_at=datetime.now(timezone.utc), source_run=ctx.run, reason=reason,
    )  # fmt: skip
    io.write_text(io.join(root, BUNDLE_JSON), bundle.model_dump_json(indent=2) + "\n")
    io.write_text(io.join(bundles_uri(config.store_uri, ingest.sft_fingerprint), LATEST), bundle_id + "\n")  # last
    ctx.params({"bundle.id": bundle_id, "bundle.uri": root})
    log.info("scoring bundle %s saved to %s (%s)", bundle_id, root, reason or "from this run")
    return bundle


BUNDLE = StageSpec("bundle", BundleOut, _save_bundle, reads=("store_uri",))
