"""Preference data in: read a pool, check every row, normalise to the pair schema.

Three input schemas are accepted and converted to TRL's conversational, explicit-prompt
format (the only one TRL's DPO handles without surprises, DESIGN §8):

- UltraFeedback-binarized / TRL implicit prompt: `chosen`/`rejected` are whole
  conversations; the prompt is `chosen[:-1]`, which must equal `rejected[:-1]`;
- TRL conversational: `prompt` is a message list, `chosen`/`rejected` one assistant message;
- plain strings: `prompt`, `chosen`, `rejected` are text (wrapped as user/assistant turns).

A row that cannot be used becomes a reject row with a named reason, so
`rows_read == rows_kept + rows_rejected` always holds and nothing disappears silently.
"""

from __future__ import annotations

import io as _io
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from prefcurate import io
from prefcurate.config import DataSource
from prefcurate.errors import DataError, PrefcurateError, first_line

ROLES = ("system", "user", "assistant")
FILE_FORMATS = (".parquet", ".jsonl", ".json")
SCHEMAS = (
    "UltraFeedback-binarized (chosen/rejected: conversations ending in the response), "
    "TRL conversational (prompt: messages; chosen/rejected: one assistant message), "
    "plain text (prompt, chosen, rejected: strings)"
)
SCHEMA_LABELS = {
    "implicit": "UltraFeedback-binarized (implicit prompt)",
    "conversational": "TRL conversational (explicit prompt)",
    "plain": "plain text",
}
REJECT_COLUMNS = ["row", "reason", "detail", "origin", "raw"]
REASONS = (
    "invalid_json", "missing_field", "wrong_type", "non_text_content", "empty_field",
    "prompt_mismatch", "identical_responses", "prompt_too_long", "duplicate_pair", "validation_overlap",
)


def _pair_features() -> Any:
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    return Features(
        {
            "pair_id": Value("string"),
            "prompt": List(message),
            "chosen": List(message),
            "rejected": List(message),
            "score_chosen": Value("float64"),
            "score_rejected": Value("float64"),
            "source": Value("string"),
            "prompt_id": Value("string"),
        }
    )


PAIR_COLUMNS = ("pair_id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected", "source", "prompt_id")
REQUIRED_COLUMNS = ("pair_id", "prompt", "chosen", "rejected")


@dataclass
class IngestResult:
    """Kept pairs (pair schema), reject rows, and the counts that tie them together."""

    pairs: Any  # datasets.Dataset
    rejects: pd.DataFrame
    rows_read: int
    schema: str
    rows: list[int] = field(default_factory=list)  # source row of each kept pair

    @property
    def rows_kept(self) -> int:
        return len(self.pairs)

    @property
    def rows_rejected(self) -> int:
        return len(self.rejects)

    @property
    def rejects_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(self.rejects["reason"]).items()))


class DataManifest(BaseModel):
    """What `ingest` wrote: URIs, row counts and content hashes of each artifact."""

    data_uri: str
    train_uri: str
    validation_uri: str
    eval_prompts_uri: str
    rejects_uri: str
    pool_schema: str = Field(description="Schema the pool was read as.")
    rows_read: int = Field(description="Rows read from the pool and the validation source; = n_train + n_validation + n_rejected.")
    n_train: int
    n_validation: int
    n_eval_prompts: int
    n_rejected: int
    rejects_by_reason: dict[str, int]
    validation_carved: bool = Field(description="True when validation was carved from the pool (no validation_uri).")
    hashes: dict[str, str] = Field(description="Artifact name → sha256 of its content (pair ids, prompts, reject rows).")
    source_digest: str = Field(description="sha256 of the DataSource parameters.")


class _BadLine:
    """A jsonl line that is not JSON: kept as a record so it becomes an `invalid_json` reject."""

    def __init__(self, text: str, error: str):
        self.text, self.error = text, error


