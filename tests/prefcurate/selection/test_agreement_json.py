"""agreement.json reads back into the same report: every table, its column order, the notes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from prefcurate.config import SelectionConfig
from prefcurate.selection.agreement import AgreementReport, agreement_report
from prefcurate.selection.rules import select


def test_agreement_json_round_trip():
    rng = np.random.default_rng(0)
    influence = rng.normal(size=120)
    q_lo, q_hi = np.percentile(influence, [25, 75])
    scores = pd.DataFrame({"pair_id": [f"p{i}" for i in range(120)], "if": influence,
                           "tif": (influence > q_lo) & (influence < q_hi),
                           "lossdiff": influence + rng.normal(size=120), "irm": rng.normal(size=120)})  # fmt: skip
    selections = {r: select(scores, SelectionConfig(rule=r)) for r in ("lossdiff-irm", "tif", "irm-band")}
    defects = pd.DataFrame({"pair_id": ["p1", "p2", "p3"], "defect": ["label_flip"] * 3})
    report = agreement_report(scores, selections, defects)
    back = AgreementReport.from_json(json.loads(report.to_json()))
    for name in ("correlations", "overlap", "detection", "removal"):
        original, read = getattr(report, name), getattr(back, name)
        assert not original.empty
        pd.testing.assert_frame_equal(read, original, check_dtype=False)  # column order included
    assert back.notes == report.notes
