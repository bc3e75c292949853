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

from typing import Iterator, get_args

import pandas as pd
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl.data_utils import common_prefix_length
from trl.trainer.dpo_trainer import DataCollatorForPreference

from prefcurate.config import LossType
from prefcurate.errors import DataError, ScoringError
from prefcurate.progress import track

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
    """The pairs with token id columns added (in memory; no cache files); pairs tokenized already are returned as they are."""
    if "prompt_ids" in pairs.column_names:
        return pairs
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


ID_KEYS = ("prompt_ids", "chosen_ids", "rejected_ids")


class PreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator with the same output built in a few tensor operations.

    TRL's `torch_call` makes three tensors per sequence and pads them in Python; on a small
    model that is a tenth of a scoring pass. Examples with only the id keys and no
    `pad_to_multiple_of` take the vectorised path (a test pins it equal to TRL's, both
    truncation modes); anything else goes to TRL's own code.
    """

    def torch_call(self, examples: list[dict]) -> dict:
        if self.pad_to_multiple_of is not None or any(set(e) - set(ID_KEYS) for e in examples):
            return super().torch_call(examples)
        if self.truncation_mode not in ("keep_start", "keep_end"):
            return super().torch_call(examples)  # TRL raises its own error
        seqs = [e["prompt_ids"] + e[k] for k in ("chosen_ids", "rejected_ids") for e in examples]
        starts = torch.tensor([len(e["prompt_ids"]) for e in examples] * 2)
        lengths = torch.tensor([len(q) for q in seqs])
        if self.max_length is not None:
            if self.truncation_mode == "keep_start":
                seqs = [q[: self.max_length] for q in seqs]
            else:  # keep_end: the cut comes off the front, the completion start moves with it
                seqs = [q[-self.max_length :] for q in seqs]
                starts = starts - (lengths - self.max_length).clamp(min=0)
            lengths = lengths.clamp(max=self.max_length)
        width = int(lengths.max()) if len(seqs) else 0
        position = torch.arange(width)
        attention = position < lengths[:, None]
        input_ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        input_ids[attention] = torch.tensor([t for q in seqs for t in q], dtype=torch.long)
        completion = attention & (position >= starts[:, None])
        return {"input_ids": input_ids, "attention_mask": attention.long(), "completion_mask": completion.long()}


def make_collator(
    tokenizer: PreTrainedTokenizerBase, max_length: int | None, truncation_mode: str
) -> DataCollatorForPreference:
    """TRL's preference collator (its output, built faster): chosen rows then rejected rows, right padded and truncated."""
    return PreferenceCollator(pad_token_id=pad_token_id(tokenizer), max_length=max_length, truncation_mode=truncation_mode)


def truncation_flags(example: dict, max_length: int | None) -> bool:
    """True when TRL's collator cuts the prompt + chosen or prompt + rejected sequence."""
    if max_length is None:
        return False
    n = len(example["prompt_ids"])
    return n + len(example["chosen_ids"]) > max_length or n + len(example["rejected_ids"]) > max_length


def sequence_tokens(example: dict, max_length: int | None) -> int:
    """Tokens of the longer of the pair's two sequences after TRL's truncation (its padded width)."""
    n = len(example["prompt_ids"]) + max(len(example["chosen_ids"]), len(example["rejected_ids"]))
    return n if max_length is None else min(n, max_length)


def batch_plan(widths: list[int], batch_size: int, max_tokens_per_batch: int | None = None) -> list[tuple[int, int]]:
    """Contiguous [start, stop) pair ranges: at most `batch_size` pairs and, with a budget, at most
    `max_tokens_per_batch` padded tokens (2 sequences × pairs × widest sequence) per batch.

    A pair alone over the budget still gets a batch of its own (it cannot be split).
    """
    plan, start, widest = [], 0, 0
    for i, width in enumerate(widths):
        wider = max(widest, width)
        full = i - start >= batch_size
        over = max_tokens_per_batch is not None and 2 * (i - start + 1) * wider > max_tokens_per_batch
        if i > start and (full or over):
            plan.append((start, i))
            start, wider = i, width
        widest = wider
    if start < len(widths):
        plan.append((start, len(widths)))
    return plan


