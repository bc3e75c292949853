"""Code versions come from the code: a stage's module and every project module it imports."""

from __future__ import annotations

import importlib
import sys
import textwrap

from prefcurate.codeversion import closure, code_version, project_imports


def test_closure_follows_imports_transitively():
    # the judge stage reaches the toy task module through the oracle judge's function-level import
    assert "prefcurate.toyworld.task" in closure("prefcurate.evaluation.stage")
    assert "prefcurate.scoring.logps" in closure("prefcurate.scoring.stage")
    assert "prefcurate.config" not in closure("prefcurate.scoring.stage")  # its values are in the key instead


def test_editing_an_indirectly_imported_module_changes_the_version(tmp_path, monkeypatch):
    pkg = tmp_path / "prefcurate_probe"
    for name, body in {"__init__.py": "", "a.py": "from prefcurate_probe import b\n", "b.py": "def f():\n    from prefcurate_probe import c\n",
                       "c.py": "X = 1\n"}.items():
        (pkg / name).parent.mkdir(exist_ok=True)
        (pkg / name).write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("prefcurate.codeversion.PROJECT", "prefcurate_probe")
    for fn in (closure, code_version, project_imports):
        fn.cache_clear()
    importlib.invalidate_caches()
    assert closure("prefcurate_probe.a") == ("prefcurate_probe.a", "prefcurate_probe.b", "prefcurate_probe.c")
    before = code_version("prefcurate_probe.a")
    (pkg / "c.py").write_text("X = 2\n")
    for fn in (closure, code_version, project_imports):
        fn.cache_clear()
    assert code_version("prefcurate_probe.a") != before
    sys.modules.pop("prefcurate_probe", None)
    for fn in (closure, code_version, project_imports):
        fn.cache_clear()
