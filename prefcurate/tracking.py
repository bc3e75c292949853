"""MLflow tracking by explicit run handles: one parent run per flow run, a child per stage.

MLflow's fluent API keeps the active run per thread (and transformers' MLflowCallback
configures itself through process-wide environment variables), while Prefect runs tasks
on other threads or other processes. So nothing here touches the fluent active run: every
call names its run through a `RunHandle`, a small serialisable value that tasks pass
around like a manifest, and talks to the store through `MlflowClient`.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
import time
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict
from transformers import TrainerCallback

from prefcurate import io
from prefcurate.config import TrackingConfig
from prefcurate.errors import PrefcurateError
from prefcurate.io import redact_uri

log = logging.getLogger(__name__)

STAGE_TAG = "prefcurate.stage"
FLOW_RUN_TAG = "prefect.flow_run_id"
DEPLOYMENT_TAG = "prefect.deployment"
PARENT_TAG = "mlflow.parentRunId"  # the tag MLflow's UI nests runs by
SECRET_WORDS = frozenset({"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials", "auth"})
_PARAM_MAX = 6000  # MLflow 3's limit on a param value
_BATCH = 100


class TrackingError(PrefcurateError):
    """The MLflow store cannot be reached or refuses a write (`transient` when retrying may help)."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class RunHandle(BaseModel):
    """Where a run lives: enough to reach it from any thread or process."""

    model_config = ConfigDict(frozen=True)

    tracking_uri: str
    run_id: str
    experiment_id: str
    ui_url: str | None = None


@lru_cache(maxsize=8)
def _client(tracking_uri: str) -> MlflowClient:
    return _call("client setup", tracking_uri, MlflowClient, tracking_uri=tracking_uri, registry_uri=tracking_uri)


def client(run: RunHandle) -> MlflowClient:
    """The MlflowClient for `run`'s store (cached per URI)."""
    return _client(run.tracking_uri)


def _call(what: str, store_uri: str, fn, *args, **kwargs):
    """Run an MLflow call, turning its failure into one readable line."""
    try:
        return fn(*args, **kwargs)
    except MlflowException as exc:
        detail = (str(exc.message).strip().splitlines() or ["unknown error"])[0][:300]
        raise TrackingError(
            f"MLflow {what} failed at {redact_uri(store_uri)}: {detail}; check tracking.tracking_uri and that the store is up",
            transient=io.is_transient(exc) or getattr(exc, "error_code", "") in ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR"),
        ) from exc


def _experiment_id(tracking: TrackingConfig) -> str:
    mlc = _client(tracking.tracking_uri)
    exp = _call("experiment lookup", tracking.tracking_uri, mlc.get_experiment_by_name, tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    try:
        # The UI otherwise opens a new experiment in its GenAI (traces) view; ours are training runs.
        return mlc.create_experiment(tracking.experiment, artifact_location=tracking.artifact_location,
                                     tags={"mlflow.experimentKind": "custom_model_development"})
    except MlflowException:  # created concurrently by another process
        exp = _call("experiment lookup", tracking.tracking_uri, mlc.get_experiment_by_name, tracking.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def _find(run_like: RunHandle | TrackingConfig, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    uri = run_like.tracking_uri
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = _call("search", uri, _client(uri).search_runs, [experiment_id], filter_string=query, max_results=1,
                  order_by=["attributes.start_time DESC"])
    return found[0].info.run_id if found else None


def start_parent_run(
    tracking: TrackingConfig,
    *,
    run_name: str,
    flow_run_id: str | None = None,
    deployment: str | None = None,
    tags: Mapping[str, str] | None = None,
    continues: Mapping[str, str] | None = None,
) -> RunHandle:
    """The parent run for one flow run: a retry of the same Prefect flow run reuses it, and so
    does a later flow run whose tags match `continues` (a rerun of the same run directory and
    config), so a rerun that finds every stage finished leaves no empty parent behind."""
    experiment_id = _experiment_id(tracking)
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    if flow_run_id:
        all_tags[FLOW_RUN_TAG] = flow_run_id
    if deployment:
        all_tags[DEPLOYMENT_TAG] = deployment
    mlc = _client(tracking.tracking_uri)
    run_id = _find(tracking, experiment_id, {FLOW_RUN_TAG: flow_run_id}) if flow_run_id else None
    if run_id is None and continues:
        run_id = _find(tracking, experiment_id, continues)
    if run_id is None:
        run_id = _call("create_run", tracking.tracking_uri, mlc.create_run, experiment_id, run_name=run_name,
                       tags=all_tags).info.run_id
    else:
        mlc.update_run(run_id, status="RUNNING")
        for key, value in all_tags.items():
            _call("set_tag", tracking.tracking_uri, mlc.set_tag, run_id, key, value)
    return RunHandle(tracking_uri=tracking.tracking_uri, run_id=run_id, experiment_id=experiment_id,
                     ui_url=tracking.ui_url)


def finish_run(run: RunHandle, *, failed: bool = False) -> None:
    """Mark `run` FINISHED (or FAILED)."""
    status = RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)
    _call("set_terminated", run.tracking_uri, client(run).set_terminated, run.run_id, status=status)


@contextmanager
def stage_run(parent: RunHandle, stage: str) -> Iterator[RunHandle]:
    """A child run of `parent` for one stage, FINISHED on exit and FAILED on error.

    On resume the stage's existing child run (found by its tags) is reopened instead of
    creating a duplicate next to it.
    """
    mlc = client(parent)
    run_id = _find(parent, parent.experiment_id, {PARENT_TAG: parent.run_id, STAGE_TAG: stage})
    if run_id is None:
        run_id = _call("create_run", parent.tracking_uri, mlc.create_run, parent.experiment_id, run_name=stage,
                       tags={PARENT_TAG: parent.run_id, STAGE_TAG: stage}).info.run_id
    else:
        mlc.update_run(run_id, status="RUNNING")
    child = parent.model_copy(update={"run_id": run_id})
    try:
        yield child
    except BaseException:
        finish_run(child, failed=True)
        raise
    finish_run(child)


def is_secret(key: str) -> bool:
    """Whether a param name looks like it holds a credential (never logged).

    Matched on whole words of the name (`hub_token`, `api_key_env`, `db.password`), so
    `max_new_tokens` stays.
    """
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())
    return any(word in SECRET_WORDS for word in words)


_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. /:]")


