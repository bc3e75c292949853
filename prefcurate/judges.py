"""Judges: who decides which answer is better (pairwise) and how good one answer is (single).

One protocol, three implementations — the toy world's ground-truth `oracle`, a local
`reward-model` and any `openai`-compatible chat endpoint. Preferences use AlpacaEval's
scale: a float in [1, 2], 2 when the second output is better, 1.5 for a tie, None when no
verdict could be had. Single grades use MT-Bench's 1–10 scale, −1 when unparseable.

Every verdict is cached on disk under a content hash of (judge identity, prompt template,
instruction, outputs), so rerunning an evaluation costs nothing; failed and unparseable
judgments are counted in `Judge.stats` and never cached, so a rerun retries them.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import re
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import httpx
from tqdm.auto import tqdm

from prefcurate import io
from prefcurate.config import JudgeConfig
from prefcurate.errors import CheckpointError, ConfigError, JudgeError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
OK, UNPARSEABLE, FAILED = "ok", "unparseable", "failed"

# AlpacaEval's weighted classifier prompt (alpaca_eval_clf_gpt4_turbo, Apache-2.0): the judge
# names the better output with one token, "m" (first) or "M" (second).
PAIRWISE_SYSTEM = (
    "You are a highly efficient assistant, who evaluates and selects the best large language model (LLMs) "
    "based on the quality of their responses to a given instruction. This process will be used to create a "
    "leaderboard reflecting the most accurate and human-preferred answers."
)
PAIRWISE_USER = '''I require a leaderboard for various large language models. I'll provide you with prompts given to these models and their corresponding outputs. Your task is to assess these responses, and select the model that produces the best output from a human perspective.

## Instruction

{{
    "instruction": """{instruction}""",
}}

## Model Outputs

Here are the unordered outputs from the models. Each output is associated with a specific model, identified by a unique model identifier.

{{
    {{
        "model_identifier": "m",
        "output": """{output_1}"""
    }},
    {{
        "model_identifier": "M",
        "output": """{output_2}"""
    }}
}}

## Task

Evaluate the models based on the quality and relevance of their outputs, and select the model that generated the best output. Answer by providing the model identifier of the best model. We will use your output as the name of the best model, so make sure your output only contains one of the following model identifiers and nothing else (no quotes, no spaces, no new lines, ...): m or M.

## Best Model Identifier'''

# MT-Bench's single-answer grading prompt ("single-v1") and its rating parsers.
SINGLE_SYSTEM = "You are a helpful assistant."
SINGLE_USER = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Your evaluation should consider factors such as the "
    "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your "
    "evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, "
    'you must rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for '
    'example: "Rating: [[5]]".\n\n[Question]\n{question}\n\n[The Start of Assistant\'s Answer]\n{answer}\n'
    "[The End of Assistant's Answer]"
)
RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def parse_rating(text: str) -> float:
    """MT-Bench's `[[rating]]` parser (falling back to `[rating]`); −1 when absent or outside 1–10."""
    match = RATING.search(text) or RATING_BACKUP.search(text)
    if not match:
        return -1.0
    value = float(match.group(1))
    return value if 1.0 <= value <= 10.0 else -1.0


