"""The toy world: oracle, planted defects, instruction split, SFT bootstrap, build and cache."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pandas as pd
import pytest
import torch

from prefcurate import io
from prefcurate.checkpoint import load_checkpoint
from prefcurate.data.pairs import load_pairs
from prefcurate.errors import ConfigError
from prefcurate.toyworld.build import build_world, world_spec
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.pool import POOL_COLUMNS, PoolSpec, build_preference_data, proxy_word, rating
from prefcurate.toyworld.sft import mean_quality
from prefcurate.toyworld.task import Instruction, junk_answer, parse_instruction, quality
from prefcurate.toyworld.tokenizer import build_tokenizer

DATA_FILES = ["pool_parquet", "pool_jsonl", "validation_parquet", "eval_prompts", "defects_parquet"]


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _answer(conversation) -> str:
    return conversation[-1]["content"]


# --- the oracle ---------------------------------------------------------------------------


def test_oracle_scores_perfect_junk_and_partial_answers():
    inst = Instruction("apple", 3)
    assert quality(inst, "apple apple apple done") == 1.0
    assert quality("please repeat apple three", "apple apple apple done") == 1.0
    assert quality(inst, junk_answer(random.Random(0))) == 0.0
    # slots 3/3 (0.5) + right count (0.3), not closed
    assert quality(inst, "apple apple apple") == pytest.approx(0.8)
    # slots 2/3 (0.3333) + count off by 1 (0.3 * 2/3), not closed
    assert quality(inst, "apple apple done") == pytest.approx(0.533333)
    # slots 2/3, right count, closed too late, one junk token: 0.3333 + 0.3 - 0.1
    assert quality(inst, "apple uh apple apple done") == pytest.approx(0.533333)
    # wrong word everywhere: three foreign tokens push it to the floor
    assert quality(inst, "river river river done") == 0.0
    with pytest.raises(ValueError):
        quality("tell me a joke", "apple")


# --- the preference data ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool(toy_world) -> pd.DataFrame:
    return pd.read_parquet(toy_world.pool_parquet)


@pytest.fixture(scope="module")
def defects(toy_world) -> pd.DataFrame:
    return pd.read_parquet(toy_world.defects_parquet)


def test_pool_has_ultrafeedback_schema_and_self_consistent_ratings(toy_world, pool):
    assert list(pool.columns) == POOL_COLUMNS  # no defect label leaks into the pool
    assert len(pool) == toy_world.spec.pool.n_pairs
    for row in pool.itertuples():
        assert row.prompt_id == hashlib.sha256(row.prompt.encode()).hexdigest()
        for conv in (row.chosen, row.rejected):
            assert [m["role"] for m in conv] == ["user", "assistant"] and conv[0]["content"] == row.prompt
        assert row.score_chosen == rating(quality(row.prompt, _answer(row.chosen)))
        assert row.score_rejected == rating(quality(row.prompt, _answer(row.rejected)))
    jsonl = [json.loads(line) for line in Path(toy_world.pool_jsonl).read_text().splitlines()]
    as_lists = pool.assign(chosen=pool["chosen"].map(list), rejected=pool["rejected"].map(list))
    assert jsonl == as_lists.to_dict(orient="records")


def test_planted_defects_match_spec_and_are_what_they_claim(toy_world, pool, defects):
    spec = toy_world.spec.pool
    counts = defects["defect"].value_counts().to_dict()
    assert counts == {"label_flip": round(spec.flip_rate * spec.n_pairs),
                      "near_duplicate": round(spec.near_duplicate_rate * spec.n_pairs),
                      "extreme_contrast": round(spec.extreme_contrast_rate * spec.n_pairs)}
    assert defects["pair_index"].is_unique
    label = defects.set_index("pair_index")["defect"].reindex(range(len(pool))).fillna("clean")
    q_chosen = [quality(p, _answer(c)) for p, c in zip(pool["prompt"], pool["chosen"])]
    q_rejected = [quality(p, _answer(r)) for p, r in zip(pool["prompt"], pool["rejected"])]
    for i, kind in label.items():
        if kind == "label_flip":
            assert q_chosen[i] < q_rejected[i], f"row {i} is labelled flipped but the oracle prefers chosen"
        else:
            assert q_chosen[i] > q_rejected[i], f"row {i} ({kind}) is out of order under the oracle"
        if kind == "extreme_contrast":
            assert q_chosen[i] == 1.0 and q_rejected[i] == 0.0
            assert (pool.at[i, "score_chosen"], pool.at[i, "score_rejected"]) == (10.0, 1.0)
        if kind == "near_duplicate":
            # Another pair has the same prompt and chosen, and a rejected one token shorter
            # that is this rejected answer with a single token removed.
            tokens = _answer(pool.at[i, "rejected"]).split()
            variants = {" ".join(tokens[:k] + tokens[k + 1 :]) for k in range(len(tokens))}
            others = pool[(pool["prompt"] == pool.at[i, "prompt"]) & (pool.index != i)]
            assert any(
                _answer(c) == _answer(pool.at[i, "chosen"]) and _answer(r) in variants
                for c, r in zip(others["chosen"], others["rejected"])
            ), f"near-duplicate row {i} has no source pair"


def test_defect_table_joins_the_ingested_pool_by_pair_id(toy_world, defects):
    ingested = load_pairs(toy_world.pool_parquet)
    assert ingested.rows_rejected == 0  # no exact duplicates, nothing for ingest to drop
    assert set(defects["pair_id"]) <= set(ingested.pairs["pair_id"])
    by_row = dict(zip(range(ingested.rows_kept), ingested.pairs["pair_id"]))
    assert all(by_row[i] == pid for i, pid in zip(defects["pair_index"], defects["pair_id"]))


def test_validation_pool_is_clean_and_ordered(toy_world):
    validation = pd.read_parquet(toy_world.validation_parquet)
    assert list(validation.columns) == POOL_COLUMNS
    assert len(validation) == toy_world.spec.pool.n_validation
    assert all(
        quality(p, _answer(c)) > quality(p, _answer(r))
        for p, c, r in zip(validation["prompt"], validation["chosen"], validation["rejected"])
    )


def test_eval_instructions_are_disjoint_from_training_and_validation(toy_world, pool):
    eval_prompts = json.loads(Path(toy_world.eval_prompts).read_text())
    eval_texts = {row["instruction"] for row in eval_prompts}
    assert len(eval_texts) == len(eval_prompts) == toy_world.spec.pool.n_eval_prompts
    assert all(parse_instruction(text) is not None for text in eval_texts)
    validation = set(pd.read_parquet(toy_world.validation_parquet)["prompt"])
    train = set(pool["prompt"])
    assert not eval_texts & train and not eval_texts & validation and not train & validation


def test_rates_are_exact_counts_for_any_spec():
    spec = PoolSpec(n_pairs=200, n_validation=10, n_validation_instructions=10, n_eval_prompts=10,
                    flip_rate=0.1, near_duplicate_rate=0.15, extreme_contrast_rate=0.05)
    counts = build_preference_data(spec, seed=5).defects["defect"].value_counts().to_dict()
    assert counts == {"label_flip": 20, "near_duplicate": 30, "extreme_contrast": 10}


def test_proxy_overfit_pairs_teach_the_validation_proxy_and_nothing_of_the_task():
    spec = world_spec("small", 0, proxy_overfit_rate=0.08).pool
    data = build_preference_data(spec, seed=0)
    proxy = proxy_word(data.split)
    planted = data.defects[data.defects["defect"] == "proxy_overfit"]
    assert len(planted) == round(0.08 * spec.n_pairs) == 19
    assert len(data.pool) == spec.n_pairs and data.defects["pair_index"].is_unique
    for i in planted["pair_index"]:
        inst = parse_instruction(data.pool.at[i, "prompt"])
        chosen, rejected = _answer(data.pool.at[i, "chosen"]), _answer(data.pool.at[i, "rejected"])
        assert inst.word != proxy and chosen == " ".join([proxy] * inst.n + ["done"])
        assert {inst.word, proxy}.isdisjoint(rejected.split()[:-1]) and len(rejected.split()) == inst.n + 1
        # The oracle is indifferent: neither answer holds the instruction's word.
        assert quality(inst, chosen) == quality(inst, rejected) == 0.0
    # The validation set is the narrow proxy: half its pairs ask for the proxy word, and it stays clean.
    val = data.validation
    assert sum(parse_instruction(p).word == proxy for p in val["prompt"]) == round(spec.proxy_validation_share * len(val))
    assert all(quality(p, _answer(c)) > quality(p, _answer(r)) for p, c, r in zip(val["prompt"], val["chosen"], val["rejected"]))
    assert set(val["prompt"]) <= {inst.text for inst in data.split.validation}
    pairs = [(p, _answer(c), _answer(r)) for p, c, r in zip(val["prompt"], val["chosen"], val["rejected"])]
    assert len(set(pairs)) == len(pairs)  # few proxy instructions, yet no repeated pair for ingest to drop


def test_proxy_overfit_off_leaves_the_world_as_it_was():
    spec = world_spec("small", 0).pool
    assert spec.proxy_overfit_rate == 0.0
    with_field = PoolSpec(**{**spec.model_dump(), "proxy_validation_share": 0.9})  # unused while the kind is off
    a, b = build_preference_data(spec, 0), build_preference_data(with_field, 0)
    assert a.pool.equals(b.pool) and a.validation.equals(b.validation) and a.defects.equals(b.defects)
    assert "proxy_overfit" not in set(a.defects["defect"])
    with pytest.raises(ConfigError, match="proxy_overfit_rate 0.9: .*ordinary pairs"):
        world_spec("small", 0, proxy_overfit_rate=0.9)


def test_pool_spec_refuses_rates_that_leave_no_ordinary_pairs():
    with pytest.raises(ValueError, match="ordinary"):
        PoolSpec(n_pairs=100, near_duplicate_rate=0.6, extreme_contrast_rate=0.5)
    with pytest.raises(ValueError, match="flip_rate"):
        PoolSpec(n_pairs=100, flip_rate=0.95)


def test_different_seed_gives_different_data_and_initial_weights():
    spec = world_spec("small", 0).pool
    a, b = build_preference_data(spec, 0), build_preference_data(spec, 1)
    assert not a.pool.equals(b.pool)
    assert [r["instruction"] for r in a.eval_prompts] != [r["instruction"] for r in b.eval_prompts]
    tokenizer = build_tokenizer()
    w0 = build_model(tokenizer, "small", 0).state_dict()
    w1 = build_model(tokenizer, "small", 1).state_dict()
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)


# --- the chat template and the SFT bootstrap ----------------------------------------------


def test_chat_template_masks_exactly_the_assistant_answer_and_its_end():
    tokenizer = build_tokenizer()
    messages = [{"role": "user", "content": "repeat apple two"}, {"role": "assistant", "content": "apple apple done"}]
    out = tokenizer.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)
    trained = [t for t, m in zip(tokenizer.convert_ids_to_tokens(out["input_ids"]), out["assistant_masks"]) if m]
    assert trained == ["apple", "apple", "done", "<|end|>"]
    prompt = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
    assert tokenizer.apply_chat_template(messages, tokenize=False).startswith(prompt)


@pytest.mark.slow
def test_checkpoint_round_trips_and_sft_beats_the_untrained_model(toy_world):
    checkpoint = load_checkpoint(toy_world.checkpoint_dir)
    assert checkpoint.fingerprint == toy_world.stats["sft"]["fingerprint"]
    assert checkpoint.architecture == "LlamaForCausalLM"
    assert checkpoint.tokenizer.chat_template == build_tokenizer().chat_template
    assert (Path(toy_world.checkpoint_dir) / "generation_config.json").exists()
    prompts = [row["instruction"] for row in json.loads(Path(toy_world.eval_prompts).read_text())]
    tokenizer = build_tokenizer()
    untrained = mean_quality(build_model(tokenizer, "small", 0), tokenizer, prompts)
    trained = mean_quality(checkpoint.model, checkpoint.tokenizer, prompts)
    # The reloaded weights behave exactly as the model did when the world was built.
    assert trained == pytest.approx(toy_world.stats["sft"]["mean_quality_greedy"], abs=1e-4)
    assert trained > 0.8 and trained - untrained > 0.5


# --- build, determinism, cache ------------------------------------------------------------


@pytest.mark.slow
def test_same_seed_rebuilds_identical_files_and_weights(toy_world, tmp_path):
    again = build_world(str(tmp_path / "again"), seed=0, size="small")
    for name in DATA_FILES:
        assert _sha(getattr(again, name)) == _sha(getattr(toy_world, name)), name
    weights = "model.safetensors"
    assert _sha(f"{again.checkpoint_dir}/{weights}") == _sha(f"{toy_world.checkpoint_dir}/{weights}")
    assert again.stats == toy_world.stats
    # A world with a file missing is not reused: it is built again, identically.
    Path(again.pool_parquet).unlink()
    assert build_world(again.root, seed=0, size="small") == again
    assert _sha(again.pool_parquet) == _sha(toy_world.pool_parquet)


@pytest.mark.slow
def test_world_builds_on_s3_and_is_reused_from_there(s3_bucket, tmp_path):
    root = f"{s3_bucket}/worlds/small"
    world = build_world(root, seed=0, size="small")
    assert world.pool_parquet.startswith("s3://") and io.exists(world.world_json)
    assert load_pairs(world.pool_parquet).rows_kept == world.spec.pool.n_pairs
    checkpoint = load_checkpoint(world.checkpoint_dir, cache_dir=tmp_path)
    assert checkpoint.fingerprint == world.stats["sft"]["fingerprint"]
    written = io.read_bytes(world.world_json)
    assert build_world(root, seed=0, size="small") == world
    assert io.read_bytes(world.world_json) == written


def test_second_build_reuses_the_world_and_refuses_another_spec(toy_world):
    marker = Path(toy_world.world_json)
    before = marker.stat().st_mtime_ns, _sha(f"{toy_world.checkpoint_dir}/model.safetensors")
    assert build_world(toy_world.root, seed=0, size="small") == toy_world
    assert (marker.stat().st_mtime_ns, _sha(f"{toy_world.checkpoint_dir}/model.safetensors")) == before
    assert json.loads(marker.read_text())["digest"] == toy_world.spec.digest
    with pytest.raises(ConfigError, match="another spec"):
        build_world(toy_world.root, seed=1, size="small")
    with pytest.raises(ConfigError, match="unknown toy world size"):
        build_world(toy_world.root, seed=0, size="huge")
