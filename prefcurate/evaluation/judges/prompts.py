"""The judges' prompt templates and the single-grade parser (AlpacaEval's and MT-Bench's own)."""

from __future__ import annotations

import hashlib
import re

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


def templates_digest() -> str:
    """Identity of the templates: part of the openai judge's cache key, so editing one re-judges."""
    return hashlib.sha256((PAIRWISE_SYSTEM + PAIRWISE_USER + SINGLE_SYSTEM + SINGLE_USER).encode()).hexdigest()
