"""Summed response log-probs of preference pairs, tokenized and truncated exactly as TRL's DPO.

Every score (IRM, LossDiff, IF) and the reference log-probs fed to DPO training come from
here, so they must be the numbers TRL's DPOTrainer would compute for the same pair: the
prompt is rendered with the chat template and the generation prompt, the completion is
what follows the common prefix of prompt and prompt + completion, and sequences are cut
to `max_length` by TRL's own collator. Batches are right-padded and run without an
attention mask: with a causal model and right padding no real token attends to a pad, so
the log-probs are the masked ones, and `torch.func` (jvp, vmap) works with any attention
implementation (DESIGN §8).
"""

from __future__ import annotations

import math
from typing import Iterator

import pandas as pd
import torch
import torch.nn.functional as F
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl.data_utils import common_prefix_length
from trl.trainer.dpo_trainer import DataCollatorForPreference

from prefcurate.errors import DataError, ScoringError

LOGPS_COLUMNS = ["pair_id", "chosen_logps", "rejected_logps", "chosen_len", "rejected_len", "truncated"]


def _chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list, **kwargs) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    return list(out["input_ids"])


def tokenize_pair(tokenizer: PreTrainedTokenizerBase, example: dict) -> dict:
    """`prompt_ids`, `chosen_ids`, `rejected_ids` of one conversational pair, as TRL's DPO tokenizes it."""
    prompt, chosen, rejected = example["prompt"], example["chosen"], example["rejected"]
    if not (isinstance(prompt, list) and isinstance(chosen, list) and isinstance(rejected, list)):
        raise DataError(
            f"pair {example.get('pair_id')!r} is not conversational (prompt/chosen/rejected must be message lists); "
            "load the data through prefcurate.data.pairs so it is converted to the pair schema"
        )
    prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
    prompt_chosen = _chat_ids(tokenizer, prompt + chosen)
    prompt_rejected = _chat_ids(tokenizer, prompt + rejected)
    # TRL starts the completion where the prompt and prompt + completion diverge.
    n = min(common_prefix_length(prompt_ids, prompt_chosen), common_prefix_length(prompt_ids, prompt_rejected))
    return {"prompt_ids": prompt_ids[:n], "chosen_ids": prompt_chosen[n:], "rejected_ids": prompt_rejected[n:]}


def tokenize_pairs(pairs: Dataset, tokenizer: PreTrainedTokenizerBase) -> Dataset:
    """The pairs with token id columns added (in memory; no cache files)."""
    if tokenizer.chat_template is None:
        raise DataError("the tokenizer has no chat template; set model.chat_template in the config")
    if len(pairs) == 0:
        raise DataError("no pairs to score; check the data stage's row counts")
    return pairs.map(lambda ex: tokenize_pair(tokenizer, ex), desc="tokenizing pairs", keep_in_memory=True)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The pad id TRL uses: the tokenizer's pad token, else its EOS token."""
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pid is None:
        raise DataError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
    return int(pid)


def make_collator(
    tokenizer: PreTrainedTokenizerBase, max_length: int | None, truncation_mode: str
) -> DataCollatorForPreference:
    """TRL's own preference collator: chosen rows then rejected rows, right padded and truncated."""
    return DataCollatorForPreference(
        pad_token_id=pad_token_id(tokenizer), max_length=max_length, truncation_mode=truncation_mode
    )


def truncation_flags(example: dict, max_length: int | None) -> bool:
    """True when TRL's collator cuts the prompt + chosen or prompt + rejected sequence."""
    if max_length is None:
        return False
    n = len(example["prompt_ids"])
    return n + len(example["chosen_ids"]) > max_length or n + len(example["rejected_ids"]) > max_length


def iter_batches(
    tokenized: Dataset, batch_size: int, collator: DataCollatorForPreference, desc: str | None = None
) -> Iterator[tuple[list[str], dict, list[dict]]]:
    """(pair ids, collated tensors, raw examples) per batch, in dataset order."""
    n = len(tokenized)
    steps = range(0, n, batch_size)
    for start in tqdm(steps, desc=desc, disable=desc is None, total=math.ceil(n / batch_size)):
        rows = tokenized.select(range(start, min(start + batch_size, n)))
        examples = [
            {"prompt_ids": r["prompt_ids"], "chosen_ids": r["chosen_ids"], "rejected_ids": r["rejected_ids"]}
            for r in rows
        ]
        yield list(rows["pair_id"]), collator(examples), examples