def _key(key: str) -> str:
    return _BAD_KEY.sub("_", str(key))


def log_params(run: RunHandle, params: Mapping[str, Any]) -> dict[str, str]:
    """Log params, leaving out secret-looking keys and URI passwords; returns what was logged.

    Values are stringified and cut at MLflow's length limit. Re-logging the same value (a
    resumed stage) is fine; a different value for a logged key is an error, as in MLflow.
    """
    kept = {_key(k): redact_uri(str(v))[:_PARAM_MAX] for k, v in params.items() if not is_secret(k)}
    items = [Param(k, v) for k, v in sorted(kept.items())]
    for i in range(0, len(items), _BATCH):
        _call("log_params", run.tracking_uri, client(run).log_batch, run.run_id, params=items[i : i + _BATCH])
    return kept


def set_tags(run: RunHandle, tags: Mapping[str, Any]) -> None:
    for k, v in tags.items():
        if not is_secret(k):
            _call("set_tag", run.tracking_uri, client(run).set_tag, run.run_id, _key(k), str(v))


def _as_number(value: Any) -> float | None:
    if isinstance(value, (bool, str, bytes)) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def log_metrics(run: RunHandle, metrics: Mapping[str, Any], step: int | None = None) -> dict[str, float]:
    """Log numeric metrics (non-numbers are skipped with a debug line); returns what was logged."""
    now = int(time.time() * 1000)
    logged: dict[str, float] = {}
    for key, value in metrics.items():
        number = _as_number(value)
        if number is None:
            log.debug("metric %s=%r is not a number; not logged", key, value)
            continue
        logged[_key(key)] = number
    items = [Metric(k, v, now, step or 0) for k, v in logged.items()]
    for i in range(0, len(items), _BATCH):
        _call("log_metrics", run.tracking_uri, client(run).log_batch, run.run_id, metrics=items[i : i + _BATCH])
    return logged


