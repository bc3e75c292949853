"""The stage runner: computes once, then reuses only what it can vouch for; the cache key is
built from the inputs, the config fields read, the outside identity and the code."""

from __future__ import annotations

import pytest

from prefcurate import io
from prefcurate.config import ScoringConfig, TrainingConfig
from prefcurate.errors import DataError
from prefcurate.manifest import FileRef, StageOutput, manifest_uri
from prefcurate.stage import StageSpec, cache_key, read_config, run_stage


class TextOut(StageOutput):
    text: FileRef
    n: int


class Config:
    def __init__(self, training: TrainingConfig, scoring: ScoringConfig):
        self.training, self.scoring = training, scoring


CALLS: list[str] = []


def _write(ctx, word: str) -> TextOut:
    CALLS.append(word)
    return TextOut(text=FileRef.of(io.write_text(ctx.path("x.txt"), word)), n=len(word))


SPEC = StageSpec("s", TextOut, _write, reads=("training.beta", "scoring"))


def test_run_stage_computes_once_then_skips(tmp_path):
    run, config = str(tmp_path / "run"), Config(TrainingConfig(), ScoringConfig())
    CALLS.clear()
    first = run_stage(SPEC, run, config, inputs={"word": "hello"})
    second = run_stage(SPEC, run, config, inputs={"word": "hello"})
    assert CALLS == ["hello"] and second == first and second.meta.config["training.beta"] == 0.5
    run_stage(SPEC, run, Config(TrainingConfig(learning_rate=1e-3), ScoringConfig()), inputs={"word": "hello"})
    assert CALLS == ["hello"]  # a field the stage does not read changes nothing
    run_stage(SPEC, run, Config(TrainingConfig(beta=0.1), ScoringConfig()), inputs={"word": "hello"})
    run_stage(SPEC, run, Config(TrainingConfig(beta=0.1), ScoringConfig(batch_size=3)), inputs={"word": "hello"})
    run_stage(SPEC, run, Config(TrainingConfig(beta=0.1), ScoringConfig(batch_size=3)), inputs={"word": "hola"})
    assert CALLS == ["hello", "hello", "hello", "hola"]


def test_a_corrupt_output_is_recomputed_and_named_in_the_log(tmp_path, caplog):
    run, config = str(tmp_path / "run"), Config(TrainingConfig(), ScoringConfig())
    CALLS.clear()
    first = run_stage(SPEC, run, config, inputs={"word": "hello"})
    (tmp_path / "run" / "x.txt").write_text("hel")
    again = run_stage(SPEC, run, config, inputs={"word": "hello"})
    assert CALLS == ["hello", "hello"] and again.meta.created_at > first.meta.created_at
    assert "output text" in caplog.text and "failed its check" in caplog.text
    assert (tmp_path / "run" / "x.txt").read_text() == "hello"


def test_failed_stage_leaves_no_manifest(tmp_path):
    def compute(ctx):
        io.write_text(ctx.path("partial.txt"), "half")
        raise DataError("no usable rows")

    run = str(tmp_path / "run")
    with pytest.raises(DataError):
        run_stage(StageSpec("f", TextOut, compute), run, None)
    assert not io.exists(manifest_uri(run, "f"))


def test_cache_key_parts():
    base = cache_key("score", {"a": "d1"}, {"scoring.batch_size": 64}, None, "v1")
    assert base == cache_key("score", {"a": "d1"}, {"scoring.batch_size": 64}, None, "v1")
    assert len({base, cache_key("score", {"a": "d2"}, {"scoring.batch_size": 64}, None, "v1"),
                cache_key("score", {"a": "d1"}, {"scoring.batch_size": 7}, None, "v1"),
                cache_key("score", {"a": "d1"}, {"scoring.batch_size": 64}, "pool-hash", "v1"),
                cache_key("score", {"a": "d1"}, {"scoring.batch_size": 64}, None, "v2"),
                cache_key("select", {"a": "d1"}, {"scoring.batch_size": 64}, None, "v1")}) == 6


def test_read_config_takes_fields_and_sections():
    config = Config(TrainingConfig(beta=0.2), ScoringConfig())
    read = read_config(config, ("training.beta", "scoring"))
    assert read["training.beta"] == 0.2 and read["scoring"]["batch_size"] == 64