def sequence_logps(model: torch.nn.Module, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-prob of the completion tokens of each row (differentiable, torch.func-safe)."""
    return completion_logps(model(input_ids=input_ids, use_cache=False).logits, input_ids, completion_mask)


def completion_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Sum over completion positions of log p(token | prefix), from the model's logits."""
    logits = logits[:, :-1].float()
    labels = input_ids[:, 1:]
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    mask = completion_mask[:, 1:].bool()
    return torch.where(mask, token_logps, torch.zeros_like(token_logps)).sum(-1)


def pair_logps(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed log-probs of a collated batch."""
    logps = sequence_logps(model, batch["input_ids"].to(_device(model)), batch["completion_mask"].to(_device(model)))
    return logps.chunk(2, dim=0)


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss −log σ(β·m) and implicit reward margin β·m (DESIGN §1)."""
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return -F.logsigmoid(margin), margin


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def reference_index(ref_logps: pd.DataFrame) -> pd.DataFrame:
    """The stored reference frame indexed by pair_id, once (a pair stored twice must agree with itself)."""
    if ref_logps.index.name == "pair_id":
        return ref_logps
    frame = ref_logps[["pair_id", "chosen_logps", "rejected_logps"]].drop_duplicates()
    dupes = frame["pair_id"][frame["pair_id"].duplicated()].unique().tolist()
    if dupes:
        raise ScoringError(
            f"reference log-probs disagree for {len(dupes)} pair ids stored twice (e.g. {dupes[:5]}); "
            "recompute them with one reference model"
        )
    return frame.set_index("pair_id")


def reference_tensors(ref_logps: pd.DataFrame, pair_ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ref chosen, ref rejected) log-probs for `pair_ids`, read from a stored frame keyed by pair_id."""
    indexed = reference_index(ref_logps)
    missing = [p for p in pair_ids if p not in indexed.index]
    if missing:
        raise ScoringError(
            f"reference log-probs missing for {len(missing)} pairs (e.g. {missing[:5]}); "
            "recompute them with logps.compute_logps on the SFT model for this pool"
        )
    rows = indexed.loc[pair_ids]
    return (
        torch.tensor(rows["chosen_logps"].to_numpy(), dtype=torch.float32),
        torch.tensor(rows["rejected_logps"].to_numpy(), dtype=torch.float32),
    )


def check_finite(pair_ids: list[str], **tensors: torch.Tensor) -> None:
    """Fail with the offending pair ids when any per-pair value is NaN or infinite."""
    bad: set[str] = set()
    names: set[str] = set()
    for name, values in tensors.items():
        flags = ~torch.isfinite(values.detach().cpu())
        for i in torch.nonzero(flags).flatten().tolist():
            bad.add(pair_ids[i])
            names.add(name)
    if bad:
        ids = sorted(bad)
        raise ScoringError(
            f"non-finite {', '.join(sorted(names))} for {len(ids)} pairs: {ids[:10]}; "
            "check these pairs and the model (a diverged checkpoint gives NaN everywhere)"
        )


@torch.no_grad()
def compute_logps(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Dataset,
    *,
    batch_size: int = 64,
    max_length: int | None = 512,
    truncation_mode: str = "keep_start",
    desc: str | None = "log-probs",
) -> pd.DataFrame:
    """Summed chosen/rejected response log-probs of every pair, keyed by pair_id.

    `chosen_len`/`rejected_len` count the completion tokens actually scored (after
    truncation); `truncated` marks pairs TRL's collator cuts. A pair whose prompt alone
    fills `max_length` keeps no completion token (lengths 0, log-probs 0): TRL drops such
    pairs from training, and the zero lengths make them visible here.
    """
    was_training = model.training
    model.eval()
    tokenized = pairs if "prompt_ids" in pairs.column_names else tokenize_pairs(pairs, tokenizer)
    collator = make_collator(tokenizer, max_length, truncation_mode)
    frames = []
    try:
        for ids, batch, examples in iter_batches(tokenized, batch_size, collator, desc):
            chosen, rejected = pair_logps(model, batch)
            check_finite(ids, chosen_logps=chosen, rejected_logps=rejected)
            lengths = batch["completion_mask"].sum(-1)
            n = len(ids)
            frames.append(
                pd.DataFrame(
                    {
                        "pair_id": ids,
                        "chosen_logps": chosen.cpu().double().numpy(),
                        "rejected_logps": rejected.cpu().double().numpy(),
                        "chosen_len": lengths[:n].numpy().astype("int64"),
                        "rejected_len": lengths[n:].numpy().astype("int64"),
                        "truncated": [truncation_flags(e, max_length) for e in examples],
                    }
                )
            )
    finally:
        model.train(was_training)
    return pd.concat(frames, ignore_index=True)[LOGPS_COLUMNS]
