"""An OpenAI-compatible chat endpoint as judge (AlpacaEval's weighted classifier, MT-Bench grading)."""

from __future__ import annotations

import logging
import math
import os
import random
import time
from typing import TYPE_CHECKING

import httpx

from prefcurate import io
from prefcurate.errors import ConfigError, JudgeError
from prefcurate.evaluation.judges.base import FAILED, OK, UNPARSEABLE, Judge
from prefcurate.evaluation.judges.prompts import (
    PAIRWISE_SYSTEM,
    PAIRWISE_USER,
    SINGLE_SYSTEM,
    SINGLE_USER,
    parse_rating,
    templates_digest,
)

if TYPE_CHECKING:
    from prefcurate.config import JudgeConfig

log = logging.getLogger("prefcurate.evaluation.judges")


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
            "templates": templates_digest(),
        }

    @property
    def name(self) -> str:
        return f"openai:{self.config.model}"

    @classmethod
    def from_config(cls, config: JudgeConfig, cache_dir: str | os.PathLike | None) -> "OpenAIJudge":
        return cls(config, cache_dir)

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
