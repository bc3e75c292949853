"""`prefcurate verify` on a finished curate run of the small toy world: it passes as written, and a
changed IF, LossDiff or selection fails exactly its own check (exit 1); a non-run exits 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from prefcurate import io
from prefcurate.flows.cli import app
from prefcurate.verify import TOLERANCES, sample_rows

SAMPLE = ["--sample", "16"]
# what verify reads of a run (the final models, generations and judgments are left behind)
NEEDED = ("manifests", "data", "models/warmup", "models/val", "gradients", "scores", "selection")


def _copy(run: Path, to: Path) -> Path:
    """The run's files verify reads, somewhere else (its manifests still name the original place)."""
    for part in NEEDED:
        shutil.copytree(run / part, to / part)
    return to


def _verify(*args: str):
    result = CliRunner().invoke(app, ["verify", *args])
    return result, result.stdout


def _middle_pair(scores: pd.DataFrame, column: str, among: list[int] | None = None) -> int:
    """The row whose `column` is nearest the median (of `among`): a small change there moves no band edge."""
    values = scores[column] if among is None else scores.loc[among, column]
    return int((values - values.median()).abs().idxmin())


@pytest.mark.slow
def test_a_finished_run_passes_every_check(curated):
    assert curated.exit_code == 0, curated.stdout
    result, out = _verify(str(curated.run), *SAMPLE)
    assert result.exit_code == 0, result.output
    for name in TOLERANCES:
        assert any(line.split()[:1] == [name] and line.rstrip().endswith("ok") for line in out.splitlines()), (name, out)
    assert "(float32; IF on 16 of 240 pairs, seed 0)" in out
    result, out = _verify(str(curated.run), *SAMPLE, "--float64", "--json")
    report = json.loads(out)
    assert result.exit_code == 0 and report["passed"] and report["dtype"] == "float64", out
    assert {c["name"] for c in report["checks"]} == set(TOLERANCES)


@pytest.mark.slow
def test_changed_if_and_lossdiff_fail_their_checks(curated, tmp_path):
    run = _copy(curated.run, tmp_path / "toy")
    path = run / "scores" / "scores.parquet"
    scores = pd.read_parquet(path)
    pool = pd.read_parquet(run / "data" / "train.parquet")["pair_id"].tolist()
    sampled = scores.index[scores["pair_id"].isin([pool[k] for k in sample_rows(pool, 16, seed=0)])].tolist()
    i, j = _middle_pair(scores, "if", sampled), _middle_pair(scores, "lossdiff")
    scores.loc[i, "if"] += 1e-3 * scores["if"].abs().max()
    scores.loc[j, "lossdiff"] += 1e-2 * scores["lossdiff"].abs().max()
    scores.to_parquet(path)
    result, out = _verify(str(run), *SAMPLE, "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(out)
    failed = {c["name"]: c for c in report["checks"] if not c["passed"]}
    assert set(failed) == {"if", "lossdiff"}, report
    assert scores.loc[i, "pair_id"] in failed["if"]["detail"]
    assert scores.loc[j, "pair_id"] in failed["lossdiff"]["detail"]
    assert "beyond tolerance: if, lossdiff" in result.stderr
    # a looser tolerance on the command line lets the same run pass that check
    result, _ = _verify(str(run), *SAMPLE, "--tolerance", "if=1e-2", "--tolerance", "lossdiff=1e-1")
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_changed_selection_fails_the_selection_check(curated, tmp_path):
    run = _copy(curated.run, tmp_path / "toy")
    path = run / "selection" / "selection.parquet"
    kept = pd.read_parquet(path)
    pool = pd.read_parquet(run / "scores" / "scores.parquet")["pair_id"]
    outside = next(p for p in pool if p not in set(kept["pair_id"]))
    kept.loc[0, "pair_id"] = outside  # one kept pair swapped for one the rule dropped
    kept.to_parquet(path)
    result, out = _verify(str(run), *SAMPLE)
    assert result.exit_code == 1, result.output
    lines = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
    assert lines["selection"].rstrip().endswith("FAILED") and " 2 " in lines["selection"]  # 2 pairs differ
    assert all(lines[name].rstrip().endswith("ok") for name in TOLERANCES if name != "selection")
    assert "selection: kept pairs differ for lossdiff-irm (2 pairs)" in out


@pytest.mark.slow
def test_not_a_run_or_an_unfinished_one_is_one_line_exit_2(curated, tmp_path):
    result, _ = _verify(str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "holds no manifests/" in result.stderr
    run = tmp_path / "toy"
    shutil.copytree(curated.run / "manifests", run / "manifests")
    (run / "manifests" / "select.json").unlink()
    result, _ = _verify(str(run))
    assert result.exit_code == 2 and "no finished `select` stage" in result.stderr, result.output
    result, _ = _verify(str(curated.run), "--tolerance", "if")
    assert result.exit_code == 2 and "--tolerance expects CHECK=NUMBER" in result.stderr


@pytest.mark.slow
def test_a_run_on_s3_verifies(curated, s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFCURATE_CACHE", str(tmp_path / "cache"))  # the s3 models are downloaded there
    for part in NEEDED:
        io.upload_dir(str(curated.run / part), f"{s3_bucket}/runs/toy/{part}")
    result, out = _verify(f"{s3_bucket}/runs/toy", "--sample", "4", "--json")
    report = json.loads(out)
    assert result.exit_code == 0 and report["passed"], out
    assert report["run_uri"] == f"{s3_bucket}/runs/toy"
    assert np.isfinite([c["max_rel_error"] for c in report["checks"]]).all()


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["hinge", "ipo"])
def test_runs_with_the_hinge_and_ipo_losses_score_with_them_and_verify(toy_world, prefect_harness, tmp_path, loss_type):
    """A curate run with another `training.loss_type` stores that loss's LossDiff, and verify, which takes
    the loss type from the run's manifests, recomputes every check of it independently."""
    from prefcurate.flows.cli import app as curate_app
    from tests.flows.conftest import toy_config
    from tests.prefcurate.scoring.test_loss_type import formula

    config = toy_config(toy_world, str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}", run_name=loss_type,
                        training={"loss_type": loss_type},
                        evaluation={"baselines": ["sft"], "single_score": False})  # fmt: skip
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    curate = CliRunner().invoke(curate_app, ["curate", "--config", str(tmp_path / "run.yaml")])
    assert curate.exit_code == 0, curate.output
    run = tmp_path / "runs" / loss_type
    assert json.loads((run / "manifests" / "warmup.json").read_text())["meta"]["config"]["training.loss_type"] == loss_type
    scores = pd.read_parquet(run / "scores" / "scores.parquet")
    ref = scores[["ref_chosen_logps", "ref_rejected_logps", "chosen_len", "rejected_len"]].set_axis(
        ["chosen_logps", "rejected_logps", "chosen_len", "rejected_len"], axis=1)
    theta = scores[["policy_chosen_logps", "policy_rejected_logps", "chosen_len", "rejected_len"]].set_axis(
        ["chosen_logps", "rejected_logps", "chosen_len", "rejected_len"], axis=1)
    np.testing.assert_allclose(scores["loss_warmup"], formula(loss_type, 0.5, theta, ref), rtol=1e-4, atol=1e-5)
    result, out = _verify(str(run), *SAMPLE, "--json")
    report = json.loads(out)
    assert result.exit_code == 0 and report["passed"], out
    assert {c["name"] for c in report["checks"]} == set(TOLERANCES)
