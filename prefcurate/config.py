"""Typed configuration: one pydantic model per stage, composed into a run config.

The same models are Prefect flow parameters (rendered as forms in the UI), YAML files for
the CLI, and the flattened params logged to MLflow. Every threshold lives here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from prefcurate.errors import ConfigError
from prefcurate.evaluation.judges import JUDGES
from prefcurate.selection.rules import RULES

# No count or rate in a run is anywhere near this; a value beyond it is a typo that would crash (or
# run forever) hours later, so it is refused up front.
MAGNITUDE_LIMIT = 1e9


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, not silently ignored; numbers are finite
    and within MAGNITUDE_LIMIT."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="after")
    def _sane_numbers(self) -> "Section":
        for name in type(self).model_fields:
            value = getattr(self, name)
            values = value if isinstance(value, (tuple, list)) else [value]
            for v in values:
                if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) > MAGNITUDE_LIMIT:
                    raise ValueError(f"{name}={v} is beyond any sane setting (|value| <= {MAGNITUDE_LIMIT:g}); check the value")
        return self


class ModelSource(Section):
    uri: str = Field(description="SFT checkpoint: a local directory, a hub id (org/name) or s3://bucket/prefix.")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit) when `uri` is a hub id.")
    allow_pickle: bool = Field(default=False, description="Accept pickle (.bin/.pt) weights. Off: safetensors only.")
    trust_remote_code: bool = Field(default=False, description="Run code shipped with the checkpoint. Off unless you trust its author.")
    chat_template: str | None = Field(
        default=None,
        description="Jinja chat template (inline text or a path to a .jinja file) for tokenizers that lack one.",
    )


class DataSource(Section):
    pool_uri: str = Field(description="Preference pool: a hub dataset name, or a local / s3:// parquet, jsonl or json file.")
    split: str = Field(default="train", description="Split to read when `pool_uri` is a hub dataset.")
    validation_uri: str | None = Field(default=None, description="Validation preferences; when empty, carved from the pool.")
    validation_split: str = Field(default="test", description="Split to read when `validation_uri` is a hub dataset.")
    validation_fraction: float = Field(default=0.1, gt=0.0, lt=0.9, description="Share of pool prompts carved out as validation when no `validation_uri` is given.")
    eval_prompts_uri: str | None = Field(default=None, description="Held-out evaluation instructions (AlpacaEval-style json/jsonl/parquet with an `instruction` field).")
    max_prompt_chars: int = Field(default=4000, ge=1, description="Rows whose prompt text is longer are rejected (reason `prompt_too_long`).")
    seed: int = Field(default=0, description="Seed for the validation carve.")


class LoraSettings(Section):
    r: int = Field(default=8, ge=1, description="LoRA rank.")
    alpha: int = Field(default=16, ge=1, description="LoRA alpha.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], description="Modules that get adapters."
    )


# TRL's DPO loss types prefcurate scores with (the per-pair formulas: scoring.logps.dpo_loss).
LossType = Literal["sigmoid", "hinge", "ipo"]


class TrainingConfig(Section):
    beta: float = Field(default=0.5, gt=0.0, description="DPO β (also the scale of IRM); for ipo, IPO's regulariser τ.")
    loss_type: LossType = Field(
        default="sigmoid",
        description="Preference loss of every DPO stage and of the per-pair loss behind IF and LossDiff: sigmoid (DPO), "
        "hinge (SLiC), ipo (IPO, length-normalised as in TRL). IRM is the implicit reward margin whatever the loss.",
    )
    learning_rate: float = Field(default=2e-4, gt=0.0, description="DPO learning rate. The toy model over-optimises into junk above ~5e-4.")
    batch_size: int = Field(default=32, ge=1, description="Pairs per batch, all processes together (each of `num_processes` takes an equal share); an optimiser step takes `gradient_accumulation_steps` batches.")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="Optimiser steps accumulate this many batches.")
    warmup_epochs: float = Field(default=1.0, gt=0.0, description="Epochs of DPO from the SFT model on the whole pool (θ).")
    val_epochs: float = Field(default=1.0, gt=0.0, description="Epochs of DPO from θ on the validation set (θ_val).")
    final_epochs: float = Field(default=2.0, gt=0.0, description="Epochs of DPO from θ on the kept pairs (and on each baseline).")
    max_length: int | None = Field(default=512, ge=8, description="Token limit of prompt + completion; longer pairs are truncated (and counted).")
    truncation_mode: Literal["keep_start", "keep_end"] = Field(default="keep_start", description="Which end TRL keeps when truncating.")
    lora: LoraSettings | None = Field(default=None, description="Train LoRA adapters instead of all weights.")
    bf16: bool | None = Field(default=None, description="bf16 mixed precision of training (TRL's `bf16`). Empty: on when training runs on a bf16-capable GPU, off on CPU.")
    gradient_checkpointing: bool = Field(default=False, description="Recompute activations in the backward pass (saves memory on large models, ~20 % slower).")
    logging_steps: int = Field(default=10, ge=1, description="Optimiser steps between logged training metrics.")
    seed: int = Field(default=0, description="Training seed.")
    num_processes: int = Field(
        default=1, ge=1, le=1024,
        description="Training processes (data parallel, DDP through `accelerate launch`); 1 trains in the task's own process. "
        "`batch_size` stays the global batch: each process takes batch_size / num_processes pairs per step.",
    )
    accelerate_config: str | None = Field(
        default=None,
        description="An accelerate config file (FSDP, DeepSpeed, mixed precision, hosts) passed to `accelerate launch "
        "--config_file` when num_processes > 1. Empty: plain DDP on this machine (gloo on CPU, nccl on GPUs).",
    )

    @model_validator(mode="after")
    def _batch_splits(self) -> "TrainingConfig":
        if self.batch_size % self.num_processes:
            raise ValueError(f"batch_size={self.batch_size} must be a multiple of num_processes={self.num_processes} "
                             "(the global batch is split evenly between the processes)")
        return self


DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


class ComputeConfig(Section):
    """Where and in which precision the stages that score and generate run their models (training: `training.bf16`)."""

    device: str = Field(
        default="auto", pattern=DEVICE_PATTERN,
        description="auto | cpu | cuda | cuda:N. auto: the first GPU when CUDA is available, else the CPU. Training runs on "
        "the CPU or on accelerate's GPUs (pick them with CUDA_VISIBLE_DEVICES; the index N is for scoring and "
        "generation).",
    )
    dtype: Literal["auto", "fp32", "bf16", "fp64"] = Field(
        default="auto",
        description="Precision of scoring and generation: bf16 runs the fp32 weights under autocast, with log-probs, "
        "losses, IF and the validation gradient accumulated in fp32 (GPU only); fp64 is verify's reference precision. "
        "auto: bf16 on a bf16-capable GPU, fp32 on CPU.",
    )

    def cache_value(self, name: str) -> str:
        """What of field `name` changes a result, for cache keys and params: the device type (cpu/cuda: `auto` on a GPU
        machine is not `auto` on a CPU one; the GPU index changes nothing) and the dtype `auto` resolves to."""
        from prefcurate.compute import resolve

        device, dtype = resolve(self)
        return {"device": device.type, "dtype": dtype}[name]


class ScoringConfig(Section):
    batch_size: int = Field(default=64, ge=1, description="Pairs per forward (and jvp) pass while scoring.")
    max_tokens_per_batch: int | None = Field(default=16384, ge=2, description="Padded tokens per scoring batch (2 sequences x pairs x longest sequence): a batch closes when the next pair would exceed it, so a pool of long pairs never exceeds memory. A pair alone over the budget is scored alone. null: pairs only (batch_size).")
    shard_size: int = Field(default=2048, ge=1, description="Pairs per scoring shard (each cached and resumable on its own).")
    cosine: bool = Field(default=False, description="Normalise IF by the per-pair gradient norm (cosine influence).")
    compute_if: bool = Field(default=True, description="Compute exact IF/TIF (jvp). Off: LossDiff and IRM only.")
    tif_band: tuple[float, float] = Field(default=(25.0, 75.0), description="Percentiles (q_lo, q_hi) of IF: TIF keeps pairs strictly inside.")

    @model_validator(mode="after")
    def _band_ordered(self) -> "ScoringConfig":
        lo, hi = self.tif_band
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"tif_band must satisfy 0 <= q_lo < q_hi <= 100, got {self.tif_band}")
        return self


# The rule and baseline choices come from the rule registry: a new rule appears here by itself.
SelectionRule = Literal[tuple(RULES)]  # type: ignore[valid-type]
Baseline = Literal[("sft", "full", "full-steps", *RULES)]  # type: ignore[valid-type]
JudgeKind = Literal[tuple(JUDGES)]  # type: ignore[valid-type]  (the judge registry's names)


class SelectionConfig(Section):
    rule: SelectionRule = Field(default="lossdiff-irm", description="Which rule selects the pairs to train on.")
    band: tuple[float, float] = Field(default=(12.5, 87.5), description="Middle percentile band (lo, hi) for the band rules; a pair is kept strictly inside it. The default keeps ~58 % of the toy pool with lossdiff-irm (the paper kept 50-64 %).")
    size: int | None = Field(default=None, ge=1, description="Kept count for top-k rules (if-top, rating-margin, reward-gap, reward-model, random); overrides `fraction`.")
    fraction: float | None = Field(default=None, gt=0.0, le=1.0, description="Kept share for top-k rules (if-top, rating-margin, reward-gap, reward-model, random); default: the lossdiff-irm share.")
    seed: int = Field(default=0, description="Seed for the random rule.")
    cuts: dict[str, float] = Field(
        default_factory=dict,
        description="Absolute lower bounds on scores (column → bound; a pair is kept above every bound) for the `cuts` "
        "and `lossdiff-irm-cuts` rules, e.g. {irm: 0, if: 0}. Empty: IRM > 0.",
    )
    reward_model: ModelSource | None = Field(
        default=None,
        description="An external reward model (a sequence-classification checkpoint with one output: local directory, "
        "hub id or s3:// prefix) for the `reward-model` rule, which keeps the pairs of largest chosen − rejected reward "
        "margin (the paper's reward-model baseline). `prefcurate toyworld reward-model` trains one for the toy world. "
        "Empty: no reward-model scores, the rule is unavailable.",
    )
    equal_size: bool = Field(
        default=True,
        description="Every other rule (the baselines trained beside the selection, the comparisons of the agreement "
        "report) keeps exactly as many pairs as the selection: top-k rules their top k, band rules their most central k. "
        "Off: band rules keep their own band.",
    )

    @model_validator(mode="after")
    def _band_ordered(self) -> "SelectionConfig":
        lo, hi = self.band
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"band must satisfy 0 <= lo < hi <= 100, got {self.band}")
        if self.rule == "reward-model" and self.reward_model is None:
            raise ValueError(REWARD_MODEL_NEEDED)
        return self


REWARD_MODEL_NEEDED = ("the reward-model rule needs selection.reward_model: a sequence-classification checkpoint with "
                       "one output (`prefcurate toyworld reward-model` trains one for the toy world)")


class GenerationConfig(Section):
    max_new_tokens: int = Field(default=64, ge=1, description="Tokens generated per answer.")
    do_sample: bool = Field(default=False, description="Sample instead of greedy decoding.")
    temperature: float = Field(default=1.0, gt=0.0, description="Sampling temperature.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    n_samples: int = Field(
        default=1, ge=1,
        description="Sampled answers per prompt (needs do_sample); answer k is judged against the reference's answer k, "
        "and standard errors are clustered by prompt.",
    )
    batch_size: int = Field(default=32, ge=1, description="Prompts per generate() call.")
    seed: int = Field(default=0, description="Sampling seed.")


class JudgeConfig(Section):
    kind: JudgeKind = Field(default="oracle", description="Who judges: the toy world's oracle, a local reward model, or an OpenAI-compatible endpoint.")
    model: str | None = Field(default=None, description="Reward-model checkpoint, or the endpoint's model name.")
    base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint base URL (openai judge).")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Environment variable holding the API key (never logged).")
    max_concurrency: int = Field(default=4, ge=1, description="Parallel requests to the endpoint.")
    max_retries: int = Field(default=5, ge=0, description="Retries with backoff on 429/5xx.")
    timeout_s: float = Field(default=60.0, gt=0.0, description="Timeout of one request in seconds: for each read, and for the whole reply body (one that trickles in times out too); retried like a 5xx.")
    retry_backoff_s: float = Field(default=1.0, ge=0.0, description="First retry delay in seconds; doubles each retry (a Retry-After header wins, up to 60 s).")
    logprobs: bool = Field(default=True, description="Ask the endpoint for token log-probs (a soft pairwise verdict); off for endpoints that reject the parameter.")
    top_logprobs: int = Field(
        default=20,
        ge=2,
        le=20,
        description="Log-probs asked for the verdict token (20 is OpenAI's most): a weak judge's m or M often ranks below "
        "the top 5, and one that is missing counts as probability 0, a hard verdict.",
    )
    max_tokens: int = Field(default=512, ge=1, description="Token budget of a single-answer grading reply (explanation + [[rating]]).")
    batch_size: int = Field(default=16, ge=1, description="Answers per reward-model forward pass.")
    seed: int = Field(default=0, description="Seed for the pairwise order swap.")


class EvaluationConfig(Section):
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="How each model answers the evaluation prompts.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="Who judges the answers.")
    single_score: bool = Field(default=True, description="Also grade every answer on MT-Bench's 1–10 scale (SingleScore).")
    baselines: list[Baseline] = Field(
        default_factory=lambda: ["sft", "full", "random"],
        description="Baselines evaluated beside the selection: `sft` (the SFT model), `full` (DPO on the whole pool for "
        "training.final_epochs), `full-steps` (the whole pool for as many optimiser steps as the selection gets) or any "
        "selection rule (DPO on what it keeps, at the selection's size: see selection.equal_size).",
    )
    reference: str = Field(default="sft", description="The model every other model is compared against.")
    seeds: list[int] | None = Field(
        default=None, min_length=1,
        description="curate: final training, generation and judging repeated once per seed (training.seed, "
        "generation.seed and judge.seed set to it; scoring and selection run once), with each model's mean and 95 % "
        "interval across seeds and the selection's paired differences. Empty: one run with the seeds as set.",
    )
    head_to_head: bool = Field(
        default=True,
        description="Also judge `selected` directly against every other evaluated model (eval/head_to_head.csv), "
        "not only each through the reference.",
    )
    max_failed_fraction: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Largest share of judgments (pairwise and single) that may fail or be unparseable: above it the "
        "evaluation is incomplete and `prefcurate evaluate`/`curate` exit with code 3 after printing the leaderboard.",
    )

    @model_validator(mode="after")
    def _distinct_seeds(self) -> "EvaluationConfig":
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        return self


class TrackingConfig(Section):
    """Where MLflow records runs: a local sqlite store by default, any tracking URI works."""

    tracking_uri: str = Field(
        default="sqlite:///mlflow.db",
        description="MLflow tracking URI: sqlite:///file.db, http(s)://server, or any URI MLflow accepts. Credentials belong in MLFLOW_TRACKING_USERNAME/PASSWORD, not here.",
    )
    experiment: str = Field(default="prefcurate", description="MLflow experiment name (created on first use).")
    artifact_location: str | None = Field(
        default=None,
        description="Artifact root for a newly created experiment (a directory or s3://…); empty: MLflow's default (./mlruns next to a local store, the server's root otherwise).",
    )
    ui_url: str | None = Field(
        default=None,
        description="Base URL of the MLflow UI used in links; empty: the tracking server, or http://127.0.0.1:5000 as `mlflow ui` serves a local store.",
    )
    register_model: str | None = Field(default="prefcurate", description="Register the final model under this name; empty: do not register.")
    model_alias: str = Field(default="candidate", min_length=1, description="Alias set on the newly registered model version.")
    register_merged: bool = Field(
        default=False,
        description="With LoRA, also log a merged full checkpoint (base + adapter) next to the registered adapter, under model-merged/. Off: only the adapter (a few MB) with a reference to its base.",
    )


class ScaleOutConfig(Section):
    task_runner: Literal["local", "dask"] = Field(
        default="local", description="Where scoring shards run: in the flow's process, or mapped over a Dask cluster (prefect-dask)."
    )
    workers: int = Field(default=2, ge=1, le=256, description="Dask workers of the local cluster (ignored with `address`).")
    processes: bool = Field(
        default=True,
        description="Local Dask workers as processes (True) or threads (False). Exact IF needs processes when workers > 1: torch's forward-mode AD is not thread-safe.",
    )
    address: str | None = Field(default=None, description="Address of an existing Dask scheduler (tcp://host:8786); empty: start a local cluster.")
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads torch uses in the flow's process; empty: torch's default. On small models and few cores 1 is "
        "much faster (the toy model trains 16x faster with 1 thread than with 2 on a 2-core machine).",
    )


RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class _Pipeline(Section):
    """What every flow that scores a pool shares: where, which model, which data, how."""

    root: str = Field(default="runs", description="Run root: a local directory or s3://bucket/prefix.")
    run_name: str | None = Field(
        default=None, pattern=RUN_NAME_PATTERN,
        description="Sub-directory of the root for this run's artifacts; a rerun with the same name resumes. Empty: the "
        "flow run's name when a deployment runs it (a run from the UI starts fresh), `default` (`nightly` for nightly) "
        "from the CLI, so rerunning a config resumes it.",
    )
    cache_dir: str = Field(default=".prefcurate-cache", description="Local directory for downloaded checkpoints and judge caches.")
    model: ModelSource = Field(description="The SFT checkpoint to curate for (also the DPO reference π_ref).")
    data: DataSource = Field(description="The preference pool, its validation set and the evaluation prompts.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="DPO recipe of the warm-up, validation and final models.")
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="How pairs are scored: batch and shard sizes, exact IF, the TIF band.")
    selection: SelectionConfig = Field(default_factory=SelectionConfig, description="Which rule keeps which pairs.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Where MLflow records the run.")
    scaleout: ScaleOutConfig = Field(default_factory=ScaleOutConfig, description="Where scoring shards run, and torch's CPU threads.")
    compute: ComputeConfig = Field(default_factory=ComputeConfig, description="Device and precision of scoring, generation and training.")
    store_uri: str | None = Field(
        default=None,
        description="Score store and scoring bundles (local or s3://), shared by every run of a team: `curate` saves its "
        "scoring bundle there when set; `nightly` reuses the latest bundle and scores only pairs the store has not seen "
        "(empty for nightly: <root>/store).",
    )
    defects_uri: str | None = Field(
        default=None, description="Known-defect labels (parquet: prompt_id, defect), e.g. the toy world's; adds per-defect detection to the agreement report."
    )

    @model_validator(mode="after")
    def _jvp_needs_processes(self) -> "_Pipeline":
        s = self.scaleout
        if s.task_runner == "dask" and not s.address and not s.processes and s.workers > 1 and self.scoring.compute_if:
            raise ValueError(
                "scaleout.processes must be true with several Dask workers and scoring.compute_if: "
                "exact IF (torch forward-mode AD) cannot run in two threads of one process"
            )
        return self


class RunConfig(_Pipeline):
    """Everything one `curate` run needs."""

    evaluation: EvaluationConfig = Field(
        default_factory=EvaluationConfig, description="Generation, judge and baselines of the win-rate evaluation."
    )

    @model_validator(mode="after")
    def _reference_is_evaluated(self) -> "RunConfig":
        known = {"selected", *self.evaluation.baselines}
        if self.evaluation.reference not in known:
            raise ValueError(f"evaluation.reference must be one of {sorted(known)}, got '{self.evaluation.reference}'")
        if "reward-model" in self.evaluation.baselines and self.selection.reward_model is None:
            raise ValueError(f"evaluation.baselines names reward-model, but {REWARD_MODEL_NEEDED}")
        if self.selection.rule in self.evaluation.baselines:
            raise ValueError(f"evaluation.baselines names the selection's own rule '{self.selection.rule}'; "
                             "it is trained as `selected` already")
        return self


# --- the paper's evidence: the IF-group study and the cross-model comparison -----------------


class IFGroupSettings(Section):
    """How the pool is split into IF groups and how each group is trained (`prefcurate if-groups`)."""

    cuts: tuple[float, float] = Field(
        default=(100 / 3, 200 / 3),
        description="Percentiles (lo, hi) of the IF ranking that split the pool: low = below lo, medium = lo to hi, "
        "high = above hi (default: thirds). Every pair is in exactly one group.",
    )
    steps: int | None = Field(
        default=None, ge=1,
        description="Optimiser steps of DPO from θ on each group (the same for every group). Empty: "
        "training.final_epochs epochs of the smallest group.",
    )  # fmt: skip
    eval_every: int = Field(default=1, ge=1, description="Optimiser steps between two measurements of validation loss and margin (also measured before the first step and after the last).")

    @model_validator(mode="after")
    def _ordered_cuts(self) -> "IFGroupSettings":
        lo, hi = self.cuts
        if not 0 < lo < hi < 100:
            raise ValueError(f"if_groups.cuts must satisfy 0 < lo < hi < 100, got ({lo:g}, {hi:g})")
        return self


class IFGroupsConfig(RunConfig):
    """A curate config plus the IF-group study: the same root and run name reuse that run's θ and scores."""

    if_groups: IFGroupSettings = Field(default_factory=IFGroupSettings, description="The IF groups and their training.")


