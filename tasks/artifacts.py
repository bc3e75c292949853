"""Prefect artifacts for the UI: tables, markdown, links and progress bars.

Every task uses these instead of calling prefect.artifacts directly, for three reasons:
keys are normalised to what Prefect accepts, tables are made JSON-safe (NaN → empty), and
outside a flow or task run (a notebook, a core test, the CLI before a flow starts) they do
nothing but log a debug line instead of starting an API server. An artifact the API refuses
is logged as a warning and never fails the task: the data it shows is already on disk.
"""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any, Callable
from uuid import UUID

import pandas as pd
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext, TaskRunContext

from prefcurate.tracking import RunHandle, run_url

log = logging.getLogger(__name__)


def in_run() -> bool:
    """Whether we are inside a Prefect flow or task run (where artifacts can be attached)."""
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def artifact_key(name: str) -> str:
    """`name` as a Prefect artifact key: lowercase letters, digits and dashes."""
    key = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return re.sub(r"-{2,}", "-", key) or "artifact"


def _safe(fn: Callable[..., UUID], what: str, **kwargs: Any) -> UUID | None:
    if not in_run():
        log.debug("not in a Prefect run; %s artifact %s skipped", what, kwargs.get("key"))
        return None
    try:
        return fn(**kwargs)
    except Exception as exc:  # the API is down or refuses; the task's real output is unaffected
        log.warning("could not create %s artifact %s: %s", what, kwargs.get("key"), exc)
        return None


def _cell(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        return _cell(value.item())
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def table_rows(table: pd.DataFrame | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON-safe rows; a DataFrame's named index becomes the first column."""
    if isinstance(table, pd.DataFrame):
        frame = table.reset_index() if table.index.name is not None else table
        table = frame.to_dict(orient="records")
    return [{str(k): _cell(v) for k, v in row.items()} for row in table]


def publish_table(key: str, table: pd.DataFrame | list[dict[str, Any]], description: str | None = None) -> UUID | None:
    """A table artifact (selection summary, leaderboard, agreement) in the Prefect UI."""
    return _safe(create_table_artifact, "table", table=table_rows(table), key=artifact_key(key), description=description)


def publish_markdown(key: str, markdown: str, description: str | None = None) -> UUID | None:
    """A markdown artifact, e.g. the run report."""
    return _safe(create_markdown_artifact, "markdown", markdown=markdown, key=artifact_key(key), description=description)


def publish_link(key: str, url: str, text: str | None = None, description: str | None = None) -> UUID | None:
    """A link artifact."""
    return _safe(create_link_artifact, "link", link=url, link_text=text, key=artifact_key(key), description=description)


def publish_mlflow_link(run: RunHandle, key: str = "mlflow-run") -> UUID | None:
    """A link artifact to `run` in the MLflow UI."""
    return publish_link(key, run_url(run), text=f"MLflow run {run.run_id}", description="This run in the MLflow UI.")


class PrefectProgress:
    """A `progress(done, total)` callback for core loops that drives a Prefect progress artifact.

    The artifact is created on the first call and updated when progress has moved by at least
    `min_step` percent *and* `min_interval_s` seconds have passed (and at 100 %), so a stage
    makes at most ~100/min_step updates: each is an event `prefect deployment run --watch`
    prints, and a flood of them buried the run's log lines. Outside a Prefect run it does nothing.
    """

    def __init__(self, key: str, description: str | None = None, min_step: float = 10.0, min_interval_s: float = 5.0):
        self.key = artifact_key(key)
        self.description = description
        self.min_step = min_step
        self.min_interval_s = min_interval_s
        self.artifact_id: UUID | None = None
        self.progress = -1.0
        self._last_time = 0.0
        self._enabled = in_run()

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled or total <= 0:
            return
        progress = round(min(100.0, max(0.0, 100.0 * done / total)), 2)
        now = time.monotonic()
        if self.artifact_id is None:
            self.artifact_id = _safe(create_progress_artifact, "progress", progress=progress, key=self.key,
                                     description=self.description)
            self._enabled = self.artifact_id is not None
        elif progress == 100.0 and self.progress < 100.0 or (
            progress > self.progress
            and progress - self.progress >= self.min_step and now - self._last_time >= self.min_interval_s
        ):
            try:
                update_progress_artifact(artifact_id=self.artifact_id, progress=progress)
            except Exception as exc:
                log.warning("could not update progress artifact %s: %s", self.key, exc)
                return
        else:
            return
        self.progress = progress
        self._last_time = now