@dataclass
class JudgeStats:
    """What a judge did: fresh verdicts, cache hits, and the judgments that produced nothing."""

    judged: int = 0
    cached: int = 0
    unparseable: int = 0
    failed: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Judge(ABC):
    """The judge protocol, with the on-disk verdict cache shared by every implementation."""

    kind: str = ""
    cacheable: bool = True

    def __init__(self, cache_dir: str | os.PathLike | None, max_concurrency: int = 1):
        self.cache_dir = str(cache_dir) if cache_dir is not None else None  # a local path or any fsspec URI
        self.max_concurrency = max_concurrency
        self.stats = JudgeStats()
        self._lock = threading.Lock()

    @property
    @abstractmethod
    def identity(self) -> dict:
        """What makes this judge's verdicts what they are (no secrets): part of every cache key."""

    @property
    def name(self) -> str:
        """The `annotator` written into annotations."""
        return self.kind

    # -- the protocol -------------------------------------------------------------------------

    def pairwise(self, instruction: str, output_1: str, output_2: str) -> float | None:
        """Preference in [1, 2] (2: output_2 is better, 1.5: tie), None when no verdict could be had."""
        return self.pairwise_many([(instruction, output_1, output_2)])[0]

    def single(self, instruction: str, output: str) -> float:
        """Grade 1–10 of one answer, −1 when unparseable or failed."""
        return self.single_many([(instruction, output)])[0]

    def pairwise_many(self, items: Sequence[tuple[str, str, str]], progress: Progress | None = None) -> list[float | None]:
        return self._run("pairwise", list(items), self._pairwise, progress)

    def single_many(self, items: Sequence[tuple[str, str]], progress: Progress | None = None) -> list[float]:
        values = self._run("single", list(items), self._single, progress)
        return [v if v is not None else -1.0 for v in values]

    # -- implementations ----------------------------------------------------------------------

    @abstractmethod
    def _pairwise(self, items: list[tuple[str, str, str]]) -> list[tuple[float | None, str, str]]:
        """(value, status, raw verdict) per item; status is OK, UNPARSEABLE or FAILED."""

    @abstractmethod
    def _single(self, items: list[tuple[str, str]]) -> list[tuple[float | None, str, str]]:
        """(value, status, raw verdict) per item."""

    def _batches(self, items: list) -> list[list]:
        """How uncached items are handed to the implementation (one at a time by default)."""
        return [[item] for item in items]

    # -- caching and bookkeeping --------------------------------------------------------------

    def _key(self, mode: str, item: tuple) -> str:
        return io.sha256_json({"judge": self.identity, "mode": mode, "item": list(item)})

    def _cache_uri(self, key: str) -> str | None:
        if self.cache_dir is None or not self.cacheable:
            return None
        return io.join(self.cache_dir, key[:2], f"{key}.json")

    def _run(self, mode: str, items: list[tuple], compute, progress: Progress | None) -> list[float | None]:
        results: list[float | None] = [None] * len(items)
        todo: list[int] = []
        for i, item in enumerate(items):
            uri = self._cache_uri(self._key(mode, item))
            if uri is not None and io.exists(uri):
                results[i] = io.read_json(uri)["value"]
                self.stats.cached += 1
            else:
                todo.append(i)
        done = len(items) - len(todo)
        bar = tqdm(total=len(items), initial=done, desc=f"judge {mode} ({self.name})", unit="item", leave=False)

        def work(batch_idx: list[int]) -> None:
            nonlocal done
            verdicts = compute([items[i] for i in batch_idx])
            for i, (value, status, raw) in zip(batch_idx, verdicts):
                results[i] = value
                uri = self._cache_uri(self._key(mode, items[i])) if status == OK else None
                if uri is not None:
                    io.write_json(uri, {"value": value, "mode": mode, "judge": self.name, "raw": raw})
            with self._lock:
                for _, status, _ in verdicts:
                    if status == OK:
                        self.stats.judged += 1
                    elif status == UNPARSEABLE:
                        self.stats.unparseable += 1
                    else:
                        self.stats.failed += 1
                done += len(batch_idx)
                bar.update(len(batch_idx))
                if progress is not None:
                    progress(done, len(items))

        batches = self._batches(todo)
        try:
            if self.max_concurrency > 1 and len(batches) > 1:
                with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
                    list(pool.map(work, batches))
            else:
                for batch in batches:
                    work(batch)
        finally:
            bar.close()
        bad = sum(1 for v in results if v is None)
        if bad:
            log.warning("%s judge: %d of %d %s judgments gave no verdict", self.name, bad, len(items), mode)
        return results


class OracleJudge(Judge):
    """The toy world's ground truth: pairwise compares qualities, single maps quality q to 1 + 9q."""

    kind = "oracle"
    cacheable = False  # recomputing is cheaper than reading a file

    @property
    def identity(self) -> dict:
        return {"kind": self.kind, "version": 1}

    def _quality(self, instruction: str, output: str) -> float:
        from prefcurate.toyworld.task import quality

        try:
            return quality(instruction, output)
        except ValueError as exc:
            raise JudgeError(
                f"the oracle judge only knows toy-world instructions, got {instruction[:60]!r}; "
                "use judge.kind=reward-model or openai for other prompts"
            ) from exc

    def _pairwise(self, items):
        out = []
        for instruction, output_1, output_2 in items:
            q1, q2 = self._quality(instruction, output_1), self._quality(instruction, output_2)
            out.append((1.5 if q1 == q2 else 2.0 if q2 > q1 else 1.0, OK, f"{q1} vs {q2}"))
        return out

    def _single(self, items):
        out = []
        for instruction, output in items:
            q = self._quality(instruction, output)
            out.append((1.0 + 9.0 * q, OK, str(q)))
        return out


