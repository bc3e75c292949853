"""The ingest stage: validate the SFT checkpoint, read, check and split the preference data.

Its cache key covers the model's fingerprint and the content of the data files, not just
their URIs, so a pool rewritten in place is ingested again (and everything after it rescored).
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import Field

from prefcurate import io
from prefcurate.checkpoint import inspect_checkpoint
from prefcurate.config import ModelSource
from prefcurate.data.pairs import ingest
from prefcurate.manifest import FileRef, StageOutput
from prefcurate.stage import StageContext, StageSpec

DATA_FILES = ("train", "validation", "eval_prompts", "rejects")


class IngestOut(StageOutput):
    """The ingested data and the SFT model exactly as ingest validated it."""

    VOLATILE = frozenset({"sft_local_dir"})

    train: FileRef
    validation: FileRef
    eval_prompts: FileRef
    rejects: FileRef
    pool_schema: str
    rows_read: int = Field(description="Rows read from the pool and the validation source; = n_train + n_validation + n_rejected.")
    n_train: int
    n_validation: int
    n_eval_prompts: int
    n_rejected: int
    rejects_by_reason: dict[str, int]
    validation_carved: bool
    sft: ModelSource = Field(description="The SFT model as validated (chat template, revision, pickle consent): later stages load this.")
    sft_fingerprint: str
    sft_local_dir: str
    architecture: str
    n_parameters: int


def _source_identity(uri: str | None) -> str | None:
    """Content hash of a local or s3:// file; the name itself for a hub dataset."""
    if uri is None:
        return None
    return FileRef.of(uri).sha256 if io.exists(uri) else uri


def _identify(config: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
    info = inspect_checkpoint(config.model, cache_dir=io.join(config.cache_dir, "checkpoints"))
    return {"model_fingerprint": info.fingerprint,
            "content": {k: _source_identity(getattr(config.data, k)) for k in ("pool_uri", "validation_uri", "eval_prompts_uri")}}


def _ingest(ctx: StageContext) -> IngestOut:
    config = ctx.config
    info = inspect_checkpoint(config.model, cache_dir=io.join(config.cache_dir, "checkpoints"))
    data = ingest(config.data, ctx.path("data"))
    ctx.metrics({f"rejects.{k}": v for k, v in data.rejects_by_reason.items()})
    ctx.params({"model.fingerprint": info.fingerprint, "model.architecture": info.architecture,
                "model.n_parameters": info.n_parameters, **{f"data.hash.{k}": v for k, v in data.hashes.items()}})
    counts = data.model_dump(include={"pool_schema", "rows_read", "n_train", "n_validation", "n_eval_prompts",
                                      "n_rejected", "rejects_by_reason", "validation_carved"})
    ctx.metrics({"rows.read": data.rows_read, "rows.train": data.n_train, "rows.validation": data.n_validation,
                 "rows.eval_prompts": data.n_eval_prompts, "rows.rejected": data.n_rejected})
    return IngestOut(
        **{name: FileRef.of(getattr(data, f"{name}_uri")) for name in DATA_FILES},
        **counts,
        sft=config.model, sft_fingerprint=info.fingerprint, sft_local_dir=info.local_dir,
        architecture=info.architecture, n_parameters=info.n_parameters,
    )


INGEST = StageSpec("ingest", IngestOut, _ingest, reads=("model", "data"), identify=_identify)
