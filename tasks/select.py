"""Selection stage: the configured rule, the equal-size random baseline, every comparison rule,
and the agreement report; plus publishing a finished selection (nightly).

    selection/{selection.parquet,selection.json}   the rule the final model trains on
    selection/baselines/random/…                   random subset of the same size
    selection/rules/<rule>/…                       each other rule, for the agreement report
    selection/agreement.json
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from prefcurate import agreement, io
from prefcurate.config import SelectionConfig
from prefcurate.errors import SelectionError
from prefcurate.manifest import StageManifest, content_hash
from prefcurate.selection import SELECTION_JSON, SELECTION_PARQUET, Selection, select, write_selection
from prefcurate.tracking import RunHandle, log_artifact
from tasks.artifacts import publish_table
from tasks.common import IO_RETRIES, StageOutput, run_stage, wire_core_logging

MODULES = ("prefcurate.selection", "prefcurate.agreement")
BAND_RULES = ("lossdiff-irm", "lossdiff-band", "irm-band")
TOP_K_RULES = ("if-top", "rating-margin", "reward-gap")


def _comparisons(scores: pd.DataFrame, config: SelectionConfig, size: int) -> dict[str, Selection]:
    """Every other rule on the same scores (top-k rules at the selection's size); rules whose
    columns are absent (no IF, no dataset ratings) are left out with a log line."""
    log = wire_core_logging()
    out: dict[str, Selection] = {}
    rules = [*BAND_RULES, "tif", *TOP_K_RULES]
    for rule in rules:
        if rule == config.rule:
            continue
        try:
            out[rule] = select(scores, config.model_copy(update={"rule": rule}), size=size if rule in TOP_K_RULES else None)
        except SelectionError as exc:
            log.info("comparison rule %s skipped: %s", rule, exc)
    return out


def _defects(defects_uri: str | None, pool_uri: str) -> pd.DataFrame | None:
    return agreement.toy_defects(defects_uri, pool_uri) if defects_uri else None


def selection_summary(selections: dict[str, Selection]) -> list[dict[str, Any]]:
    """One row per selection: what the Prefect table artifact and the CLI show."""
    return [
        {"selection": name, "rule": s.rule, "n_kept": s.n_kept, "n_pool": s.n_pool, "kept_fraction": round(s.kept_fraction, 4)}
        for name, s in selections.items()
    ]


@task(name="select", cache_policy=NONE, **IO_RETRIES)
def select_stage(
    score: StageManifest,
    ingest: StageManifest,
    config: SelectionConfig,
    run: str,
    defects_uri: str | None = None,
    pool_uri: str | None = None,
    tracking: RunHandle | None = None,
) -> StageManifest:
    """Apply the rule to the pool's scores; write it, its random baseline, comparisons and agreement.

    `defects_uri` (known-defect labels, e.g. the toy world's) adds per-defect detection; its
    `pair_index` rows point into the raw pool file `pool_uri`.
    """

    def compute(child: RunHandle | None) -> StageOutput:
        scores = io.read_parquet(score.outputs["scores"])
        chosen = select(scores, config)
        directory = io.join(run, "selection")
        write_selection(chosen, directory)
        random = select(scores, config.model_copy(update={"rule": "random"}), size=chosen.n_kept)
        random_dir = write_selection(random, io.join(directory, "baselines", "random"))
        others = _comparisons(scores, config, chosen.n_kept)
        for rule, sel in others.items():
            write_selection(sel, io.join(directory, "rules", rule))
        named = {config.rule: chosen, "random": random, **others}
        report = agreement.agreement_report(scores, named, _defects(defects_uri, pool_uri or ""))
        agreement_uri = agreement.write_agreement(report, directory)
        summary = selection_summary({"selected": chosen, "random": random, **others})
        publish_table("selection-summary", summary, description=f"Selections of {run}: `{config.rule}` is trained on.")
        if not report.overlap.empty:
            publish_table("agreement-overlap", report.overlap, description="Overlap coefficient with the TIF selection.")
        metrics: dict[str, Any] = {"kept_fraction": chosen.kept_fraction, "n_kept": chosen.n_kept}
        for name, row in report.overlap.iterrows():
            metrics[f"overlap_tif.{name}"] = row.get("overlap_tif")
        for name, row in report.correlations.iterrows():
            metrics[f"pearson_if.{name}"], metrics[f"spearman_if.{name}"] = row.get("pearson"), row.get("spearman")
        if child is not None:
            for file in (SELECTION_PARQUET, SELECTION_JSON, agreement.AGREEMENT_JSON):
                log_artifact(child, io.join(directory, file), f"selection/{file}")
        return StageOutput(
            outputs={"selection": io.join(directory, SELECTION_PARQUET), "selection_json": io.join(directory, SELECTION_JSON),
                     "random": io.join(random_dir, SELECTION_PARQUET), "agreement": agreement_uri},
            rows={"pool": chosen.n_pool, "kept": chosen.n_kept},
            extra={"selection_dir": directory, "random_dir": random_dir, "rule": chosen.rule, "params": chosen.params,
                   "kept_fraction": chosen.kept_fraction, "summary": summary,
                   "agreement": json.loads(report.to_json()), "agreement_text": report.render()},
            metrics=metrics,
            params={f"selection.resolved.{k}": v for k, v in chosen.params.items()},
        )

    config_key = {"selection": config.model_dump(mode="json"), "defects": content_hash(defects_uri) if defects_uri else None}
    return run_stage("select", run, inputs=(score, ingest), config=config_key, modules=MODULES, tracking=tracking,
                     compute=compute)


@task(name="publish-selection", cache_policy=NONE, timeout_seconds=1800, **IO_RETRIES)
def publish_stage(select: StageManifest, score: StageManifest, publish_uri: str, tracking: RunHandle | None = None) -> StageManifest:
    """Copy the selection, its agreement report and the scores to `publish_uri` for downstream training jobs.

    Files are written one by one atomically and `selection.json` last, so a consumer that
    sees selection.json sees a whole selection.
    """

    def compute(_: RunHandle | None) -> StageOutput:
        files = {
            "scores": (score.outputs["scores"], "scores.parquet"),
            "agreement": (select.outputs["agreement"], agreement.AGREEMENT_JSON),
            "selection": (select.outputs["selection"], SELECTION_PARQUET),
            "selection_json": (select.outputs["selection_json"], SELECTION_JSON),
        }
        outputs = {name: io.write_bytes(io.join(publish_uri, dest), io.read_bytes(src)) for name, (src, dest) in files.items()}
        return StageOutput(outputs=outputs, hashes={k: select.hashes.get(k) or score.hashes.get(k, "") for k in outputs},
                           rows={"kept": select.rows["kept"]}, extra={"publish_uri": publish_uri})

    return run_stage("publish", select.run_uri, inputs=(select, score), config={"publish_uri": publish_uri},
                     modules=(), tracking=tracking, compute=compute)
