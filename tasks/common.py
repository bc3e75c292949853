"""What every stage task shares: the IO retry policy, the core's log lines in the Prefect run
log, and Prefect artifacts as the stage runner's hooks.

The stages themselves — inputs, typed output, config fields read, compute — are specs in the
core (`prefcurate.<stage>.stage`); a task is the spec run through `run_spec` plus Prefect's
retries and timeouts.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, TypeVar

from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.logging.configuration import ensure_logging_setup
from prefect.tasks import exponential_backoff

from prefcurate.errors import PrefcurateError, StorageError
from prefcurate.manifest import StageOutput
from prefcurate.stage import Hooks, Progress, StageSpec, run_stage
from prefcurate.tasks.artifacts import PrefectProgress, publish_markdown, publish_table
from prefcurate.tracking import RunHandle, TrackingError

CORE_LOGGER = "prefcurate"
Out = TypeVar("Out", bound=StageOutput)


def retry_on_io(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only transient faults (network, throttling, 5xx, timeouts); a missing file, a full disk,
    a permission error, a bad input or a bug fails at once."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, StorageError):
        return exc.transient
    if isinstance(exc, TrackingError):
        return exc.transient
    return isinstance(exc, (ConnectionError, TimeoutError))


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


class OneLineErrors(logging.Filter):
    """A `PrefcurateError` is logged as its one-line message, without its traceback.

    Prefect logs a failed flow or task (and each retry) with the exception's traceback; for
    errors prefcurate raises on purpose the message already says what is wrong and what to do,
    so the traceback is noise. Bugs (any other exception) keep their tracebacks.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PrefcurateError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_expected_errors() -> None:
    """Put `OneLineErrors` on every log handler there is (console, Prefect's API handler, files)."""
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, OneLineErrors) for f in handler.filters):
                handler.addFilter(OneLineErrors())


def wire_core_logging() -> logging.Logger | logging.LoggerAdapter:
    """Send the core's `prefcurate.*` log lines to the Prefect run log (UI) as well as the console.

    Same effect as PREFECT_LOGGING_EXTRA_LOGGERS=prefcurate, but also in Dask workers and
    whatever the environment says. Returns the task's run logger (a plain logger when a
    task's `.fn` is called outside a run).
    """
    ensure_logging_setup()
    quiet_expected_errors()
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


class PrefectHooks(Hooks):
    """The core's progress, tables and markdown as Prefect artifacts (no-ops outside a run)."""

    def progress(self, key: str, description: str) -> Progress:
        return PrefectProgress(key, description=description)

    def table(self, key: str, rows: Any, description: str | None = None) -> None:
        publish_table(key, rows, description=description)

    def markdown(self, key: str, text: str, description: str | None = None) -> None:
        publish_markdown(key, text, description=description)


def run_spec(spec: StageSpec[Out], run: str, config: Any, *, inputs: Mapping[str, Any] | None = None,
             stage: str | None = None, tracking: RunHandle | None = None) -> Out:
    """`prefcurate.stage.run_stage` with the core's log lines in the Prefect run log and Prefect artifacts as hooks."""
    wire_core_logging()
    return run_stage(spec, run, config, inputs=inputs, stage=stage, tracking=tracking, hooks=PrefectHooks())