def log_artifact(run: RunHandle, source: bytes | str | Path, artifact_path: str) -> str:
    """Log a file, a directory or raw bytes; `artifact_path` is the destination inside the run.

    `source` may be bytes, a local file or directory, or a remote file URI (read through
    prefcurate.io). Returns the artifact's URI.
    """
    mlc = client(run)
    dest_dir, _, name = artifact_path.strip("/").rpartition("/")
    if isinstance(source, (str, Path)) and not io.is_remote(str(source)):
        local = Path(str(source).removeprefix("file://"))
        if local.is_dir():
            _call("log_artifacts", run.tracking_uri, mlc.log_artifacts, run.run_id, str(local), artifact_path.strip("/"))
            return f"{_artifact_uri(run)}/{artifact_path.strip('/')}"
        if not local.is_file():
            raise TrackingError(f"cannot log artifact {source}: no such file or directory")
        if local.name == name:
            _call("log_artifact", run.tracking_uri, mlc.log_artifact, run.run_id, str(local), dest_dir or None)
            return f"{_artifact_uri(run)}/{artifact_path.strip('/')}"
        source = local.read_bytes()
    elif not isinstance(source, bytes):
        source = io.read_bytes(str(source))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(source)
        _call("log_artifact", run.tracking_uri, mlc.log_artifact, run.run_id, str(path), dest_dir or None)
    return f"{_artifact_uri(run)}/{artifact_path.strip('/')}"


def _artifact_uri(run: RunHandle) -> str:
    return _call("get_run", run.tracking_uri, client(run).get_run, run.run_id).info.artifact_uri


def register_model(run: RunHandle, model_dir: str | Path, name: str, alias: str = "candidate", *,
                   description: str | None = None, tags: Mapping[str, str] | None = None) -> str:
    """Log an HF checkpoint directory under `model/` of `run` and register it with `alias`.

    The checkpoint is logged as plain files (safetensors, config, tokenizer), so the
    registered version downloads to a directory `from_pretrained` loads — no pickled flavour
    and no network. Returns the new version number.
    """
    model_dir = Path(model_dir)
    files = [p for p in model_dir.iterdir() if p.is_file()] if model_dir.is_dir() else []
    if not files:
        raise TrackingError(f"cannot register {model_dir}: not a checkpoint directory with files")
    mlc = client(run)
    # Only the top-level checkpoint files: trainer checkpoint-*/ sub-directories stay out.
    for f in sorted(files):
        _call("log_artifact", run.tracking_uri, mlc.log_artifact, run.run_id, str(f), "model")
    try:
        mlc.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise TrackingError(f"cannot register model '{name}': {exc.message}") from exc
    version = _call("create_model_version", run.tracking_uri, mlc.create_model_version, name,
                    source=f"{_artifact_uri(run)}/model", run_id=run.run_id, tags=dict(tags or {}),
                    description=description)
    _call("set_alias", run.tracking_uri, mlc.set_registered_model_alias, name, alias, version.version)
    return str(version.version)


def log_dataset_input(run: RunHandle, frame: Any, *, source: str, name: str, digest: str, context: str) -> None:
    """`frame` as an MLflow dataset input of `run`: its name, digest, source URI and schema (not its rows)."""
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():  # "source can be interpreted in multiple ways": a local path is meant
        warnings.simplefilter("ignore")
        dataset = mlflow.data.from_pandas(frame, source=redact_uri(source), name=name, digest=digest[:36])
    entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
    _call("log_inputs", run.tracking_uri, client(run).log_inputs, run.run_id, datasets=[entity])


def ui_base(tracking_uri: str, ui_url: str | None = None) -> str:
    """The MLflow UI's base URL: `ui_url`, an http(s) tracking server, or a local `mlflow ui`."""
    if ui_url:
        return ui_url.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return redact_uri(tracking_uri).rstrip("/")
    return "http://127.0.0.1:5000"


def ui_command(tracking_uri: str) -> str:
    """The shell command that opens the MLflow UI on a local store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {redact_uri(tracking_uri)}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def run_url(run: RunHandle) -> str:
    """A link to `run` in the MLflow UI."""
    return f"{ui_base(run.tracking_uri, run.ui_url)}/#/experiments/{run.experiment_id}/runs/{run.run_id}"


class MlflowMetricsCallback(TrainerCallback):
    """Logs a Trainer's `logs` (loss, rewards/margins, learning rate …) into a given run.

    Used instead of `report_to="mlflow"`: transformers' MLflowCallback finds its run through
    process-wide environment variables and the per-thread fluent run, and ends that run when
    training stops; this writes by run id, so concurrent stages cannot cross, the stage run
    stays open, and no checkpoint is ever uploaded.
    """

    def __init__(self, run: RunHandle, prefix: str = "train/"):
        self.run = run
        self.prefix = prefix

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        numeric = {f"{self.prefix}{k}": v for k, v in logs.items() if (x := _as_number(v)) is not None and math.isfinite(x)}
        if numeric:
            log_metrics(self.run, numeric, step=state.global_step)
