"""The version of the code a stage runs, derived from the code itself.

A stage's code version hashes the source of the module that holds its compute function and
of every project module it imports, transitively (function-level imports included), plus
the installed versions of the libraries whose numerics it relies on. So an edit anywhere in
what a stage really runs reruns it, and there is no hand-kept module list to forget.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import lru_cache
from importlib import metadata

import prefcurate

PROJECT = "prefcurate"
LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets")
# Modules that describe, record or orchestrate results without changing them: the config
# schema (the values a stage reads are in its cache key), the manifests, the stage runner and
# MLflow tracking. Leaving a module out of this set only ever causes an extra rerun.
NOT_RESULTS = frozenset({"prefcurate.config", "prefcurate.manifest", "prefcurate.stage", "prefcurate.tracking"})


def _source(module: str) -> str | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as fh:
        return fh.read()


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@lru_cache(maxsize=None)
def project_imports(module: str) -> frozenset[str]:
    """The project modules `module` imports directly (anywhere in its source)."""
    source = _source(module)
    if source is None:
        return frozenset()
    spec = importlib.util.find_spec(module)
    package = module if spec is not None and spec.submodule_search_locations else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == PROJECT)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            if base.split(".")[0] != PROJECT:
                continue
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}"))
    return frozenset(found - {PROJECT})


@lru_cache(maxsize=None)
def closure(module: str) -> tuple[str, ...]:
    """`module` and every project module it reaches through imports, NOT_RESULTS left out."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or name in NOT_RESULTS:
            continue
        seen.add(name)
        todo.extend(project_imports(name))
    return tuple(sorted(seen))


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


@lru_cache(maxsize=None)
def code_version(module: str) -> str:
    """`<__version__>+<hash>` over the sources of `closure(module)` and the library versions."""
    digest = hashlib.sha256()
    for name in closure(module):
        digest.update(name.encode() + b"\0" + (_source(name) or "").encode() + b"\0")
    for name, version in sorted(library_versions().items()):
        digest.update(f"{name}=={version}\0".encode())
    return f"{prefcurate.__version__}+{digest.hexdigest()[:12]}"
