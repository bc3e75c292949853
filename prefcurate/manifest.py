"""Stage manifests: what a stage wrote, and the key that says whether it must run again.

Every stage writes its artifacts first and its manifest last, under
`<root>/<run>/manifests/<stage>.json`. A manifest on disk therefore means the stage
finished; a rerun whose cache key (input manifests' hashes + the stage's config section +
code version) matches finds it and skips the stage. That is the whole resume mechanism:
it survives kill -9, works on s3:// as on local disk, and needs no orchestrator state.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

from pydantic import BaseModel, Field

import prefcurate
from prefcurate import io
from prefcurate.errors import StorageError

log = logging.getLogger("prefcurate.manifest")

MANIFEST_DIR = "manifests"


class StageManifest(BaseModel):
    """The small record a stage returns and downstream stages consume (never tensors)."""

    stage: str = Field(description="Stage name, e.g. `ingest`, `warmup`, `score-shard-00002`.")
    run_uri: str = Field(description="The run directory `<root>/<run>` the outputs live under.")
    outputs: dict[str, str] = Field(default_factory=dict, description="Output name → URI.")
    hashes: dict[str, str] = Field(default_factory=dict, description="Output name → sha256 of its content.")
    rows: dict[str, int] = Field(default_factory=dict, description="Row counts (pairs kept, rejected, scored …).")
    inputs: dict[str, str] = Field(default_factory=dict, description="Input stage → that manifest's digest.")
    config_digest: str = Field(default="", description="sha256 of the stage's config section.")
    code_version: str = Field(default="", description="prefcurate version + hash of the stage's source.")
    cache_key: str = Field(description="hash(inputs, config digest, code version): equal key ⇒ same result.")
    created_at: datetime = Field(description="When the stage finished (UTC).")
    extra: dict[str, Any] = Field(default_factory=dict, description="Small JSON summaries for later stages and the report.")

    @property
    def digest(self) -> str:
        """Identity of this stage's result: what downstream cache keys are built from."""
        return io.sha256_json({"stage": self.stage, "hashes": self.hashes, "rows": self.rows})


def run_uri(root: str, run_name: str) -> str:
    """`<root>/<run>`: the directory of one run, local or remote."""
    return io.join(root, run_name)


def manifest_uri(run: str, stage: str) -> str:
    return io.join(run, MANIFEST_DIR, f"{stage}.json")


@lru_cache(maxsize=None)
def _module_source_hash(module: str) -> str:
    try:
        source = inspect.getsource(importlib.import_module(module))
    except (OSError, TypeError):  # frozen or compiled module: the version alone identifies it
        source = ""
    return hashlib.sha256(source.encode()).hexdigest()


def code_version(modules: Iterable[str] = ()) -> str:
    """`<__version__>+<hash of the modules' source>`: editing the code a stage runs invalidates its cache."""
    digest = hashlib.sha256("".join(_module_source_hash(m) for m in sorted(modules)).encode()).hexdigest()
    return f"{prefcurate.__version__}+{digest[:12]}"


def config_digest(config: BaseModel | Mapping[str, Any] | None) -> str:
    if config is None:
        return io.sha256_json(None)
    if isinstance(config, BaseModel):
        return io.sha256_json(config.model_dump(mode="json"))
    return io.sha256_json(dict(config))


def cache_key(
    stage: str,
    inputs: Sequence[StageManifest],
    config: BaseModel | Mapping[str, Any] | None,
    code: str,
) -> str:
    """The stage's cache key: same inputs, same config section, same code ⇒ same key."""
    return io.sha256_json(
        {
            "stage": stage,
            "inputs": sorted((m.stage, m.digest) for m in inputs),
            "config": config_digest(config),
            "code": code,
        }
    )


def content_hash(uri: str) -> str:
    """sha256 of a file, or of a directory's (relative path, file sha256) list."""
    fs, path = io.filesystem(uri)
    try:
        if fs.isdir(path):
            files = sorted(p for p in fs.find(path) if not fs.isdir(p))
            entries = [(p[len(path.rstrip("/")) + 1 :], io.sha256_bytes(fs.cat_file(p))) for p in files]
            return io.sha256_json(entries)
    except Exception as exc:
        raise StorageError(f"cannot hash {uri}: {exc}") from exc
    return io.sha256_bytes(io.read_bytes(uri))


def new_manifest(
    stage: str,
    run: str,
    *,
    key: str,
    inputs: Sequence[StageManifest] = (),
    config: BaseModel | Mapping[str, Any] | None = None,
    code: str = "",
    outputs: Mapping[str, str] | None = None,
    rows: Mapping[str, int] | None = None,
    hashes: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> StageManifest:
    """A manifest for outputs just written; outputs without a given hash are hashed here."""
    outputs = dict(outputs or {})
    known = dict(hashes or {})
    return StageManifest(
        stage=stage,
        run_uri=run,
        outputs=outputs,
        hashes={name: known.get(name) or content_hash(uri) for name, uri in outputs.items()},
        rows=dict(rows or {}),
        inputs={m.stage: m.digest for m in inputs},
        config_digest=config_digest(config),
        code_version=code,
        cache_key=key,
        created_at=datetime.now(timezone.utc),
        extra=dict(extra or {}),
    )


def write_manifest(manifest: StageManifest) -> str:
    """Write the manifest (atomically) — call it only after every output is in place."""
    return io.write_text(manifest_uri(manifest.run_uri, manifest.stage), manifest.model_dump_json(indent=2) + "\n")


def read_manifest(uri: str) -> StageManifest:
    return StageManifest.model_validate_json(io.read_text(uri))


def find_manifest(run: str, stage: str, key: str) -> StageManifest | None:
    """The finished stage with this cache key, or None when it must (re)run.

    A manifest with another key (inputs, config or code changed) or whose outputs have
    gone missing is stale: the stage runs again and overwrites it.
    """
    uri = manifest_uri(run, stage)
    if not io.exists(uri):
        return None
    try:
        manifest = read_manifest(uri)
    except (StorageError, ValueError) as exc:
        log.warning("ignoring unreadable manifest %s (%s); %s will run again", uri, exc, stage)
        return None
    if manifest.cache_key != key:
        log.info("%s: inputs, config or code changed since the last run; running it again", stage)
        return None
    missing = [name for name, out in manifest.outputs.items() if not io.exists(out)]
    if missing:
        log.warning("%s: outputs %s are missing; running it again", stage, missing)
        return None
    return manifest
