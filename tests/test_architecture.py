"""The layering of DESIGN.md section 4 / STYLE.md section 3, enforced with import-linter."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter is not installed (extra 'test')")
def test_import_contracts_are_kept():
    proc = subprocess.run(["lint-imports"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 broken" in proc.stdout


def test_help_does_not_import_heavy_modules():
    code = "import sys, tp_harness.entrypoints.cli as c; c.build_parser(); print(sorted(m for m in ('torch','lm_eval','transformers') if m in sys.modules))"
    proc = subprocess.run(["python", "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_architecture_doc_names_every_module():
    """docs/architecture.md maps each module to its job; a new module without a line there is drift."""
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    package = REPO / "tp_harness"
    modules = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py")
                     if p.name not in ("__init__.py", "__main__.py"))
    missing = [m for m in modules if f"`{m}`" not in doc]
    assert not missing, f"docs/architecture.md does not mention: {missing}"
