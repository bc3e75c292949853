"""Selection tasks: the select stage and publishing a finished selection (`prefcurate.selection.stage`)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from prefcurate.scoring.stage import RewardOut, ScoreOut
from prefcurate.selection.stage import PUBLISH, SELECT, PublishOut, SelectOut
from prefcurate.tasks.common import IO_RETRIES, run_spec
from prefcurate.tracking import RunHandle


@task(name="select", cache_policy=NONE, **IO_RETRIES)
def select_stage(score: ScoreOut, config: Any, run: str, tracking: RunHandle | None = None,
                 rewards: RewardOut | None = None) -> SelectOut:
    """The configured rule, every other rule and the agreement report over the pool's scores (and the external
    reward model's, when there is one)."""
    inputs: dict[str, Any] = {"score": score} if rewards is None else {"score": score, "rewards": rewards}
    return run_spec(SELECT, run, config, inputs=inputs, tracking=tracking)


@task(name="publish-selection", cache_policy=NONE, timeout_seconds=1800, **IO_RETRIES)
def publish_stage(done: dict[str, Any], config: Any, run: str, tracking: RunHandle | None = None) -> PublishOut:
    """The kept pairs as a versioned, train-ready dataset under `config.publish_uri` (see PUBLISH)."""
    inputs = {k: done[k] for k in ("select", "score", "ingest", "warmup", "val", "gradient")}
    return run_spec(PUBLISH, run, config, inputs=inputs, tracking=tracking)
