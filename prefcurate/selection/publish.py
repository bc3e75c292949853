"""The published dataset: the kept pairs as a dataset that `datasets.load_dataset` reads and TRL's
DPOTrainer trains on as is, with a dataset card naming how they were chosen."""

from __future__ import annotations

from typing import Any

import pandas as pd
import yaml

from prefcurate.errors import SelectionError
from prefcurate.selection.selection import Selection

DATA_FILE = "data/train-00000-of-00001.parquet"
LATEST = "latest"
TEXT_COLUMNS = ("pair_id", "prompt", "chosen", "rejected")
SCORE_COLUMNS = ("if", "tif", "lossdiff", "irm")
PASSTHROUGH = ("score_chosen", "score_rejected", "source")
_MESSAGES = [{"name": "role", "dtype": "string"}, {"name": "content", "dtype": "string"}]


def kept_pairs(pool: Any, kept: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """The kept pairs, in the selection's order, in TRL's explicit-prompt conversational schema
    (`prompt`, `chosen`, `rejected` as message lists) with `pair_id`, their scores and their source."""
    frame = pool.to_pandas().set_index("pair_id")
    missing = [pid for pid in kept["pair_id"] if pid not in frame.index]
    if missing:
        raise SelectionError(f"{len(missing)} kept pairs are not in the ingested pool (e.g. {missing[:3]}); rerun ingest")
    extra = [c for c in PASSTHROUGH if c in frame.columns]
    out = frame.loc[kept["pair_id"], ["prompt", "chosen", "rejected", *extra]].reset_index()
    by_id = scores.set_index("pair_id")
    for column in SCORE_COLUMNS:
        if column in by_id.columns:
            values = by_id.loc[out["pair_id"], column]
            out[column] = values.astype(bool if column == "tif" else float).to_numpy() if values.notna().all() else None
    return out[[c for c in (*TEXT_COLUMNS, *SCORE_COLUMNS, *PASSTHROUGH) if c in out.columns and out[c] is not None]]


def _features(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for column in frame.columns:
        if column in ("prompt", "chosen", "rejected"):
            out.append({"name": column, "list": [dict(m) for m in _MESSAGES]})
        elif column in ("pair_id", "source"):
            out.append({"name": column, "dtype": "string"})
        elif column == "tif":
            out.append({"name": column, "dtype": "bool"})
        else:
            out.append({"name": column, "dtype": "float64"})
    return out


def dataset_card(frame: pd.DataFrame, *, selection: Selection, bundle: dict[str, Any], version: str, model_uri: str,
                 n_pool: int) -> str:
    """README.md with the YAML header `datasets` reads (configs, features) and what the pairs are."""
    header = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}],
        "dataset_info": {"features": _features(frame), "splits": [{"name": "train", "num_examples": len(frame)}]},
        "tags": ["dpo", "preference", "prefcurate"],
    }
    band = selection.params.get("band")
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
        f"# prefcurate selection {version}", "",
        f"{len(frame)} of {n_pool} preference pairs ({selection.kept_fraction:.1%}) kept by rule `{selection.rule}`"
        + (f" (band {band})" if band else "") + f", scored for the SFT model `{model_uri}`.", "",
        "Columns: `prompt`, `chosen`, `rejected` in TRL's explicit-prompt conversational format (train with "
        "`trl.DPOTrainer` as is), `pair_id` (content hash), the scores (`if`, `tif`, `lossdiff`, `irm`) and the "
        "dataset's own ratings and source where the pool had them.", "",
        "| scoring bundle | fingerprint |", "|---|---|",
        *(f"| {name} | `{value}` |" for name, value in bundle.items()), "",
        "Selection parameters: `" + yaml.safe_dump(selection.params, default_flow_style=True, width=1000).strip() + "`", "",
        "Files: `selection.json` (rule and resolved thresholds), `agreement.json` (how well LossDiff and IRM agree "
        "with exact influence), `scores.parquet` (every pair of the pool).", "",
    ]
    return "\n".join(lines)
