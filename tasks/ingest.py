"""Ingest task: the core's ingest stage (`prefcurate.data.stage.INGEST`) with Prefect's retries."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from prefcurate.data.stage import INGEST, IngestOut
from prefcurate.tasks.common import IO_RETRIES, run_spec
from prefcurate.tracking import RunHandle


@task(name="ingest", cache_policy=NONE, timeout_seconds=6 * 3600, **IO_RETRIES)
def ingest_stage(config: Any, run: str, tracking: RunHandle | None = None) -> IngestOut:
    """data/{train,validation,eval_prompts,rejects}.parquet and the SFT model's identity."""
    return run_spec(INGEST, run, config, tracking=tracking)
