"""A fresh machine: the README's test command is CI's, and a wheel install works like an editable one.

- README command 2 and ``.ci/run`` run one and the same command line.
- The wheel carries every package of ``tp_harness`` and the shipped task specs with their data (package data mapped
  from the repository's top-level ``task_specs/``).
- Slow: the wheel is built from a copy of the sources, installed (not editable) into a fresh venv, and used from a
  directory outside the repository: ``tp-harness tasks``, ``tp-harness evaluate`` and the pytest plugin's collection
  of the shipped specs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parent.parent


def _readme_commands() -> dict[str, str]:
    """The README's numbered set-up commands: ``{"1": "pip install ...", "2": ...}`` (first bash block)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text[text.index("```bash") + len("```bash"):]
    block = block[: block.index("```")]
    commands: dict[str, str] = {}
    number = None
    for line in block.splitlines():
        match = re.match(r"#\s*(\d+)\.", line.strip())
        if match:
            number = match.group(1)
        elif line.strip() and not line.strip().startswith("#") and number is not None and number not in commands:
            commands[number] = line.strip()
    return commands


def test_ci_runs_the_readme_test_command_verbatim():
    commands = _readme_commands()
    assert set(commands) == {"1", "2"}
    assert commands["2"].endswith("python -m pytest -q")
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    run_lines = [line for line in ci_lines if line and not line.startswith("#")]
    assert commands["2"] in run_lines, f".ci/run does not run README command 2 verbatim: {commands['2']!r}"
    # nothing else installs or tests: what CI needs is in the README's command
    others = [line for line in run_lines if line != commands["2"]]
    assert not [line for line in others if re.search(r"\b(pip|pytest)\b", line)], others


def test_no_default_command_compiles_anything():
    """The extras the README installs pull no package that builds from source (llama-cpp-python)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]

    def closure(name: str) -> list[str]:
        reqs = []
        for req in extras[name]:
            nested = re.match(r"tp-harness\[([^\]]+)\]", req)
            reqs += [r for n in nested.group(1).split(",") for r in closure(n.strip())] if nested else [req]
        return reqs

    named = set(re.findall(r'\.\[([^\]]+)\]', " ".join(_readme_commands().values())))
    installed = [r for group in named for n in group.split(",") for r in closure(n.strip())]
    installed += project["dependencies"]
    assert not [r for r in installed if r.lower().startswith("llama-cpp-python")], installed


def test_every_package_is_in_the_build():
    """``pyproject.toml`` lists packages explicitly (for the ``task_specs`` mapping): a new subpackage must be listed."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "tp_harness").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert "tp_harness.task_specs" in listed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built (``pip wheel --no-deps``) from a copy of the sources, so the checkout stays untouched."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("tp_harness", "task_specs"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("wheelhouse")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (built,) = out.glob("tp_harness-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_carries_the_shipped_specs_and_their_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [p for p in (REPO / "task_specs").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    missing = [p for p in shipped if f"tp_harness/task_specs/{p.relative_to(REPO / 'task_specs').as_posix()}" not in names]
    assert not missing, missing[:5]
    assert len([n for n in names if n.startswith("tp_harness/task_specs/") and n.count("/") == 2
                and n.endswith(".yaml")]) == 18


@pytest.mark.slow
def test_a_wheel_install_works_outside_the_repository(wheel, tmp_path):
    """Install the wheel, not editable, into a fresh venv and use it from a directory outside the checkout.

    The venv sees the installed dependencies (``--system-site-packages``: torch, lm-eval, ...); tp-harness itself
    comes from the wheel, which the test checks.
    """
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    if sys.prefix != sys.base_prefix:  # the tests run in a venv: its packages, not the base interpreter's, are "system"
        import site
        import sysconfig

        purelib = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
        (purelib / "_tp_test_parent_site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TP_HARNESS_PLUGINS")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TP_HARNESS_PLUGINS="")

    def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=timeout)

    where = run("-c", "import tp_harness, tp_harness.spec.loader as s; print(tp_harness.__file__); print(s.BUILTIN_SPEC_DIR)")
    assert where.returncode == 0, where.stderr[-3000:]
    module, spec_dir = where.stdout.split()
    assert Path(module).is_relative_to(env_dir) and Path(spec_dir).is_relative_to(env_dir), where.stdout
    assert Path(spec_dir) == Path(module).parent / "task_specs"

    tasks = subprocess.run([str(env_dir / "bin" / "tp-harness"), "tasks"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=300)
    assert tasks.returncode == 0, tasks.stdout[-2000:] + tasks.stderr[-2000:]
    rows = [line for line in tasks.stdout.splitlines() if line.rstrip(" |").endswith(".yaml")]
    assert len(rows) == 18 and all("/site-packages/tp_harness/task_specs/" in r for r in rows), tasks.stdout[-2000:]

    evaluate = run("-m", "tp_harness", "evaluate", "--task", "commonsenseqa", "--limit", "4")
    assert evaluate.returncode == 0, evaluate.stdout[-2000:] + evaluate.stderr[-3000:]
    assert "task commonsenseqa (multiple_choice), split test, n=4" in evaluate.stdout

    collect = run("-m", "pytest", "--tp-model=embedded:smollm2-135m", "--tp-limit", "4", "--collect-only", "-q",
                  "-p", "no:cacheprovider")
    assert collect.returncode == 0, collect.stdout[-3000:] + collect.stderr[-3000:]
    ids = [line for line in collect.stdout.splitlines() if "::" in line]
    assert len({i.split("::")[0] for i in ids}) == 18
    assert all("/site-packages/tp_harness/task_specs/" in i for i in ids), ids[:3]
