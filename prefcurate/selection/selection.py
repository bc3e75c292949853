"""A selection: which pairs one rule kept from one scored pool, and its two files.

It records the rule, every parameter it used (bands *and* the score thresholds they
resolved to) and the kept pair ids with the score values the rule read, so a selection can
be audited and reproduced from its files alone.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from pydantic import BaseModel, Field

from prefcurate import io
from prefcurate.errors import SelectionError

SELECTION_PARQUET = "selection.parquet"
SELECTION_JSON = "selection.json"


class Selection(BaseModel):
    """The outcome of one rule over one scored pool."""

    rule: str = Field(description="The rule that produced this selection.")
    params: dict[str, Any] = Field(description="Every parameter the rule used, including resolved thresholds.")
    n_pool: int = Field(description="Pairs in the scored pool.")
    n_kept: int = Field(description="Pairs kept.")
    kept_fraction: float = Field(description="n_kept / n_pool.")
    score_columns: list[str] = Field(description="Score columns the rule read (stored beside the kept ids).")
    kept_ids: list[str] = Field(exclude=True, description="pair_id of every kept pair, in rule order.")
    kept_scores: dict[str, list[float]] = Field(
        default_factory=dict, exclude=True, description="Values of `score_columns` for the kept pairs, aligned to kept_ids."
    )

    def frame(self) -> pd.DataFrame:
        """Kept pair ids with the score values the rule used."""
        return pd.DataFrame({"pair_id": self.kept_ids, **self.kept_scores})


def write_selection(selection: Selection, dir_uri: str) -> str:
    """Write `selection.parquet` (kept ids + scores used) then `selection.json` (rule, params, counts); returns dir_uri."""
    io.write_parquet(io.join(dir_uri, SELECTION_PARQUET), selection.frame())
    io.write_json(io.join(dir_uri, SELECTION_JSON), selection.model_dump(mode="json"))
    return dir_uri


def read_selection(dir_uri: str) -> Selection:
    """Read a selection written by `write_selection`."""
    meta = io.read_json(io.join(dir_uri, SELECTION_JSON))
    frame = io.read_parquet(io.join(dir_uri, SELECTION_PARQUET))
    if len(frame) != meta.get("n_kept"):
        raise SelectionError(
            f"{dir_uri}: selection.parquet has {len(frame)} rows but selection.json says n_kept={meta.get('n_kept')}; "
            "the selection is incomplete — rerun the select stage"
        )
    return Selection(
        **meta,
        kept_ids=frame["pair_id"].astype(str).tolist(),
        kept_scores={c: frame[c].astype(float).tolist() for c in meta["score_columns"]},
    )