class _Reject(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


# --- reading -------------------------------------------------------------------------


def _file_format(uri: str) -> str | None:
    lowered = str(uri).lower()
    return next((fmt for fmt in FILE_FORMATS if lowered.endswith(fmt)), None)


def read_records(uri: str, *, split: str = "train") -> list[Any]:
    """Rows of a parquet/jsonl/json file (any fsspec URI), or of a hub / saved `datasets` dataset."""
    fmt = _file_format(uri)
    if fmt is None:
        if io.is_remote(uri):
            raise DataError(f"{uri}: cannot tell the format; give a .parquet, .jsonl or .json file")
        return _load_dataset(uri, split)
    data = io.read_bytes(uri)
    if fmt == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(_io.BytesIO(data)).to_pylist()
        except Exception as exc:
            raise DataError(f"{uri} is not a readable parquet file: {first_line(exc)}") from exc
    text = _decode(uri, data)
    if fmt == ".jsonl":
        return [_parse_line(line) for line in text.splitlines() if line.strip()]
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{uri} is not valid JSON ({exc}); fix the file or save it as jsonl") from exc
    if not isinstance(obj, list):
        raise DataError(f"{uri} holds a JSON {type(obj).__name__}; expected an array of row objects")
    return obj


def _decode(uri: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{uri} is not UTF-8 text ({exc}); re-encode it as UTF-8") from exc


def _parse_line(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        return _BadLine(line, str(exc))


def _load_dataset(name: str, split: str) -> list[dict]:
    """A dataset saved with `save_to_disk`, a local dataset directory, or a hub dataset."""
    import datasets

    local = Path(name).expanduser()
    try:
        if local.is_dir() and any((local / f).exists() for f in ("state.json", "dataset_dict.json")):
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{name} has no split '{split}'; available: {', '.join(loaded)}")
                loaded = loaded[split]
        else:
            loaded = datasets.load_dataset(name, split=split)
    except PrefcurateError:
        raise
    except Exception as exc:
        raise DataError(
            f"cannot load dataset {name} (split {split}): {first_line(exc)}; "
            "check the name and split, or give a .parquet/.jsonl/.json file"
        ) from exc
    return loaded.to_list()


# --- checking one row ----------------------------------------------------------------


def _messages(value: Any, name: str) -> list[dict]:
    if not isinstance(value, list):
        raise _Reject("wrong_type", f"{name} is {type(value).__name__}, expected a list of messages")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise _Reject("wrong_type", f"{name}[{i}] is not a {{role, content}} message")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise _Reject("wrong_type", f"{name}[{i}] has role {role!r}; expected one of {', '.join(ROLES)}")
        if content is None:
            raise _Reject("missing_field", f"{name}[{i}].content is null")
        if isinstance(content, (list, dict)):
            raise _Reject("non_text_content", f"{name}[{i}].content is a {type(content).__name__} (multimodal parts); only text is supported")
        if not isinstance(content, str):
            raise _Reject("wrong_type", f"{name}[{i}].content is {type(content).__name__}, expected text")
        out.append({"role": role, "content": content})
    return out


def _text(value: Any, name: str) -> str:
    if isinstance(value, (list, dict)):
        raise _Reject("non_text_content", f"{name} is a {type(value).__name__}, but this data set's {name} is plain text")
    if not isinstance(value, str):
        raise _Reject("wrong_type", f"{name} is {type(value).__name__}, expected text")
    return value


def _one_assistant(messages: list[dict], name: str) -> list[dict]:
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = [m["role"] for m in messages]
        raise _Reject("wrong_type", f"{name} must be exactly one assistant message, got roles {roles}")
    return messages


def _split_implicit(row: dict) -> tuple[list[dict], list[dict], list[dict]]:
    chosen, rejected = _messages(row["chosen"], "chosen"), _messages(row["rejected"], "rejected")
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if not conv:
            raise _Reject("empty_field", f"{name} is an empty conversation")
        if conv[-1]["role"] != "assistant":
            raise _Reject("wrong_type", f"{name} must end with an assistant message, ends with {conv[-1]['role']}")
    prompt = chosen[:-1]
    if not prompt and isinstance(row.get("prompt"), str):
        prompt = [{"role": "user", "content": row["prompt"]}]
    _check_content(prompt + chosen[-1:] + rejected[-1:])
    if chosen[:-1] != rejected[:-1]:
        turn = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)) - 1)
        raise _Reject("prompt_mismatch", f"chosen[:-1] and rejected[:-1] differ at turn {turn}")
    return prompt, chosen[-1:], rejected[-1:]


