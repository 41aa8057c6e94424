"""DVC's cache is only as good as each stage's code deps: they must be exactly the project's modules on the
stage's import path, minus the few that by construction cannot change an output.

The import closure is computed from the source (AST: every ``import``, at module level or inside a function,
of a module of this project), starting from the module the stage's ``cmd`` runs. Stages are read and their
``matrix``/``foreach`` expanded by DVC itself (``dvc.repo.Repo(...).index.stages``). A failure names the stage
and the lines to add to, or drop from, its ``deps`` in dvc.yaml.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("src", "pipeline")

# Modules that by construction cannot change any stage's output, so editing one re-runs nothing. Each stays
# free of output-relevant code; what such a module imports is still followed (and must be a dep).
OUTPUT_NEUTRAL = {
    "pipeline/__main__.py": "`python -m pipeline <stage>` hands the stage module to pipeline/warm.py, nothing else",
    "pipeline/warm.py": "the warm stage server forks a stage from a process with torch already imported; the "
                        "stage writes the same bytes as one started afresh (tests/test_pipeline_e2e.py)",
    "pipeline/_stage.py": "argument parsing, the torchrun start with train.nproc (a param, itself a dep) and the "
                          "one-line error messages",
    "src/tracking.py": "MLflow logging: reads outputs, never writes them",
    "src/config.py": "the params schema and its validation: it accepts or rejects params.yaml, whose every key is "
                     "spelled out (test_config.py::test_params_yaml_sets_every_key), so no default of its own reaches "
                     "a stage; the stages depend on the params they read",
}


def _module_file(name: str) -> Path | None:
    """The file of project module ``name`` (``src.data.dataset`` -> src/data/dataset.py), None if not ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_inits(path: Path) -> set[Path]:
    """The ``__init__.py`` of every package above ``path``: Python runs them before the module."""
    inits, folder = set(), path.parent
    while folder != ROOT:
        if (folder / "__init__.py").is_file():
            inits.add(folder / "__init__.py")
        folder = folder.parent
    return inits


@cache
def _imports(path: Path) -> frozenset[Path]:
    """Project modules ``path`` imports anywhere in its body (a ``from pkg import name`` counts the submodule
    ``pkg.name`` when there is one, else ``pkg`` itself)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[Path] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .y import z
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if (file := _module_file(name)) is not None:
                found.add(file)
    return frozenset(found)


def import_closure(entry: Path) -> set[Path]:
    seen: set[Path] = set()
    todo = [entry, *_package_inits(entry)]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for dep in _imports(path):
            todo.extend([dep, *_package_inits(dep)])
    return seen


def _entry(cmd: str) -> Path:
    """The module a stage command runs: ``python -m pipeline <stage> ...`` or ``python -m pipeline.<stage> ...``."""
    m = re.match(r"python\s+-m\s+pipeline(?:\s+(\w+)|\.(\w+))", cmd)
    assert m, f"unrecognised stage command {cmd!r}"
    return ROOT / "pipeline" / f"{m.group(1) or m.group(2)}.py"


def _is_code(dep: Path) -> bool:
    return any(dep.is_relative_to(ROOT / package) for package in PACKAGES)


def _code_files(dep: Path) -> set[Path]:
    """The Python modules a dep path covers (a file, or every .py under a folder)."""
    if dep.is_dir():
        return {p for p in dep.rglob("*.py") if "__pycache__" not in p.parts}
    return {dep} if dep.suffix == ".py" else set()


@cache
def _stages() -> list[tuple[str, str, list[Path]]]:
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return [(s.addressing, s.cmd, [ROOT / str(d.def_path) for d in s.deps]) for s in repo.index.stages]


def required_code_deps(cmd: str) -> set[Path]:
    """Every project module on the import path of ``cmd``, less the output-neutral ones."""
    closure = import_closure(_entry(cmd)) | import_closure(ROOT / "pipeline" / "__main__.py")
    neutral = {ROOT / p for p in OUTPUT_NEUTRAL}
    return {p for p in closure if p not in neutral}


def _rel(paths: set[Path]) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in paths)


def test_the_output_neutral_modules_exist():
    assert [p for p in OUTPUT_NEUTRAL if not (ROOT / p).is_file()] == []


def test_the_stages_are_read_through_dvc_with_matrix_and_foreach_expanded():
    names = [name for name, _, _ in _stages()]
    assert {"download", "degrade", "pretrain_sr@0", "pretrain_sr@2", "report"} <= set(names)  # one per seed
    assert "train@cls-h2t-0" in names and "evaluate@det-sr4ir-2" in names and "train_t2s@seg-1" in names


@pytest.mark.parametrize("stage", [name for name, _, _ in _stages()])
def test_every_stage_depends_on_exactly_the_code_on_its_import_path(stage):
    _, cmd, deps = next(s for s in _stages() if s[0] == stage)
    missing_files = [d for d in deps if not d.exists() and _is_code(d)]
    assert not missing_files, f"{stage}: dvc.yaml lists code deps that do not exist: {_rel(set(missing_files))}"
    listed = set().union(*(_code_files(d) for d in deps if _is_code(d)))
    required = required_code_deps(cmd)
    missing, extra = required - listed, listed - required
    assert not missing, (f"{stage}: modules on its import path are not deps (an edit to them would leave a stale "
                         f"result): add to its deps in dvc.yaml {_rel(missing)}, or, if one cannot change any output, "
                         f"to OUTPUT_NEUTRAL in {Path(__file__).name} with the reason")
    assert not extra, (f"{stage}: deps that are not on its import path (an edit to them re-runs it for nothing): "
                       f"drop {_rel(extra)} from its deps in dvc.yaml")


# ----------------------------------------------------------------------------------------- the closure itself


def test_the_closure_follows_imports_inside_functions_and_package_inits():
    assert ROOT / "src" / "errors.py" in import_closure(ROOT / "src" / "tasks" / "base.py")  # imported in a function
    closure = import_closure(ROOT / "src" / "data" / "sources" / "voc.py")
    assert {ROOT / "src" / "__init__.py", ROOT / "src" / "data" / "__init__.py", ROOT / "src" / "data" / "sources" / "__init__.py"} <= closure


def test_the_closure_of_a_training_stage_reaches_the_update_rules_and_utils():
    required = required_code_deps("python -m pipeline train --task cls --method sr4ir")
    for module in ("src/steps.py", "src/loop.py", "src/utils.py", "src/methods.py", "src/losses.py", "src/cqmix.py",
                   "src/tasks/base.py", "src/distributed.py"):
        assert ROOT / module in required, module
    for module in OUTPUT_NEUTRAL:
        assert ROOT / module not in required


def test_the_committed_lock_holds_only_stages_that_dvc_yaml_defines():
    """DVC never drops the lock entry of a stage that dvc.yaml stops defining (a renamed matrix, a removed
    method), and it re-parses and rewrites the whole lock after every stage it runs: stale entries cost time on
    every stage of every run (37 of them, a quarter of the file, were left when the seed axis renamed the stages)."""
    import yaml

    locked = yaml.load((ROOT / "dvc.lock").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["stages"]
    stale = sorted(set(locked) - {name for name, _, _ in _stages()})
    assert stale == [], f"dvc.lock has entries for stages dvc.yaml no longer defines (delete them from dvc.lock): {stale}"
