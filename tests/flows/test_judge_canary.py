"""A judge endpoint that echoes the Authorization header: the API key must not reach the terminal,
a log, the run root, the judge cache, MLflow (store and artifacts) or Prefect's database."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import yaml
from typer.testing import CliRunner

from prefcurate.flows.cli import EXIT_INCOMPLETE, app
from tests.flows.test_evaluate import _answer_files
from tests.prefcurate.evaluation.fake_openai import FakeEndpoint

CANARY = f"sk-canary-{uuid.uuid4().hex}"


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_the_api_key_is_written_nowhere(prefect_harness, tmp_path, monkeypatch, capfd, caplog):
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CANARY_KEY", CANARY)
    endpoint = FakeEndpoint()
    endpoint.mode = "echo"
    config = {
        "root": str(tmp_path / "runs"),
        "cache_dir": str(tmp_path / "cache"),
        "models": _answer_files(tmp_path),
        "evaluation": {"reference": "ref", "judge": {"kind": "openai", "base_url": endpoint.url, "model": "judge-1",
                                                      "api_key_env": "CANARY_KEY", "retry_backoff_s": 0.0}},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "canary",
                     "artifact_location": str(tmp_path / "mlartifacts")},
    }
    (tmp_path / "evaluate.yaml").write_text(yaml.safe_dump(config))
    try:
        result = CliRunner().invoke(app, ["evaluate", "--config", str(tmp_path / "evaluate.yaml")])
    finally:
        endpoint.close()
    APILogHandler().flush()  # the run's log lines into Prefect's database

    # The key was sent and echoed back; the judgments it spoiled are counted, the rest judged.
    assert endpoint.requests and all(r["auth"] == f"Bearer {CANARY}" for r in endpoint.requests)
    assert result.exit_code == EXIT_INCOMPLETE, result.output  # the 8 grades failed: more than 10 %
    assert result.stdout.count("n=4, no verdict 0") == 2  # ref and new: the pairwise verdicts came through
    run = tmp_path / "runs" / "evaluate"
    assert _files_holding(run / "eval", b"Bearer [redacted]")  # reasons quote the echo, masked
    assert _files_holding(tmp_path / "cache", b"Bearer [redacted]")  # so do the cached verdicts
    assert list((tmp_path / "mlartifacts").rglob("annotations.json"))  # MLflow got the artifacts

    captured = capfd.readouterr()
    for name, text in [("CLI stdout", result.stdout), ("CLI stderr", result.stderr), ("fd stdout", captured.out),
                       ("fd stderr", captured.err), ("log records", caplog.text)]:
        assert CANARY not in text, name
    assert CANARY not in "\n".join(str(r.__dict__) for r in caplog.records)
    assert _files_holding(tmp_path, CANARY.encode()) == []  # run root, judge cache, MLflow db and artifacts
    prefect_db = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1]).parent
    assert _files_holding(prefect_db, b"gave no verdict")  # the run's warnings reached Prefect's log store
    assert _files_holding(prefect_db, CANARY.encode()) == []  # logs, artifacts, flow-run parameters
