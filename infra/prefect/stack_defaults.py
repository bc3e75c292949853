"""Write a copy of prefect.yaml whose deployments default to the stack's shared stores.

A run started from the Prefect UI gets these values pre-filled in its form: the run root on S3,
the MLflow tracking server, the nightly selection published on S3, and the work pool. A run
triggered with `--params '{"config": {...}}'` replaces the whole `config` (Prefect merges
parameters by top-level name), so it names root and tracking itself (docs/deployment.md).

    python stack_defaults.py prefect.yaml OUT.yaml      (reads PREFCURATE_* and PREFECT_WORK_POOL)
"""

from __future__ import annotations

import os
import sys

import yaml


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else out.get(key, value)
    return out


def main(src: str, dst: str) -> None:
    doc = yaml.safe_load(open(src))
    root = os.environ.get("PREFCURATE_ROOT", "s3://prefcurate/runs")
    tracking = {"tracking_uri": os.environ.get("PREFCURATE_TRACKING_URI", "http://mlflow:5000")}
    if os.environ.get("PREFCURATE_MLFLOW_UI_URL"):
        tracking["ui_url"] = os.environ["PREFCURATE_MLFLOW_UI_URL"]
    defaults = {
        "nightly-curation": {"root": root, "tracking": tracking,
                             "publish_uri": os.environ.get("PREFCURATE_PUBLISH_URI", "s3://prefcurate/published/latest")},
        "curate": {"root": root, "tracking": tracking},
        "evaluate": {"root": root, "tracking": tracking},
        "if-groups": {"root": root, "tracking": tracking},
        "compare-models": {"root": root, "tracking": tracking},
    }
    pool = os.environ.get("PREFECT_WORK_POOL")
    for dep in doc["deployments"]:
        extra = defaults.get(dep["name"])
        if extra:
            params = dep.setdefault("parameters", {}) or {}
            params["config"] = merge(params.get("config") or {}, extra)
            dep["parameters"] = params
        if pool:
            dep["work_pool"] = {**dep.get("work_pool", {}), "name": pool}
    with open(dst, "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)


if __name__ == "__main__":
    main(*sys.argv[1:3])
