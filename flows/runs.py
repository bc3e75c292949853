"""What every flow shares: the MLflow parent run of a flow run, torch's thread count, and the task runner for scoring."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from prefect.futures import as_completed
from prefect.runtime import deployment, flow_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel

from prefcurate.config import ScaleOutConfig, TrackingConfig, flatten
from prefcurate.data.stage import IngestOut
from prefcurate.io import sha256_json
from prefcurate.locations import BASE_ENV, absolute_locations
from prefcurate.progress import duration, estimate_seconds
from prefcurate.scoring.reference import ReferenceOut
from prefcurate.tasks.artifacts import PrefectProgress, publish_mlflow_link
from prefcurate.tracking import RunHandle, finish_run, log_metrics, log_params, set_tags, start_parent_run

log = logging.getLogger("prefcurate.flows")


@contextmanager
def parent_run(flow_name: str, config: BaseModel, tracking: TrackingConfig, run: str) -> Iterator[RunHandle]:
    """One MLflow parent run per run directory and config, tagged with the latest flow-run id and deployment.

    A rerun of the same run with the same config (a resume, or one that finds every stage
    finished) continues the parent it started; another config gets a parent of its own (MLflow
    params cannot change). Params are the flattened config (secret-looking keys left out by
    prefcurate.tracking). The run ends FAILED when the flow raises, FINISHED otherwise.
    """
    params = flatten(config)
    identity = {"prefcurate.flow": flow_name, "prefcurate.run_uri": run, "prefcurate.config_digest": sha256_json(params)[:16]}
    handle = start_parent_run(
        tracking,
        run_name=f"{flow_name}/{getattr(config, 'run_name', 'run')}",
        flow_run_id=str(flow_run.id) if flow_run.id else None,
        deployment=deployment.name or None,
        tags=identity,
        continues=identity,
    )
    log_params(handle, params)
    set_tags(handle, {"prefect.flow_run_name": flow_run.name or ""})
    publish_mlflow_link(handle)
    try:
        yield handle
    except BaseException:
        finish_run(handle, failed=True)
        raise
    finish_run(handle)


def resolve_run(config: Any, default_name: str) -> Any:
    """The config with its run name and every local location fixed before the first stage.

    No `run_name`: a run a deployment starts (the UI, a schedule, CI through the API) gets the
    flow run's own name, so it never resumes another run by accident; a run started here (the
    CLI) gets `default_name`, so rerunning a config resumes it. Locations are made absolute
    against the working directory here, against PREFCURATE_BASE_DIR on a worker (refused
    without it), so every link the run prints or publishes works from any machine.
    """
    on_worker = deployment.id is not None
    name = config.run_name or (flow_run.name if on_worker and flow_run.name else default_name)
    base = os.environ.get(BASE_ENV) or (None if on_worker else os.getcwd())
    return absolute_locations(config.model_copy(update={"run_name": name}), base)


def announce_estimate(ref: ReferenceOut, ingest: IngestOut, config: Any, parent: RunHandle | None, n_final_models: int) -> None:
    """After π_ref's pass over the pool: log (and record on the flow's MLflow run) how long the
    training and scoring stages should take on this model and hardware, in one line."""
    if ref.meta is None or ref.meta.seconds is None:
        return
    seconds = estimate_seconds(ref.meta.seconds, ref.pairs, n_train=ingest.n_train, n_validation=ingest.n_validation,
                               training=config.training, compute_if=config.scoring.compute_if,
                               n_final_models=n_final_models)
    log.info("π_ref took %s for %d pairs: at that speed the training and scoring stages take about %s in all "
             "(finished ones are skipped)%s", duration(ref.meta.seconds), ref.pairs, duration(seconds),
             "; generation and judging come on top" if n_final_models else "")
    if parent is not None:
        log_metrics(parent, {"estimate_seconds.training_and_scoring": round(seconds, 1)})


def results_in_order(futures: list[Any], progress: PrefectProgress) -> list[Any]:
    """Every future's result, in submission order, with a progress update as each one finishes.

    Submission order, not completion order: a stage that takes the list hashes it into its cache
    key, and on a parallel runner (Dask) completion order would make a rerun recompute it.
    """
    for finished, future in enumerate(as_completed(futures), start=1):
        future.result()
        progress(finished, len(futures))
    return [future.result() for future in futures]


def lease_owner(flow_name: str) -> str:
    """Who holds a run's lease, as the second run's error message shows it."""
    return f"flow run {flow_run.name or '?'} ({flow_name}, id {flow_run.id or '?'})"


def use_torch_threads(scaleout: ScaleOutConfig) -> None:
    """Apply `scaleout.torch_threads` to this process (torch's thread pool is process-wide)."""
    if scaleout.torch_threads:
        torch.set_num_threads(scaleout.torch_threads)


def task_runner(scaleout: ScaleOutConfig) -> TaskRunner:
    """The runner scoring shards are mapped over: in-process (one at a time) or Dask."""
    if scaleout.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if scaleout.address:
            return DaskTaskRunner(address=scaleout.address)
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": scaleout.workers, "processes": scaleout.processes, "threads_per_worker": 1,
                            "dashboard_address": None}
        )
    # One shard at a time in-process: each shard already uses every core through torch.
    return ThreadPoolTaskRunner(max_workers=1)
