"""The code a stage runs, as one small file DVC can depend on: ``data/code/<stage>.json``.

A stage's output can change when any module of this project on its import path changes, so each stage must
depend on exactly those modules. Listed one by one in ``dvc.yaml`` they were 12 to 28 deps a stage, each an
entry of ``dvc.lock`` that DVC re-parses (a pure-Python round-trip YAML loader) and rewrites after every stage
it runs: with 114 stages that made the lock 532 KB and cost seconds a stage (docs/speed.md). The ``code``
stage instead writes, for each stage script, the md5 of every module on its import path; each stage depends
on its own file. The file changes exactly when one of those modules does, so DVC re-runs the same stages as
with the lists, and the lists can no longer drift from the code: they are computed here, from the source.

The import path is found from the AST, not by importing: every ``import`` of a module of this project, at
module level or inside a function, from the stage's script (``pipeline/<stage>.py``) and from
``pipeline/__main__.py`` (what ``python -m pipeline <stage>`` runs first), plus the ``__init__.py`` of every
package on the way. The modules in ``OUTPUT_NEUTRAL`` cannot change any output by construction and are left
out (what they import is still followed).
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

from src.utils import write_json_atomic

PACKAGES = ("src", "pipeline")

# Modules that by construction cannot change any stage's output, so editing one re-runs nothing. Each stays
# free of output-relevant code; what such a module imports is still followed.
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


class ImportGraph:
    """Project modules each file imports, read once per file (one instance per look at the source tree)."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self._imports: dict[Path, frozenset[Path]] = {}

    def module_file(self, name: str) -> Path | None:
        """The file of project module ``name`` (``src.data.dataset`` -> src/data/dataset.py), None if not ours."""
        if name.split(".")[0] not in PACKAGES:
            return None
        base = self.root.joinpath(*name.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    def package_inits(self, path: Path) -> set[Path]:
        """The ``__init__.py`` of every package above ``path``: Python runs them before the module."""
        inits, folder = set(), path.parent
        while folder != self.root and folder != folder.parent:
            if (folder / "__init__.py").is_file():
                inits.add(folder / "__init__.py")
            folder = folder.parent
        return inits

    def imports(self, path: Path) -> frozenset[Path]:
        """Project modules ``path`` imports anywhere in its body (``from pkg import name`` counts the submodule
        ``pkg.name`` when there is one, else ``pkg`` itself)."""
        if path not in self._imports:
            tree = ast.parse(path.read_text(), filename=str(path))
            package = ".".join(path.relative_to(self.root).with_suffix("").parts[:-1])
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
                found.update(f for name in names if (f := self.module_file(name)) is not None)
            self._imports[path] = frozenset(found)
        return self._imports[path]

    def closure(self, entry: Path) -> set[Path]:
        """``entry`` and every project module it imports, directly or not, with their packages' ``__init__``."""
        entry = Path(entry).resolve()
        seen: set[Path] = set()
        todo = [entry, *self.package_inits(entry)]
        while todo:
            path = todo.pop()
            if path in seen:
                continue
            seen.add(path)
            for dep in self.imports(path):
                todo.extend([dep, *self.package_inits(dep)])
        return seen


def stage_script(root: Path, stage: str) -> Path:
    """The script ``python -m pipeline <stage>`` runs."""
    script = Path(root).resolve() / "pipeline" / f"{stage}.py"
    if not script.is_file():
        raise FileNotFoundError(f"{script}: no such stage script")
    return script


def stage_code(root: Path, stage: str, graph: ImportGraph | None = None) -> list[str]:
    """Every project module on the import path of ``python -m pipeline <stage>``, less the output-neutral
    ones: paths relative to ``root``, sorted."""
    graph = graph or ImportGraph(root)
    closure = graph.closure(stage_script(graph.root, stage)) | graph.closure(graph.root / "pipeline" / "__main__.py")
    rel = {p.relative_to(graph.root).as_posix() for p in closure}
    return sorted(rel - set(OUTPUT_NEUTRAL))


def fingerprint(root: Path, stage: str, graph: ImportGraph | None = None) -> dict[str, object]:
    """``{"stage": stage, "files": {module: md5 of its bytes}}`` over ``stage_code(root, stage)``."""
    root = Path(root).resolve()
    files = {rel: hashlib.md5((root / rel).read_bytes()).hexdigest() for rel in stage_code(root, stage, graph)}
    return {"stage": stage, "files": files}


def write_fingerprints(root: Path, out_dir: Path, stages: list[str]) -> dict[str, Path]:
    """Write ``out_dir/<stage>.json`` for each stage (atomically; the same code gives the same bytes)."""
    graph = ImportGraph(root)
    written = {}
    for stage in stages:
        path = Path(out_dir) / f"{stage}.json"
        write_json_atomic(path, fingerprint(root, stage, graph))
        written[stage] = path
    return written
