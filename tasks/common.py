"""What every stage task shares: the IO retry policy, manifest-based resume, one MLflow child
run per stage, and the core's log lines in the Prefect run log.

`run_stage` is the one place that decides "skip or compute": a stage whose manifest (same
cache key) is on disk returns it without touching anything; otherwise the stage computes
inside its own nested MLflow run and writes its manifest last.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.logging.configuration import ensure_logging_setup
from prefect.tasks import exponential_backoff
from pydantic import BaseModel

from prefcurate.config import ModelSource, flatten
from prefcurate.errors import StorageError
from prefcurate.manifest import StageManifest, cache_key, code_version, find_manifest, new_manifest, write_manifest
from prefcurate.tracking import RunHandle, TrackingError, log_metrics, log_params, set_tags, stage_run

CORE_LOGGER = "prefcurate"
TRANSIENT = (StorageError, TrackingError, ConnectionError, TimeoutError)


def sft_source(ingest: StageManifest) -> ModelSource:
    """The SFT model exactly as ingest validated it (chat template, revision, pickle consent
    included), so later stages load the same model rather than the bare URI."""
    return ModelSource.model_validate(ingest.extra["sft_source"])


def retry_on_io(task: Any, task_run: Any, state: Any) -> bool:
    """Retry storage, tracking and network failures; a bad input or a bug fails at once."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, FileNotFoundError):
        return False
    return isinstance(exc, TRANSIENT) or isinstance(exc, OSError)


# Task options for stages that read and write the run root (local or s3://).
IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_on_io,
}


class _RunLogForwarder(logging.Handler):
    """Forwards a record to Prefect's API log handler only inside a flow or task run
    (outside one, e.g. a core call in a notebook, there is no run to attach it to)."""

    def __init__(self, target: logging.Handler):
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        if FlowRunContext.get() is not None or TaskRunContext.get() is not None:
            self.target.handle(record)


def wire_core_logging() -> logging.Logger | logging.LoggerAdapter:
    """Send the core's `prefcurate.*` log lines to the Prefect run log (UI) as well as the console.

    Same effect as PREFECT_LOGGING_EXTRA_LOGGERS=prefcurate, but also in Dask workers and
    whatever the environment says. Returns the task's run logger (a plain logger when a
    task's `.fn` is called outside a run).
    """
    ensure_logging_setup()
    core = logging.getLogger(CORE_LOGGER)
    core.setLevel(logging.INFO)
    wired = {h.target for h in core.handlers if isinstance(h, _RunLogForwarder)}
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in wired:
            core.addHandler(_RunLogForwarder(handler))
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("prefcurate.tasks")


@dataclass
class StageOutput:
    """What a stage's compute function hands back to `run_stage`."""

    outputs: dict[str, str]
    rows: dict[str, int] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)  # known content hashes (e.g. checkpoint fingerprints)
    extra: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


def _params(config: BaseModel | Mapping[str, Any] | None) -> dict[str, str]:
    if config is None:
        return {}
    if isinstance(config, BaseModel):
        return flatten(config)
    return {k: str(v) for k, v in config.items()}


def run_stage(
    stage: str,
    run: str,
    *,
    inputs: Sequence[StageManifest],
    config: BaseModel | Mapping[str, Any] | None,
    modules: Sequence[str],
    tracking: RunHandle | None,
    compute: Callable[[RunHandle | None], StageOutput],
) -> StageManifest:
    """Return the finished stage's manifest, computing the stage only if it has none.

    `modules` are the core modules whose source makes up the stage's code version.
    `compute` receives the stage's nested MLflow run (None without tracking).
    """
    logger = wire_core_logging()
    code = code_version(modules)
    key = cache_key(stage, inputs, config, code)
    done = find_manifest(run, stage, key)
    if done is not None:
        logger.info("%s finished at %s (cache key %s…); skipping", stage, done.created_at.isoformat(), key[:12])
        return done
    with stage_run(tracking, stage) if tracking is not None else nullcontext() as child:
        result = compute(child)
        manifest = new_manifest(
            stage, run, key=key, inputs=inputs, config=config, code=code,
            outputs=result.outputs, rows=result.rows, hashes=result.hashes, extra=result.extra,
        )
        if child is not None:
            log_params(child, {**_params(config), **result.params})
            set_tags(child, {"prefcurate.cache_key": key, "prefcurate.code_version": code})
            log_metrics(child, {**{f"rows.{k}": v for k, v in result.rows.items()}, **result.metrics})
        write_manifest(manifest)
    logger.info("%s done: %s", stage, ", ".join(f"{k}={v}" for k, v in result.rows.items()) or "ok")
    return manifest
