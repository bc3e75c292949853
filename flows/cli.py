"""The `prefcurate` command.

Every command turns a `PrefcurateError` into one line on stderr and exit code 2: a user
sees what is wrong and what to do, never a traceback. `evaluate`, `curate` and `demo` exit
with code 3 (EXIT_INCOMPLETE), after printing the leaderboard, when more than
`evaluation.max_failed_fraction` of the judgments gave no verdict: CI fails on a dead judge.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Literal

import typer

from prefcurate.errors import PrefcurateError
from prefcurate.locations import BASE_ENV

if TYPE_CHECKING:
    from prefcurate.evaluation.stage import JudgeOut

app = typer.Typer(
    name="prefcurate",
    help="Model-aware preference-data curation: score pairs by influence, LossDiff and IRM, "
    "select the valuable ones, train DPO and measure win rates.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


EXIT_INCOMPLETE = 3  # the leaderboard is printed, but too many judgments gave no verdict


def fail(message: str) -> None:
    """Print one line on stderr and exit 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


# --- data check / model check: is this input usable? ------------------------------------

data_app = typer.Typer(help="Preference data: check a pool before a run.", no_args_is_help=True)
model_app = typer.Typer(help="Checkpoints: check a model before a run.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")


def _quiet_libraries() -> None:
    """Keep HF warnings and progress bars off the terminal: the output is ours alone."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore")
    import datasets
    import huggingface_hub
    import transformers

    huggingface_hub.utils.logging.set_verbosity_error()  # hub retry warnings
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()


@data_app.command("check")
def data_check(
    uri: str = typer.Argument(help="Pool: a .parquet/.jsonl/.json file (local or s3://), a saved dataset dir or a hub dataset."),
    split: str = typer.Option("train", help="Split to read from a hub / saved dataset."),
    max_prompt_chars: int = typer.Option(4000, min=1, help="Rows whose prompt is longer are rejected (prompt_too_long)."),
    model: str = typer.Option(None, "--model", help="Checkpoint whose chat template measures token lengths (dir, hub id, s3://)."),
    max_length: int = typer.Option(512, "--max-length", min=8, help="training.max_length to count truncated pairs against (with --model)."),
    truncation_mode: Literal["keep_start", "keep_end"] = typer.Option(
        "keep_start", "--truncation-mode", help="training.truncation_mode (with --model)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Read a preference pool, check every row and report what would be kept and why rows are rejected;
    with --model, also the token lengths under its chat template and how many pairs max_length cuts."""
    import json

    _quiet_libraries()
    from prefcurate.data.pairs import SCHEMA_LABELS, load_pairs

    try:
        result = load_pairs(uri, split=split, max_prompt_chars=max_prompt_chars)
        lengths = _lengths(model, result.pairs, max_length, truncation_mode) if model and result.rows_kept else None
    except PrefcurateError as exc:
        fail(str(exc))
    summary = {
        "uri": uri,
        "schema": result.schema,
        "rows_read": result.rows_read,
        "rows_kept": result.rows_kept,
        "rows_rejected": result.rows_rejected,
        "rejects_by_reason": result.rejects_by_reason,
    }
    if lengths is not None:
        summary["lengths"] = lengths.model_dump()
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"{uri}: {SCHEMA_LABELS[result.schema]}")
        typer.echo(f"rows read {result.rows_read}, kept {result.rows_kept}, rejected {result.rows_rejected}")
        for reason, count in result.rejects_by_reason.items():
            typer.echo(f"  {reason:<20} {count}")
        for row in result.rejects.head(5).itertuples():
            typer.echo(f"  e.g. row {row.row}: {row.reason}: {row.detail}")
        if lengths is not None:
            from prefcurate.data.lengths import render_lengths

            typer.echo(render_lengths(lengths))
    if result.rows_kept == 0:
        fail(f"{uri}: no usable pairs among {result.rows_read} rows (rejects: {result.rejects_by_reason})")


def _lengths(model, pairs, max_length: int | None, truncation_mode: str, cache_dir: str | None = None):
    """The pool's LengthReport under `model`'s chat template (a URI or ModelSource)."""
    from prefcurate.checkpoint import load_tokenizer
    from prefcurate.data.lengths import length_report

    return length_report(pairs, load_tokenizer(model, cache_dir), max_length, truncation_mode)


