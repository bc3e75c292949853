"""Where a run lives, fixed before it starts: every local location made absolute.

A relative run root, store or `sqlite:///mlflow.db` means "relative to wherever this process
happened to start" — on a deployment worker, an arbitrary directory, so the run's results,
its printed links and its Prefect artifacts would point at places nobody else finds. So the
flows resolve every location against one base before the first stage: the working directory
for a run started by hand, `PREFCURATE_BASE_DIR` on a worker, and on a worker without that
variable a relative location is refused.
"""

from __future__ import annotations

import os
from typing import Any

from prefcurate.errors import ConfigError

BASE_ENV = "PREFCURATE_BASE_DIR"
SQLITE = "sqlite:///"
# Top-level fields that name a directory the run writes to (those a config has).
WRITTEN = ("root", "cache_dir", "store_uri", "publish_uri")


def _is_relative(uri: str) -> bool:
    return "://" not in uri and not os.path.isabs(uri)


def _absolute(uri: str, base: str | None, field: str) -> str:
    if base is None:
        raise ConfigError(
            f"{field}='{uri}' is relative, and this run was started by a deployment worker whose working directory is "
            f"arbitrary; give an absolute path or an s3:// URI, or set {BASE_ENV} on the worker"
        )
    return os.path.normpath(os.path.join(base, uri))


def tracking_uri(uri: str, base: str | None) -> str:
    """`sqlite:///mlflow.db` → `sqlite:////<base>/mlflow.db`; a bare path likewise; servers as they are."""
    if uri.startswith(SQLITE) and not uri[len(SQLITE):].startswith("/"):
        return SQLITE + _absolute(uri[len(SQLITE):], base, "tracking.tracking_uri")
    if _is_relative(uri):
        return _absolute(uri, base, "tracking.tracking_uri")
    return uri


def absolute_locations(config: Any, base: str | None) -> Any:
    """`config` with its run root, cache, store, publish target and tracking store made absolute
    against `base` (None: refuse a relative one, naming the field and the fix)."""
    update: dict[str, Any] = {}
    for field in WRITTEN:
        value = getattr(config, field, None)
        if isinstance(value, str) and _is_relative(value):
            update[field] = _absolute(value, base, field)
    tracking = getattr(config, "tracking", None)
    if tracking is not None:
        changes = {"tracking_uri": tracking_uri(tracking.tracking_uri, base)}
        if tracking.artifact_location and _is_relative(tracking.artifact_location):
            changes["artifact_location"] = _absolute(tracking.artifact_location, base, "tracking.artifact_location")
        update["tracking"] = tracking.model_copy(update=changes)
    return config.model_copy(update=update)
