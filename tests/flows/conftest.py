"""Flow-test fixtures: one `curate` run of the small toy world through the CLI, shared by the
flow tests (states, layout, MLflow, resume comparisons) so the suite trains it only once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

SHARD_SIZE = 60  # the small world's 240 pairs → 4 shards


def stage_outputs(run: Path) -> dict[str, Any]:
    """Every finished stage's typed output under a run directory, read from its manifest."""
    from prefcurate.data.stage import IngestOut
    from prefcurate.evaluation.stage import GenerateOut, JudgeOut, ReplicatesOut
    from prefcurate.manifest import read_manifest
    from prefcurate.reporting.stage import RegisterOut, ReportOut
    from prefcurate.scoring.bundle import BundleOut
    from prefcurate.scoring.incremental import NewPairsOut, NewShardOut
    from prefcurate.scoring.reference import ReferenceOut
    from prefcurate.scoring.stage import GradientOut, RewardOut, ScoreOut, ShardOut
    from prefcurate.selection.stage import PublishOut, SelectOut
    from prefcurate.training.stage import ModelOut

    exact = {"ingest": IngestOut, "reference": ReferenceOut, "warmup": ModelOut, "val": ModelOut, "val-gradient": GradientOut,
             "score": ScoreOut, "select": SelectOut, "judge": JudgeOut, "register": RegisterOut, "report": ReportOut,
             "publish": PublishOut, "bundle": BundleOut, "new-pairs": NewPairsOut, "replicates": ReplicatesOut,
             "reward-scores": RewardOut}
    prefixes = {"score-shard-": ShardOut, "score-new-": NewShardOut, "final-": ModelOut, "generate-": GenerateOut,
                "judge-seed": JudgeOut}
    out = {}
    for path in sorted((Path(run) / "manifests").glob("*.json")):
        kind = exact.get(path.stem) or next(k for p, k in prefixes.items() if path.stem.startswith(p))
        out[path.stem] = read_manifest(kind, str(path))
    return out


def toy_config(world: Any, root: str, tracking_uri: str, run_name: str = "toy", **extra: Any) -> dict[str, Any]:
    """A curate config (as YAML would hold it) for the small toy world; `extra` replaces top-level keys."""
    config = {
        "root": root,
        "run_name": run_name,
        "cache_dir": f"{root}/.cache",
        "model": {"uri": world.checkpoint_dir},
        "data": {"pool_uri": world.pool_parquet, "validation_uri": world.validation_parquet, "eval_prompts_uri": world.eval_prompts},
        "defects_uri": world.defects_parquet,
        "scoring": {"shard_size": SHARD_SIZE},
        "tracking": {"tracking_uri": tracking_uri, "experiment": "flows-test", "register_model": "toy-selected"},
    }
    config.update(extra)
    return config


@dataclass
class CuratedRun:
    root: Path
    run: Path
    config_file: Path
    config: dict[str, Any]
    tracking_uri: str
    stdout: str
    exit_code: int


@pytest.fixture(scope="session")
def curated(toy_world, prefect_harness, tmp_path_factory) -> CuratedRun:
    """`prefcurate curate --config toy.yaml` run once on the small toy world (Prefect test API)."""
    from typer.testing import CliRunner

    from prefcurate.flows.cli import app

    root = tmp_path_factory.mktemp("curated")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    config = toy_config(toy_world, str(root / "runs"), tracking_uri)
    config_file = root / "toy.yaml"
    config_file.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["curate", "--config", str(config_file)])
    return CuratedRun(root, root / "runs" / "toy", config_file, config, tracking_uri, result.output, result.exit_code)
