"""Stage specs and the runner: the one place that decides "skip or compute".

A stage is described once, in the core, by a `StageSpec`: its name, its typed output, the
config fields it reads, the identity of what it reads from outside the run (a pool file, a
checkpoint) and its compute function. `run_stage` derives the rest from the spec: the cache
key (the inputs' digests, the values of the config fields read, that outside identity, the
code it runs and the library versions), the check of a finished stage's outputs, the nested
MLflow run and the manifest, written last.

Orchestrators (prefcurate.tasks) wrap `run_stage` and pass `Hooks` for what they show
(progress bars, tables); the core itself never imports one.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Generic, Mapping, TypeVar

from pydantic import BaseModel

from prefcurate import io
from prefcurate.codeversion import code_version
from prefcurate.manifest import FileRef, StageMeta, StageOutput, find_output, write_manifest
from prefcurate.tracking import RunHandle, log_artifact, log_metrics, log_params, set_tags, stage_run

log = logging.getLogger("prefcurate.stage")

Out = TypeVar("Out", bound=StageOutput)
Progress = Callable[[int, int], None]


class Hooks:
    """What an orchestrator shows while a stage runs. The default shows nothing beyond the
    core's own log lines and tqdm bars."""

    def progress(self, key: str, description: str) -> Progress:
        return lambda done, total: None

    def table(self, key: str, rows: Any, description: str | None = None) -> None:
        return None

    def markdown(self, key: str, text: str, description: str | None = None) -> None:
        return None


@dataclass
class StageContext:
    """What a compute function gets besides its inputs: where to write, the config, its MLflow
    run (`tracking`; None for untracked stages), the flow's parent run, the hooks."""

    stage: str
    run: str
    config: Any
    tracking: RunHandle | None = None
    parent: RunHandle | None = None
    hooks: Hooks = field(default_factory=Hooks)

    def path(self, *parts: str) -> str:
        """A URI under the run directory."""
        return io.join(self.run, *parts)

    def metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self.tracking is not None:
            log_metrics(self.tracking, metrics, step=step)

    def params(self, params: Mapping[str, Any]) -> None:
        if self.tracking is not None:
            log_params(self.tracking, params)

    def artifact(self, uri: str, artifact_path: str) -> None:
        if self.tracking is not None:
            log_artifact(self.tracking, uri, artifact_path)


@dataclass(frozen=True)
class StageSpec(Generic[Out]):
    """One stage, described once.

    `compute(ctx, **inputs)` returns the typed output. `reads` are the dotted config fields
    that change its result ("training.beta"; a section name reads the whole section).
    `identify(config, inputs)` names what the stage reads from outside the run root (content
    hashes of files, a checkpoint's fingerprint) for the cache key. `tracked` stages get a
    nested MLflow run of their own.
    """

    name: str
    output: type[Out]
    compute: Callable[..., Out]
    reads: tuple[str, ...] = ()
    identify: Callable[[Any, Mapping[str, Any]], Any] | None = None
    tracked: bool = True

    @property
    def code_version(self) -> str:
        return code_version(self.compute.__module__)


def read_config(config: Any, reads: tuple[str, ...]) -> dict[str, Any]:
    """Dotted field → JSON value of every field in `reads`.

    A section with a `cache_value(name)` method says itself what of its field enters the key
    (`compute.device`: the device type `auto` resolves to on this machine).
    """
    out: dict[str, Any] = {}
    for dotted in reads:
        value = config
        for part in dotted.split("."):
            parent, value = value, getattr(value, part)
        if hasattr(parent, "cache_value"):
            value = parent.cache_value(part)
        out[dotted] = value.model_dump(mode="json") if isinstance(value, BaseModel) else _json(value)
    return out


def _json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    return value


def input_digest(value: Any) -> Any:
    """What of an input enters the cache key: a stage output's digest, a file's hash, a value itself."""
    if isinstance(value, StageOutput):
        return value.digest
    if isinstance(value, FileRef):
        return value.sha256
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [input_digest(v) for v in value]
    if isinstance(value, dict):
        return {str(k): input_digest(v) for k, v in value.items()}
    return value


def cache_key(stage: str, inputs: Mapping[str, Any], config: Mapping[str, Any], identity: Any, code: str) -> str:
    """Same inputs, same config read, same outside identity, same code ⇒ same key."""
    return io.sha256_json({"stage": stage, "inputs": dict(inputs), "config": dict(config), "identity": identity,
                           "code": code})


def run_stage(
    spec: StageSpec[Out],
    run: str,
    config: Any,
    *,
    inputs: Mapping[str, Any] | None = None,
    stage: str | None = None,
    tracking: RunHandle | None = None,
    hooks: Hooks | None = None,
) -> Out:
    """The stage's output: reused when its manifest has this cache key and every output is
    intact, computed (and its manifest written last) otherwise.

    `stage` names one instance of a spec run several times (`final-random`, `score-shard-00002`).
    `tracking` is the flow's parent MLflow run (None: no tracking).
    """
    inputs = dict(inputs or {})
    name = stage or spec.name
    digests = {k: input_digest(v) for k, v in sorted(inputs.items())}
    read = read_config(config, spec.reads)
    identity = spec.identify(config, inputs) if spec.identify is not None else None
    code = spec.code_version
    key = cache_key(name, digests, read, identity, code)
    done = find_output(spec.output, run, name, key)
    if done is not None:
        log.info("%s finished at %s (cache key %s…); skipping", name, done.meta.created_at.isoformat(), key[:12])
        return done
    child_run = stage_run(tracking, name) if tracking is not None and spec.tracked else nullcontext()
    with child_run as child:
        ctx = StageContext(stage=name, run=run, config=config, tracking=child, parent=tracking, hooks=hooks or Hooks())
        start = time.perf_counter()
        output = spec.compute(ctx, **inputs)
        seconds = round(time.perf_counter() - start, 3)
        output.meta = StageMeta(stage=name, run_uri=run, cache_key=key, inputs={k: io.sha256_json(v) for k, v in digests.items()},
                                config=read, code_version=code, created_at=datetime.now(timezone.utc), seconds=seconds)
        if child is not None:
            log_params(child, {f"config.{k}": v for k, v in read.items()})
            set_tags(child, {"prefcurate.cache_key": key, "prefcurate.code_version": code})
            log_metrics(child, {"stage_seconds": seconds})
        if tracking is not None:  # every stage's duration side by side on the flow's run
            log_metrics(tracking, {f"stage_seconds.{name}": seconds})
        write_manifest(output)
    log.info("%s done in %.1f s", name, seconds)
    return output
