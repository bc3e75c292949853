import logging
import math
import re
import time

import pytest
import torch

from prefcurate.config import JudgeConfig
from prefcurate.errors import CheckpointError, JudgeError
from prefcurate.evaluation.judges import make_judge
from prefcurate.evaluation.judges.base import FAILED, UNPARSEABLE
from prefcurate.evaluation.judges.prompts import parse_rating
from tests.prefcurate.evaluation.fake_openai import FakeEndpoint

KEY = "sk-test-4f9c2a7be1d0secret"


# -- oracle -----------------------------------------------------------------------------------


def test_oracle_pairwise_and_single():
    judge = make_judge(JudgeConfig(kind="oracle"), None)
    perfect, wrong = "apple apple done", "apple done"
    assert judge.pairwise("repeat apple two", wrong, perfect) == 2.0
    assert judge.pairwise("repeat apple two", perfect, wrong) == 1.0
    assert judge.pairwise("repeat apple two", perfect, perfect) == 1.5
    assert judge.single("repeat apple two", perfect) == 10.0
    assert judge.single("repeat apple two", "um um um um") == 1.0


def test_oracle_refuses_foreign_prompts():
    judge = make_judge(JudgeConfig(kind="oracle"), None)
    with pytest.raises(JudgeError, match="only knows toy-world instructions"):
        judge.single("Write a poem", "roses")


# -- reward model -----------------------------------------------------------------------------


def _reward_model_dir(tmp_path, num_labels=1):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from prefcurate.toyworld.tokenizer import build_tokenizer

    tok = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, num_labels=num_labels, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    path = tmp_path / f"rm{num_labels}"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model, tok


def test_reward_model_judge_maps_rewards(tmp_path):
    path, model, tok = _reward_model_dir(tmp_path)
    judge = make_judge(JudgeConfig(kind="reward-model", model=str(path), batch_size=3), tmp_path / "cache")
    items = [("repeat apple two", "apple apple done", "um"), ("repeat stone one", "stone done", "stone stone stone done")]

    def reward(instruction, output):  # one unpadded sequence at a time: no batching involved
        text = tok.apply_chat_template(
            [{"role": "user", "content": instruction}, {"role": "assistant", "content": output}], tokenize=False
        )
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            return float(model(**ids).logits[0, 0])

    prefs = judge.pairwise_many(items)
    for (instruction, o1, o2), pref in zip(items, prefs):
        r1, r2 = reward(instruction, o1), reward(instruction, o2)
        assert r1 != r2
        assert pref == pytest.approx(1 + 1 / (1 + math.exp(-(r2 - r1))), abs=1e-5)
    grade = judge.single("repeat apple two", "apple apple done")
    assert grade == pytest.approx(1 + 9 / (1 + math.exp(-reward("repeat apple two", "apple apple done"))), abs=1e-5)

    again = make_judge(JudgeConfig(kind="reward-model", model=str(path)), tmp_path / "cache")
    assert again.pairwise_many(items) == prefs
    assert (again.stats.cached, again.stats.judged) == (2, 0)


def test_reward_model_judge_refuses_unsafe_or_wrong_checkpoints(tmp_path):
    path, model, _ = _reward_model_dir(tmp_path)
    for file in path.glob("*.safetensors"):
        file.unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only pickle weights"):
        make_judge(JudgeConfig(kind="reward-model", model=str(path)), None)
    path2, _, _ = _reward_model_dir(tmp_path, num_labels=2)
    with pytest.raises(CheckpointError, match="num_labels=1"):
        make_judge(JudgeConfig(kind="reward-model", model=str(path2)), None)


# -- openai-compatible endpoint -------------------------------------------------------------


