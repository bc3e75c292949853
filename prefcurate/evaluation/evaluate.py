"""The evaluation core: generate answers, judge them against the reference model, write the
AlpacaEval files and the leaderboard.

    <out>/<model>/model_outputs.json   answers (instruction, output, generator, sample)
    <out>/<model>/annotations.json     pairwise verdicts vs the reference (+ 1–10 grades)
    <out>/<model>/leaderboard.csv      that model's row
    <out>/leaderboard.csv              every model, the reference included
    <out>/judge.json                   who judged; how many judgments failed or were unparseable, by reason
    <out>/head_to_head.csv             (head_to_head) one model judged directly against each other model

The reference is compared with itself by construction (identical answers tie, win rate 50),
without asking the judge.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from prefcurate import io
from prefcurate.config import GenerationConfig
from prefcurate.errors import DataError
from prefcurate.evaluation import metrics
from prefcurate.evaluation.generation import generate, read_model_outputs, write_model_outputs
from prefcurate.evaluation.judges.base import OK, Judge, Verdict

log = logging.getLogger(__name__)

# progress(step, done, total): step names what is being done ("generate sft", "judge full", …)
StepProgress = Callable[[str, int, int], None]
ModelLike = Any  # a checkpoint directory/URI, a prefcurate Checkpoint, or a (model, tokenizer) tuple


def evaluate(
    models: Mapping[str, ModelLike],
    instructions: Sequence[str],
    reference: str,
    judge: Judge,
    out_uri: str,
    generation: GenerationConfig,
    *,
    single_score: bool = True,
    progress: StepProgress | None = None,
) -> pd.DataFrame:
    """Generate with every model, judge each against `reference`, write the files; returns the leaderboard."""
    if reference not in models:
        raise DataError(f"reference model {reference!r} is not among the models ({', '.join(models)}); add it or pick another")
    outputs: dict[str, list[dict]] = {}
    for name, source in models.items():
        model, tokenizer = _load(source)
        report = (lambda done, total, n=name: progress(f"generate {n}", done, total)) if progress else None
        rows = generate(model, tokenizer, list(instructions), generation, name, progress=report)
        write_model_outputs(rows, io.join(out_uri, name, "model_outputs.json"))
        outputs[name] = rows
    return judge_outputs(outputs, reference, judge, out_uri, single_score=single_score, progress=progress)


def evaluate_output_files(
    files: Mapping[str, str] | Sequence[str],
    reference: str,
    judge: Judge,
    out_uri: str,
    *,
    single_score: bool = True,
    progress: StepProgress | None = None,
) -> pd.DataFrame:
    """Judge existing `model_outputs.json` files against each other (name → URI, or URIs named by their `generator`)."""
    if not isinstance(files, Mapping):
        named: dict[str, str] = {}
        for uri in files:
            rows = read_model_outputs(uri)
            generators = {str(r.get("generator", "")) for r in rows}
            if len(generators) != 1 or "" in generators:
                raise DataError(f"{uri} does not name one generator; pass the files as name=path")
            named[generators.pop()] = uri
        files = named
    outputs = {name: read_model_outputs(uri) for name, uri in files.items()}
    if reference not in outputs:
        raise DataError(f"reference {reference!r} is not among the output files ({', '.join(outputs)}); name one of them")
    for name, rows in outputs.items():
        write_model_outputs(rows, io.join(out_uri, name, "model_outputs.json"))
    return judge_outputs(outputs, reference, judge, out_uri, single_score=single_score, progress=progress)


def judge_outputs(
    outputs: Mapping[str, list[dict]],
    reference: str,
    judge: Judge,
    out_uri: str,
    *,
    single_score: bool = True,
    progress: StepProgress | None = None,
) -> pd.DataFrame:
    """Annotate every model's outputs against the reference's, write annotations and leaderboards."""
    rows: dict[str, dict] = {}
    for name, model_rows in outputs.items():
        annotations, scores = _annotate(name, model_rows, reference, outputs[reference], judge,
                                        single_score=single_score, progress=progress)
        metrics.write_annotations(annotations, io.join(out_uri, name, "annotations.json"))
        rows[name] = metrics.leaderboard_row(annotations, scores)
        metrics.write_leaderboard(metrics.leaderboard({name: rows[name]}), io.join(out_uri, name, "leaderboard.csv"))
    board = metrics.leaderboard(rows)
    metrics.write_leaderboard(board, io.join(out_uri, "leaderboard.csv"))
    stats = judge.stats
    io.write_json(io.join(out_uri, "judge.json"), {"judge": judge.name, "reference": reference, **stats.to_dict()})
    if stats.failed or stats.unparseable:
        log.warning(
            "judge %s: %d judgments failed and %d were unparseable (%s); they are counted in n_rejected / n_unscored, "
            "each with its reason in annotations.json",
            judge.name, stats.failed, stats.unparseable, ", ".join(f"{k} {n}" for k, n in stats.reasons.items()),
        )
    return board


def head_to_head(
    outputs: Mapping[str, list[dict]],
    model: str,
    judge: Judge,
    out_uri: str,
    *,
    opponents: Sequence[str] | None = None,
    progress: StepProgress | None = None,
) -> pd.DataFrame:
    """`model` judged directly against each opponent (default: every other model), not through the reference.

    The opponent is output_1 and `model` output_2, so `win_rate` is `model`'s win rate against the
    opponent (standard error clustered by instruction). Writes
    `<out>/head_to_head/<model>-vs-<opponent>/annotations.json` and `<out>/head_to_head.csv`.
    """
    if model not in outputs:
        raise DataError(f"head-to-head model {model!r} is not among the models ({', '.join(outputs)})")
    names = [n for n in (opponents if opponents is not None else outputs) if n != model]
    unknown = [n for n in names if n not in outputs]
    if unknown:
        raise DataError(f"head-to-head opponents {unknown} are not among the models ({', '.join(outputs)})")
    rows = []
    for opponent in names:
        annotations, _ = _annotate(model, outputs[model], opponent, outputs[opponent], judge, single_score=False,
                                   progress=progress, step=f"judge {model} vs {opponent}")
        metrics.write_annotations(annotations, io.join(out_uri, "head_to_head", f"{model}-vs-{opponent}", "annotations.json"))
        row = metrics.win_rate([a["preference"] for a in annotations], clusters=[a["instruction"] for a in annotations])
        rows.append({"model": model, "opponent": opponent, **{k: row[k] for k in metrics.HEAD_TO_HEAD_COLUMNS[2:]}})
    frame = pd.DataFrame(rows, columns=metrics.HEAD_TO_HEAD_COLUMNS)
    io.write_text(io.join(out_uri, "head_to_head.csv"), frame.to_csv(index=False))
    return frame


def _annotate(
    name: str,
    model_rows: list[dict],
    reference: str,
    ref_rows: list[dict],
    judge: Judge,
    *,
    single_score: bool,
    progress: StepProgress | None,
    step: str | None = None,
) -> tuple[list[dict], list[float] | None]:
    """AlpacaEval annotations of `name`'s rows against `reference`'s (answer k of a prompt against the
    reference's answer k, else its first), and the 1–10 grades when `single_score`."""
    ref_by_key = {(r["instruction"], r.get("sample", 0)): r["output"] for r in ref_rows}
    ref_first: dict[str, str] = {}
    for r in ref_rows:
        ref_first.setdefault(r["instruction"], r["output"])
    missing = sorted({r["instruction"] for r in model_rows} - set(ref_first))
    if missing:
        raise DataError(
            f"{len(missing)} instructions of {name!r} have no answer from the reference {reference!r} "
            f"(e.g. {missing[0][:60]!r}); evaluate both on the same prompts"
        )
    pairs = [
        (r["instruction"], ref_by_key.get((r["instruction"], r.get("sample", 0)), ref_first[r["instruction"]]), r["output"])
        for r in model_rows
    ]
    report = (lambda done, total: progress(step or f"judge {name}", done, total)) if progress else None
    if name == reference:
        verdicts = [Verdict(1.5)] * len(pairs)  # identical answers tie
    else:
        verdicts = judge.pairwise_verdicts(pairs, progress=report)
    grades = None
    if single_score:
        grade = (lambda done, total: progress(f"grade {name}", done, total)) if progress else None
        grades = judge.single_verdicts([(r["instruction"], r["output"]) for r in model_rows], progress=grade)
    annotations = [
        {
            "instruction": instruction,
            "output_1": ref_out,
            "generator_1": reference,
            "output_2": out,
            "generator_2": name,
            "sample": r.get("sample", 0),
            "annotator": judge.name if name != reference else "identical",
            "preference": verdict.value,
            **_status("verdict", verdict),
            **({"score_2": _grade(g), **_status("score", g)} if g is not None else {}),
        }
        for (instruction, ref_out, out), r, verdict, g in zip(pairs, model_rows, verdicts, grades or [None] * len(pairs))
    ]
    return annotations, [_grade(g) for g in grades] if grades is not None else None


def _status(prefix: str, verdict: Verdict) -> dict[str, str | None]:
    """`<prefix>_status` (ok, failed, unparseable) and `<prefix>_reason` ("code: detail", None when ok)."""
    reason = f"{verdict.reason}: {verdict.detail}" if verdict.status != OK else None
    return {f"{prefix}_status": verdict.status, f"{prefix}_reason": reason}


def _grade(verdict: Verdict) -> float:
    """A 1–10 grade as MT-Bench writes it: −1 when there is none."""
    return verdict.value if verdict.value is not None else -1.0


def _load(source: ModelLike) -> tuple[Any, Any]:
    """(model, tokenizer) from a directory/URI (through load_checkpoint), a Checkpoint or a tuple."""
    if isinstance(source, tuple) and len(source) == 2:
        return source
    if hasattr(source, "model") and hasattr(source, "tokenizer"):
        return source.model, source.tokenizer
    from prefcurate.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(source)
    return checkpoint.model, checkpoint.tokenizer