def _check_content(messages: list[dict]) -> None:
    for message in messages:
        if not message["content"].strip():
            raise _Reject("empty_field", f"a {message['role']} message has empty content")


def _score(row: dict, name: str) -> float | None:
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, bool):
        raise _Reject("wrong_type", f"{name} is a boolean, expected a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _Reject("wrong_type", f"{name} is {value!r}, expected a number") from None
    return None if math.isnan(number) else number


def _optional_text(row: dict, name: str) -> str | None:
    value = row.get(name)
    return None if value is None else str(value)


def normalise_row(row: Any, schema: str, max_prompt_chars: int) -> dict:
    """One source row as a pair-schema row; raises `_Reject` with the reason it cannot be used."""
    if isinstance(row, _BadLine):
        raise _Reject("invalid_json", row.error)
    if not isinstance(row, dict):
        raise _Reject("wrong_type", f"row is a JSON {type(row).__name__}, expected an object")
    required = ("chosen", "rejected") if schema == "implicit" else ("prompt", "chosen", "rejected")
    for name in required:
        if row.get(name) is None:
            raise _Reject("missing_field", f"{name} is {'missing' if name not in row else 'null'}")
    if schema == "implicit":
        prompt, chosen, rejected = _split_implicit(row)
    elif schema == "conversational":
        prompt = _messages(row["prompt"], "prompt")
        chosen = _one_assistant(_messages(row["chosen"], "chosen"), "chosen")
        rejected = _one_assistant(_messages(row["rejected"], "rejected"), "rejected")
    else:
        prompt = [{"role": "user", "content": _text(row["prompt"], "prompt")}]
        chosen = [{"role": "assistant", "content": _text(row["chosen"], "chosen")}]
        rejected = [{"role": "assistant", "content": _text(row["rejected"], "rejected")}]
    if not prompt:
        raise _Reject("empty_field", "prompt has no messages")
    if prompt[-1]["role"] != "user":
        raise _Reject("wrong_type", f"prompt must end with a user turn, ends with {prompt[-1]['role']}")
    _check_content(prompt + chosen + rejected)
    if chosen[0]["content"].strip() == rejected[0]["content"].strip():
        raise _Reject("identical_responses", "chosen and rejected responses are the same text")
    n_chars = sum(len(m["content"]) for m in prompt)
    if n_chars > max_prompt_chars:
        raise _Reject("prompt_too_long", f"prompt has {n_chars} characters > max_prompt_chars={max_prompt_chars}")
    return {
        "pair_id": pair_id(prompt, chosen, rejected),
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "score_chosen": _score(row, "score_chosen"),
        "score_rejected": _score(row, "score_rejected"),
        "source": _optional_text(row, "source"),
        "prompt_id": _optional_text(row, "prompt_id"),
    }


def pair_id(prompt: list[dict], chosen: list[dict], rejected: list[dict]) -> str:
    """Stable content id: sha256 of the normalised prompt/chosen/rejected JSON, first 16 hex."""
    return io.sha256_json({"prompt": prompt, "chosen": chosen, "rejected": rejected})[:16]


def prompt_key(prompt: list[dict]) -> str:
    """Identity of a prompt, for grouping pairs that share one."""
    return io.sha256_json(list(prompt))


# --- whole data sets -----------------------------------------------------------------


def detect_schema(records: list[Any], uri: str) -> str:
    """'implicit' (UltraFeedback), 'conversational' or 'plain', from the columns and the first row."""
    rows = [r for r in records if isinstance(r, dict)]
    columns = sorted({key for r in rows for key in r})
    if not {"chosen", "rejected"} <= set(columns):
        raise DataError(f"{uri}: unknown schema, columns {columns}; accepted: {SCHEMAS}")
    sample = next((r for r in rows if r.get("chosen") is not None), None)
    chosen = None if sample is None else sample["chosen"]
    if isinstance(chosen, str):
        if "prompt" not in columns:
            raise DataError(f"{uri}: chosen/rejected are text but there is no prompt column; accepted: {SCHEMAS}")
        return "plain"
    if isinstance(chosen, list):
        return "conversational" if isinstance(sample.get("prompt"), list) else "implicit"
    if chosen is None:  # every chosen is missing: each row becomes a missing_field reject
        return "implicit" if "prompt" not in columns else "plain"
    raise DataError(f"{uri}: column chosen holds {type(chosen).__name__}, not text or messages; accepted: {SCHEMAS}")


def _reject_row(row: int, reason: str, detail: str, origin: str, raw: Any) -> dict:
    text = raw.text if isinstance(raw, _BadLine) else json.dumps(raw, default=str, ensure_ascii=False)
    return {"row": row, "reason": reason, "detail": detail, "origin": origin, "raw": text}


def _rejects_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=REJECT_COLUMNS).astype({"row": "int64"})


