"""The IF-group training task (`prefcurate.training.groups`)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from prefcurate.data.stage import IngestOut
from prefcurate.manifest import FileRef
from prefcurate.scoring.reference import ReferenceOut
from prefcurate.tasks.common import IO_RETRIES, run_spec
from prefcurate.tracking import RunHandle
from prefcurate.training.groups import IF_GROUP, GroupOut
from prefcurate.training.stage import ModelOut


@task(name="if-group", cache_policy=NONE, **IO_RETRIES)
def if_group_stage(group: str, groups: FileRef, ingest: IngestOut, ref: ReferenceOut, warmup: ModelOut, steps: int,
                   config: Any, run: str, tracking: RunHandle | None = None) -> GroupOut:
    """DPO from θ on IF group `group` (of the split in `groups`) for `steps` steps, with its validation curve."""
    inputs = {"group": group, "groups": groups, "ingest": ingest, "ref": ref, "warmup": warmup, "steps": steps}
    return run_spec(IF_GROUP, run, config, inputs=inputs, stage=f"if-group-{group}", tracking=tracking)
