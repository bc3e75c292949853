"""`prefcurate serve`: the three deployments of prefect.yaml, served from this process.

`prefect.serve` needs no work pool and no worker: the process polls the API and runs the
flows itself, which suits one machine (a laptop, a single GPU box). For workers on other
machines use prefect.yaml with `prefect deploy` (docs/deployment.md). Both paths give the
same deployment names, schedule and parameter forms.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect import serve as prefect_serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.curate import curate
from flows.evaluate import evaluate
from flows.nightly import nightly
from prefcurate.config import NightlyConfig
from prefcurate.errors import ConfigError

NIGHTLY_CRON = "0 2 * * *"
TAGS = ["prefcurate"]


def deployments(
    nightly_config: NightlyConfig | None = None, *, cron: str = NIGHTLY_CRON, timezone: str = "UTC"
) -> list[RunnerDeployment]:
    """`nightly-curation` (cron), `curate` and `evaluate` (on demand) as runner deployments.

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
    nightly_parameters = {"config": nightly_config.model_dump(mode="json")} if nightly_config else None
    return [
        nightly.to_deployment(
            name="nightly-curation",
            schedules=[schedule],
            parameters=nightly_parameters,
            concurrency_limit=1,
            tags=[*TAGS, "nightly"],
            description="Score and select the preference pool every night and publish the selection.",
        ),
        curate.to_deployment(
            name="curate",
            tags=[*TAGS, "curate"],
            description="Curate a pool end to end: score, select, train DPO, evaluate, report.",
        ),
        evaluate.to_deployment(
            name="evaluate",
            tags=[*TAGS, "evaluate"],
            description="Judge checkpoints or model_outputs.json files against a reference.",
        ),
    ]


def serve(nightly_config: NightlyConfig | None = None, *, cron: str = NIGHTLY_CRON, timezone: str = "UTC") -> None:
    """Serve the deployments until interrupted (Ctrl-C)."""
    prefect_serve(*deployments(nightly_config, cron=cron, timezone=timezone))
