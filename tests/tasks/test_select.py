"""select_stage / publish_stage via `.fn` on a synthetic scores table: files, sizes, resume, publishing."""

from __future__ import annotations

import numpy as np
import pandas as pd

from prefcurate import io
from prefcurate.config import SelectionConfig
from prefcurate.manifest import cache_key, manifest_uri, new_manifest, read_manifest
from tasks.select import publish_stage, select_stage


def _scores(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    influence = rng.normal(size=n)
    q_lo, q_hi = np.percentile(influence, [25, 75])
    return pd.DataFrame({
        "pair_id": [f"p{i:04d}" for i in range(n)], "if": influence, "tif": (influence > q_lo) & (influence < q_hi),
        "lossdiff": influence + rng.normal(scale=0.5, size=n), "irm": rng.normal(size=n),
        "score_chosen": rng.uniform(5, 10, n), "score_rejected": rng.uniform(1, 5, n),
    })  # fmt: skip


def _inputs(run: str, scores: pd.DataFrame):
    uri = io.write_parquet(io.join(run, "scores", "scores.parquet"), scores)
    score = new_manifest("score", run, key=cache_key("score", [], None, "t"), outputs={"scores": uri}, rows={"pairs": len(scores)})
    ingest = new_manifest("ingest", run, key="k", rows={"train": len(scores)})
    return score, ingest


def test_select_writes_rule_baseline_comparisons_and_agreement(tmp_path):
    run = str(tmp_path / "run")
    scores = _scores()
    score, ingest = _inputs(run, scores)
    m = select_stage.fn(score, ingest, SelectionConfig(band=(10, 90)), run)
    kept = pd.read_parquet(m.outputs["selection"])
    random = pd.read_parquet(m.outputs["random"])
    # both bands strictly inside: LossDiff-IRM keeps at most 80 % × 80 % … and at least the overlap of the two
    assert m.rows == {"pool": 200, "kept": len(kept)} and 0.6 * 200 <= len(kept) <= 0.8 * 200
    assert len(random) == len(kept) and set(random.pair_id) <= set(scores.pair_id)
    assert m.extra["kept_fraction"] == len(kept) / 200
    for rule in ("lossdiff-band", "irm-band", "tif", "if-top", "rating-margin", "reward-gap"):
        assert (tmp_path / "run" / "selection" / "rules" / rule / "selection.json").exists(), rule
    report = io.read_json(m.outputs["agreement"])
    overlap = {row["selection"]: row for row in report["overlap"]}
    assert overlap["tif"]["overlap_tif"] == 1.0
    assert {row["selection"] for row in m.extra["summary"]} >= {"selected", "random", "tif"}
    assert read_manifest(manifest_uri(run, "select")) == m


def test_select_resumes_and_reruns_on_new_scores_or_config(tmp_path):
    run = str(tmp_path / "run")
    score, ingest = _inputs(run, _scores())
    first = select_stage.fn(score, ingest, SelectionConfig(), run)
    again = select_stage.fn(score, ingest, SelectionConfig(), run)
    assert again.created_at == first.created_at  # skipped
    other = select_stage.fn(score, ingest, SelectionConfig(band=(20, 80)), run)
    assert other.created_at > first.created_at and other.rows["kept"] < first.rows["kept"]
    score2, _ = _inputs(run, _scores(seed=1))
    assert select_stage.fn(score2, ingest, SelectionConfig(band=(20, 80)), run).created_at > other.created_at


def test_publish_copies_selection_last_and_skips_when_done(tmp_path):
    run = str(tmp_path / "run")
    score, ingest = _inputs(run, _scores())
    sel = select_stage.fn(score, ingest, SelectionConfig(), run)
    target = str(tmp_path / "published")
    pub = publish_stage.fn(sel, score, target)
    for name in ("selection.parquet", "selection.json", "agreement.json", "scores.parquet"):
        assert (tmp_path / "published" / name).exists()
    assert io.read_bytes(io.join(target, "selection.parquet")) == io.read_bytes(sel.outputs["selection"])
    assert publish_stage.fn(sel, score, target).created_at == pub.created_at
