"""Ingest stage: validate the SFT checkpoint, read and split the preference data.

The cache key covers the model's fingerprint and the content of the data files, not just
their URIs, so a pool rewritten in place is ingested again (and everything after it rescored).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from prefcurate import data, io
from prefcurate.checkpoint import inspect_checkpoint
from prefcurate.config import DataSource, ModelSource
from prefcurate.manifest import StageManifest, content_hash
from prefcurate.tracking import RunHandle
from tasks.common import IO_RETRIES, StageOutput, run_stage

MODULES = ("prefcurate.data", "prefcurate.checkpoint")


def _identity(uri: str | None) -> str | None:
    """Content hash of a local or s3:// file; the name itself for a hub dataset."""
    if uri is None:
        return None
    return content_hash(uri) if io.exists(uri) else uri


@task(name="ingest", cache_policy=NONE, timeout_seconds=6 * 3600, **IO_RETRIES)
def ingest_stage(
    model: ModelSource, source: DataSource, run: str, cache_dir: str, tracking: RunHandle | None = None
) -> StageManifest:
    """data/{train,validation,eval_prompts,rejects}.parquet and the SFT model's identity."""
    info = inspect_checkpoint(model, cache_dir=io.join(cache_dir, "checkpoints"))
    config = {
        "model": model.model_dump(mode="json"),
        "model_fingerprint": info.fingerprint,
        "data": source.model_dump(mode="json"),
        "content": {k: _identity(getattr(source, k)) for k in ("pool_uri", "validation_uri", "eval_prompts_uri")},
    }

    def compute(_: RunHandle | None) -> StageOutput:
        manifest = data.ingest(source, io.join(run, "data"))
        names = ("train", "validation", "eval_prompts", "rejects")
        return StageOutput(
            outputs={name: getattr(manifest, f"{name}_uri") for name in names},
            rows={"read": manifest.rows_read, "train": manifest.n_train, "validation": manifest.n_validation,
                  "eval_prompts": manifest.n_eval_prompts, "rejected": manifest.n_rejected},
            extra={"sft_uri": model.uri, "sft_source": model.model_dump(mode="json"), "sft_fingerprint": info.fingerprint, "sft_local_dir": info.local_dir,
                   "architecture": info.architecture, "n_parameters": info.n_parameters,
                   "pool_schema": manifest.pool_schema, "rejects_by_reason": manifest.rejects_by_reason,
                   "validation_carved": manifest.validation_carved},
            metrics={f"rejects.{k}": v for k, v in manifest.rejects_by_reason.items()},
            params={"model.fingerprint": info.fingerprint, "model.architecture": info.architecture,
                    "model.n_parameters": info.n_parameters,
                    **{f"data.hash.{k}": v for k, v in manifest.hashes.items()}},
        )

    return run_stage("ingest", run, inputs=(), config=config, modules=MODULES, tracking=tracking, compute=compute)
