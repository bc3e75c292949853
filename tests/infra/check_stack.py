"""Assertions of `make infra-test` against a running stack, from outside it (host ports on 127.0.0.1).

Run by tests/infra/stack_test.sh inside the product image with `--network host`, so the host needs
no Python packages. Each phase prints one JSON object per check ({"check", "ok", "detail"}) and
exits 1 when any check failed.

    python check_stack.py after-run RUN INPROCESS_RUN OUT_DIR
    python check_stack.py after-restart RUN OUT_DIR
    python check_stack.py after-rerun RUN OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
import pandas as pd
import s3fs

PREFECT = os.environ["PREFECT_API_URL"].rstrip("/")
PREFECT_AUTH = tuple(os.environ["PREFECT_API_AUTH_STRING"].split(":", 1))
MLFLOW = os.environ["MLFLOW_URL"].rstrip("/")
MLFLOW_AUTH = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"])
BUCKET = os.environ.get("S3_BUCKET", "prefcurate")
EXPERIMENT = os.environ.get("CHECK_EXPERIMENT", "prefcurate-infra-test")
MODEL = os.environ.get("CHECK_MODEL", "prefcurate-infra-test")
SECRETS = [s for s in os.environ.get("CHECK_SECRETS", "").split("\n") if len(s) >= 6]
SCORE_COLUMNS = ["pair_id", "if", "tif", "lossdiff", "irm"]

results: list[dict] = []


def check(name: str, ok: bool, detail: object = "") -> bool:
    results.append({"check": name, "ok": bool(ok), "detail": detail})
    print(json.dumps(results[-1], default=str), flush=True)
    return bool(ok)


def prefect(method: str, path: str, body: dict | None = None, auth: bool = True) -> httpx.Response:
    return httpx.request(method, f"{PREFECT}{path}", json=body, auth=PREFECT_AUTH if auth else None, timeout=30)


def mlflow(method: str, path: str, auth: tuple | None = MLFLOW_AUTH, **kw) -> httpx.Response:
    return httpx.request(method, f"{MLFLOW}/api/2.0/mlflow/{path}", auth=auth, timeout=30, **kw)


def flow_runs(name: str) -> list[dict]:
    r = prefect("POST", "/flow_runs/filter", {"flow_runs": {"name": {"any_": [name]}}, "sort": "START_TIME_ASC"})
    r.raise_for_status()
    return r.json()


def parent_runs(run_name: str) -> tuple[str, list[dict]]:
    exp = mlflow("GET", "experiments/get-by-name", params={"experiment_name": EXPERIMENT})
    exp.raise_for_status()
    exp_id = exp.json()["experiment"]["experiment_id"]
    body = {"experiment_ids": [exp_id], "filter": f"tags.mlflow.runName = 'curate/{run_name}'", "max_results": 100,
            "order_by": ["attributes.start_time ASC"]}
    r = mlflow("POST", "runs/search", json=body)
    r.raise_for_status()
    return exp_id, r.json().get("runs", [])


def child_runs(exp_id: str, parent_id: str) -> list[dict]:
    body = {"experiment_ids": [exp_id], "filter": f"tags.mlflow.parentRunId = '{parent_id}'", "max_results": 1000}
    r = mlflow("POST", "runs/search", json=body)
    r.raise_for_status()
    return r.json().get("runs", [])


def manifests(run_name: str) -> dict[str, str]:
    fs = s3fs.S3FileSystem()
    out = {}
    for key in fs.find(f"{BUCKET}/runs/{run_name}/manifests"):
        if key.endswith(".json"):
            manifest = json.loads(fs.cat_file(key))
            # a stage's provenance is its manifest's `meta` (prefcurate.manifest.StageMeta)
            out[key.rsplit("/", 1)[-1]] = (manifest.get("meta") or {}).get("created_at")
    return out


def unauthenticated_refused() -> None:
    r = prefect("POST", "/deployments/filter", {}, auth=False)
    check("prefect API refuses unauthenticated requests (401)", r.status_code == 401, r.status_code)
    r = httpx.post(f"{PREFECT}/deployments/filter", json={}, auth=(PREFECT_AUTH[0], "wrong-password"), timeout=30)
    check("prefect API refuses a wrong password (401)", r.status_code == 401, r.status_code)
    r = mlflow("GET", "experiments/search", auth=None, params={"max_results": 1})
    check("MLflow refuses unauthenticated requests (401)", r.status_code == 401, r.status_code)
    r = mlflow("GET", "experiments/search", auth=(MLFLOW_AUTH[0], "wrong-password"), params={"max_results": 1})
    check("MLflow refuses a wrong password (401)", r.status_code == 401, r.status_code)


def after_run(run: str, inprocess: str, out: Path) -> None:
    runs = flow_runs(run)
    state = runs[-1]["state"]["type"] if runs else None
    check("flow run Completed (Prefect API)", state == "COMPLETED", {"flow_run": run, "state": state,
          "deployment_id": runs[-1]["deployment_id"] if runs else None})
    fs = s3fs.S3FileSystem()
    stack = pd.read_parquet(f"s3://{BUCKET}/runs/{run}/scores/scores.parquet", filesystem=fs)
    local = pd.read_parquet(f"s3://{BUCKET}/runs/{inprocess}/scores/scores.parquet", filesystem=fs)
    stack = stack[SCORE_COLUMNS].sort_values("pair_id").reset_index(drop=True)
    local = local[SCORE_COLUMNS].sort_values("pair_id").reset_index(drop=True)
    same_pairs = stack["pair_id"].tolist() == local["pair_id"].tolist()
    diffs = {c: float((stack[c].astype(float) - local[c].astype(float)).abs().max()) for c in SCORE_COLUMNS[1:]}
    check("scores on Dask == scores in-process (exact)", same_pairs and len(stack) > 0 and all(d == 0.0 for d in diffs.values()),
          {"pairs": len(stack), "max_abs_diff": diffs})

    exp_id, parents = parent_runs(run)
    check("MLflow holds the parent run", len(parents) == 1, [p["info"]["run_id"] for p in parents])
    if not parents:
        return
    parent = parents[0]
    children = child_runs(exp_id, parent["info"]["run_id"])
    stages = sorted(c["info"]["run_name"] for c in children)
    check("MLflow holds the nested stage runs", len(children) >= 10 and any("score" in s for s in stages), stages)
    tags = {t["key"]: t["value"] for t in parent["data"].get("tags", [])}
    check("parent run tagged with the Prefect flow run and deployment",
          tags.get("prefect.flow_run_id") == runs[-1]["id"] and tags.get("prefect.deployment") == "curate",
          {k: tags.get(k) for k in ("prefect.flow_run_id", "prefect.deployment")})
    alias = mlflow("GET", "registered-models/alias", params={"name": MODEL, "alias": "candidate"})
    version = alias.json().get("model_version", {}) if alias.status_code == 200 else {}
    check("registered model with alias candidate", bool(version) and version.get("run_id") in
          {c["info"]["run_id"] for c in children} | {parent["info"]["run_id"]},
          {"name": MODEL, "version": version.get("version"), "source": version.get("source")})
    keys = fs.find(f"{BUCKET}/mlflow/")
    by_run = {c["info"]["run_id"]: sum(c["info"]["run_id"] in k for k in keys) for c in children}
    score_run = next((c["info"]["run_id"] for c in children if c["info"]["run_name"].endswith("score")), None)
    source = version.get("source", "")
    model_keys = [k for k in keys if source and source.split(":/", 1)[-1].strip("/") in k]
    check("MLflow artifacts are objects in the S3 bucket",
          any(k.endswith("scores.parquet") and score_run and score_run in k for k in keys)
          and any(k.endswith("model.safetensors") for k in model_keys),
          {"objects": len(keys), "runs_with_artifacts": sum(v > 0 for v in by_run.values()),
           "model_objects": len(model_keys)})
    leaked = []
    for r in [parent, *children]:
        for p in r["data"].get("params", []):
            if any(s in p["value"] for s in SECRETS):
                leaked.append((r["info"]["run_name"], p["key"]))
    check("no credential in MLflow params", not leaked and bool(SECRETS), leaked or f"{len(SECRETS)} secrets checked")
    unauthenticated_refused()
    state_file = {"manifests": manifests(run), "parent_run_id": parent["info"]["run_id"],
                  "flow_run_id": runs[-1]["id"], "model_version": version.get("version")}
    check("stage manifests on S3", len(state_file["manifests"]) >= 10 and all(state_file["manifests"].values()),
          state_file["manifests"])
    (out / "state.json").write_text(json.dumps(state_file))


def after_restart(run: str, out: Path) -> None:
    before = json.loads((out / "state.json").read_text())
    r = prefect("GET", f"/flow_runs/{before['flow_run_id']}")
    check("Prefect kept the flow run across down/up", r.status_code == 200 and r.json()["state"]["type"] == "COMPLETED",
          r.status_code)
    r = prefect("POST", "/deployments/filter", {})
    names = sorted(d["name"] for d in r.json()) if r.status_code == 200 else r.status_code
    check("Prefect kept the deployments", names == ["compare-models", "curate", "evaluate", "if-groups", "nightly-curation"], names)
    r = mlflow("GET", "runs/get", params={"run_id": before["parent_run_id"]})
    check("MLflow kept the parent run", r.status_code == 200, r.status_code)
    r = mlflow("GET", "registered-models/alias", params={"name": MODEL, "alias": "candidate"})
    check("MLflow kept the registered model", r.status_code == 200 and
          r.json()["model_version"]["version"] == before["model_version"], r.status_code)
    check("S3 kept the run root", manifests(run) == before["manifests"], len(manifests(run)))


def after_rerun(run: str, out: Path) -> None:
    before = json.loads((out / "state.json").read_text())
    runs = flow_runs(run)
    check("rerun Completed", len(runs) == 2 and runs[-1]["state"]["type"] == "COMPLETED",
          [r["state"]["type"] for r in runs])
    now = manifests(run)
    changed = sorted(k for k in now if now[k] != before["manifests"].get(k))
    check("rerun skipped every finished stage (no manifest rewritten)", not changed and now.keys() == before["manifests"].keys(),
          changed or f"{len(now)} stages skipped")


def main() -> None:
    phase, args = sys.argv[1], sys.argv[2:]
    {"after-run": after_run, "after-restart": after_restart, "after-rerun": after_rerun}[phase](
        *args[:-1], Path(args[-1]))
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