def pairs_from_rows(rows: list[dict]) -> Any:
    """A pair-schema `datasets.Dataset` from normalised rows (typed even when empty)."""
    from datasets import Dataset

    return Dataset.from_dict({c: [r[c] for r in rows] for c in PAIR_COLUMNS}, features=_pair_features())


def load_pairs(uri: str, *, split: str = "train", max_prompt_chars: int = 4000, origin: str = "pool") -> IngestResult:
    """Read `uri`, check every row, and return kept pairs plus reject rows (first duplicate kept)."""
    records = read_records(uri, split=split)
    schema = detect_schema(records, uri)
    kept, kept_rows, rejects, seen = [], [], [], {}
    for index, record in enumerate(tqdm(records, desc=f"checking {Path(str(uri)).name}", unit="row", disable=None)):
        try:
            pair = normalise_row(record, schema, max_prompt_chars)
            if pair["pair_id"] in seen:
                raise _Reject("duplicate_pair", f"same prompt, chosen and rejected as row {seen[pair['pair_id']]}")
        except _Reject as rej:
            rejects.append(_reject_row(index, rej.reason, rej.detail, origin, record))
            continue
        seen[pair["pair_id"]] = index
        kept.append(pair)
        kept_rows.append(index)
    return IngestResult(
        pairs=pairs_from_rows(kept), rejects=_rejects_frame(rejects), rows_read=len(records), schema=schema, rows=kept_rows
    )


