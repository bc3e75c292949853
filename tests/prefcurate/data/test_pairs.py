"""Preference data: the three schemas normalise to the same pairs, every bad row is
rejected with its reason, counts conserve, and the validation carve never shares a prompt."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import datasets
import pandas as pd
import pytest

from prefcurate.config import DataSource
from prefcurate.data import pairs as data_mod
from prefcurate.data.pairs import (
    carve_validation,
    ingest,
    load_pairs,
    pairs_from_rows,
    prompt_key,
    read_pairs,
    write_pairs,
)
from prefcurate.errors import DataError, StorageError


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def uf_row(prompt, good, bad, i=0, **extra):
    """An UltraFeedback-binarized row: string prompt + full conversations."""
    return {
        "prompt": prompt,
        "prompt_id": f"p{i}",
        "chosen": [user(prompt), assistant(good)],
        "rejected": [user(prompt), assistant(bad)],
        "score_chosen": 8.0,
        "score_rejected": 3.0,
        **extra,
    }


def uf_pool(n=30, prompts=10):
    return [uf_row(f"repeat apple {i % prompts}", "apple done", f"junk {i}", i) for i in range(n)]


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_three_schemas_normalise_to_the_same_pairs(tmp_path):
    contents = [("repeat stone two", "stone stone done", "stone done"), ("repeat cloud one", "cloud done", "um done")]
    uf = [uf_row(p, g, b, i) for i, (p, g, b) in enumerate(contents)]
    conv = [{"prompt": [user(p)], "chosen": [assistant(g)], "rejected": [assistant(b)]} for p, g, b in contents]
    plain = [{"prompt": p, "chosen": g, "rejected": b} for p, g, b in contents]
    results = {name: load_pairs(write_jsonl(tmp_path / f"{name}.jsonl", rows)) for name, rows in
               [("uf", uf), ("conv", conv), ("plain", plain)]}
    assert {n: r.schema for n, r in results.items()} == {"uf": "implicit", "conv": "conversational", "plain": "plain"}
    ids = {n: r.pairs["pair_id"] for n, r in results.items()}
    assert ids["uf"] == ids["conv"] == ids["plain"]
    pair = results["uf"].pairs[0]
    assert pair["prompt"] == [user("repeat stone two")]
    assert pair["chosen"] == [assistant("stone stone done")] and pair["rejected"] == [assistant("stone done")]
    assert (pair["score_chosen"], pair["score_rejected"], pair["prompt_id"]) == (8.0, 3.0, "p0")
    assert results["plain"].pairs[0]["score_chosen"] is None
    # pair_id is the documented content hash, computed independently here
    expected = hashlib.sha256(
        json.dumps({"prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"]},
                   sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()[:16]
    assert pair["pair_id"] == expected


def test_multi_turn_implicit_prompt_keeps_history(tmp_path):
    history = [{"role": "system", "content": "be brief"}, user("repeat tiger one"), assistant("tiger done"), user("again")]
    row = {"chosen": history + [assistant("tiger done")], "rejected": history + [assistant("oops")]}
    result = load_pairs(write_jsonl(tmp_path / "mt.jsonl", [row]))
    assert result.pairs[0]["prompt"] == history


BAD_ROWS = {
    "missing_field": {"prompt": "repeat a one", "rejected": [user("repeat a one"), assistant("x")]},
    "wrong_type": uf_row("repeat b one", "b done", "x") | {"chosen": 42},
    "non_text_content": {
        "prompt": "repeat c one",
        "chosen": [user("repeat c one"), {"role": "assistant", "content": [{"type": "image"}]}],
        "rejected": [user("repeat c one"), assistant("x")],
    },
    "empty_field": uf_row("repeat d one", "   ", "x"),
    "identical_responses": uf_row("repeat e one", "e done", "e done "),
    "prompt_mismatch": {
        "prompt": "repeat f one",
        "chosen": [user("repeat f one"), assistant("f done")],
        "rejected": [user("repeat g one"), assistant("x")],
    },
    "prompt_too_long": uf_row("repeat " + "h " * 100, "h done", "x"),
}


def test_every_reject_reason_is_named(tmp_path):
    good = uf_pool(5, 5)
    rows = good + list(BAD_ROWS.values()) + [good[2]]
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    result = load_pairs(str(path), max_prompt_chars=100)

    reasons = dict(zip(result.rejects["row"], result.rejects["reason"]))
    expected = {5 + i: reason for i, reason in enumerate(BAD_ROWS)}
    expected[len(rows) - 1] = "duplicate_pair"
    expected[len(rows)] = "invalid_json"
    assert reasons == expected
    assert result.rows_kept == 5 and result.rows == [0, 1, 2, 3, 4]
    dup = result.rejects[result.rejects["reason"] == "duplicate_pair"].iloc[0]
    assert "row 2" in dup["detail"], "a duplicate names the row that was kept"
    assert json.loads(dup["raw"]) == good[2], "the quarantined row is stored as it came"
    assert all(result.rejects["detail"].str.len() > 0)


def test_counts_conserve(tmp_path):
    rows = uf_pool(40, 8) + list(BAD_ROWS.values()) + uf_pool(5, 8)  # the last five duplicate the first five
    result = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows), max_prompt_chars=100)
    assert result.rows_read == len(rows) == result.rows_kept + result.rows_rejected
    assert sum(result.rejects_by_reason.values()) == result.rows_rejected
    assert result.rejects_by_reason["duplicate_pair"] == 5
    assert result.rows_kept == len(set(result.pairs["pair_id"])) == 40


def test_unknown_schema_lists_columns(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"columns \['answer', 'question'\].*accepted"):
        load_pairs(path)


@pytest.mark.parametrize("fmt", ["parquet", "json", "jsonl"])
def test_file_formats_agree(tmp_path, fmt):
    rows = uf_pool(12, 4)
    path = tmp_path / f"pool.{fmt}"
    if fmt == "parquet":
        pd.DataFrame(rows).to_parquet(path)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        write_jsonl(path, rows)
    reference = load_pairs(write_jsonl(tmp_path / "ref.jsonl", rows))
    result = load_pairs(str(path))
    assert result.pairs.to_list() == reference.pairs.to_list()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.parquet", b"PAR1 definitely not parquet", "not a readable parquet"),
        ("bad.json", b'[{"prompt": ', "not valid JSON"),
        ("obj.json", b'{"prompt": "x"}', "expected an array"),
        ("latin.jsonl", "{\"prompt\": \"caf\u00e9\"}".encode("latin-1"), "not UTF-8"),
    ],
)
def test_unreadable_files(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_pairs(str(tmp_path / name))


def test_missing_file(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        load_pairs(str(tmp_path / "none.parquet"))


def test_dataset_name_goes_to_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(uf_pool(6, 3))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result = load_pairs("HuggingFaceH4/ultrafeedback_binarized", split="train_prefs")
    assert calls == [("HuggingFaceH4/ultrafeedback_binarized", "train_prefs")]
    assert result.rows_kept == 6


def test_dataset_load_failure_is_a_data_error(monkeypatch):
    def offline(name, split):
        raise ConnectionError("Couldn't reach the hub\nlong trace")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="cannot load dataset org/prefs .*Couldn't reach the hub"):
        load_pairs("org/prefs")


def test_saved_dataset_dict_by_split(tmp_path):
    dd = datasets.DatasetDict(
        {"train_prefs": datasets.Dataset.from_list(uf_pool(6, 3)), "test_prefs": datasets.Dataset.from_list(uf_pool(2, 2))}
    )
    dd.save_to_disk(str(tmp_path / "uf"))
    assert load_pairs(str(tmp_path / "uf"), split="test_prefs").rows_kept == 2
    with pytest.raises(DataError, match="no split 'train'.*train_prefs"):
        load_pairs(str(tmp_path / "uf"), split="train")


def test_carve_is_disjoint_seeded_and_sized(tmp_path):
    pairs = load_pairs(write_jsonl(tmp_path / "p.jsonl", uf_pool(60, 20))).pairs
    train, val = carve_validation(pairs, 0.25, seed=1)
    train_prompts = {prompt_key(p) for p in train["prompt"]}
    val_prompts = {prompt_key(p) for p in val["prompt"]}
    assert not train_prompts & val_prompts
    assert len(val_prompts) == 5 and len(train) + len(val) == 60
    again = carve_validation(pairs, 0.25, seed=1)[1]
    assert again["pair_id"] == val["pair_id"]
    other = carve_validation(pairs, 0.25, seed=2)[1]
    assert set(other["pair_id"]) != set(val["pair_id"])
    with pytest.raises(DataError, match="distinct prompt"):
        carve_validation(pairs.select([0]), 0.5, seed=0)


def test_write_read_pairs_roundtrip(tmp_path):
    pairs = load_pairs(write_jsonl(tmp_path / "p.jsonl", uf_pool(10, 10))).pairs
    subset = pairs.select([7, 2, 5])  # an indices mapping must be written as the rows it selects
    uri = str(tmp_path / "out" / "pairs.parquet")
    write_pairs(subset, uri)
    back = read_pairs(uri)
    assert back.to_list() == subset.to_list()
    write_pairs(pairs_from_rows([]), uri)
    assert len(read_pairs(uri)) == 0 and "prompt" in read_pairs(uri).column_names
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(DataError, match="not a pair file"):
        read_pairs(str(tmp_path / "other.parquet"))


def test_ingest_carves_and_writes_everything(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", uf_pool(40, 10) + [BAD_ROWS["identical_responses"]])
    eval_path = tmp_path / "eval.json"
    eval_path.write_text(json.dumps([{"instruction": "repeat lemon two", "dataset": "toy"}]))
    source = DataSource(pool_uri=pool, validation_fraction=0.2, eval_prompts_uri=str(eval_path), seed=3)
    manifest = ingest(source, str(tmp_path / "data"))

    train, val = read_pairs(manifest.train_uri), read_pairs(manifest.validation_uri)
    assert manifest.validation_carved and manifest.pool_schema == "implicit"
    assert (manifest.n_train, manifest.n_validation) == (len(train), len(val)) == (32, 8)
    assert manifest.rows_read == manifest.n_train + manifest.n_validation + manifest.n_rejected == 41
    assert manifest.rejects_by_reason == {"identical_responses": 1}
    assert not {prompt_key(p) for p in train["prompt"]} & {prompt_key(p) for p in val["prompt"]}
    assert pd.read_parquet(manifest.eval_prompts_uri)["instruction"].tolist() == ["repeat lemon two"]
    assert pd.read_parquet(manifest.rejects_uri)["reason"].tolist() == ["identical_responses"]
    again = ingest(source, str(tmp_path / "data2"))
    assert again.hashes == manifest.hashes, "same inputs, same artifacts"


def test_ingest_with_validation_file_rejects_overlapping_prompts(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", uf_pool(20, 10))
    val = write_jsonl(tmp_path / "val.jsonl", [uf_row("repeat apple 3", "apple done", "nope"), uf_row("fresh prompt", "ok", "no")])
    manifest = ingest(DataSource(pool_uri=pool, validation_uri=val), str(tmp_path / "data"))
    assert not manifest.validation_carved
    assert manifest.n_validation == 2
    assert manifest.rejects_by_reason == {"validation_overlap": 2}  # rows 3 and 13 share "repeat apple 3"
    rejects = pd.read_parquet(manifest.rejects_uri)
    assert sorted(rejects["row"]) == [3, 13] and set(rejects["origin"]) == {"pool"}
    assert manifest.rows_read == manifest.n_train + manifest.n_validation + manifest.n_rejected


def test_ingest_refuses_pool_without_usable_rows(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", [BAD_ROWS["empty_field"], BAD_ROWS["prompt_mismatch"]])
    with pytest.raises(DataError, match="no usable pairs among 2 rows"):
        ingest(DataSource(pool_uri=pool), str(tmp_path / "data"))


def test_eval_prompts_need_instructions(tmp_path):
    path = write_jsonl(tmp_path / "eval.jsonl", [{"instruction": "ok"}, {"prompt": "no instruction"}])
    with pytest.raises(DataError, match="row 1 has no instruction"):
        data_mod.read_eval_prompts(path)


def test_s3_pool_and_ingest_roundtrip(s3_bucket, tmp_path):
    import s3fs

    rows = uf_pool(20, 5)
    s3fs.S3FileSystem().pipe_file(f"{s3_bucket[5:]}/raw/pool.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    local = load_pairs(write_jsonl(tmp_path / "pool.jsonl", rows))
    remote = load_pairs(f"{s3_bucket}/raw/pool.jsonl")
    assert remote.pairs.to_list() == local.pairs.to_list()

    manifest = ingest(DataSource(pool_uri=f"{s3_bucket}/raw/pool.jsonl"), f"{s3_bucket}/run/data")
    assert manifest.train_uri == f"{s3_bucket}/run/data/train.parquet"
    train = read_pairs(manifest.train_uri)
    assert len(train) == manifest.n_train and Counter(train["pair_id"]).most_common(1)[0][1] == 1
    with pytest.raises(StorageError):
        load_pairs("s3://no-such-bucket-here/pool.jsonl")
