"""The score store: every pair's scores, kept across runs, keyed by what scored them.

A nightly run scores only the pairs the store has not seen for its *identity* — the scoring
bundle (SFT, θ, θ_val and ∇L_val by content), the scoring config that changes a value and
the code that computes it — and selects over the whole current pool from the store. Scores
of different identities live apart and are never read together, so a selection never mixes
two bundles.

    <store>/scores/<identity>/part-<name>.parquet   rows of SCORE_COLUMNS (no `tif`: pool-wide)
    <store>/scores/<identity>/part-<name>.json      its sha256, size and row count, written last

A part whose file no longer matches its record is left out with a warning: its pairs are
simply missing, and the next run scores them again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from io import BytesIO

import pandas as pd

from prefcurate import io
from prefcurate.errors import StorageError

log = logging.getLogger("prefcurate.scoring.store")


@dataclass(frozen=True)
class StoredPart:
    """One verified part of the store: where it is and what it held when written."""

    uri: str
    sha256: str


class ScoreStore:
    """Read and append score rows of one identity under `<store>/scores/<identity>/`."""

    def __init__(self, store_uri: str, identity: str):
        self.identity = identity
        self.uri = io.join(store_uri, "scores", identity)

    def parts(self) -> list[StoredPart]:
        """Every part whose file still has the content its record names, in name order."""
        return [part for part, _ in self._verified()]

    def _verified(self) -> list[tuple[StoredPart, bytes]]:
        """Each intact part with the bytes it was verified on (read once, hashed, then parsed)."""
        fs, path = io.filesystem(self.uri)
        try:
            fs.invalidate_cache(path)
            records = sorted(fs.glob(f"{path.rstrip('/')}/part-*.json")) if fs.exists(path) else []
        except Exception as exc:
            raise io.storage_error("list", self.uri, exc) from exc
        parts = []
        for record in records:
            uri = io.join(self.uri, record.rsplit("/", 1)[-1])
            try:
                meta = io.read_json(uri)
                data_uri = io.join(self.uri, meta["file"])
                data = io.read_bytes(data_uri)
                digest = io.sha256_bytes(data)
            except (StorageError, KeyError, TypeError, ValueError) as exc:
                log.warning("score store part %s is unreadable (%s); its pairs will be scored again", uri, exc)
                continue
            if digest != meta["sha256"]:
                log.warning("score store part %s changed since it was written (sha256 differs); its pairs will be "
                            "scored again", data_uri)
                continue
            parts.append((StoredPart(data_uri, digest), data))
        return parts

    def state(self) -> str:
        """The store's content for this identity, as one digest (what a stage that reads it depends on)."""
        return io.sha256_json([p.sha256 for p in self.parts()])

    def read(self) -> pd.DataFrame:
        """Every stored row of this identity, one per pair (the first part that holds a pair wins)."""
        frames = [pd.read_parquet(BytesIO(data)) for _, data in self._verified()]
        if not frames:
            return pd.DataFrame(columns=["pair_id"])
        rows = pd.concat(frames, ignore_index=True)
        return rows.drop_duplicates("pair_id", keep="first").reset_index(drop=True)

    def pair_ids(self) -> set[str]:
        return set(self.read()["pair_id"])

    def append(self, name: str, rows: pd.DataFrame) -> StoredPart:
        """Add `rows` as part `name`: the parquet first, its record last (a part without a record is not there)."""
        buffer = BytesIO()
        rows.reset_index(drop=True).to_parquet(buffer, index=False)
        data_uri = io.write_bytes(io.join(self.uri, f"part-{name}.parquet"), buffer.getvalue())
        digest = io.sha256_bytes(buffer.getvalue())
        io.write_json(io.join(self.uri, f"part-{name}.json"),
                      {"file": f"part-{name}.parquet", "sha256": digest, "rows": len(rows), "identity": self.identity})
        return StoredPart(data_uri, digest)
