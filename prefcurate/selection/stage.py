"""The select stage (the configured rule, every other rule at comparable size, the agreement
report) and the publish stage (a finished selection copied where downstream jobs read it).

    selection/{selection.parquet,selection.json}   the rule the final model trains on
    selection/rules/<rule>/…                       every other rule (random at the selection's size)
    selection/agreement.json

With `selection.reward_model`, the stage also reads the `reward-scores` stage's margins, so the
`reward-model` rule can select (or be a baseline) beside the scores of this model.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import pandas as pd

from prefcurate import io
from prefcurate.data.pairs import read_pairs
from prefcurate.data.stage import IngestOut
from prefcurate.errors import SelectionError
from prefcurate.manifest import FileRef, StageOutput
from prefcurate.scoring.stage import GradientOut, RewardOut, ScoreOut
from prefcurate.selection import agreement, publish
from prefcurate.selection.rules import RULES, select
from prefcurate.selection.selection import SELECTION_JSON, SELECTION_PARQUET, Selection, read_selection, write_selection
from prefcurate.stage import StageContext, StageSpec
from prefcurate.tracking import log_dataset_input
from prefcurate.training.stage import ModelOut

log = logging.getLogger("prefcurate.selection")


class SelectOut(StageOutput):
    """The selection to train on, every other rule's selection by name, and the agreement report."""

    selection: FileRef
    rules: dict[str, FileRef]
    agreement: FileRef
    rule: str
    n_pool: int
    n_kept: int
    kept_fraction: float

    def agreement_report(self) -> agreement.AgreementReport:
        return agreement.AgreementReport.from_json(io.read_text(self.agreement.uri))


def selection_summary(selections: Mapping[str, Selection]) -> list[dict[str, Any]]:
    """One row per selection: what the Prefect table artifact and the CLI show."""
    return [
        {"selection": name, "rule": s.rule, "n_kept": s.n_kept, "n_pool": s.n_pool, "kept_fraction": round(s.kept_fraction, 4)}
        for name, s in selections.items()
    ]


def comparison_selections(scores: Any, config: Any, size: int) -> dict[str, Selection]:
    """Every other rule on the same scores, at the selection's size (top-k rules always; band rules
    with `selection.equal_size`); rules whose columns are absent (no IF, no dataset ratings) are
    left out with a log line."""
    out: dict[str, Selection] = {}
    for rule in RULES.values():
        if rule.name == config.rule:
            continue
        try:
            out[rule.name] = select(scores, config.model_copy(update={"rule": rule.name}),
                                    size=size if rule.kind == "top-k" or config.equal_size else None)
        except SelectionError as exc:
            log.info("comparison rule %s skipped: %s", rule.name, exc)
    return out


def _defects(config: Any) -> Any:
    """Known-defect labels (`defects_uri`, e.g. the toy world's) keyed by pair_id, or None."""
    return agreement.toy_defects(config.defects_uri, config.data.pool_uri) if config.defects_uri else None


REWARD_FIELDS = ["reward_chosen", "reward_rejected", "reward_margin"]


def with_rewards(scores: pd.DataFrame, rewards: pd.DataFrame | None) -> pd.DataFrame:
    """The pool's scores with an external reward model's columns beside them (the `reward-model` rule reads
    them); every scored pair must have its rewards."""
    if rewards is None:
        return scores
    missing = sorted(set(scores["pair_id"].astype(str)) - set(rewards["pair_id"].astype(str)))
    if missing:
        raise SelectionError(f"the reward-model scores lack {len(missing)} of the {len(scores)} scored pairs (e.g. "
                             f"{missing[:3]}); rerun the reward-scores stage on this pool")
    return scores.merge(rewards[["pair_id", *REWARD_FIELDS]].drop_duplicates("pair_id"), on="pair_id", how="left")


def _select(ctx: StageContext, score: ScoreOut, rewards: RewardOut | None = None) -> SelectOut:
    config = ctx.config.selection
    scores = with_rewards(io.read_parquet(score.scores.uri),
                          io.read_parquet(rewards.rewards.uri) if rewards is not None else None)
    chosen = select(scores, config)
    directory = ctx.path("selection")
    write_selection(chosen, directory)
    others = comparison_selections(scores, config, chosen.n_kept)
    others = {name: others[name] for name in sorted(others, key=lambda n: n != "random")}  # the random baseline first
    rule_dirs = {rule: write_selection(sel, io.join(directory, "rules", rule)) for rule, sel in others.items()}
    report = agreement.agreement_report(scores, {config.rule: chosen, **others}, _defects(ctx.config), config=config)
    agreement_uri = agreement.write_agreement(report, directory)
    ctx.hooks.table("selection-summary", selection_summary({"selected": chosen, **others}),
                    description=f"Selections of {ctx.run}: `{config.rule}` is trained on.")
    if not report.overlap.empty:
        ctx.hooks.table("agreement-overlap", report.overlap, description="Overlap with the TIF selection, at each selection's size and at TIF's size (chance, excess, kappa).")
    metrics: dict[str, Any] = {"kept_fraction": chosen.kept_fraction, "n_kept": chosen.n_kept,
                               "rows.pool": chosen.n_pool, "rows.kept": chosen.n_kept}
    for name, row in report.overlap.iterrows():
        metrics[f"overlap_tif.{name}"] = row.get("overlap_tif")
    for name, row in report.correlations.iterrows():
        metrics[f"pearson_if.{name}"], metrics[f"spearman_if.{name}"] = row.get("pearson"), row.get("spearman")
    ctx.metrics(metrics)
    ctx.params({f"selection.resolved.{k}": v for k, v in chosen.params.items()})
    for file in (SELECTION_PARQUET, SELECTION_JSON, agreement.AGREEMENT_JSON):
        ctx.artifact(io.join(directory, file), f"selection/{file}")
    return SelectOut(selection=_selection_ref(directory), rules={r: _selection_ref(d) for r, d in rule_dirs.items()},
                     agreement=FileRef.of(agreement_uri), rule=chosen.rule, n_pool=chosen.n_pool,
                     n_kept=chosen.n_kept, kept_fraction=chosen.kept_fraction)