class RewardModelJudge(Judge):
    """A local sequence-classification reward model (one logit), safetensors only, no remote code.

    Pairwise: 1 + σ(r₂ − r₁), the Bradley–Terry probability that output 2 wins, on AlpacaEval's
    scale. Single: 1 + 9·σ(r), the same probability against an answer of reward 0, stretched
    onto 1–10 (monotone in the reward; comparable across models judged by the same RM).
    """

    kind = "reward-model"

    def __init__(self, model_dir: str, cache_dir: str | os.PathLike | None, batch_size: int = 16):
        super().__init__(cache_dir)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from prefcurate.checkpoint import default_cache_dir, fingerprint

        self.batch_size = batch_size
        self._uri = model_dir
        with io.local_copy_dir(model_dir, default_cache_dir()) as local:
            local = Path(local)
            if not local.is_dir():
                raise CheckpointError(f"reward model {model_dir} is not a directory; give a local or s3:// checkpoint directory")
            if not list(local.glob("*.safetensors")):
                raise CheckpointError(
                    f"reward model {model_dir} has no *.safetensors weights; the reward-model judge loads safetensors only"
                )
            self._fingerprint = fingerprint(local)
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(str(local), trust_remote_code=False)
                self.model = AutoModelForSequenceClassification.from_pretrained(
                    str(local), use_safetensors=True, trust_remote_code=False
                )
            except Exception as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise CheckpointError(f"cannot load reward model {model_dir}: {first}") from exc
        if self.model.config.num_labels != 1:
            raise JudgeError(
                f"reward model {model_dir} has {self.model.config.num_labels} labels; a reward model outputs one score "
                "(num_labels=1)"
            )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.eval()
        self._torch = torch

    @property
    def identity(self) -> dict:
        return {"kind": self.kind, "fingerprint": self._fingerprint, "mapping": "bt-v1"}

    @property
    def name(self) -> str:
        return f"reward-model:{Path(str(self._uri)).name}"

    def _batches(self, items: list) -> list[list]:
        return [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]

    def _text(self, instruction: str, output: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": instruction}, {"role": "assistant", "content": output}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return f"{instruction}\n\n{output}"

    def rewards(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """The reward of each (instruction, output)."""
        texts = [self._text(i, o) for i, o in pairs]
        limit = min(self.tokenizer.model_max_length, getattr(self.model.config, "max_position_embeddings", 1 << 30))
        enc = self.tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=limit, add_special_tokens=False
        ).to(self.model.device)
        with self._torch.inference_mode():
            logits = self.model(**enc).logits
        return [float(v) for v in logits[:, 0].float().cpu()]

    def _pairwise(self, items):
        rewards = self.rewards([(i, o) for i, o1, o2 in items for o in (o1, o2)])
        out = []
        for k in range(len(items)):
            r1, r2 = rewards[2 * k], rewards[2 * k + 1]
            out.append((1.0 + _sigmoid(r2 - r1), OK, f"{r1} vs {r2}"))
        return out

    def _single(self, items):
        return [(1.0 + 9.0 * _sigmoid(r), OK, str(r)) for r in self.rewards(items)]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class OpenAIJudge(Judge):
    """An OpenAI-compatible chat-completions endpoint, called over HTTP with httpx.

    Pairwise follows AlpacaEval's weighted classifier: the two outputs go into the prompt in
    a seeded random order (decided per item by a hash, so it does not depend on batch order or
    concurrency), the verdict is P("M") from the first token's log-probs when the endpoint
    returns them, else the text "m"/"M", and is mapped back when the order was swapped.
    The API key is read from an environment variable and only ever sent as a header.
    """

    kind = "openai"

    def __init__(self, config: JudgeConfig, cache_dir: str | os.PathLike | None):
        super().__init__(cache_dir, max_concurrency=config.max_concurrency)
        if not config.base_url or not config.model:
            raise ConfigError("the openai judge needs judge.base_url and judge.model (the endpoint and its model name)")
        key = os.environ.get(config.api_key_env, "")
        if not key:
            raise JudgeError(
                f"environment variable {config.api_key_env} is empty; set it to the endpoint's API key "
                "(any non-empty value for an endpoint without auth)"
            )
        self.config = config
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._client = httpx.Client(
            timeout=config.timeout_s,
            headers={"Authorization": f"Bearer {key}"},
            limits=httpx.Limits(max_connections=config.max_concurrency),
        )

    @property
    def identity(self) -> dict:
        c = self.config
        return {
            "kind": self.kind,
            "base_url": c.base_url,
            "model": c.model,
            "seed": c.seed,
            "logprobs": c.logprobs,
            "templates": hashlib.sha256((PAIRWISE_SYSTEM + PAIRWISE_USER + SINGLE_SYSTEM + SINGLE_USER).encode()).hexdigest(),
        }

    @property
    def name(self) -> str:
        return f"openai:{self.config.model}"

    def close(self) -> None:
        self._client.close()

    def swapped(self, instruction: str, output_1: str, output_2: str) -> bool:
        """Whether this item's outputs go into the prompt in reverse order (seeded, per item)."""
        digest = io.sha256_json([self.config.seed, instruction, output_1, output_2])
        return int(digest[:8], 16) % 2 == 1

    def _pairwise(self, items):
        return [self._pairwise_one(*item) for item in items]

    def _pairwise_one(self, instruction: str, output_1: str, output_2: str) -> tuple[float | None, str, str]:
        swap = self.swapped(instruction, output_1, output_2)
        first, second = (output_2, output_1) if swap else (output_1, output_2)
        body = {
            "messages": [
                {"role": "system", "content": PAIRWISE_SYSTEM},
                {"role": "user", "content": PAIRWISE_USER.format(instruction=instruction, output_1=first, output_2=second)},
            ],
            "max_tokens": 1,
        }
        if self.config.logprobs:
            body.update(logprobs=True, top_logprobs=5)
        response = self._post(body)
        if response is None:
            return None, FAILED, ""
        choice = (response.get("choices") or [{}])[0]
        text = ((choice.get("message") or {}).get("content") or "").strip()
        preference = _preference_from_logprobs(choice.get("logprobs"))
        if preference is None:
            preference = {"m": 1.0, "M": 2.0}.get(text)
        if preference is None:
            return None, UNPARSEABLE, text
        return (3.0 - preference if swap else preference), OK, text

    def _single(self, items):
        out = []
        for instruction, output in items:
            body = {
                "messages": [
                    {"role": "system", "content": SINGLE_SYSTEM},
                    {"role": "user", "content": SINGLE_USER.format(question=instruction, answer=output)},
                ],
                "max_tokens": self.config.max_tokens,
            }
            response = self._post(body)
            if response is None:
                out.append((None, FAILED, ""))
                continue
            text = ((response.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
            rating = parse_rating(text)
            out.append((rating, OK, text) if rating != -1.0 else (None, UNPARSEABLE, text))
        return out

    def _post(self, body: dict) -> dict | None:
        """The parsed response, retrying 429/5xx/timeouts with exponential backoff; None when it gives up."""
        body = {"model": self.config.model, "temperature": 0, "seed": self.config.seed, **body}
        for attempt in range(self.config.max_retries + 1):
            delay = self.config.retry_backoff_s * (2**attempt)
            try:
                response = self._client.post(self._url, json=body)
            except httpx.TimeoutException:
                log.warning("judge request timed out after %.1fs (attempt %d)", self.config.timeout_s, attempt + 1)
            except httpx.TransportError as exc:
                log.warning("judge request failed: %s (attempt %d)", type(exc).__name__, attempt + 1)
            else:
                status = response.status_code
                if status in (401, 403):
                    raise JudgeError(
                        f"{self.config.base_url} refused the API key (HTTP {status}); check {self.config.api_key_env}"
                    )
                if status == 404:
                    raise JudgeError(
                        f"{self._url} or model {self.config.model!r} not found (HTTP 404); check judge.base_url and judge.model"
                    )
                if status < 400:
                    try:
                        return response.json()
                    except ValueError:
                        log.warning("judge endpoint returned a body that is not JSON (HTTP %d)", status)
                        return None
                if status != 429 and status < 500:
                    log.warning("judge endpoint rejected a request (HTTP %d): %s", status, response.text[:200])
                    return None
                retry_after = response.headers.get("retry-after")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    delay = min(float(retry_after), 60.0)
                log.warning("judge endpoint answered HTTP %d (attempt %d)", status, attempt + 1)
            if attempt < self.config.max_retries:
                time.sleep(delay * (1.0 + 0.1 * random.random()))
        log.warning("judge request gave up after %d attempts", self.config.max_retries + 1)
        return None


def _preference_from_logprobs(logprobs: dict | None) -> float | None:
    """1 + P("M" | "m" or "M") from the first generated token's top log-probs, None if neither is there."""
    content = (logprobs or {}).get("content") or []
    if not content:
        return None
    found: dict[str, float] = {}
    for entry in content[0].get("top_logprobs") or [content[0]]:
        token = (entry.get("token") or "").strip()
        if token in ("m", "M") and token not in found:
            found[token] = float(entry["logprob"])
    if not found:
        return None
    lp_m, lp_big = found.get("m", -math.inf), found.get("M", -math.inf)
    top = max(lp_m, lp_big)
    p_big = math.exp(lp_big - top) / (math.exp(lp_m - top) + math.exp(lp_big - top))
    return 1.0 + p_big


def make_judge(config: JudgeConfig, cache_dir: str | os.PathLike | None) -> Judge:
    """The judge `config` describes, caching its verdicts under `cache_dir` (None: no cache)."""
    if config.kind == "oracle":
        return OracleJudge(cache_dir)
    if config.kind == "reward-model":
        if not config.model:
            raise ConfigError("the reward-model judge needs judge.model: a local or s3:// sequence-classification checkpoint")
        return RewardModelJudge(config.model, cache_dir, batch_size=config.batch_size)
    return OpenAIJudge(config, cache_dir)
