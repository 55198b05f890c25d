"""The package's shape, checked: the layer contracts (import-linter), every module's
public names, and module sizes. ARCHITECTURE.md explains the layers and names the
modules allowed to be larger."""

from __future__ import annotations

import importlib
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import orchestrator

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 500


def _modules() -> list[str]:
    names = ["orchestrator"]
    for info in pkgutil.walk_packages(orchestrator.__path__, "orchestrator."):
        names.append(info.name)
    return sorted(names)


def test_the_layer_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports (import-linter) is not installed: pip install -e '.[test]'")
    proc = subprocess.run([exe, "--config", str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize("name", [m for m in _modules() if not m.endswith("__main__")])
def test_every_module_says_what_it_exports(name: str):
    module = importlib.import_module(name)
    assert module.__doc__ and module.__doc__.strip(), f"{name} has no docstring saying its role"
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"


def test_modules_stay_small_unless_architecture_md_says_why():
    allowed = set(re.findall(r"`(orchestrator/[\w/]+\.py)`[^\n]*\(over 500 lines", (ROOT / "ARCHITECTURE.md").read_text()))
    too_big = []
    for path in sorted((ROOT / "orchestrator").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if sum(1 for _ in path.open()) > MAX_LINES and rel not in allowed:
            too_big.append(rel)
    assert not too_big, f"over {MAX_LINES} lines, not explained in ARCHITECTURE.md: {too_big}"


def test_no_docstring_points_outside_the_repository():
    offenders = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "orchestrator").rglob("*.py"))
                 if re.search(r"DESIGN\.md|\.\./shared", p.read_text())]
    assert not offenders, offenders


def test_tests_use_public_names_only():
    private = re.compile(r"from orchestrator[\w.]* import (?:\([^)]*\)|[^\n]*)", re.S)
    offenders = []
    for path in sorted(Path(__file__).parent.rglob("test_*.py")):
        for m in private.finditer(path.read_text()):
            names = re.findall(r"\b(\w+)\b", m.group(0).split(" import ", 1)[1])
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("_") and n != "__version__"]
    assert not offenders, offenders