def _selection_ref(directory: str) -> FileRef:
    """A selection's two files as one reference (the rules/ and baselines below it are not part of it)."""
    parquet, meta = FileRef.of(io.join(directory, SELECTION_PARQUET)), FileRef.of(io.join(directory, SELECTION_JSON))
    return FileRef(uri=directory, sha256=io.sha256_json([parquet.sha256, meta.sha256]), size=parquet.size + meta.size,
                   files={SELECTION_PARQUET: parquet.sha256, SELECTION_JSON: meta.sha256})


def _identify_defects(config: Any, inputs: Mapping[str, Any]) -> str | None:
    return FileRef.of(config.defects_uri).sha256 if config.defects_uri else None


SELECT = StageSpec("select", SelectOut, _select, reads=("selection", "defects_uri", "data.pool_uri"),
                   identify=_identify_defects)


class PublishOut(StageOutput):
    """What was published, re-read and verified after the copy."""

    publish_uri: str
    version: str
    dataset_uri: str
    files: dict[str, FileRef]
    n_kept: int


def _publish(ctx: StageContext, select: SelectOut, score: ScoreOut, ingest: IngestOut, warmup: ModelOut, val: ModelOut,
             gradient: GradientOut | None) -> PublishOut:
    """A versioned dataset that trains as is: `<publish_uri>/<version>/` holds the kept pairs in
    TRL's explicit-prompt schema with their scores, a dataset card `datasets` reads, the selection,
    its agreement report and the pool's scores; `<publish_uri>/latest` names it, written last.

    The version is content-addressed (the selection and the scoring bundle), so republishing the
    same selection rewrites the same version; each copy is verified against its source's hash.
    """
    target = ctx.config.publish_uri
    bundle = {"sft": ingest.sft_fingerprint, "warmup": warmup.fingerprint, "val": val.fingerprint,
              "gradient": gradient.gradient.sha256 if gradient is not None else None}
    version = f"v-{io.sha256_json([select.selection.sha256, score.scores.sha256, bundle])[:12]}"
    root = io.join(target, version)
    pairs = publish.kept_pairs(read_pairs(ingest.train.uri), io.read_parquet(io.join(select.selection.uri, SELECTION_PARQUET)),
                               io.read_parquet(score.scores.uri))
    files = {"dataset": FileRef.of(io.write_parquet(io.join(root, publish.DATA_FILE), pairs))}
    sources = {
        "scores": (score.scores.uri, score.scores.sha256, "scores.parquet"),
        "agreement": (select.agreement.uri, select.agreement.sha256, agreement.AGREEMENT_JSON),
        "selection_json": (io.join(select.selection.uri, SELECTION_JSON), select.selection.files[SELECTION_JSON], SELECTION_JSON),
    }
    for name, (src, digest, dest) in sources.items():
        copied = FileRef.of(io.write_bytes(io.join(root, dest), io.read_bytes(src)))
        if copied.sha256 != digest:
            raise SelectionError(f"published {copied.uri} does not match its source {src} (sha256 differs); publish again")
        files[name] = copied
    selection = read_selection(select.selection.uri)
    card = publish.dataset_card(pairs, selection=selection, bundle=bundle, version=version, model_uri=ingest.sft.uri,
                                n_pool=select.n_pool)
    files["card"] = FileRef.of(io.write_text(io.join(root, "README.md"), card))
    files["latest"] = FileRef.of(io.write_text(io.join(target, publish.LATEST), version + "\n"))  # last: the pointer
    ctx.hooks.markdown("published-dataset", f"Published **{len(pairs)}** pairs (`{selection.rule}`) to `{root}`; "
                       f"`{io.join(target, publish.LATEST)}` points at `{version}`.", description="Published selection")
    ctx.metrics({"published.pairs": len(pairs)})
    for run in (ctx.parent, ctx.tracking):  # the flow's run a user opens, and the stage's own
        if run is not None:
            log_dataset_input(run, pairs, source=root, name=f"prefcurate-selection-{version}",
                              digest=files["dataset"].sha256, context="published")
    return PublishOut(publish_uri=target, version=version, dataset_uri=root, files=files, n_kept=select.n_kept)


PUBLISH = StageSpec("publish", PublishOut, _publish, reads=("publish_uri",))