def carve_validation(pairs: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """Split pairs into (train, validation) by prompt, so no prompt lands on both sides."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be in (0, 1), got {fraction}")
    keys = [prompt_key(p) for p in pairs["prompt"]]
    prompts = sorted(set(keys))
    if len(prompts) < 2:
        raise DataError(f"cannot carve a validation set from {len(prompts)} distinct prompt(s); give validation_uri")
    random.Random(seed).shuffle(prompts)
    n_val = min(max(1, round(fraction * len(prompts))), len(prompts) - 1)
    held = set(prompts[:n_val])
    train_idx = [i for i, k in enumerate(keys) if k not in held]
    val_idx = [i for i, k in enumerate(keys) if k in held]
    return pairs.select(train_idx), pairs.select(val_idx)


def read_pairs(uri: str) -> Any:
    """A pair-schema parquet file (local or remote) as a `datasets.Dataset`."""
    import pyarrow.parquet as pq
    from datasets import Dataset

    try:
        table = pq.read_table(_io.BytesIO(io.read_bytes(uri)))
    except PrefcurateError:
        raise
    except Exception as exc:
        raise DataError(f"{uri} is not a readable parquet file: {first_line(exc)}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{uri} is not a pair file: missing columns {missing}; write it with write_pairs or ingest")
    return Dataset(table)


def write_pairs(pairs: Any, uri: str) -> str:
    """Write a pair-schema `datasets.Dataset` as parquet, atomically; returns `uri`."""
    import pyarrow.parquet as pq

    missing = [c for c in REQUIRED_COLUMNS if c not in pairs.column_names]
    if missing:
        raise DataError(f"cannot write {uri}: the pairs lack columns {missing}")
    buf = _io.BytesIO()
    pq.write_table(pairs.with_format("arrow")[:], buf)
    return io.write_bytes(uri, buf.getvalue())


def read_eval_prompts(uri: str, *, split: str = "eval") -> pd.DataFrame:
    """AlpacaEval-style instructions (json/jsonl/parquet or a dataset) with a non-empty `instruction`."""
    records = read_records(uri, split=split)
    for index, record in enumerate(records):
        text = record.get("instruction") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{uri}: row {index} has no instruction text; each row needs a non-empty `instruction`")
    return pd.DataFrame(records) if records else _empty_eval_prompts()


def _pairs_hash(pairs: Any) -> str:
    return io.sha256_bytes("\n".join(pairs["pair_id"]).encode())


def ingest(source: DataSource, data_uri: str) -> DataManifest:
    """Read, check and split the preference data; write train/validation/eval_prompts/rejects parquet."""
    pool = load_pairs(source.pool_uri, split=source.split, max_prompt_chars=source.max_prompt_chars)
    if pool.rows_kept == 0:
        raise DataError(
            f"{source.pool_uri}: no usable pairs among {pool.rows_read} rows (rejects: {pool.rejects_by_reason}); "
            "run `prefcurate data check` to see why"
        )
    rejects = [pool.rejects]
    rows_read = pool.rows_read
    if source.validation_uri:
        val = load_pairs(source.validation_uri, split=source.validation_split, max_prompt_chars=source.max_prompt_chars, origin="validation")
        if val.rows_kept == 0:
            raise DataError(f"{source.validation_uri}: no usable validation pairs among {val.rows_read} rows ({val.rejects_by_reason})")
        rows_read += val.rows_read
        rejects.append(val.rejects)
        validation = val.pairs
        held = {prompt_key(p) for p in validation["prompt"]}
        overlap = {i for i, p in enumerate(pool.pairs["prompt"]) if prompt_key(p) in held}
        train = pool.pairs.select([i for i in range(pool.rows_kept) if i not in overlap])
        raw = pool.pairs.select(sorted(overlap)).to_list()
        rejects.append(
            _rejects_frame(
                [
                    _reject_row(pool.rows[i], "validation_overlap", "prompt also in the validation set", "pool", r)
                    for i, r in zip(sorted(overlap), raw)
                ]
            )
        )
        if len(train) == 0:
            raise DataError(f"every pool prompt is also in {source.validation_uri}; nothing is left to train on")
    else:
        train, validation = carve_validation(pool.pairs, source.validation_fraction, source.seed)
    eval_prompts = read_eval_prompts(source.eval_prompts_uri) if source.eval_prompts_uri else _empty_eval_prompts()
    all_rejects = pd.concat([r for r in rejects if len(r)], ignore_index=True) if any(len(r) for r in rejects) else _rejects_frame([])

    uris = {name: io.join(data_uri, f"{name}.parquet") for name in ("train", "validation", "eval_prompts", "rejects")}
    write_pairs(train, uris["train"])
    write_pairs(validation, uris["validation"])
    io.write_parquet(uris["eval_prompts"], eval_prompts)
    io.write_parquet(uris["rejects"], all_rejects)
    return DataManifest(
        data_uri=data_uri,
        train_uri=uris["train"],
        validation_uri=uris["validation"],
        eval_prompts_uri=uris["eval_prompts"],
        rejects_uri=uris["rejects"],
        pool_schema=pool.schema,
        rows_read=rows_read,
        n_train=len(train),
        n_validation=len(validation),
        n_eval_prompts=len(eval_prompts),
        n_rejected=len(all_rejects),
        rejects_by_reason=dict(sorted(Counter(all_rejects["reason"]).items())),
        validation_carved=not source.validation_uri,
        hashes={
            "train": _pairs_hash(train),
            "validation": _pairs_hash(validation),
            "eval_prompts": io.sha256_json(eval_prompts["instruction"].tolist()),
            "rejects": io.sha256_json(all_rejects[["row", "reason", "origin"]].values.tolist()),
        },
        source_digest=io.sha256_json(source.model_dump(mode="json")),
    )


def _empty_eval_prompts() -> pd.DataFrame:
    return pd.DataFrame({"instruction": pd.Series(dtype="string")})