def _print_run_lengths(cfg) -> None:
    """Token lengths of the pool under the run's model and training.max_length, before the first stage."""
    from prefcurate import io
    from prefcurate.data.lengths import render_lengths
    from prefcurate.data.pairs import load_pairs

    data, training = cfg.data, cfg.training
    try:
        pairs = load_pairs(data.pool_uri, split=data.split, max_prompt_chars=data.max_prompt_chars).pairs
        report = _lengths(cfg.model, pairs, training.max_length, training.truncation_mode,
                          io.join(cfg.cache_dir, "checkpoints"))
    except PrefcurateError as exc:
        fail(str(exc))
    typer.echo(f"pool {data.pool_uri}: " + render_lengths(report))


@model_app.command("check")
def model_check(
    uri: str = typer.Argument(help="Checkpoint: a local directory, a hub id (org/name) or s3://bucket/prefix."),
    revision: str = typer.Option(None, help="Hub revision (branch, tag or commit) for a hub id."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pickle (.bin/.pt) weights; they can run code."),
    chat_template: str = typer.Option(None, "--chat-template", help="Jinja chat template file for a tokenizer that lacks one."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Validate a checkpoint (config, safetensors weights, tokenizer, chat template) and print its fingerprint."""
    _quiet_libraries()
    from prefcurate.checkpoint import inspect_checkpoint
    from prefcurate.config import ModelSource

    try:
        source = ModelSource(uri=uri, revision=revision, allow_pickle=allow_pickle, chat_template=chat_template)
        info = inspect_checkpoint(source)
    except PrefcurateError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(info.model_dump_json(include={"uri", "fingerprint", "architecture", "model_type", "n_parameters", "weight_format", "chat_template", "chat_template_supplied", "base_fingerprint"}))
        return
    template = "supplied" if info.chat_template_supplied else "own"
    typer.echo(f"{uri}: usable")
    typer.echo(f"fingerprint   {info.fingerprint}")
    typer.echo(f"architecture  {info.architecture} ({info.model_type}), {info.n_parameters:,} parameters, {info.weight_format}")
    typer.echo(f"chat template {template}")
    if info.base_fingerprint is not None:
        typer.echo(f"base model    {info.metadata['base']['uri']} (fingerprint {info.base_fingerprint}, checked)")


# --- toyworld build: the embedded offline world -----------------------------------------

toyworld_app = typer.Typer(
    help="The embedded toy world: a tiny SFT model and a preference pool with planted defects, built offline from a seed.",
    no_args_is_help=True,
)
app.add_typer(toyworld_app, name="toyworld")


@toyworld_app.command("build")
def toyworld_build(
    out: str = typer.Option(..., "--out", help="Directory (or s3:// prefix) to build the world under."),
    seed: int = typer.Option(0, help="Seed of everything: instruction split, pool, defects, model init, SFT."),
    size: Literal["small", "default"] = typer.Option(
        "default",
        help="default: 2-layer model, 3,000 SFT rows, 1,000 pairs (about a minute on 2 cores); "
        "small: 1-layer model, 240 pairs, for tests and quick demos.",
    ),
    proxy_overfit_rate: float = typer.Option(
        0.0, "--proxy-overfit-rate",
        help="Share of pool pairs that teach only a narrow validation proxy (the word the validation set "
        "over-represents), not the task: labelled proxy_overfit. 0 (default) leaves the world as it was.",
    ),
) -> None:
    """Build the toy world: an SFT checkpoint trained with TRL on noisy demonstrations, an
    UltraFeedback-style pool (parquet + jsonl) with planted label flips, near-duplicates and
    extreme-contrast (perfect-vs-junk) pairs, optionally proxy-overfit pairs (labelled only in
    defects.parquet), a clean validation pool and held-out eval prompts. A second build with the same seed and size reuses the first."""
    import time
    import warnings

    import transformers

    warnings.filterwarnings("ignore")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # the SFT training bar stays
    from prefcurate import io
    from prefcurate.toyworld.build import build_world

    start = time.perf_counter()
    try:
        reused = io.exists(io.join(out, "world.json"))
        world = build_world(out, seed=seed, size=size, proxy_overfit_rate=proxy_overfit_rate)
    except PrefcurateError as exc:
        fail(str(exc))
    pool, sft = world.stats["pool"], world.stats["sft"]
    defects = ", ".join(f"{n} {kind}" for kind, n in pool["defects"].items())
    how = "reused" if reused else f"built in {time.perf_counter() - start:.0f} s"
    typer.echo(f"toy world ({size}, seed {seed}) in {world.root}: {how}")
    typer.echo(f"  checkpoint   {world.checkpoint_dir}  (fingerprint {sft['fingerprint'][:12]})")
    typer.echo(f"  pool         {world.pool_parquet}, {world.pool_jsonl}  ({pool['n_pairs']} pairs: {defects})")
    typer.echo(f"  validation   {world.validation_parquet}  ({world.stats['validation']['n_pairs']} pairs, no defects)")
    typer.echo(f"  eval prompts {world.eval_prompts}  ({world.stats['eval_prompts']} held-out instructions)")
    typer.echo(f"  defects      {world.defects_parquet}")
    typer.echo(f"  record       {world.world_json}")
    typer.echo(
        f"  SFT oracle quality on eval prompts: greedy {sft['mean_quality_greedy']:.3f}, sampled "
        f"{sft['mean_quality_sampled']:.3f} (untrained {sft['mean_quality_untrained_greedy']:.3f})"
    )


# --- demo / curate / nightly / evaluate: the flows, run on Prefect's ephemeral API ----------


def _flow_console() -> None:
    """Quiet library noise, drop tracebacks of expected errors from Prefect's console log, and
    start the reaper that ends Prefect's ephemeral server should this command be killed."""
    import os

    from prefcurate.flows.reaper import start_reaper

    start_reaper()
    _quiet_libraries()
    # A loaded 2-core machine can take longer than Prefect's default 20 s to start the ephemeral API.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # Offline by design: the ephemeral server's telemetry would log an ERROR on every run without network.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    import prefect  # noqa: F401  (configures Prefect's logging)

    from prefcurate.tasks.common import quiet_expected_errors

    quiet_expected_errors()


def _load(model: type, config: str | None, sets: list[str] | None, hint: dict[str, str] | None = None):
    """The config, or one line; `hint` adds what to do when a named field is the problem."""
    from prefcurate.config import load_config

    try:
        return load_config(model, config, sets)
    except PrefcurateError as exc:
        extra = next((f"; {h}" for field, h in (hint or {}).items() if f"field '{field}'" in str(exc)), "")
        fail(f"{exc}{extra}")


def _preflight(config) -> None:
    """Check every input the config names — in seconds, before Prefect or torch is even imported."""
    from prefcurate.preflight import preflight

    try:
        preflight(config)
    except PrefcurateError as exc:
        fail(str(exc))


def _run_flow(fn, config):
    try:
        return fn(config)
    except PrefcurateError as exc:
        fail(str(exc))


SET_HELP = "Override one config field, e.g. --set training.learning_rate=1e-4 (value parsed as YAML); repeatable."


@app.command()
def demo(
    root: str = typer.Option("runs", help="Run root: the toy world, runs, MLflow store and artifacts go here."),
    size: Literal["small", "default"] = typer.Option("default", help="Toy world size: default (~1,000 pairs) or small (240 pairs)."),
    seed: int = typer.Option(0, help="Seed of the toy world."),
) -> None:
    """Build the toy world if missing and run `curate` on it end to end (offline, CPU, no Prefect server)."""
    _flow_console()
    from pathlib import Path

    from prefcurate.config import EvaluationConfig
    from prefcurate.flows.curate import render
    from prefcurate.flows.demo import run_demo

    typer.echo(f"toy world ({size}, seed {seed}) under {Path(root).resolve() / f'toyworld-{size}'} (built on first use), then curate")
    try:
        result = run_demo(root, size, seed)
    except PrefcurateError as exc:
        fail(str(exc))
    typer.echo("\n" + render(result))
    for judged in result.judgments():
        _check_judgments(judged, EvaluationConfig().max_failed_fraction)  # the demo's evaluation config


@app.command()
def curate(
    config: str = typer.Option(..., "--config", help="YAML run config (see examples/configs/curate.yaml)."),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Ingest, score, select, train DPO on the selection and baselines, evaluate and report."""
    from prefcurate.config import RunConfig

    cfg = _load(RunConfig, config, sets)
    _preflight(cfg)
    _flow_console()
    _print_run_lengths(cfg)
    from prefcurate.flows.curate import curate as curate_flow
    from prefcurate.flows.curate import render

    result = _run_flow(curate_flow, cfg)
    typer.echo("\n" + render(result))
    for judged in result.judgments():
        _check_judgments(judged, cfg.evaluation.max_failed_fraction)


@app.command()
def nightly(
    config: str = typer.Option(..., "--config", help="YAML nightly config: a curate config (its evaluation section is "
                               "ignored) plus `publish_uri`, `store_uri` and `refresh`."),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Score the pairs new to the score store, select over the whole pool, publish the selection (no final training).

    The scoring bundle (θ, θ_val, ∇L_val) is reused from the store until `refresh.policy` says
    to train it again; the output says which bundle was used and why.
    """
    from prefcurate.config import NightlyConfig

    cfg = _load(NightlyConfig, config, sets)
    _preflight(cfg)
    _flow_console()
    from prefcurate.flows.nightly import nightly as nightly_flow
    from prefcurate.tracking import ui_command

    result = _run_flow(nightly_flow, cfg)
    how = f"refreshed: {result.refresh_reason}" if result.bundle_refreshed else "reused"
    typer.echo(f"\nScoring bundle {result.bundle_id} ({how}); scored {result.n_new} new pairs of {result.n_pool}")
    typer.echo(f"Selection ({result.rule}): kept {result.n_kept} of {result.n_pool} pairs ({result.kept_fraction:.1%})")
    typer.echo(f"Published {result.n_kept} pairs to {result.dataset_uri} ({result.publish_uri}/latest points at it)")
    typer.echo(f"\n{result.agreement_text.rstrip()}\n\nRun root:   {result.run_uri}\nMLflow run: {result.mlflow_url}")
    typer.echo(f"MLflow UI:  {ui_command(result.tracking_uri)}")


@app.command()
def study(
    config: str = typer.Option(None, "--config", help="YAML run config (as for `curate`); omit with --toy."),
    toy: str = typer.Option(None, "--toy", help="small or default: the toy world, built anew for every seed (with its reward "
                            "model, for the reward-model baseline), instead of --config."),
    seeds: str = typer.Option("0,1,2,3,4", help="Comma-separated seeds: one full curate run each."),
    name: str = typer.Option("study", help="Names the replicates' run directories (<name>-seed<k>) and study-<name>/."),
    root: str = typer.Option("runs", help="Run root for --toy (worlds, runs, MLflow store)."),
    groups: bool = typer.Option(True, "--if-groups/--no-if-groups", help="Also run the IF-group study on the first seed's run."),
    check: bool = typer.Option(True, "--verify/--no-verify", help="Also verify every seed's run (as `prefcurate verify`)."),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Repeat `curate` per seed and report what holds across seeds: each model's mean win rate with a
    95 % interval, and the selection against every baseline as paired per-seed differences with a
    paired t-test. Baselines come from evaluation.baselines (any selection rule, at the selection's size).
    Then the IF-group curves on the first seed's run and `verify` on every run, in the same study.md;
    exit 1 when a run fails verification."""
    from prefcurate.config import RunConfig, load_config

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        fail(f"--seeds expects comma-separated integers, got '{seeds}'")
    if not seed_list or (config is None) == (toy is None):
        fail("give --config or --toy (one of them) and at least one seed")
    if toy is not None and toy not in ("small", "default"):
        fail(f"--toy must be small or default, got '{toy}'")
    _flow_console()
    from prefcurate.flows.study import seeded
    from prefcurate.flows.study import study as study_flow

    try:
        if toy is not None:
            from pathlib import Path

            from prefcurate import io
            from prefcurate.flows.demo import demo_config
            from prefcurate.toyworld.build import build_world
            from prefcurate.toyworld.reward import build_reward_model

            base = Path(root).resolve()
            configs = []
            for s in seed_list:
                world = build_world(str(base / f"toyworld-{toy}-seed{s}"), seed=s, size=toy)
                tree = demo_config(world, root, toy).model_dump(mode="json")
                # the world's own reward model, so the `reward-model` rule can be a baseline
                tree["selection"]["reward_model"] = {"uri": build_reward_model(world, io.join(world.root, "reward-model"))["checkpoint_dir"]}
                configs.append(seeded(load_config(RunConfig, None, sets, base=tree), s, name))
        else:
            cfg = _load(RunConfig, config, sets)
            configs = [seeded(cfg, s, name) for s in seed_list]
    except PrefcurateError as exc:
        fail(str(exc))
    for cfg in configs:
        _preflight(cfg)
    result = _run_flow(lambda c: study_flow(c, name=name, if_groups=groups, verify=check), configs)
    figure = f"\nFigure: {result.figure_uri}" if result.figure_uri else ""
    curves = f"\nIF groups: {result.if_groups.figure_uri}" if result.if_groups else ""
    typer.echo("\n" + result.markdown + f"\nStudy: {result.study_uri}{figure}{curves}\nMLflow run: {result.mlflow_url}")
    failures = result.verify_failures()
    if failures:
        which = "; ".join(f"seed {seed}: {', '.join(names)}" for seed, names in failures.items())
        typer.echo(f"error: verify beyond tolerance ({which}); `prefcurate verify RUN` shows where", err=True)
        raise typer.Exit(code=1)


# --- if-groups / compare-models: the paper's evidence on the user's own model and pool ------


@toyworld_app.command("sft")
def toyworld_sft(
    world: str = typer.Option(..., "--world", help="A built toy world's directory (`toyworld build --out`)."),
    out: str = typer.Option(..., "--out", help="Directory to save the second SFT checkpoint in."),
    seed: int = typer.Option(..., help="Seed of its initialisation and demonstrations (another than the world's)."),
    epochs: float = typer.Option(None, min=0.01, help="SFT epochs (default: the world's); fewer gives a weaker model."),
) -> None:
    """Train a second SFT model for a built world — same tokenizer, pool and instructions — for `compare-models`."""
    _quiet_libraries()
    from prefcurate.toyworld.variant import build_sft_variant, open_world

    try:
        built = build_sft_variant(open_world(world), out, seed=seed, epochs=epochs)
    except PrefcurateError as exc:
        fail(str(exc))
    typer.echo(f"SFT variant (seed {seed}, {built['epochs']:g} epochs) in {out}: fingerprint {built['fingerprint'][:12]}, "
               f"oracle quality greedy {built['mean_quality_greedy']:.3f}")


@toyworld_app.command("reward-model")
def toyworld_reward_model(
    world: str = typer.Option(..., "--world", help="A built toy world's directory (`toyworld build --out`)."),
    out: str = typer.Option(None, "--out", help="Directory to save the reward model in (default: <world>/reward-model)."),
    seed: int = typer.Option(None, help="Seed of its training pairs and head (default: the world's)."),
) -> None:
    """Train a reward model for a built world — the SFT model with a one-output head, trained with TRL's
    RewardTrainer on oracle-ordered pairs of its own (never the pool) — for the `reward-model` rule:
    set selection.reward_model.uri to the printed directory."""
    _quiet_libraries()
    from prefcurate import io
    from prefcurate.toyworld.reward import build_reward_model
    from prefcurate.toyworld.variant import open_world

    try:
        built = build_reward_model(open_world(world), out or io.join(world, "reward-model"), seed=seed)
    except PrefcurateError as exc:
        fail(str(exc))
    typer.echo(f"reward model (seed {built['seed']}, {built['n_pairs']} pairs) in {built['checkpoint_dir']}: fingerprint "
               f"{built['fingerprint'][:12]}; orders pairs as the oracle does: pool {built['oracle_accuracy_pool']:.1%}, "
               f"validation {built['oracle_accuracy_validation']:.1%}")


@app.command("if-groups")
def if_groups(
    config: str = typer.Option(..., "--config", help="YAML curate config plus an optional `if_groups` section; the same "
                               "root and run name reuse that run's θ and scores."),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Split the pool into low / medium / high IF groups, train DPO from θ on each for the same number of
    steps and print validation loss and margin per group (curves in MLflow and <run>/figures/if_groups.png)."""
    from prefcurate.config import IFGroupsConfig

    cfg = _load(IFGroupsConfig, config, sets)
    _preflight(cfg)
    _flow_console()
    from prefcurate.flows.ifgroups import if_groups_flow

    result = _run_flow(if_groups_flow, cfg)
    typer.echo(f"\nIF groups: DPO from θ for {result.steps} steps each; validation loss and margin (mean β·m)")
    typer.echo(f"  {'group':<8} {'pairs':>6} {'loss start':>11} {'loss final':>11} {'margin start':>13} {'margin final':>13}")
    for row in result.table:
        typer.echo(f"  {row['group']:<8} {row['n_pairs']:>6} {row['val_loss_start']:>11.4f} {row['val_loss_final']:>11.4f} "
                   f"{row['val_margin_start']:>13.4f} {row['val_margin_final']:>13.4f}")
    typer.echo(f"\nReport:     {result.report_uri}\nFigure:     {result.figure_uri}\nMLflow run: {result.mlflow_url}")


@app.command("compare-models")
def compare_models(
    config: str = typer.Option(..., "--config", help="YAML curate config of the first model (plus an optional `compare` section)."),
    other_model: str = typer.Option(None, "--other-model", help="The second SFT checkpoint (dir, hub id, s3://); sets compare.model.uri."),
    other_run: str = typer.Option(None, "--other-run", help="Run directory name of the second model's scoring (default <run_name>-b)."),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Score one pool for two SFT models and report how far they agree: IF Spearman, the share of pairs whose
    IF changes sign, and TIF and selection overlaps with chance level and Cohen's kappa."""
    from prefcurate.config import CompareModelsConfig

    overrides = list(sets or [])
    if other_model:
        overrides.append(f"compare.model.uri={other_model}")
    if other_run:
        overrides.append(f"compare.run_name={other_run}")
    cfg = _load(CompareModelsConfig, config, overrides, hint={"compare": "pass --other-model DIR (the second SFT model)"})
    for pipeline in cfg.pipelines():
        _preflight(pipeline)
    _flow_console()
    from prefcurate.flows.compare import compare_models as compare_flow

    result = _run_flow(compare_flow, cfg)
    typer.echo("\n" + result.comparison.markdown())
    typer.echo(f"Runs:       {', '.join(result.runs)}\nReport:     {result.report_uri}\nMLflow run: {result.mlflow_url}")


@app.command()
def evaluate(
    config: str = typer.Option(None, "--config", help="YAML evaluate config (models, eval_prompts_uri, evaluation)."),
    models: list[str] = typer.Option(
        None, "--model", help="NAME=URI: a checkpoint (dir, hub id, s3://) or a model_outputs.json; repeatable."
    ),
    prompts: str = typer.Option(None, "--prompts", help="Evaluation instructions (json/jsonl/parquet with `instruction`)."),
    reference: str = typer.Option(None, "--reference", help="The model every other model is compared against."),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Judge models or answer files against a reference: win rate, LC win rate, single score."""
    from prefcurate.config import EvaluateConfig

    overrides = list(sets or [])
    for item in models or []:
        name, sep, uri = item.partition("=")
        if not sep or not name or not uri:
            fail(f"--model expects NAME=URI, got '{item}'")
        overrides.append(f"models.{name}={uri}")
    if prompts:
        overrides.append(f"eval_prompts_uri={prompts}")
    if reference:
        overrides.append(f"evaluation.reference={reference}")
    cfg = _load(EvaluateConfig, config, overrides)
    _preflight(cfg)
    _flow_console()
    from prefcurate.flows.evaluate import evaluate as evaluate_flow

    result = _run_flow(evaluate_flow, cfg)
    typer.echo(f"\nWin rate % against {result.reference} ({result.judge} judge; ± standard error)")
    for row in result.leaderboard:
        typer.echo(f"  {row['model']:<16} {_number(row.get('win_rate'), 6)} ± {_number(row.get('standard_error'), 4)}"
                   f"   n={int(row.get('n_total') or 0)}, no verdict {int(row.get('n_rejected') or 0)}")
    typer.echo(f"\nRun root:   {result.run_uri}\nMLflow run: {result.mlflow_url}")
    _check_judgments(result.judged, cfg.evaluation.max_failed_fraction)


def _number(value: object, width: int) -> str:
    """A one-decimal number, or '-' where a model got no verdict (the leaderboard keeps its row)."""
    return f"{'-':>{width}}" if value is None else f"{float(value):{width}.1f}"


def _check_judgments(judged: JudgeOut | None, max_failed_fraction: float) -> None:
    """Say how many judgments gave no verdict and why; exit EXIT_INCOMPLETE when that is more than allowed."""
    if judged is None or not (judged.failed or judged.unparseable):
        return
    total = judged.judged + judged.cached + judged.failed + judged.unparseable
    why = ", ".join(f"{reason} {n}" for reason, n in sorted(judged.reasons.items()))
    typer.echo(f"\nJudgments: {judged.failed + judged.unparseable} of {total} gave no verdict ({judged.failed_fraction:.1%}; "
               f"{why}); each reason is in annotations.json, the counts in {judged.judge_stats.uri}")
    if judged.failed_fraction > max_failed_fraction:
        typer.echo(f"error: {judged.failed_fraction:.1%} of the judgments gave no verdict, more than "
                   f"evaluation.max_failed_fraction={max_failed_fraction:g}: the evaluation is incomplete", err=True)
        raise typer.Exit(code=EXIT_INCOMPLETE)


@app.command()
def verify(
    run: str = typer.Argument(help="A finished run directory <root>/<run>, local or s3://, e.g. runs/default."),
    sample: int = typer.Option(64, min=1, help="Pairs of the pool whose IF is recomputed by a per-pair backward (seeded)."),
    seed: int = typer.Option(0, help="Seed of the IF sample."),
    float64: bool = typer.Option(False, "--float64", help="Recompute in float64, so the errors left are the run's own "
                                 "(tells whether fp32 jvp or fp32 autograd is off on a deep model)."),
    tolerances: list[str] = typer.Option(None, "--tolerance", help="CHECK=VALUE, the largest relative error that passes, "
                                         "e.g. --tolerance if=1e-3; checks: val-gradient, if, lossdiff, irm, tif, "
                                         "selection; repeatable."),
    device: str = typer.Option(None, help="Where the models run (cpu, cuda, cuda:1); default: cuda when available."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Recompute a finished run's numbers independently and compare them with what it stored.

    ∇L_val, and the IF of a sample of pairs, by one loss.backward() per pair (not scoring's jvp).
    LossDiff and IRM of every pair from the stored models, π_ref's log-probs again from the SFT model.
    TIF and every selection again from the stored scores and rules.
    Exit 0 when every check is within tolerance, 1 when one is not, 2 when the run cannot be verified.
    """
    overrides: dict[str, float] = {}
    for item in tolerances or []:
        name, _, value = item.partition("=")
        try:
            overrides[name] = float(value)
        except ValueError:
            fail(f"--tolerance expects CHECK=NUMBER, got '{item}'")
    _quiet_libraries()
    import logging

    from prefcurate.verify import verify_run

    logging.basicConfig(format="%(message)s")
    logging.getLogger("prefcurate").setLevel(logging.INFO)  # the phases and ETA lines, on stderr
    try:
        report = verify_run(run, sample=sample, seed=seed, float64=float64, tolerances=overrides, device=device)
    except PrefcurateError as exc:
        fail(str(exc))
    typer.echo(report.model_dump_json() if as_json else report.render())
    if not report.passed:
        typer.echo(f"error: beyond tolerance: {', '.join(report.failed())}", err=True)
        raise typer.Exit(code=1)


@app.command()
def serve(
    config: str = typer.Option(None, "--config", help="YAML nightly config for the scheduled run; without it the schedule is created inactive."),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
    cron: str = typer.Option("0 2 * * *", help="Cron expression of the nightly curation."),
    timezone: str = typer.Option("UTC", envvar="PREFCURATE_TIMEZONE", help="IANA timezone of the cron schedule (env PREFCURATE_TIMEZONE)."),
) -> None:
    """Serve the deployments (nightly-curation on its cron; curate, evaluate, if-groups and compare-models on demand)
    from this process until Ctrl-C."""
    from prefcurate.config import NightlyConfig

    cfg = _load(NightlyConfig, config, sets) if config or sets else None
    os.environ.setdefault(BASE_ENV, os.getcwd())  # the served runs' relative locations are this directory's
    _flow_console()
    from prefect import serve as prefect_serve

    from prefcurate.flows.serve import deployments

    try:
        served = deployments(cfg, cron=cron, timezone=timezone)
    except PrefcurateError as exc:
        fail(str(exc))
    prefect_serve(*served)


def main() -> None:
    try:
        app()
    except PrefcurateError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
