"""What every flow shares: the MLflow parent run of a flow run, torch's thread count, and the task runner for scoring."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from prefect.runtime import deployment, flow_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel

from prefcurate.config import ScaleOutConfig, TrackingConfig, flatten
from prefcurate.tasks.artifacts import publish_mlflow_link
from prefcurate.tracking import RunHandle, finish_run, log_params, set_tags, start_parent_run


@contextmanager
def parent_run(flow_name: str, config: BaseModel, tracking: TrackingConfig, run: str) -> Iterator[RunHandle]:
    """One MLflow parent run per Prefect flow run, tagged with the flow-run id and deployment.

    Params are the flattened config (secret-looking keys left out by prefcurate.tracking).
    The run ends FAILED when the flow raises, FINISHED otherwise.
    """
    handle = start_parent_run(
        tracking,
        run_name=f"{flow_name}/{getattr(config, 'run_name', 'run')}",
        flow_run_id=str(flow_run.id) if flow_run.id else None,
        deployment=deployment.name or None,
        tags={"prefcurate.flow": flow_name, "prefcurate.run_uri": run},
    )
    log_params(handle, flatten(config))
    set_tags(handle, {"prefect.flow_run_name": flow_run.name or ""})
    publish_mlflow_link(handle)
    try:
        yield handle
    except BaseException:
        finish_run(handle, failed=True)
        raise
    finish_run(handle)


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