class CompareSettings(Section):
    """The second SFT model of a cross-model comparison (`prefcurate compare-models`)."""

    model: ModelSource = Field(description="The second SFT model, scored on the same pool with the same recipe as `model`.")
    run_name: str | None = Field(
        default=None, pattern=RUN_NAME_PATTERN,
        description="Run directory of the second model's scoring (a finished run of it is reused); empty: `<run_name>-b`.",
    )  # fmt: skip


class CompareModelsConfig(RunConfig):
    """A curate config (the first model) plus a second SFT model to score the same pool for."""

    compare: CompareSettings = Field(description="The second model and its run directory.")

    def pipelines(self) -> tuple[RunConfig, RunConfig]:
        """The two scoring configs: this one's model and run, and the second model in its own run directory."""
        first = RunConfig.model_validate(self.model_dump(exclude={"compare"}))
        name = self.compare.run_name or f"{first.run_name or 'default'}-b"
        return first, first.model_copy(update={"model": self.compare.model, "run_name": name})


class RefreshConfig(Section):
    """When a nightly run trains its scoring bundle (θ, θ_val, ∇L_val) again instead of reusing the latest one.

    A missing or damaged bundle, a new SFT model, or another training/scoring recipe always
    refreshes; the policy decides the rest.
    """

    policy: Literal["never", "inputs-changed", "every-n-days", "new-fraction"] = Field(
        default="inputs-changed",
        description="never: reuse while the recipe holds; inputs-changed: also when the validation set changes; "
        "every-n-days: that, and when the bundle is `days` old; new-fraction: that, and when more than `new_fraction` "
        "of the pool is new to the bundle.",
    )
    days: float = Field(default=7.0, gt=0.0, description="Bundle age in days that refreshes it (policy every-n-days).")
    new_fraction: float = Field(default=0.2, gt=0.0, le=1.0, description="Share of the pool new to the bundle that refreshes it (policy new-fraction).")


