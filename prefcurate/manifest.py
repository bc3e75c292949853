"""Stage manifests: what a stage wrote, typed, and the proof that it is still there.

Every stage returns a typed output (a `StageOutput` subclass: `IngestOut`, `ScoreOut`, …)
whose `FileRef` fields name the files it wrote with their size and content hash, taken at
write time. The output goes to `<root>/<run>/manifests/<stage>.json` last, after every
file, so a manifest on disk means the stage finished. A rerun reuses it only when its cache
key matches *and* every file still has the content the manifest recorded (`find_output`);
anything else — a missing, truncated or rewritten file, an unreadable manifest — reruns the
stage and the log says which output failed. That is the whole resume mechanism: it survives
kill -9, works on s3:// as on local disk, and needs no orchestrator state.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, ClassVar, Iterator, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prefcurate import io
from prefcurate.errors import StorageError, first_line

log = logging.getLogger("prefcurate.manifest")

MANIFEST_DIR = "manifests"


class FileRef(BaseModel):
    """One output file or directory and what it held when it was written."""

    model_config = ConfigDict(frozen=True)

    uri: str = Field(description="Where it is (local path or s3://…).")
    sha256: str = Field(description="sha256 of the file, or of a directory's (relative path, sha256) list.")
    size: int = Field(description="Bytes (a directory: all its files).")
    files: dict[str, str] = Field(default_factory=dict, description="A directory's files: relative path → sha256.")

    @classmethod
    def of(cls, uri: str) -> "FileRef":
        """Hash what is at `uri` now (call it right after writing)."""
        fs, path = io.filesystem(uri)
        try:
            if fs.isdir(path):
                entries = _directory(fs, path)
                files = {name: digest for name, digest, _ in entries}
                return cls(uri=uri, sha256=io.sha256_json(sorted(files.items())), size=sum(n for *_, n in entries),
                           files=files)
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot hash {uri}: {exc}") from exc
        data = io.read_bytes(uri)
        return cls(uri=uri, sha256=io.sha256_bytes(data), size=len(data))

    def problem(self) -> str | None:
        """Why this output can no longer be vouched for, or None when it still is what was written."""
        fs, path = io.filesystem(self.uri)
        try:
            if not fs.exists(path):
                return "missing"
            if self.files:
                if not fs.isdir(path):
                    return "no longer a directory"
                found = {name: (digest, size) for name, digest, size in _directory(fs, path)}
                for name, digest in self.files.items():
                    if name not in found:
                        return f"file {name} missing"
                    if found[name][0] != digest:
                        return f"file {name} changed (sha256 differs)"
                return None
            data = io.read_bytes(self.uri)
        except (OSError, ValueError, StorageError) as exc:
            return f"unreadable ({exc})"
        if len(data) != self.size:
            return f"size {len(data)} bytes, {self.size} recorded"
        if io.sha256_bytes(data) != self.sha256:
            return "content changed (sha256 differs)"
        return None


def _directory(fs: Any, path: str) -> list[tuple[str, str, int]]:
    """(relative path, sha256, size) of every file under a directory."""
    root = path.rstrip("/")
    out = []
    for file in sorted(p for p in fs.find(root) if not fs.isdir(p)):
        data = fs.cat_file(file)
        out.append((file[len(root) + 1 :], io.sha256_bytes(data), len(data)))
    return out


class StageMeta(BaseModel):
    """Provenance of one stage's output, filled in by the stage runner."""

    stage: str = Field(description="Stage name, e.g. `ingest`, `warmup`, `score-shard-00002`.")
    run_uri: str = Field(description="The run directory `<root>/<run>` the outputs live under.")
    cache_key: str = Field(description="hash(inputs, config read, code, library versions): equal key ⇒ same result.")
    inputs: dict[str, str] = Field(default_factory=dict, description="Input name → its digest.")
    config: dict[str, Any] = Field(default_factory=dict, description="The config fields the stage read, with their values.")
    code_version: str = Field(default="", description="prefcurate version + hash of the code the stage runs.")
    created_at: datetime = Field(description="When the stage finished (UTC).")
    seconds: float | None = Field(default=None, description="How long its compute took (wall clock).")


