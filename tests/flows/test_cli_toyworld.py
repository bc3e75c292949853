"""`prefcurate toyworld build`: builds a world and says where everything went; reuses it on a
second call; a clash with an existing world is one stderr line and exit 2."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from prefcurate.flows.cli import app

runner = CliRunner()


def test_build_prints_every_artifact_and_reuses_on_second_call(tmp_path):
    out = tmp_path / "world"
    first = runner.invoke(app, ["toyworld", "build", "--out", str(out), "--size", "small", "--seed", "3"])
    assert first.exit_code == 0, first.output
    record = json.loads((out / "world.json").read_text())
    assert record["spec"]["seed"] == 3 and record["spec"]["size"] == "small"
    for rel in record["files"].values():
        assert str(out / rel) in first.output and (out / rel).exists()
    assert "built in" in first.output
    second = runner.invoke(app, ["toyworld", "build", "--out", str(out), "--size", "small", "--seed", "3"])
    assert second.exit_code == 0 and "reused" in second.output
    assert json.loads((out / "world.json").read_text()) == record


def test_build_into_a_world_of_another_seed_is_one_line_exit_2(toy_world):
    result = runner.invoke(app, ["toyworld", "build", "--out", toy_world.root, "--size", "small", "--seed", "9"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "another spec" in lines[0] and "Traceback" not in result.output


def test_unknown_size_is_refused_before_building(tmp_path):
    result = runner.invoke(app, ["toyworld", "build", "--out", str(tmp_path / "w"), "--size", "huge"])
    assert result.exit_code != 0 and not (tmp_path / "w").exists()


def test_proxy_overfit_rate_plants_the_kind_and_an_impossible_rate_is_one_line(tmp_path):
    bad = runner.invoke(app, ["toyworld", "build", "--out", str(tmp_path / "bad"), "--size", "small", "--proxy-overfit-rate", "0.9"])
    assert bad.exit_code == 2 and not (tmp_path / "bad").exists()
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "proxy_overfit_rate 0.9" in lines[0] and "ordinary pairs" in lines[0]
    out = tmp_path / "world"
    good = runner.invoke(app, ["toyworld", "build", "--out", str(out), "--size", "small", "--proxy-overfit-rate", "0.05"])
    assert good.exit_code == 0, good.output
    assert "12 proxy_overfit" in good.output  # round(0.05 * 240)
    assert json.loads((out / "world.json").read_text())["spec"]["pool"]["proxy_overfit_rate"] == 0.05
