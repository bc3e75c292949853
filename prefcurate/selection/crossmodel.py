"""Do two SFT models value the same pairs? One pool's scores under two models, compared.

The paper's claim is that preference-data quality is a property of the model: the same pair
helps one model and hurts another. This measures it on the user's own models: the rank
correlation of IF, the share of pairs whose IF changes sign, and how far the TIF sets and the
selections agree — overlap coefficient beside its chance level and Cohen's kappa, so a large
overlap that size alone explains is not read as agreement.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field
from scipy import stats

from prefcurate.errors import SelectionError
from prefcurate.selection.agreement import cohen_kappa, overlap_coefficient


class SetAgreement(BaseModel):
    """Two keep/drop decisions over the same pool."""

    n_first: int
    n_second: int
    n_both: int
    overlap: float = Field(description="|A∩B| / min(|A|, |B|)")
    chance: float = Field(description="The overlap two random sets of these sizes have in expectation.")
    kappa: float = Field(description="Cohen's kappa of the two keep/drop decisions over the pool.")


class ModelComparison(BaseModel):
    """One pool scored for two models."""

    first: str
    second: str
    n_pairs: int
    if_spearman: float
    if_pearson: float
    if_sign_changes: float = Field(description="Share of pairs whose IF has another sign under the second model.")
    tif: SetAgreement
    selection: SetAgreement
    selection_rules: tuple[str, str]

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow."""
        out = {"if_spearman": self.if_spearman, "if_pearson": self.if_pearson, "if_sign_changes": self.if_sign_changes}
        for name in ("tif", "selection"):
            agreement: SetAgreement = getattr(self, name)
            out.update({f"{name}.overlap": agreement.overlap, f"{name}.chance": agreement.chance,
                        f"{name}.kappa": agreement.kappa})
        return out

    def markdown(self) -> str:
        rows = [("IF Spearman ρ", f"{self.if_spearman:.3f}"), ("IF Pearson r", f"{self.if_pearson:.3f}"),
                ("IF changes sign", f"{self.if_sign_changes:.1%}")]
        for name, label in (("tif", "TIF sets"), ("selection", f"selections ({' / '.join(self.selection_rules)})")):
            a: SetAgreement = getattr(self, name)
            rows.append((f"{label}: overlap (chance)", f"{a.overlap:.3f} ({a.chance:.3f}); {a.n_both} of "
                                                       f"{a.n_first} / {a.n_second}"))
            rows.append((f"{label}: Cohen's κ", f"{a.kappa:.3f}"))
        lines = [f"# Cross-model comparison: {self.first} vs {self.second}", "",
                 f"One pool of {self.n_pairs} pairs scored for both models (same recipe).", "",
                 "| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
        return "\n".join(lines) + "\n"


def _sets(ids: np.ndarray, first: set[str], second: set[str]) -> SetAgreement:
    a, b = np.isin(ids, list(first)), np.isin(ids, list(second))
    ka, kb, n = int(a.sum()), int(b.sum()), len(ids)
    return SetAgreement(n_first=ka, n_second=kb, n_both=int((a & b).sum()),
                        overlap=overlap_coefficient(set(ids[a]), set(ids[b])),
                        chance=ka * kb / n / min(ka, kb), kappa=cohen_kappa(a, b))


def _tif(scores: pd.DataFrame, name: str) -> set[str]:
    if "tif" not in scores.columns or scores["tif"].isna().any():
        raise SelectionError(f"the scores of {name} have no TIF flags; score both runs with scoring.compute_if=true")
    return set(scores.loc[scores["tif"].astype(bool), "pair_id"].astype(str))


def compare_scores(first: pd.DataFrame, second: pd.DataFrame, kept_first: list[str], kept_second: list[str], *,
                   names: tuple[str, str], rules: tuple[str, str]) -> ModelComparison:
    """`first` and `second`: the same pool's scores.parquet under two models; `kept_*` their selections."""
    a, b = (f.assign(pair_id=f["pair_id"].astype(str)) for f in (first, second))
    if set(a["pair_id"]) != set(b["pair_id"]) or len(a) != len(b):
        only = len(set(a["pair_id"]) ^ set(b["pair_id"]))
        raise SelectionError(f"the two runs scored different pools ({len(a)} and {len(b)} pairs, {only} in only one); "
                             "compare runs of one data config")
    joined = a[["pair_id", "if"]].merge(b[["pair_id", "if"]], on="pair_id", suffixes=("_a", "_b"))
    x, y = joined["if_a"].to_numpy(dtype=float), joined["if_b"].to_numpy(dtype=float)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise SelectionError("IF is missing for some pairs; score both runs with scoring.compute_if=true")
    constant = np.ptp(x) == 0 or np.ptp(y) == 0
    ids = joined["pair_id"].to_numpy()
    return ModelComparison(
        first=names[0], second=names[1], n_pairs=len(joined),
        if_spearman=math.nan if constant else float(stats.spearmanr(x, y)[0]),
        if_pearson=math.nan if constant else float(stats.pearsonr(x, y)[0]),
        if_sign_changes=float(np.mean(np.sign(x) != np.sign(y))),
        tif=_sets(ids, _tif(a, names[0]), _tif(b, names[1])),
        selection=_sets(ids, set(map(str, kept_first)), set(map(str, kept_second))),
        selection_rules=rules,
    )