class NightlyConfig(_Pipeline):
    """Scheduled curation of new data: ingest, score the new pairs, select over the pool, publish; no final training."""

    refresh: RefreshConfig = Field(default_factory=RefreshConfig, description="When the scoring bundle is trained again.")
    publish_uri: str | None = Field(
        default=None, description="Directory (local or s3://) the selection is published to; empty: <root>/<run>/published."
    )

    @model_validator(mode="before")
    @classmethod
    def _accepts_a_curate_config(cls, data: Any) -> Any:
        """A `curate` config file works as is: its evaluation section is dropped, with one warning."""
        if isinstance(data, dict) and "evaluation" in data:
            logging.getLogger("prefcurate.config").warning(
                "nightly ignores the config's `evaluation` section: it trains no final model and evaluates nothing")
            data = {k: v for k, v in data.items() if k != "evaluation"}
        return data


class EvaluatedModel(Section):
    """One model of an evaluation: the UI's form shows a row per model."""

    name: str = Field(pattern=RUN_NAME_PATTERN, description="How the leaderboard calls it (also its eval/<name>/ directory).")
    uri: str = Field(min_length=1, description="An HF checkpoint (directory, hub id or s3://) or an AlpacaEval model_outputs.json.")


class EvaluateConfig(Section):
    """Judge given models or output files against each other."""

    root: str = Field(default="runs", description="Run root: a local directory or s3://bucket/prefix.")
    run_name: str | None = Field(default=None, pattern=RUN_NAME_PATTERN, description="Sub-directory of the root for this evaluation. Empty: the flow run's name when a deployment runs it, `evaluate` from the CLI.")
    cache_dir: str = Field(default=".prefcurate-cache", description="Local directory for downloaded checkpoints and judge caches.")
    models: list[EvaluatedModel] = Field(
        description="The models to judge, each a name and an HF checkpoint (directory, hub id or s3://) or an AlpacaEval "
        "model_outputs.json to judge as is. A YAML mapping name: uri is accepted too.",
        min_length=2,
    )
    eval_prompts_uri: str | None = Field(
        default=None, description="Evaluation instructions (json/jsonl/parquet with `instruction`); needed when a model is a checkpoint."
    )
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="Generation and judge settings.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Where MLflow records the run.")
    compute: ComputeConfig = Field(default_factory=ComputeConfig, description="Device and precision of generation.")

    @model_validator(mode="before")
    @classmethod
    def _models_as_mapping(cls, data: Any) -> Any:
        """`models: {sft: path, new: path}` (YAML, `--set models.sft=…`) is the same list, in order."""
        if isinstance(data, dict) and isinstance(data.get("models"), dict):
            data = {**data, "models": [{"name": k, "uri": v} for k, v in data["models"].items()]}
        return data

    def model_map(self) -> dict[str, str]:
        """Name → URI of every model, in the given order."""
        return {m.name: m.uri for m in self.models}

    @model_validator(mode="after")
    def _reference_is_a_model(self) -> "EvaluateConfig":
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if self.evaluation.reference not in names:
            raise ValueError(f"evaluation.reference must name one of models {sorted(names)}, got '{self.evaluation.reference}'")
        if self.evaluation.seeds is not None and len(self.evaluation.seeds) > 1:
            raise ValueError("evaluation.seeds repeats curate's final training; evaluate judges the given models once "
                             "(set generation.seed and judge.seed instead)")
        checkpoints = sorted(name for name, uri in self.model_map().items() if not uri.endswith(".json"))
        if checkpoints and not self.eval_prompts_uri:
            raise ValueError(f"eval_prompts_uri is required to generate answers with the checkpoints {checkpoints}")
        return self


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
    node[keys[-1]] = value


def load_config(model: type[BaseModel], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Any:
    """Build `model` from an optional YAML file (or a `base` tree) plus `key.sub=value` overrides (values parsed as YAML)."""
    tree: dict[str, Any] = dict(base or {})
    if path is not None:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise ConfigError(f"invalid config field '{field}': {first['msg']}") from exc


def flatten(config: BaseModel) -> dict[str, str]:
    """Dotted key → value string, for MLflow params."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            out[prefix] = str(value)

    walk("", config.model_dump(mode="json"))
    return out