def iter_batches(
    tokenized: Dataset,
    batch_size: int,
    collator: DataCollatorForPreference,
    desc: str | None = None,
    max_tokens_per_batch: int | None = None,
) -> Iterator[tuple[list[str], dict, list[dict]]]:
    """(pair ids, collated tensors, raw examples) per batch, in dataset order.

    The columns are read once, in one Arrow conversion (not a dataset slice per batch, nor a
    row-by-row column read: on a small model that Python work costs as much as the forward);
    batches follow `batch_plan`.
    """
    columns = tokenized.select_columns(["pair_id", "prompt_ids", "chosen_ids", "rejected_ids"])[:]  # one Arrow read
    examples = [
        {"prompt_ids": p, "chosen_ids": c, "rejected_ids": r}
        for p, c, r in zip(columns["prompt_ids"], columns["chosen_ids"], columns["rejected_ids"])
    ]
    widths = [sequence_tokens(e, collator.max_length) for e in examples]
    plan = batch_plan(widths, batch_size, max_tokens_per_batch)
    for start, stop in track(plan, desc=desc):
        rows = examples[start:stop]
        yield columns["pair_id"][start:stop], collator(rows), rows


# Logits (answer positions × vocabulary) whose projection and log-softmax are computed at
# once: on a large-vocabulary model the logits (and, under jvp, their tangent) are the
# largest tensors of scoring, so they are never formed for a whole batch — 2**24 logits
# (64 MB in fp32) are ~110 positions of Qwen2's 151,936 words. On a small vocabulary the
# whole batch is one chunk: one head call per batch, no per-position Python loop.
HEAD_CHUNK_LOGITS = 2**24


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """Half-precision logits go up to fp32 for the log-softmax; float64 stays float64 (the tests' reference)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class AnswerLogps(torch.nn.Module):
    """Summed completion log-probs of a causal LM, with its output head applied at answer positions only.

    Runs the model's decoder (`get_decoder()`) over the batch, gathers the final hidden
    states at the positions that predict a completion token, and applies the output
    projection (`get_output_embeddings()`) and log-softmax there, at most `HEAD_CHUNK_LOGITS`
    logits at a time: prompt and padding positions never meet the vocabulary. A module wrapping
    the model, so `torch.func.functional_call` can swap the model's parameters in (keys
    prefixed `model.`).

    Two forms of the answer positions, both fixed inputs (computed before any transform):
    `answer_tokens` packs the batch's answer tokens into one list (no padding reaches the
    head; `jvp` and `grad`), `answer_positions` pads each row to the batch's longest answer
    (fixed shapes per row, so per-pair `vmap` works too).
    """

    def __init__(self, model: torch.nn.Module, head_chunk: int | None = None, checkpoint_head: bool = False):
        super().__init__()
        self.model = model
        self.head_chunk = head_chunk or HEAD_CHUNK_LOGITS
        self.checkpoint_head = checkpoint_head
        config = getattr(model, "config", None)
        self.logit_scale = getattr(config, "logit_scale", None)
        self.softcap = getattr(config, "final_logit_softcapping", None)

    @staticmethod
    def answer_positions(input_ids: torch.Tensor, completion_mask: torch.Tensor):
        """(positions, labels, valid): per row, the indices t whose hidden state predicts completion token t+1."""
        mask = completion_mask[:, 1:].bool()
        width = max(int(mask.sum(-1).max()), 1) if mask.numel() else 1
        # stable sort puts the answer positions first, in order; the rest is padding (valid = False)
        order = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices[:, :width]
        valid = mask.gather(1, order)
        labels = input_ids[:, 1:].gather(1, order)
        return order, labels, valid

    @staticmethod
    def answer_tokens(input_ids: torch.Tensor, completion_mask: torch.Tensor):
        """(positions, labels, rows): the batch's answer tokens packed in one list, in row order.

        `positions` index the flattened (rows × length) hidden states whose state predicts
        completion token t+1, `labels` are those tokens, `rows` the row each belongs to.
        """
        mask = completion_mask[:, 1:].bool()
        rows, cols = mask.nonzero(as_tuple=True)
        return rows * input_ids.shape[1] + cols, input_ids[:, 1:][rows, cols], rows

    def _head(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # one contiguous [positions × hidden] matrix: a strided 3-D slice sends the projection
        # (and its tangent) down a batched-matmul path that is several times slower
        logits = self.model.get_output_embeddings()(hidden.reshape(-1, hidden.shape[-1])).view(*labels.shape, -1)
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        logits = at_least_fp32(logits)
        return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings whose `padding_idx` rows are constants, under jvp as under autograd.

        nn.Embedding's backward gives its padding row no gradient, but forward-mode AD does
        carry that row's tangent. Harmless when the pad token is only padding; SmolLM2's pad
        token is `<|im_end|>`, in every turn of its chat template, and jvp IF then differed from
        the gradient TRL trains with by 0.2 % (of the embedding's share) on that model.
        """
        embedding = self.model.get_input_embeddings()
        embeds = embedding(input_ids)
        if getattr(embedding, "padding_idx", None) is None:
            return embeds
        return torch.where((input_ids == embedding.padding_idx).unsqueeze(-1), embeds.detach(), embeds)

    def _chunk_logps(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_head and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._head, h, y, use_reentrant=False)
        return self._head(h, y)

    def _vocab(self) -> int:
        head = self.model.get_output_embeddings()
        return head.weight.shape[0] if hasattr(head, "weight") else self.model.config.vocab_size

    def forward(self, input_ids, positions, labels, valid_or_rows):
        """Per-row summed log-probs; `positions, labels, valid_or_rows` from `answer_tokens` (1-D) or
        `answer_positions` (2-D)."""
        hidden = self.model.get_decoder()(inputs_embeds=self._embed(input_ids), use_cache=False).last_hidden_state
        if positions.dim() == 1:
            return self._packed(hidden, positions, labels, valid_or_rows)
        valid = valid_or_rows
        hidden = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # (rows, answer, H)
        step = max(1, self.head_chunk // (max(hidden.shape[0], 1) * self._vocab()))  # answer columns per chunk
        total = None
        for start in range(0, hidden.shape[1], step):
            h, y, v = hidden[:, start : start + step], labels[:, start : start + step], valid[:, start : start + step]
            token_logps = self._chunk_logps(h, y)
            part = torch.where(v, token_logps, torch.zeros_like(token_logps)).sum(-1)
            total = part if total is None else total + part
        return total

    def _packed(self, hidden, positions, labels, rows):
        flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)  # (answer tokens, H)
        step = max(1, self.head_chunk // self._vocab())  # answer tokens per chunk
        parts = [self._chunk_logps(flat[i : i + step], labels[i : i + step]) for i in range(0, len(positions), step)]
        token_logps = torch.cat(parts) if parts else flat.new_zeros(0, dtype=torch.float32)
        return token_logps.new_zeros(hidden.shape[0]).index_add(0, rows, token_logps)


def sequence_logps(
    model: torch.nn.Module, input_ids: torch.Tensor, completion_mask: torch.Tensor, **kwargs
) -> torch.Tensor:
    """Summed log-prob of the completion tokens of each row (differentiable, torch.func-safe)."""
    return AnswerLogps(model, **kwargs)(input_ids, *AnswerLogps.answer_tokens(input_ids, completion_mask))


def completion_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Sum over completion positions of log p(token | prefix), from full logits (the reference the tests compare to)."""
    logits = at_least_fp32(logits[:, :-1])
    labels = input_ids[:, 1:]
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    mask = completion_mask[:, 1:].bool()
    return torch.where(mask, token_logps, torch.zeros_like(token_logps)).sum(-1)


def pair_logps(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed log-probs of a collated batch."""
    logps = sequence_logps(model, batch["input_ids"].to(_device(model)), batch["completion_mask"].to(_device(model)))
    return logps.chunk(2, dim=0)


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    *,
    loss_type: LossType = "sigmoid",
    lengths: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair loss ℓ of TRL 1.16's DPO `loss_type` and the implicit reward margin β·m (DESIGN §1).

    With Δ_w = log π_θ(y_w|x) − log π_ref(y_w|x), Δ_l likewise and m = Δ_w − Δ_l:
    sigmoid (DPO) −log σ(β·m); hinge (SLiC) max(0, 1 − β·m); ipo (Δ_w/|y_w| − Δ_l/|y_l| − 1/(2β))²,
    |y| the completion tokens scored after truncation (`lengths`, as `chosen_len`/`rejected_len`;
    TRL normalises IPO by them, at least 1). These are TRL's per-sequence losses, so IF and
    LossDiff are taken of the loss the DPO stages train with. The margin is β·m for every loss
    type: TRL's `rewards/margins`, the paper's IRM, a property of the model, not of the loss.
    """
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    if loss_type == "sigmoid":
        return -F.logsigmoid(margin), margin
    if loss_type == "hinge":
        return torch.relu(1 - margin), margin
    if loss_type == "ipo":
        if lengths is None:
            raise ScoringError("the ipo loss needs the completion lengths of each pair (chosen_len, rejected_len)")
        chosen_len, rejected_len = (n.to(margin.dtype).clamp(min=1.0) for n in lengths)
        delta = (chosen - ref_chosen) / chosen_len - (rejected - ref_rejected) / rejected_len
        return (delta - 1 / (2 * beta)) ** 2, margin
    raise ScoringError(f"unknown loss_type {loss_type!r}; use one of {list(get_args(LossType))}")


def frame_lengths(logps: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen_len, rejected_len) of a `compute_logps` frame: `dpo_loss`'s `lengths`."""
    return torch.tensor(logps["chosen_len"].to_numpy()), torch.tensor(logps["rejected_len"].to_numpy())


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
    if all(bool(torch.isfinite(v).all()) for v in tensors.values()):
        return
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


@torch.inference_mode()  # no autograd bookkeeping at all (the results only become numbers in a frame)
def compute_logps(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Dataset,
    *,
    batch_size: int = 64,
    max_length: int | None = 512,
    truncation_mode: str = "keep_start",
    max_tokens_per_batch: int | None = None,
    desc: str | None = "log-probs",
) -> pd.DataFrame:
    """Summed chosen/rejected response log-probs of every pair, keyed by pair_id.

    `chosen_len`/`rejected_len` count the completion tokens actually scored (after
    truncation); `truncated` marks pairs TRL's collator cuts. A pair whose prompt alone
    fills `max_length` keeps no completion token (lengths 0, log-probs 0): TRL drops such
    pairs from training, and the zero lengths make them visible here. Batches hold at most
    `batch_size` pairs and, when set, `max_tokens_per_batch` padded tokens.
    """
    was_training = model.training
    model.eval()
    tokenized = tokenize_pairs(pairs, tokenizer)
    collator = make_collator(tokenizer, max_length, truncation_mode)
    head = AnswerLogps(model)
    device = _device(model)
    ids_all, chosen_all, rejected_all, lengths_all, truncated = [], [], [], [], []
    try:
        for ids, batch, examples in iter_batches(tokenized, batch_size, collator, desc, max_tokens_per_batch):
            input_ids, mask = batch["input_ids"].to(device), batch["completion_mask"].to(device)
            chosen, rejected = head(input_ids, *AnswerLogps.answer_tokens(input_ids, mask)).chunk(2, dim=0)
            check_finite(ids, chosen_logps=chosen, rejected_logps=rejected)
            lengths = batch["completion_mask"].sum(-1)
            n = len(ids)
            ids_all += ids
            chosen_all.append(chosen.cpu())
            rejected_all.append(rejected.cpu())
            lengths_all.append(lengths.view(2, n))
            truncated += [truncation_flags(e, max_length) for e in examples]
    finally:
        model.train(was_training)
    lengths = torch.cat(lengths_all, dim=1).numpy().astype("int64")
    return pd.DataFrame(  # columns in LOGPS_COLUMNS order (no reindexing copy)
        {
            "pair_id": ids_all,
            "chosen_logps": torch.cat(chosen_all).double().numpy(),
            "rejected_logps": torch.cat(rejected_all).double().numpy(),
            "chosen_len": lengths[0],
            "rejected_len": lengths[1],
            "truncated": truncated,
        },
        columns=LOGPS_COLUMNS,
    )
