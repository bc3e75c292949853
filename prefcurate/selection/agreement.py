"""How far the cheap proxies agree with exact influence, and what each rule removes.

The paper justifies LossDiff-IRM by its agreement with truncated influence; this report
measures that agreement on the user's own model and pool instead of assuming it:
Pearson and Spearman of LossDiff and IRM against IF, the overlap coefficient
|A∩B| / min(|A|, |B|) of every selection with the TIF selection, and — when defect labels
exist (the toy world plants them) — how well each score separates each defect kind from
clean pairs (AUROC) and how many planted defects each rule removes. The paper's reference
figures (DESIGN §1) sit beside ours as a column.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from prefcurate import io
from prefcurate.errors import SelectionError
from prefcurate.selection.rules import RULES, select
from prefcurate.selection.selection import Selection

if TYPE_CHECKING:
    from prefcurate.config import SelectionConfig

AGREEMENT_JSON = "agreement.json"
TABLES = ("correlations", "overlap", "detection", "removal")
CLEAN = "clean"
PROXIES = ("lossdiff", "irm")
PAPER_PEARSON = {"lossdiff": "0.77", "irm": "0.67"}


@dataclass
class AgreementReport:
    """Four tables (pandas) and the notes that explain any gaps in them."""

    correlations: pd.DataFrame  # index: score; pearson, spearman, n, paper_pearson
    overlap: pd.DataFrame  # index: selection name; rule, n_kept, kept_fraction, overlap_tif, chance, paper_overlap
    detection: pd.DataFrame  # index: defect; n, auroc_<score>... (empty without defect labels)
    removal: pd.DataFrame  # index: defect or "clean"; n, then pairs removed by each selection
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        """The report as plain text, one titled table per section."""
        parts = [
            ("Correlation with IF", self.correlations),
            ("Overlap with the TIF selection (at each selection's size; then each rule resized to TIF's size)", self.overlap),
            ("Defect detection: AUROC = P(score of a defect pair > score of a clean pair)", self.detection),
            ("Pairs removed by each selection (of n)", self.removal),
        ]
        out = []
        for title, table in parts:
            if table.empty:
                continue
            out.append(f"{title}\n{table.to_string(float_format=lambda v: f'{v:.3f}', na_rep='-')}")
        out.extend(f"note: {n}" for n in self.notes)
        return "\n\n".join(out) + "\n"

    def to_json(self) -> str:
        """JSON with one list of records per table (NaN as null), each table's column order
        (JSON objects are unordered and our writers sort keys) and the notes."""
        def records(table: pd.DataFrame) -> list[dict[str, Any]]:
            rows = table.reset_index().to_dict(orient="records")
            return [{k: _plain(v) for k, v in row.items()} for row in rows]

        payload: dict[str, Any] = {name: records(getattr(self, name)) for name in TABLES}
        payload["columns"] = {name: [str(c) for c in getattr(self, name).reset_index().columns] for name in TABLES}
        payload["notes"] = self.notes
        return json.dumps(payload, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, payload: str | dict[str, Any]) -> "AgreementReport":
        """The report `to_json` wrote (text or parsed), tables in their original column order."""
        data = json.loads(payload) if isinstance(payload, str) else payload

        def table(name: str) -> pd.DataFrame:
            columns = data.get("columns", {}).get(name)
            frame = pd.DataFrame.from_records(data.get(name) or [], columns=columns)
            return frame.set_index(columns[0]) if columns else frame

        return cls(*(table(name) for name in TABLES), notes=list(data.get("notes", [])))


def agreement_report(
    scores: pd.DataFrame, selections: dict[str, Selection], defects: pd.DataFrame | None = None,
    config: SelectionConfig | None = None,
) -> AgreementReport:
    """Agreement of the proxies with IF, selection overlaps and, given defect labels, detection.

    `defects` has columns pair_id and defect (one row per defective pair; pairs absent from it,
    or labelled "clean", are clean) — see `toy_defects` for the toy world's side table. With the
    selection `config`, every selection is also resized to the TIF selection's size and compared
    with it there (overlap, its chance level, the excess over chance and Cohen's kappa): overlaps of
    selections of different sizes mostly measure their sizes.
    """
    notes: list[str] = []
    has_if = "if" in scores.columns and scores["if"].notna().any()
    if not has_if:
        notes.append("IF was not computed (scoring.compute_if=false): no correlation or TIF overlap")
    correlations = _correlations(scores) if has_if else _empty(["pearson", "spearman", "n", "paper_pearson"], "score")
    tif_ids = _tif_ids(scores, selections, notes)
    overlap = _overlap(selections, tif_ids)
    if tif_ids and config is not None:
        overlap = overlap.join(_equal_size(scores, selections, tif_ids, config, notes))
    if defects is None:
        detection, removal = _empty(["n"], "defect"), _removal(scores, selections, None)
    else:
        labels = _labels(scores, defects, notes)
        detection, removal = _detection(scores, labels), _removal(scores, selections, labels)
    return AgreementReport(correlations, overlap, detection, removal, notes)


def write_agreement(report: AgreementReport, dir_uri: str) -> str:
    """Write `agreement.json` into `dir_uri` (atomic); returns its URI."""
    return io.write_text(io.join(dir_uri, AGREEMENT_JSON), report.to_json())


def toy_defects(defects_uri: str, pool_uri: str) -> pd.DataFrame:
    """The toy world's defect side table (prompt_id, pair_index, defect) keyed by pair_id.

    `pair_index` is a row of the raw pool file (`pool_uri`, the world's pool.parquet or
    pool.jsonl — not the ingested train pairs, whose rows are re-ordered by the validation
    carve); each row is read and normalised exactly as ingest does, giving its pair_id. A
    defect row that ingest rejects gets the id `rejected-row-<i>`, so the report counts it
    as absent from the pool rather than losing it.
    """
    from prefcurate.data.pairs import load_pairs

    table = io.read_parquet(defects_uri)
    missing = {"pair_index", "defect"} - set(table.columns)
    if missing:
        raise SelectionError(f"{defects_uri} lacks columns {sorted(missing)}; pass the toy world's defects.parquet")
    loaded = load_pairs(pool_uri)
    by_row = dict(zip(loaded.rows, loaded.pairs["pair_id"]))
    if len(table) and int(table["pair_index"].max()) >= loaded.rows_read:
        raise SelectionError(
            f"{defects_uri} points at pool row {int(table['pair_index'].max())} but {pool_uri} has {loaded.rows_read} rows; "
            "pass the raw pool file the defects were built with"
        )
    ids = [by_row.get(int(i), f"rejected-row-{int(i)}") for i in table["pair_index"]]
    return pd.DataFrame({"pair_id": ids, "defect": table["defect"].astype(str).to_numpy()})


def overlap_coefficient(a: set[str], b: set[str]) -> float:
    """|A∩B| / min(|A|, |B|): 1 when the smaller set lies inside the larger one."""
    if not a or not b:
        raise SelectionError("overlap coefficient of an empty selection is undefined; every selection must keep a pair")
    return len(a & b) / min(len(a), len(b))


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting one half (the Mann–Whitney U / n₊n₋)."""
    if len(positive) == 0 or len(negative) == 0:
        return math.nan
    ranks = stats.rankdata(np.concatenate([positive, negative]))
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


# --- tables ------------------------------------------------------------------------------


def _correlations(scores: pd.DataFrame) -> pd.DataFrame:
    rows = {}
    influence = scores["if"].to_numpy(dtype=float)
    for proxy in PROXIES:
        if proxy not in scores.columns:
            continue
        values = scores[proxy].to_numpy(dtype=float)
        ok = np.isfinite(values) & np.isfinite(influence)
        x, y = values[ok], influence[ok]
        constant = len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0
        rows[proxy] = {
            "pearson": math.nan if constant else float(stats.pearsonr(x, y)[0]),
            "spearman": math.nan if constant else float(stats.spearmanr(x, y)[0]),
            "n": int(ok.sum()),
            "paper_pearson": PAPER_PEARSON[proxy],
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("score")


def _tif_ids(scores: pd.DataFrame, selections: dict[str, Selection], notes: list[str]) -> set[str] | None:
    """The TIF band as scored (the `tif` column); a `tif` selection otherwise (it may be resized)."""
    if "tif" in scores.columns and scores["tif"].notna().any():
        return set(scores.loc[scores["tif"].fillna(False).astype(bool), "pair_id"].astype(str))
    for selection in selections.values():
        if selection.rule == "tif":
            return set(selection.kept_ids)
    if selections:
        notes.append("no TIF selection and no `tif` column: overlap with TIF is not available")
    return None


def _overlap(selections: dict[str, Selection], tif_ids: set[str] | None) -> pd.DataFrame:
    """Overlap with TIF beside its chance level: a larger selection overlaps more by size alone."""
    rows = {}
    for name, selection in selections.items():
        k = selection.n_kept
        rows[name] = {
            "rule": selection.rule,
            "n_kept": k,
            "kept_fraction": selection.kept_fraction,
            "overlap_tif": math.nan if not tif_ids else overlap_coefficient(set(selection.kept_ids), tif_ids),
            # E|A∩T| for a random A of size k is k·|T|/n.
            "chance": math.nan if not tif_ids else k * len(tif_ids) / selection.n_pool / min(k, len(tif_ids)),
            "paper_overlap": (RULES[selection.rule].paper_overlap or "") if selection.rule in RULES else "",
        }
    columns = ["rule", "n_kept", "kept_fraction", "overlap_tif", "chance", "paper_overlap"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns).rename_axis("selection")


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Agreement of two keep/drop decisions over the pool beyond what their keep rates give by chance."""
    a, b = a.astype(bool), b.astype(bool)
    observed = float(np.mean(a == b))
    pa, pb = a.mean(), b.mean()
    expected = float(pa * pb + (1 - pa) * (1 - pb))
    return math.nan if expected == 1.0 else (observed - expected) / (1.0 - expected)


def _equal_size(scores: pd.DataFrame, selections: dict[str, Selection], tif_ids: set[str], config: SelectionConfig,
                notes: list[str]) -> pd.DataFrame:
    """Each selection's rule resized to |TIF| pairs, against TIF: overlap, chance (|TIF|/n), excess, kappa."""
    ids = scores["pair_id"].astype(str).to_numpy()
    k, n = len(tif_ids), len(ids)
    in_tif = np.isin(ids, list(tif_ids))
    rows, fixed = {}, []
    for name, selection in selections.items():
        if selection.rule not in RULES:
            continue
        resized = select(scores, config.model_copy(update={"rule": selection.rule}), size=k)
        kept = np.isin(ids, resized.kept_ids)
        overlap = float((kept & in_tif).sum()) / k
        rows[name] = {"overlap_at_tif_size": overlap, "chance_at_tif_size": k / n, "excess": overlap - k / n,
                      "kappa": cohen_kappa(kept, in_tif)}
        rule = RULES[selection.rule]
        if rule.kind == "top-k" and rule.columns == ("if",):
            fixed.append(name)
    if fixed:
        notes.append(f"{', '.join(fixed)} against TIF is fixed by construction: the top k by IF and the middle band of IF "
                     f"share exactly the band's upper part, whatever the model")
    return pd.DataFrame.from_dict(rows, orient="index",
                                  columns=["overlap_at_tif_size", "chance_at_tif_size", "excess", "kappa"])


def _labels(scores: pd.DataFrame, defects: pd.DataFrame, notes: list[str]) -> pd.Series:
    """Defect kind per scored pair (index pair_id), "clean" where none is planted."""
    missing = {"pair_id", "defect"} - set(defects.columns)
    if missing:
        raise SelectionError(f"defect labels need columns pair_id and defect, missing {sorted(missing)}; see agreement.toy_defects")
    labelled = defects.assign(defect=defects["defect"].fillna(CLEAN).astype(str))
    if labelled["pair_id"].duplicated().any():
        dup = labelled.loc[labelled["pair_id"].duplicated(), "pair_id"].head(5).tolist()
        raise SelectionError(f"defect labels list pairs more than once {dup}; give one defect per pair")
    ids = scores["pair_id"].astype(str)
    unknown = ~labelled["pair_id"].astype(str).isin(set(ids))
    if unknown.any():
        notes.append(f"{int(unknown.sum())} labelled defects are not in the scored pool (rejected at ingest or carved into validation) and are not counted")
    mapping = labelled.set_index(labelled["pair_id"].astype(str))["defect"]
    return pd.Series(ids.map(mapping).fillna(CLEAN).to_numpy(), index=ids.to_numpy(), name="defect")


def _detection(scores: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
    available = {name: scores[name].to_numpy(dtype=float) for name in ("if", *PROXIES) if name in scores.columns}
    if {"score_chosen", "score_rejected"} <= set(scores.columns):
        available["rating_margin"] = (
            pd.to_numeric(scores["score_chosen"], errors="coerce") - pd.to_numeric(scores["score_rejected"], errors="coerce")
        ).to_numpy(dtype=float)
    kind = labels.to_numpy()
    clean = kind == CLEAN
    rows = {}
    for defect in sorted(set(kind) - {CLEAN}):
        row: dict[str, Any] = {"n": int((kind == defect).sum())}
        for name, values in available.items():
            ok = np.isfinite(values)
            row[f"auroc_{name}"] = auroc(values[ok & (kind == defect)], values[ok & clean])
        rows[defect] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("defect")


def _removal(scores: pd.DataFrame, selections: dict[str, Selection], labels: pd.Series | None) -> pd.DataFrame:
    """Per defect kind (and clean pairs), how many pairs each selection leaves out."""
    ids = scores["pair_id"].astype(str).to_numpy()
    kind = labels.to_numpy() if labels is not None else np.full(len(ids), "all")
    groups = sorted(set(kind) - {CLEAN}) + ([CLEAN] if CLEAN in set(kind) else [])
    rows = {}
    for group in groups:
        members = ids[kind == group]
        row = {"n": len(members)}
        for name, selection in selections.items():
            kept = set(selection.kept_ids)
            row[name] = int(sum(pid not in kept for pid in members))
        rows[group] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("defect")


def _empty(columns: list[str], index_name: str) -> pd.DataFrame:
    return pd.DataFrame(columns=columns).rename_axis(index_name)


def _plain(value: Any) -> Any:
    """A JSON-ready scalar: numpy types unwrapped, NaN as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
