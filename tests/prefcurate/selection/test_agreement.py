"""Agreement report against values worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from prefcurate.config import SelectionConfig
from prefcurate.errors import SelectionError
from prefcurate.selection.agreement import agreement_report, auroc, overlap_coefficient, write_agreement
from prefcurate.selection.rules import select
from prefcurate.selection.selection import Selection


def selection(rule: str, kept: list[str], n_pool: int) -> Selection:
    return Selection(rule=rule, params={}, n_pool=n_pool, n_kept=len(kept), kept_fraction=len(kept) / n_pool,
                     score_columns=[], kept_ids=kept)


def test_overlap_coefficient_by_hand():
    assert overlap_coefficient({"a", "b", "c"}, {"b", "c", "d", "e"}) == pytest.approx(2 / 3)
    assert overlap_coefficient({"a"}, {"a", "b"}) == 1.0
    with pytest.raises(SelectionError, match="empty"):
        overlap_coefficient(set(), {"a"})


def test_auroc_by_hand():
    # positives 3, 2 against negatives 1, 2, 0: 3 beats all three; 2 beats 1 and 0 and ties 2 -> 5.5 of 6.
    assert auroc(np.array([3.0, 2.0]), np.array([1.0, 2.0, 0.0])) == pytest.approx(5.5 / 6)
    assert auroc(np.array([-1.0]), np.array([0.0, 1.0])) == 0.0
    assert np.isnan(auroc(np.array([]), np.array([1.0])))


def test_correlations_by_hand():
    # Centred: lossdiff (-1.5, -.5, .5, 1.5), IF (-1.5, .5, -.5, 1.5): cov 4, variances 5 -> r = 0.8.
    scores = pd.DataFrame({"pair_id": list("abcd"), "if": [1.0, 3.0, 2.0, 4.0],
                           "lossdiff": [1.0, 2.0, 3.0, 4.0], "irm": [4.0, 3.0, 2.0, 1.0]})
    table = agreement_report(scores, {}).correlations
    assert table.loc["lossdiff", "pearson"] == pytest.approx(0.8)
    assert table.loc["lossdiff", "spearman"] == pytest.approx(0.8)
    assert table.loc["irm", "pearson"] == pytest.approx(-0.8)
    assert table.loc["lossdiff", "paper_pearson"] == "0.77" and table.loc["lossdiff", "n"] == 4


def test_overlap_with_tif_selection_and_paper_column():
    ids = [f"p{i}" for i in range(10)]
    scores = pd.DataFrame({"pair_id": ids, "if": np.arange(10.0), "lossdiff": np.arange(10.0), "irm": np.arange(10.0)})
    report = agreement_report(scores, {
        "tif": selection("tif", ids[2:8], 10),            # p2..p7
        "lossdiff-irm": selection("lossdiff-irm", ids[4:10], 10),  # p4..p9: 4 shared, min size 6
        "if-top": selection("if-top", ids[8:], 10),       # p8, p9: none shared
        "wide": selection("lossdiff-band", ids[:8], 10),  # p0..p7: holds all of TIF
    })
    table = report.overlap
    assert table.loc["tif", "overlap_tif"] == 1.0
    assert table.loc["lossdiff-irm", "overlap_tif"] == pytest.approx(4 / 6)
    assert table.loc["if-top", "overlap_tif"] == 0.0
    assert table.loc["wide", "overlap_tif"] == 1.0
    # chance level k·|T|/n / min(k, |T|): 2·6/10/2 = 0.6 for if-top, 8·6/10/6 = 0.8 for the wide band.
    assert table.loc["if-top", "chance"] == pytest.approx(0.6)
    assert table.loc["wide", "chance"] == pytest.approx(0.8)
    assert table.loc["lossdiff-irm", "paper_overlap"] == "0.73-0.78"


def test_tif_column_stands_in_for_a_missing_tif_selection():
    scores = pd.DataFrame({"pair_id": list("abcd"), "if": [1.0, 2.0, 3.0, 4.0], "tif": [False, True, True, False],
                           "lossdiff": [1.0, 2.0, 3.0, 4.0], "irm": [1.0, 2.0, 3.0, 4.0]})
    report = agreement_report(scores, {"x": selection("lossdiff-band", ["c", "d"], 4)})
    assert report.overlap.loc["x", "overlap_tif"] == 0.5


def test_defect_detection_and_removal_counts():
    scores = pd.DataFrame({
        "pair_id": [f"p{i}" for i in range(6)],
        "irm": [-3.0, -2.0, 1.0, 2.0, 3.0, 4.0],
        "lossdiff": [0.5, 0.1, 0.2, 0.3, 0.4, 0.0],
    })
    defects = pd.DataFrame({"pair_id": ["p0", "p1", "p5", "zz"], "defect": ["label_flip", "label_flip", "extreme_contrast", "label_flip"]})
    report = agreement_report(scores, {"mid": selection("irm-band", ["p2", "p3", "p4"], 6),
                                       "all-but-p0": selection("random", ["p1", "p2", "p3", "p4", "p5"], 6)}, defects)
    det = report.detection
    assert det.loc["label_flip", "n"] == 2 and det.loc["extreme_contrast", "n"] == 1
    assert det.loc["label_flip", "auroc_irm"] == 0.0  # flips have the lowest margins
    assert det.loc["extreme_contrast", "auroc_irm"] == 1.0  # extreme margins
    # lossdiff: flips 0.5, 0.1 against clean 0.2, 0.3, 0.4 -> 0.5 beats 3, 0.1 beats none -> 3/6.
    assert det.loc["label_flip", "auroc_lossdiff"] == pytest.approx(0.5)
    rem = report.removal
    assert rem.loc["label_flip"].to_dict() == {"n": 2, "mid": 2, "all-but-p0": 1}
    assert rem.loc["extreme_contrast"].to_dict() == {"n": 1, "mid": 1, "all-but-p0": 0}
    assert rem.loc["clean"].to_dict() == {"n": 3, "mid": 0, "all-but-p0": 0}
    assert any("1 labelled defects are not in the scored pool" in n for n in report.notes)


def test_bad_defect_labels_are_errors():
    scores = pd.DataFrame({"pair_id": ["a", "b"], "irm": [1.0, 2.0]})
    with pytest.raises(SelectionError, match="missing"):
        agreement_report(scores, {}, pd.DataFrame({"pair_id": ["a"]}))
    with pytest.raises(SelectionError, match="more than once"):
        agreement_report(scores, {}, pd.DataFrame({"pair_id": ["a", "a"], "defect": ["x", "y"]}))


def test_without_influence_the_report_says_so():
    scores = pd.DataFrame({"pair_id": list("abcdef"), "lossdiff": np.arange(6.0), "irm": np.arange(6.0)[::-1]})
    sel = select(scores, SelectionConfig(band=(10.0, 90.0)))
    report = agreement_report(scores, {"lossdiff-irm": sel})
    assert report.correlations.empty
    assert np.isnan(report.overlap.loc["lossdiff-irm", "overlap_tif"])
    assert any("compute_if=false" in n for n in report.notes)


def test_json_and_text(tmp_path):
    scores = pd.DataFrame({"pair_id": list("abcd"), "if": [1.0, 3.0, 2.0, 4.0],
                           "lossdiff": [1.0, 1.0, 1.0, 1.0], "irm": [4.0, 3.0, 2.0, 1.0]})
    report = agreement_report(scores, {"tif": selection("tif", ["b", "c"], 4)})
    uri = write_agreement(report, str(tmp_path))
    payload = json.loads(open(uri).read())
    by_score = {row["score"]: row for row in payload["correlations"]}
    assert by_score["lossdiff"]["pearson"] is None  # constant LossDiff: undefined, not a number
    assert by_score["irm"]["pearson"] == pytest.approx(-0.8) and by_score["irm"]["paper_pearson"] == "0.67"
    assert payload["overlap"][0]["selection"] == "tif"
    text = report.render()
    assert "Correlation with IF" in text and "0.67" in text and "-0.800" in text


# --- the toy world, end to end through the core API ----------------------------------------


@pytest.fixture(scope="module")
def toy_scores(toy_world, tmp_path_factory):
    """The small toy pool scored as DESIGN §1 prescribes: warm-up θ, θ_val, ∇L_val, jvp IF."""
    from prefcurate.checkpoint import load_checkpoint
    from prefcurate.config import ScoringConfig, TrainingConfig
    from prefcurate.data.pairs import load_pairs
    from prefcurate.scoring.influence import validation_gradient
    from prefcurate.scoring.logps import compute_logps
    from prefcurate.scoring.scores import load_scoring_models, score_pool
    from prefcurate.training.dpo import train_dpo

    out = tmp_path_factory.mktemp("toy_scores")
    pool, val = load_pairs(toy_world.pool_parquet).pairs, load_pairs(toy_world.validation_parquet).pairs
    training = TrainingConfig()
    sft = load_checkpoint(toy_world.checkpoint_dir)
    ref, ref_val = (compute_logps(sft.model, sft.tokenizer, d, desc=None) for d in (pool, val))
    train_dpo(toy_world.checkpoint_dir, pool, str(out / "warmup"), training, epochs=1.0, ref_logps=ref)
    train_dpo(str(out / "warmup"), val, str(out / "val"), training, epochs=1.0, ref_logps=ref_val,
              reference_dir=toy_world.checkpoint_dir)  # fmt: skip
    models = load_scoring_models(str(out / "warmup"), str(out / "val"))
    gradient = validation_gradient(models.policy, models.tokenizer, val, ref_val, beta=training.beta, desc=None)
    return score_pool(pool, models=models, ref_logps=ref, gradient=gradient, training=training, scoring=ScoringConfig())


@pytest.mark.slow
def test_toy_world_agreement_and_planted_defects(toy_world, toy_scores):
    from prefcurate.selection.agreement import toy_defects

    defects = toy_defects(toy_world.defects_parquet, toy_world.pool_parquet)
    assert set(defects["pair_id"]) <= set(toy_scores["pair_id"]) and defects["pair_id"].is_unique
    assert defects["defect"].value_counts().to_dict() == toy_world.stats["pool"]["defects"]

    chosen = select(toy_scores, SelectionConfig())
    assert 0.5 <= chosen.kept_fraction <= 0.7  # the default band keeps about what the paper kept
    sels = {"lossdiff-irm": chosen, "tif": select(toy_scores, SelectionConfig(rule="tif"))}
    report = agreement_report(toy_scores, sels, defects)
    assert report.correlations.loc["lossdiff", "pearson"] > 0.5  # the proxy tracks exact influence
    assert report.detection.loc["label_flip", "auroc_irm"] < 0.4  # flipped pairs have low implicit reward margins
    removed = report.removal["lossdiff-irm"] / report.removal["n"]
    assert removed["label_flip"] > removed["clean"] + 0.1  # the rule removes flips more than clean pairs
    assert removed["extreme_contrast"] >= 0.8  # and the extreme-margin pairs
