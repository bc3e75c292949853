"""select_stage / publish_stage via `.fn` on a synthetic scores table: files, sizes, resume, publishing."""

from __future__ import annotations

import numpy as np
import pandas as pd

from prefcurate import io
from prefcurate.config import DataSource, ModelSource, NightlyConfig, SelectionConfig
from prefcurate.manifest import FileRef, manifest_uri, read_manifest
from prefcurate.scoring.stage import ScoreOut
from prefcurate.selection.stage import SelectOut
from prefcurate.tasks.select import select_stage


def _scores(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    influence = rng.normal(size=n)
    q_lo, q_hi = np.percentile(influence, [25, 75])
    return pd.DataFrame({
        "pair_id": [f"p{i:04d}" for i in range(n)], "if": influence, "tif": (influence > q_lo) & (influence < q_hi),
        "lossdiff": influence + rng.normal(scale=0.5, size=n), "irm": rng.normal(size=n),
        "score_chosen": rng.uniform(5, 10, n), "score_rejected": rng.uniform(1, 5, n),
    })  # fmt: skip


def _score(run: str, scores: pd.DataFrame) -> ScoreOut:
    uri = io.write_parquet(io.join(run, "scores", "scores.parquet"), scores)
    return ScoreOut(scores=FileRef.of(uri), pairs=len(scores), shards=1, truncated=0, summary={})


def _config(selection: SelectionConfig, **extra) -> NightlyConfig:
    return NightlyConfig(model=ModelSource(uri="sft"), data=DataSource(pool_uri="pool.parquet"), selection=selection, **extra)


def test_select_writes_rule_baseline_comparisons_and_agreement(tmp_path):
    run = str(tmp_path / "run")
    scores = _scores()
    m = select_stage.fn(_score(run, scores), _config(SelectionConfig(band=(10, 90))), run)
    kept = pd.read_parquet(io.join(m.selection.uri, "selection.parquet"))
    random = pd.read_parquet(io.join(m.rules["random"].uri, "selection.parquet"))
    # both bands strictly inside: LossDiff-IRM keeps at most 80 % × 80 % … and at least the overlap of the two
    assert (m.n_pool, m.n_kept) == (200, len(kept)) and 0.6 * 200 <= len(kept) <= 0.8 * 200
    assert len(random) == len(kept) and set(random.pair_id) <= set(scores.pair_id)
    assert m.kept_fraction == len(kept) / 200
    for rule in ("lossdiff-band", "irm-band", "tif", "if-top", "rating-margin", "reward-gap"):
        assert (tmp_path / "run" / "selection" / "rules" / rule / "selection.json").exists(), rule
    report = io.read_json(m.agreement.uri)
    overlap = {row["selection"]: row for row in report["overlap"]}
    assert overlap["tif"]["overlap_tif"] == 1.0
    assert set(m.rules) >= {"random", "tif"} and "lossdiff-irm" not in m.rules
    assert read_manifest(SelectOut, manifest_uri(run, "select")) == m


def test_select_resumes_and_reruns_on_new_scores_or_config(tmp_path):
    run = str(tmp_path / "run")
    score = _score(run, _scores())
    first = select_stage.fn(score, _config(SelectionConfig()), run)
    again = select_stage.fn(score, _config(SelectionConfig()), run)
    assert again.meta.created_at == first.meta.created_at  # skipped
    other = select_stage.fn(score, _config(SelectionConfig(band=(20, 80))), run)
    assert other.meta.created_at > first.meta.created_at and other.n_kept < first.n_kept
    score2 = _score(run, _scores(seed=1))
    assert select_stage.fn(score2, _config(SelectionConfig(band=(20, 80))), run).meta.created_at > other.meta.created_at
