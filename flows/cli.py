"""The `prefcurate` command.

Every command turns a `PrefcurateError` into one line on stderr and exit code 2: a user
sees what is wrong and what to do, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Literal

import typer

from prefcurate.errors import PrefcurateError

app = typer.Typer(
    name="prefcurate",
    help="Model-aware preference-data curation: score pairs by influence, LossDiff and IRM, "
    "select the valuable ones, train DPO and measure win rates.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


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
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Read a preference pool, check every row and report what would be kept and why rows are rejected."""
    import json

    _quiet_libraries()
    from prefcurate.data import SCHEMA_LABELS, load_pairs

    try:
        result = load_pairs(uri, split=split, max_prompt_chars=max_prompt_chars)
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
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"{uri}: {SCHEMA_LABELS[result.schema]}")
        typer.echo(f"rows read {result.rows_read}, kept {result.rows_kept}, rejected {result.rows_rejected}")
        for reason, count in result.rejects_by_reason.items():
            typer.echo(f"  {reason:<20} {count}")
        for row in result.rejects.head(5).itertuples():
            typer.echo(f"  e.g. row {row.row}: {row.reason}: {row.detail}")
    if result.rows_kept == 0:
        fail(f"{uri}: no usable pairs among {result.rows_read} rows (rejects: {result.rejects_by_reason})")


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
        typer.echo(info.model_dump_json(include={"uri", "fingerprint", "architecture", "model_type", "n_parameters", "weight_format", "chat_template", "chat_template_supplied"}))
        return
    template = "supplied" if info.chat_template_supplied else "own"
    typer.echo(f"{uri}: usable")
    typer.echo(f"fingerprint   {info.fingerprint}")
    typer.echo(f"architecture  {info.architecture} ({info.model_type}), {info.n_parameters:,} parameters, {info.weight_format}")
    typer.echo(f"chat template {template}")


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
) -> None:
    """Build the toy world: an SFT checkpoint trained with TRL on noisy demonstrations, an
    UltraFeedback-style pool (parquet + jsonl) with planted label flips, near-duplicates and
    over-scored pairs (labelled only in defects.parquet), a clean validation pool and
    held-out eval prompts. A second build with the same seed and size reuses the first."""
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
        world = build_world(out, seed=seed, size=size)
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


def main() -> None:
    try:
        app()
    except PrefcurateError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
