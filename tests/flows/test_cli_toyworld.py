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
