"""The deployments, defined once: served from this process (`prefcurate serve`) or
written out as `prefect.yaml` for `prefect deploy` with workers.

`prefect.serve` needs no work pool and no worker: the process polls the API and runs the
flows itself, which suits one machine (a laptop, a single GPU box). For workers on other
machines, `prefect.yaml` (rendered from `DEPLOYMENTS` by `prefect_yaml()`; a test keeps the
committed file equal to it) deploys the same names, schedule and parameter forms.
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from prefcurate.config import NightlyConfig
from prefcurate.errors import ConfigError
from prefcurate.flows.compare import compare_models
from prefcurate.flows.curate import curate
from prefcurate.flows.evaluate import evaluate
from prefcurate.flows.ifgroups import if_groups_flow
from prefcurate.flows.nightly import nightly

NIGHTLY_CRON = "0 2 * * *"
TAGS = ["prefcurate"]
WORK_POOL = "prefcurate-process"


@dataclass(frozen=True)
class Deployment:
    name: str
    flow: object
    entrypoint: str
    description: str
    tag: str
    scheduled: bool = False
    concurrency_limit: int | None = None


DEPLOYMENTS = (
    Deployment("nightly-curation", nightly, "flows/nightly.py:nightly",
               "Every night at 02:00: ingest the preference pool, score every pair against the SFT model (IF, LossDiff, "
               "IRM), select the valuable ones and publish the selection. No final training.",
               "nightly", scheduled=True, concurrency_limit=1),
    Deployment("curate", curate, "flows/curate.py:curate",
               "On demand: curate a pool for an SFT model end to end — score, select, train DPO on the selection and the "
               "baselines, evaluate win rates and write the report. Fill in the form (model.uri, data.pool_uri at least) "
               "or pass --param/--params to `prefect deployment run`.", "curate"),
    Deployment("evaluate", evaluate, "flows/evaluate.py:evaluate",
               "On demand: judge checkpoints or AlpacaEval model_outputs.json files against a reference (win rate, "
               "length-controlled win rate, single score).", "evaluate"),
    Deployment("if-groups", if_groups_flow, "flows/ifgroups.py:if_groups_flow",
               "On demand: the IF-group study — score the pool as curate does, split it into low / medium / high IF groups "
               "(if_groups.cuts, percentiles), train DPO from θ on each for the same number of steps and plot validation "
               "loss and margin. Fill in model.uri and data.pool_uri at least; give the root and run_name of a finished "
               "curate run to reuse its θ and scores (empty run_name: a fresh run named after the flow run).", "if-groups"),
    Deployment("compare-models", compare_models, "flows/compare.py:compare_models",
               "On demand: score one pool for two SFT models and report how far they agree — IF rank correlation, the "
               "share of pairs whose IF changes sign, TIF and selection overlap with chance level and Cohen's kappa. Fill "
               "in model.uri (the first model), compare.model.uri (the second) and data.pool_uri at least; the second "
               "model's scoring runs in compare.run_name (empty: <run_name>-b).", "compare-models"),
)


def deployments(
    nightly_config: NightlyConfig | None = None, *, cron: str = NIGHTLY_CRON, timezone: str = "UTC"
) -> list[RunnerDeployment]:
    """The deployments as runner deployments for `prefect.serve`.

    Without a nightly config the schedule is created inactive: there is nothing to curate
    yet, and it can be switched on in the UI once the form has a model and a pool.
    """
    try:
        ZoneInfo(timezone)
        schedule = Cron(cron, timezone=timezone, active=nightly_config is not None)
    except (ValueError, ZoneInfoNotFoundError) as exc:
        detail = (str(exc).strip().splitlines() or ["unknown"])[-1].strip("'\"")
        raise ConfigError(
            f"invalid nightly schedule (cron '{cron}', timezone '{timezone}'): {detail}; "
            "give a 5-field cron expression and an IANA timezone such as Europe/Berlin"
        ) from exc
    out = []
    for d in DEPLOYMENTS:
        options = {"name": d.name, "tags": [*TAGS, d.tag], "description": d.description}
        if d.scheduled:
            options["schedules"] = [schedule]
            if nightly_config is not None:
                options["parameters"] = {"config": nightly_config.model_dump(mode="json")}
        if d.concurrency_limit:
            options["concurrency_limit"] = d.concurrency_limit
        out.append(d.flow.to_deployment(**options))
    return out


HEADER = """\
# prefcurate deployments — see docs/deployment.md. Generated from prefcurate/flows/serve.py
# (python -m prefcurate.flows.serve > prefect.yaml); a test keeps the two equal.
#
#   prefect work-pool create prefcurate-process --type process
#   prefect variable set prefcurate_model_uri /models/sft          # nightly's SFT checkpoint
#   prefect variable set prefcurate_pool_uri s3://prefs/new.parquet  # nightly's preference pool
#   prefect variable set prefcurate_timezone Europe/Berlin          # optional; unset = UTC
#   prefect deploy --all                                           # from this directory
#   PREFCURATE_BASE_DIR=$PWD prefect worker start --pool prefcurate-process
#
# Relative locations in a config (root, store_uri, sqlite:///mlflow.db) resolve against
# PREFCURATE_BASE_DIR on a worker; without it they are refused. Runs started from the UI or a
# schedule without a run_name are named after their flow run.
#
# Prefect variables are read when `prefect deploy` runs, not at run time: set them first and
# deploy again after changing them. A missing variable becomes an empty value.
#
# The process worker runs flows from this checkout (the directory `prefect deploy` ran in).
# For workers on other machines, replace the pull step with prefect.deployments.steps.git_clone.
"""


def prefect_yaml() -> str:
    """`prefect.yaml` for these deployments on a process work pool."""
    entries = []
    for d in DEPLOYMENTS:
        entry: dict = {"name": d.name, "entrypoint": d.entrypoint, "description": d.description, "tags": [*TAGS, d.tag]}
        if d.concurrency_limit:
            entry["concurrency_limit"] = d.concurrency_limit
        if d.scheduled:
            entry["schedules"] = [{"cron": NIGHTLY_CRON, "timezone": "{{ prefect.variables.prefcurate_timezone }}",
                                   "active": True}]
            # no run_name: each night is a run of its own, named after its flow run
            entry["parameters"] = {"config": {"model": {"uri": "{{ prefect.variables.prefcurate_model_uri }}"},
                                              "data": {"pool_uri": "{{ prefect.variables.prefcurate_pool_uri }}"}}}
        entry["work_pool"] = {"name": WORK_POOL, "work_queue_name": "default", "job_variables": {}}
        entries.append(entry)
    spec = {"name": "prefcurate", "build": None, "push": None,
            "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $PWD }}"}}],
            "deployments": entries}
    return HEADER + yaml.safe_dump(spec, sort_keys=False, width=120, allow_unicode=True)


if __name__ == "__main__":
    print(prefect_yaml(), end="")
