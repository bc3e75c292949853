"""The house rules of DESIGN §3, checked: imports run flows → tasks → core and never back, the
core never imports Prefect, and the installed distribution claims only the `prefcurate` name."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(directory: str) -> dict[str, set[str]]:
    out = {}
    for path in sorted((ROOT / directory).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        out[str(path.relative_to(ROOT))] = names
    return out


def test_imports_run_one_way():
    for path, names in _imports("prefcurate").items():
        assert not {n for n in names if n.split(".")[0] == "prefect" or n.startswith(("prefcurate.tasks", "prefcurate.flows"))}, path
    for path, names in _imports("tasks").items():
        assert not {n for n in names if n.startswith("prefcurate.flows")}, path


def test_every_package_is_listed_for_the_wheel():
    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in (ROOT / "prefcurate").rglob("__init__.py")}
    assert found | {"prefcurate.tasks", "prefcurate.flows"} == packages


def test_the_wheel_claims_only_the_prefcurate_name(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("prefcurate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"prefcurate"}
    assert {"prefcurate/tasks/score.py", "prefcurate/flows/cli.py", "prefcurate/evaluation/judges/openai.py"} <= set(names)