class StageOutput(BaseModel):
    """Base of every stage's typed output. Subclasses add typed fields; `FileRef` fields are
    verified before reuse, and everything but `meta` and `VOLATILE` fields is the result's
    identity (`digest`) that downstream cache keys are built from."""

    model_config = ConfigDict(extra="forbid")

    VOLATILE: ClassVar[frozenset[str]] = frozenset()  # fields that vary between equal results (timings, local paths)

    meta: StageMeta | None = Field(default=None, description="Provenance; set by the stage runner.")

    def incomplete(self) -> str | None:
        """Why this result should be computed again even though it finished (e.g. judgments that
        failed and may succeed now), or None. Such a result is used by its run but never reused."""
        return None

    def file_refs(self) -> Iterator[tuple[str, FileRef]]:
        """Every FileRef of this output (nested in dicts and lists too), with a readable name."""
        yield from _refs(self, "")

    @property
    def digest(self) -> str:
        """Identity of this result: file contents by hash (not by location) and the typed values."""
        return io.sha256_json({"type": type(self).__name__, "content": _content(self)})


def _refs(value: Any, name: str) -> Iterator[tuple[str, FileRef]]:
    if isinstance(value, FileRef):
        yield name, value
    elif isinstance(value, StageOutput):
        for field in type(value).model_fields:
            if field != "meta":
                yield from _refs(getattr(value, field), f"{name}.{field}" if name else field)
    elif isinstance(value, BaseModel):
        for field in type(value).model_fields:
            yield from _refs(getattr(value, field), f"{name}.{field}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _refs(item, f"{name}[{key}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _refs(item, f"{name}[{i}]")


def _content(value: Any) -> Any:
    """JSON-able identity: a FileRef is its hash, a stage output its non-volatile fields."""
    if isinstance(value, FileRef):
        return value.sha256
    if isinstance(value, StageOutput):
        skip = {"meta", *type(value).VOLATILE}
        return {f: _content(getattr(value, f)) for f in type(value).model_fields if f not in skip}
    if isinstance(value, BaseModel):
        return {f: _content(getattr(value, f)) for f in type(value).model_fields}
    if isinstance(value, dict):
        return {str(k): _content(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_content(v) for v in value]
    return value


Out = TypeVar("Out", bound=StageOutput)


def run_uri(root: str, run_name: str) -> str:
    """`<root>/<run>`: the directory of one run, local or remote."""
    return io.join(root, run_name)


def manifest_uri(run: str, stage: str) -> str:
    return io.join(run, MANIFEST_DIR, f"{stage}.json")


def write_manifest(output: StageOutput) -> str:
    """Write the output (atomically) as its stage's manifest — only after every file is in place."""
    assert output.meta is not None, "the stage runner sets meta before writing"
    return io.write_text(manifest_uri(output.meta.run_uri, output.meta.stage), output.model_dump_json(indent=2) + "\n")


def read_manifest(kind: type[Out], uri: str) -> Out:
    return kind.model_validate_json(io.read_text(uri))


def find_output(kind: type[Out], run: str, stage: str, key: str) -> Out | None:
    """The finished stage with this cache key whose every output is intact, or None when it must (re)run."""
    uri = manifest_uri(run, stage)
    if not io.exists(uri):
        return None
    try:
        output = read_manifest(kind, uri)
    except (StorageError, ValidationError, ValueError) as exc:
        log.warning("%s: manifest %s is unreadable (%s); running the stage again", stage, uri, first_line(exc))
        return None
    if output.meta is None or output.meta.cache_key != key:
        log.info("%s: inputs, config or code changed since the last run; running it again", stage)
        return None
    why = output.incomplete()
    if why is not None:
        log.info("%s finished incomplete (%s); running it again", stage, why)
        return None
    for name, ref in output.file_refs():
        problem = ref.problem()
        if problem is not None:
            log.warning("%s: output %s (%s) failed its check: %s; running the stage again", stage, name, ref.uri, problem)
            return None
    return output