@pytest.fixture
def endpoint(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", KEY)
    server = FakeEndpoint()
    yield server
    server.close()


def _config(endpoint, **kw):
    base = dict(kind="openai", base_url=endpoint.url, model="judge-1", api_key_env="JUDGE_KEY",
                retry_backoff_s=0.01, timeout_s=5.0, max_concurrency=4)
    return JudgeConfig(**{**base, **kw})


ITEMS = [(f"instruction {i}", f"answer {i} GOOD", f"answer {i} plain") for i in range(6)] + [
    (f"instruction {i}", f"answer {i} plain", f"answer {i} GOOD") for i in range(6, 12)
]


def test_openai_pairwise_from_logprobs_maps_swaps_back(endpoint, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    judge = make_judge(_config(endpoint), tmp_path / "cache")
    swaps = [judge.swapped(*item) for item in ITEMS]
    assert any(swaps) and not all(swaps)  # both orders occur
    prefs = judge.pairwise_many(ITEMS)
    # GOOD as output_1 → the reference wins with p 0.9 → 1.1; GOOD as output_2 → 1.9; whatever the order sent
    assert prefs == pytest.approx([1.1] * 6 + [1.9] * 6)
    assert len(endpoint.requests) == 12
    assert all(r["path"] == "/v1/chat/completions" and r["body"]["logprobs"] for r in endpoint.requests)
    assert all(r["auth"] == f"Bearer {KEY}" for r in endpoint.requests)
    sent_first = [re.search(r'"m",\s*"output": """(.*?)"""', r["body"]["messages"][-1]["content"], re.S).group(1)
                  for r in endpoint.requests]
    expected_first = {o2 if s else o1 for (_, o1, o2), s in zip(ITEMS, swaps)}
    assert set(sent_first) == expected_first

    # A rerun with a fresh judge on the same cache sends nothing.
    again = make_judge(_config(endpoint), tmp_path / "cache")
    assert again.pairwise_many(ITEMS) == prefs
    assert len(endpoint.requests) == 12 and again.stats.cached == 12

    assert KEY not in caplog.text
    for file in (tmp_path / "cache").rglob("*"):
        if file.is_file():
            assert KEY not in file.read_text()


def test_verdict_cache_on_s3(endpoint, s3_bucket):
    cache = f"{s3_bucket}/judgments"
    first = make_judge(_config(endpoint), cache).pairwise_many(ITEMS[:3])
    again = make_judge(_config(endpoint), cache)
    assert again.pairwise_many(ITEMS[:3]) == first
    assert again.stats.cached == 3 and len(endpoint.requests) == 3


def test_openai_weak_judge_gets_a_soft_verdict_from_its_top_20(endpoint):
    # llama-cpp-python serving SmolLM2-135M ranked m/M 2nd and 8th: a top 5 holds only the winner (a hard 1.0/2.0)
    endpoint.mode = "weak"
    soft = math.exp(-2.83) / (math.exp(-2.83) + math.exp(-4.08))
    assert make_judge(_config(endpoint), None).pairwise_many(ITEMS[-2:]) == pytest.approx([1 + soft] * 2)
    assert endpoint.requests[0]["body"]["top_logprobs"] == 20
    assert make_judge(_config(endpoint, top_logprobs=5), None).pairwise_many(ITEMS[-2:]) == [2.0, 2.0]


def test_openai_endpoint_refusing_logprobs_stops_at_once(endpoint):
    endpoint.mode = "logprobs_refused"  # llama-cpp-python's server with --logits_all false
    judge = make_judge(_config(endpoint, max_retries=3), None)
    with pytest.raises(JudgeError, match=r"cannot return log-probs \(HTTP 500: .*logprobs is not supported.*"
                                         r"set judge.logprobs=false") as info:
        judge.pairwise_many(ITEMS[:1])
    assert len(endpoint.requests) == 1 and "\n" not in str(info.value)  # no retries, one line
    endpoint.mode = "text"
    assert make_judge(_config(endpoint, logprobs=False), None).pairwise(*ITEMS[0]) == 1.0


def test_openai_pairwise_from_text_and_unparseable(endpoint, tmp_path):
    endpoint.mode = "text"
    judge = make_judge(_config(endpoint, logprobs=False), tmp_path / "cache")
    assert judge.pairwise_many(ITEMS[:2] + ITEMS[-2:]) == [1.0, 1.0, 2.0, 2.0]
    assert "logprobs" not in endpoint.requests[0]["body"]

    endpoint.mode = "garbage"
    other = make_judge(_config(endpoint, seed=1), tmp_path / "cache")
    assert other.pairwise_many(ITEMS[:3]) == [None, None, None]
    assert (other.stats.unparseable, other.stats.judged) == (3, 0)
    # unparseable verdicts are not cached: a rerun asks again
    n = len(endpoint.requests)
    other.pairwise_many(ITEMS[:3])
    assert len(endpoint.requests) == n + 3


def test_openai_single_grading(endpoint, tmp_path):
    judge = make_judge(_config(endpoint), tmp_path / "cache")
    assert judge.single_many([("q", "a GOOD answer"), ("q", "a bad answer")]) == [7.0, -1.0]
    assert (judge.stats.judged, judge.stats.unparseable) == (1, 1)
    assert endpoint.requests[0]["body"]["max_tokens"] == 512


def test_openai_concurrency_is_limited(endpoint):
    endpoint.delay_s = 0.1
    judge = make_judge(_config(endpoint, max_concurrency=3), None)
    assert judge.pairwise_many(ITEMS) == pytest.approx([1.1] * 6 + [1.9] * 6)
    assert endpoint.max_in_flight == 3  # parallel, and never more than the limit


def test_openai_retries_429_and_5xx(endpoint, tmp_path, caplog):
    endpoint.fail_first = [429, 503]
    judge = make_judge(_config(endpoint, max_concurrency=1), None)
    assert judge.pairwise(*ITEMS[-1]) == pytest.approx(1.9)
    assert len(endpoint.requests) == 3
    assert "HTTP 429" in caplog.text and "HTTP 503" in caplog.text

    endpoint.fail_first = [500] * 3
    judge = make_judge(_config(endpoint, max_retries=2), None)
    assert judge.pairwise(*ITEMS[0]) is None
    assert judge.stats.failed == 1


def test_openai_timeout_counts_as_failed(endpoint, tmp_path):
    endpoint.delay_s = 1.0
    judge = make_judge(_config(endpoint, timeout_s=0.2, max_retries=1), tmp_path / "cache")
    assert judge.pairwise(*ITEMS[0]) is None
    assert judge.stats.failed == 1
    assert len(endpoint.requests) == 2
    assert not list((tmp_path / "cache").rglob("*.json"))


# Every way an endpoint can answer badly, and what each item then gets: (status, reason code).
MALFORMED = {
    "json_list": (UNPARSEABLE, "bad_shape"),
    "choices_object": (UNPARSEABLE, "bad_shape"),
    "choices_strings": (UNPARSEABLE, "bad_shape"),
    "message_null": (UNPARSEABLE, "bad_shape"),
    "content_list": (UNPARSEABLE, "bad_shape"),
    "null_logprob": (UNPARSEABLE, "bad_logprobs"),
    "missing_logprob": (UNPARSEABLE, "bad_logprobs"),
    "logprobs_string": (UNPARSEABLE, "bad_logprobs"),
    "garbage": (UNPARSEABLE, "no_verdict"),
    "html": (FAILED, "not_json"),
    "html_502": (FAILED, "http_error"),
    "hang": (FAILED, "timeout"),
    "trickle": (FAILED, "timeout"),
    "huge": (FAILED, "too_large"),
}


@pytest.mark.parametrize("mode", MALFORMED)
def test_openai_malformed_reply_is_counted_with_its_reason(endpoint, tmp_path, mode):
    endpoint.mode = mode
    judge = make_judge(_config(endpoint, timeout_s=0.3, max_retries=1), tmp_path / "cache")
    start = time.monotonic()
    verdicts = judge.pairwise_verdicts(ITEMS[:2])
    status, reason = MALFORMED[mode]
    assert [(v.value, v.status, v.reason) for v in verdicts] == [(None, status, reason)] * 2
    assert all(v.detail for v in verdicts)
    assert judge.stats.reasons == {reason: 2} and judge.stats.judged == 0
    assert judge.stats.failed_fraction == 1.0
    assert time.monotonic() - start < 5  # a hang or a trickle costs timeout_s per attempt, not the server's 30 s
    grades = judge.single_verdicts([("q", "a GOOD answer")])
    assert grades[0].value is None and grades[0].status in (FAILED, UNPARSEABLE)
    assert not list((tmp_path / "cache").rglob("*.json"))  # nothing cached: a rerun asks again


def test_openai_reasons_say_what_was_wrong(endpoint):
    judge = make_judge(_config(endpoint, timeout_s=0.3, max_retries=1), None)
    expected = {
        "json_list": "the reply is a JSON array, not an object",
        "null_logprob": "the log-prob of 'M' is a JSON null, not a number",
        "garbage": "the reply 'Both' names neither m nor M",
        "html": "HTTP 200 with a body that is not JSON: '<html><head><title>502 Bad Gateway",
        "html_502": "HTTP 502: '<html>",
        "hang": "no complete reply within 0.3 s (gave up after 2 attempts)",
    }
    for mode, text in expected.items():
        endpoint.mode = mode
        assert text in judge.pairwise_verdicts(ITEMS[:1])[0].detail, mode


def test_openai_unreachable_endpoint_counts_as_failed(endpoint):
    judge = make_judge(_config(endpoint, max_retries=1), None)
    endpoint.close()  # connection refused from now on
    verdict = judge.pairwise_verdicts(ITEMS[:1])[0]
    assert (verdict.status, verdict.reason) == (FAILED, "transport")
    assert verdict.detail == "the request failed: ConnectError (gave up after 2 attempts)"


def test_openai_echoed_key_is_masked_everywhere(endpoint, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    endpoint.mode = "echo"
    judge = make_judge(_config(endpoint), tmp_path / "cache")
    verdicts = judge.pairwise_verdicts(ITEMS[:4])
    grades = judge.single_verdicts([("q", "a"), ("q", "b")])
    assert [v.value for v in verdicts] == pytest.approx([1.1, 1.1, 1.1, 1.1])  # the verdicts are in the log-probs
    assert all(v.raw.endswith("(Authorization: Bearer [redacted])") for v in verdicts)  # the echo, without the key
    assert {(g.status, g.reason) for g in grades} == {(FAILED, "http_error")}
    assert all("Authorization: Bearer [redacted]" in g.detail for g in grades)
    assert all(r["auth"] == f"Bearer {KEY}" for r in endpoint.requests)  # the key was sent
    assert KEY not in caplog.text and "no verdict" in caplog.text
    assert KEY not in repr(verdicts + grades) and KEY not in repr(judge.stats.to_dict())
    cached = [f.read_text() for f in (tmp_path / "cache").rglob("*.json")]
    assert len(cached) == 4 and all("[redacted]" in text and KEY not in text for text in cached)


def test_openai_refused_key_and_missing_key(endpoint, monkeypatch):
    endpoint.fail_first = [401]
    judge = make_judge(_config(endpoint), None)
    with pytest.raises(JudgeError, match="refused the API key") as info:
        judge.pairwise(*ITEMS[0])
    assert KEY not in str(info.value)
    monkeypatch.delenv("JUDGE_KEY")
    with pytest.raises(JudgeError, match="JUDGE_KEY is empty"):
        make_judge(_config(endpoint), None)


def test_parse_rating():
    assert parse_rating("fine. Rating: [[8]]") == 8.0
    assert parse_rating("Rating: [6.5]") == 6.5
    assert parse_rating("no rating here") == -1.0
    assert parse_rating("[[11]]") == -1.0
