"""An OpenAI-compatible chat endpoint as judge (AlpacaEval's weighted classifier, MT-Bench grading).

Whatever the endpoint answers — a timeout, an HTTP error, an HTML page, JSON of the wrong
shape, malformed log-probs, text that names no verdict — becomes a FAILED or UNPARSEABLE
verdict for that item with its reason; only a refused key, a wrong URL (401/403/404) or an
endpoint that refuses the log-probs asked for (llama-cpp-python's server started with
`--logits_all false` answers HTTP 500 to each such request) stops the evaluation, as a
`JudgeError`. The API key is only ever sent as a header: every piece of a reply that reaches
a reason, a log line or the cache has the key masked first.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import time
from typing import TYPE_CHECKING, Any

import httpx

from prefcurate import io
from prefcurate.errors import ConfigError, JudgeError
from prefcurate.evaluation.judges.base import FAILED, UNPARSEABLE, Judge, Verdict
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

MAX_REPLY_BYTES = 1 << 20  # a judge's reply is a few tokens; anything this large is not one
SNIPPET_CHARS = 120  # how much of a bad reply a reason quotes
MASK = "[redacted]"


class NoVerdict(Exception):
    """Raised inside a request or a parse: this item gets `verdict` (FAILED or UNPARSEABLE)."""

    def __init__(self, status: str, reason: str, detail: str):
        super().__init__(detail)
        self.verdict = Verdict(None, status, reason=reason, detail=detail)


class OpenAIJudge(Judge):
    """An OpenAI-compatible chat-completions endpoint, called over HTTP with httpx.

    Pairwise follows AlpacaEval's weighted classifier: the two outputs go into the prompt in
    a seeded random order (decided per item by a hash, so it does not depend on batch order or
    concurrency), the verdict is P("M") from the first token's log-probs when the endpoint
    returns them, else the text "m"/"M", and is mapped back when the order was swapped.
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
        self._key_text = key
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
            "top_logprobs": c.top_logprobs,
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

    # -- verdicts ---------------------------------------------------------------------------

    def _pairwise(self, items):
        return [self._verdict(self._pairwise_one, *item) for item in items]

    def _single(self, items):
        return [self._verdict(self._single_one, *item) for item in items]

    @staticmethod
    def _verdict(judge_one, *item) -> Verdict:
        try:
            return judge_one(*item)
        except NoVerdict as no:
            return no.verdict

    def _pairwise_one(self, instruction: str, output_1: str, output_2: str) -> Verdict:
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
            body.update(logprobs=True, top_logprobs=self.config.top_logprobs)
        choice = _first_choice(self._post(body))
        text = self._redact(_content(choice).strip())
        preference = _preference_from_logprobs(choice.get("logprobs"))
        if preference is None:
            preference = {"m": 1.0, "M": 2.0}.get(text)
        if preference is None:
            raise NoVerdict(UNPARSEABLE, "no_verdict", f"the reply {self._snippet(text)!r} names neither m nor M")
        return Verdict(3.0 - preference if swap else preference, raw=text)

    def _single_one(self, instruction: str, output: str) -> Verdict:
        body = {
            "messages": [
                {"role": "system", "content": SINGLE_SYSTEM},
                {"role": "user", "content": SINGLE_USER.format(question=instruction, answer=output)},
            ],
            "max_tokens": self.config.max_tokens,
        }
        text = self._redact(_content(_first_choice(self._post(body))))
        rating = parse_rating(text)
        if rating == -1.0:
            raise NoVerdict(UNPARSEABLE, "no_rating", f"the reply {self._snippet(text)!r} has no [[rating]] in 1-10")
        return Verdict(rating, raw=text)

    # -- HTTP -------------------------------------------------------------------------------

    def _post(self, body: dict) -> Any:
        """The endpoint's JSON reply, retrying 429/5xx/timeouts with exponential backoff; NoVerdict(FAILED)
        when it gives up or the reply is no JSON. 401/403/404, and an error that names the log-probs asked for, raise
        JudgeError: no later request can succeed."""
        body = {"model": self.config.model, "temperature": 0, "seed": self.config.seed, **body}
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            delay = self.config.retry_backoff_s * (2**attempt)
            try:
                status, headers, content = self._send(body)
            except httpx.TimeoutException:
                problem = ("timeout", f"no complete reply within {self.config.timeout_s:g} s")
                log.warning("judge request timed out after %.1fs (attempt %d)", self.config.timeout_s, attempt + 1)
            except httpx.HTTPError as exc:  # connection refused or reset, bad encoding, protocol errors
                problem = ("transport", f"the request failed: {type(exc).__name__}")
                log.warning("judge request failed: %s (attempt %d)", type(exc).__name__, attempt + 1)
            else:
                if status in (401, 403):
                    raise JudgeError(
                        f"{self.config.base_url} refused the API key (HTTP {status}); check {self.config.api_key_env}"
                    )
                if status == 404:
                    raise JudgeError(
                        f"{self._url} or model {self.config.model!r} not found (HTTP 404); check judge.base_url and judge.model"
                    )
                if status >= 400 and body.get("logprobs") and b"logprobs" in content.lower():
                    raise JudgeError(
                        f"{self.config.base_url} cannot return log-probs (HTTP {status}: {self._snippet(content)!r}); "
                        "set judge.logprobs=false to judge from the reply's text"
                    )
                if status < 400:
                    try:
                        return json.loads(content)
                    except (ValueError, RecursionError):
                        raise NoVerdict(FAILED, "not_json", f"HTTP {status} with a body that is not JSON: "
                                                            f"{self._snippet(content)!r}") from None
                problem = ("http_error", f"HTTP {status}: {self._snippet(content)!r}")
                if status != 429 and status < 500:
                    raise NoVerdict(FAILED, *problem)
                retry_after = headers.get("retry-after")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    delay = min(float(retry_after), 60.0)
                log.warning("judge endpoint answered HTTP %d (attempt %d)", status, attempt + 1)
            if attempt < self.config.max_retries:
                time.sleep(delay * (1.0 + 0.1 * random.random()))
        raise NoVerdict(FAILED, problem[0], f"{problem[1]} (gave up after {attempts} attempts)")

    def _send(self, body: dict) -> tuple[int, httpx.Headers, bytes]:
        """One request: status, headers and body, read within `timeout_s` in all (httpx's own timeout
        is per read, so a reply that trickles in would never end) and at most MAX_REPLY_BYTES."""
        deadline = time.monotonic() + self.config.timeout_s
        with self._client.stream("POST", self._url, json=body) as response:
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise NoVerdict(FAILED, "too_large", f"HTTP {response.status_code} reply over {MAX_REPLY_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("the reply did not end within the timeout")
                chunks.append(chunk)
            return response.status_code, response.headers, b"".join(chunks)

    # -- secrets ----------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        """`text` with the API key masked: an endpoint may echo the Authorization header."""
        return text.replace(self._key_text, MASK)

    def _snippet(self, content: bytes | str) -> str:
        """The start of a reply on one line, key masked before it is cut (a cut could keep part of it)."""
        text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
        text = re.sub(r"\s+", " ", self._redact(text)).strip()
        return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "…"


# -- reading a chat-completions reply (any JSON at all may arrive) ---------------------------------


def _first_choice(reply: Any) -> dict:
    """`reply["choices"][0]`, or NoVerdict naming what is wrong with the reply's shape."""
    if not isinstance(reply, dict):
        raise NoVerdict(UNPARSEABLE, "bad_shape", f"the reply is a JSON {_json_type(reply)}, not an object")
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise NoVerdict(UNPARSEABLE, "bad_shape", f"`choices` is a JSON {_json_type(choices)}, not a list of objects")
    return choices[0]


def _content(choice: dict) -> str:
    """The message text of a choice ("" when it is null)."""
    message = choice.get("message")
    if not isinstance(message, dict):
        raise NoVerdict(UNPARSEABLE, "bad_shape", f"the choice's `message` is a JSON {_json_type(message)}, not an object")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise NoVerdict(UNPARSEABLE, "bad_shape", f"the message content is a JSON {_json_type(content)}, not text")
    return content or ""


def _preference_from_logprobs(logprobs: Any) -> float | None:
    """1 + P("M" | "m" or "M") from the first generated token's top log-probs; None when the reply has
    none or neither token is among them; NoVerdict when they are malformed (a null log-prob, say)."""
    if logprobs is None:
        return None
    if not isinstance(logprobs, dict):
        raise NoVerdict(UNPARSEABLE, "bad_logprobs", f"`logprobs` is a JSON {_json_type(logprobs)}, not an object")
    content = logprobs.get("content")
    if not content:
        return None
    if not isinstance(content, list) or not isinstance(content[0], dict):
        raise NoVerdict(UNPARSEABLE, "bad_logprobs", "`logprobs.content` is not a list of token objects")
    entries = content[0].get("top_logprobs") or [content[0]]
    if not isinstance(entries, list):
        raise NoVerdict(UNPARSEABLE, "bad_logprobs", f"`top_logprobs` is a JSON {_json_type(entries)}, not a list")
    found: dict[str, float] = {}
    for entry in entries:
        token = entry.get("token") if isinstance(entry, dict) else None
        token = token.strip() if isinstance(token, str) else None
        if token not in ("m", "M") or token in found:
            continue
        value = entry.get("logprob")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            what = "not finite" if isinstance(value, float) else f"a JSON {_json_type(value)}, not a number"
            raise NoVerdict(UNPARSEABLE, "bad_logprobs", f"the log-prob of {token!r} is {what}")
        found[token] = float(value)
    if not found:
        return None
    lp_m, lp_big = found.get("m", -math.inf), found.get("M", -math.inf)
    top = max(lp_m, lp_big)
    p_big = math.exp(lp_big - top) / (math.exp(lp_m - top) + math.exp(lp_big - top))
    return 1.0 + p_big


def _json_type(value: Any) -> str:
    """What JSON calls the type of a parsed value (for reasons)."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
