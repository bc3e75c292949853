"""Pre-flight: every input a run names is checked before any heavy work, in seconds.

A missing pool, a defects file with a typo, an s3 bucket that does not exist or a dead
tracking server used to surface after minutes of scoring (or of MLflow's own retries); here
each is one line naming what is wrong and what to do, before the first stage starts. Only
existence, readability and writability are checked — the content is the stages' business.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prefcurate import io
from prefcurate.checkpoint import HUB_ID
from prefcurate.data.pairs import FILE_FORMATS
from prefcurate.errors import ConfigError, PrefcurateError, StorageError, first_line

TRACKING_TIMEOUT_S = 5.0


def _is_hub_name(uri: str) -> bool:
    return bool(HUB_ID.match(uri)) and not uri.startswith((".", "/", "~")) and not Path(uri).exists()


def require_readable(uri: str, what: str, *, hub: bool = False) -> None:
    """`uri` exists and can be read (a hub name is left to the stage that loads it when `hub`)."""
    if hub and not io.is_remote(uri) and _is_hub_name(uri) and not uri.lower().endswith(FILE_FORMATS):
        return
    try:
        found = io.exists(uri)
    except StorageError as exc:
        raise StorageError(f"{what} {uri} cannot be checked: {exc}", transient=exc.transient) from exc
    if not found:
        raise ConfigError(f"{what} {uri} does not exist; check the path (and the bucket for s3://)")
    if not io.is_remote(uri) and not os.access(uri.removeprefix("file://"), os.R_OK):
        raise ConfigError(f"{what} {uri} is not readable; check its permissions")


def require_writable(uri: str, what: str) -> None:
    """A directory `uri` can be written to: locally created if missing; on s3, its bucket exists."""
    probe = io.join(uri, f".prefcurate-write-probe-{uuid.uuid4().hex}")
    try:
        if io.is_remote(uri):
            io.require_bucket(uri)
        io.write_bytes(probe, b"")
        fs, path = io.filesystem(probe)
        fs.rm(path)
    except StorageError as exc:
        raise StorageError(f"{what} {uri} is not writable: {exc}", transient=exc.transient) from exc
    except OSError as exc:
        raise ConfigError(f"{what} {uri} is not writable: {first_line(exc)}") from exc


def require_tracking(tracking_uri: str, timeout_s: float = TRACKING_TIMEOUT_S) -> None:
    """The MLflow store answers within `timeout_s` (a server), or its sqlite file's directory is writable."""
    parts = urlsplit(tracking_uri)
    if parts.scheme in ("http", "https"):
        import httpx

        try:
            httpx.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise ConfigError(
                f"MLflow tracking server {io.redact_uri(tracking_uri)} did not answer within {timeout_s:g} s "
                f"({type(exc).__name__}); start it or fix tracking.tracking_uri"
            ) from exc
    elif parts.scheme == "sqlite":
        path = Path(tracking_uri.removeprefix("sqlite:///")).expanduser()
        if path.exists() and not os.access(path, os.W_OK):
            raise ConfigError(f"MLflow store {path} is not writable; check its permissions or tracking.tracking_uri")
        require_writable(str(path.parent.resolve()), "the directory of the MLflow store")


def check_pipeline(config: Any) -> None:
    """Everything a `curate` or `nightly` run names (model, pool, validation set, eval prompts,
    defects file, judge model and cache, publish target, run root, tracking store)."""
    model = config.model.uri
    if io.is_remote(model) or not _is_hub_name(model):
        require_readable(model, "SFT checkpoint (model.uri)")
        if not io.is_remote(model) and not Path(model).is_dir():
            raise ConfigError(f"SFT checkpoint (model.uri) {model} is a file; give the checkpoint directory")
    data = config.data
    require_readable(data.pool_uri, "preference pool (data.pool_uri)", hub=True)
    if data.validation_uri:
        require_readable(data.validation_uri, "validation set (data.validation_uri)", hub=True)
    if data.eval_prompts_uri:
        require_readable(data.eval_prompts_uri, "evaluation prompts (data.eval_prompts_uri)")
    if config.defects_uri:
        require_readable(config.defects_uri, "defect labels (defects_uri)")
    evaluation = getattr(config, "evaluation", None)
    if evaluation is not None:
        _check_judge(evaluation.judge)
    if getattr(config, "publish_uri", None):
        require_writable(config.publish_uri, "publish target (publish_uri)")
    _check_common(config)


def check_evaluation(config: Any) -> None:
    """Everything an `evaluate` run names: each model, the prompts, the judge, the run root, the store."""
    for name, uri in config.model_map().items():
        require_readable(uri, f"model {name!r}", hub=not uri.endswith(".json"))
    if config.eval_prompts_uri:
        require_readable(config.eval_prompts_uri, "evaluation prompts (eval_prompts_uri)")
    _check_judge(config.evaluation.judge)
    _check_common(config)


def _check_judge(judge: Any) -> None:
    if judge.kind == "reward-model" and judge.model:
        require_readable(judge.model, "reward model (evaluation.judge.model)")
    if judge.kind == "openai" and not os.environ.get(judge.api_key_env):
        raise ConfigError(
            f"environment variable {judge.api_key_env} is empty; set it to the judge endpoint's API key "
            "(any non-empty value for an endpoint without auth)"
        )


def _check_common(config: Any) -> None:
    require_writable(config.root, "run root (root)")
    require_writable(config.cache_dir, "cache directory (cache_dir)")
    require_tracking(config.tracking.tracking_uri)


def preflight(config: Any) -> None:
    """Check a run's config before any work (`check_pipeline` or `check_evaluation` by its kind)."""
    try:
        (check_evaluation if hasattr(config, "models") else check_pipeline)(config)
    except PrefcurateError:
        raise
    except Exception as exc:  # an unexpected failure of a check is reported, not a traceback
        raise ConfigError(f"pre-flight check failed: {type(exc).__name__}: {first_line(exc)}") from exc
