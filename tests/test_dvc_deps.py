"""DVC's cache is only as good as each stage's code deps: they must be exactly the project's modules on the
stage's import path, minus the few that by construction cannot change an output.

Every stage depends on ``data/code/<its script>.json``, which the ``code`` stage writes from the source
(src/codedeps.py: the AST import closure, md5 of each module). These tests check the wiring in dvc.yaml (read
and expanded by DVC itself, ``dvc.repo.Repo(...).index.stages``), the closure against what Python really
imports, and that a fingerprint changes exactly when a module on the path does.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from src.codedeps import OUTPUT_NEUTRAL, PACKAGES, ImportGraph, fingerprint, stage_code, write_fingerprints

ROOT = Path(__file__).resolve().parents[1]


@cache
def _stages() -> dict[str, tuple[str, list[str], list[str]]]:
    """name -> (cmd, deps, outs) of every stage, matrix and foreach expanded by DVC."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {s.addressing: (s.cmd, [str(d.def_path) for d in s.deps], [str(o.def_path) for o in s.outs])
                for s in repo.index.stages}


def stage_script(cmd: str) -> str:
    """The stage script a command runs: ``python -m pipeline <stage> ...`` or ``python -m pipeline.<stage> ...``."""
    m = re.match(r"python\s+-m\s+pipeline(?:\s+(\w+)|\.(\w+))", cmd)
    assert m, f"unrecognised stage command {cmd!r}"
    return m.group(1) or m.group(2)


def _is_code(dep: str) -> bool:
    return dep.split("/")[0] in PACKAGES


def test_the_output_neutral_modules_exist():
    assert [p for p in OUTPUT_NEUTRAL if not (ROOT / p).is_file()] == []


def test_the_stages_are_read_through_dvc_with_matrix_and_foreach_expanded():
    names = set(_stages())
    assert {"code", "download", "degrade", "pretrain_sr@0", "pretrain_sr@2", "report"} <= names  # one per seed
    assert "train@cls-h2t-0" in names and "evaluate@det-sr4ir-2" in names and "train_t2s@seg-1" in names


@pytest.mark.parametrize("stage", sorted(set(_stages()) - {"code"}))
def test_every_stage_depends_on_the_fingerprint_of_its_own_script_and_on_no_module(stage):
    cmd, deps, _ = _stages()[stage]
    modules = [d for d in deps if _is_code(d)]
    assert not modules, (f"{stage}: lists modules as deps {modules}; its code dep is data/code/{stage_script(cmd)}.json, "
                         "which the code stage writes from its import path")
    fingerprints = [d for d in deps if d.startswith("data/code/")]
    assert fingerprints == [f"data/code/{stage_script(cmd)}.json"], f"{stage}: code deps {fingerprints}"


def test_the_code_stage_writes_exactly_the_fingerprints_the_stages_depend_on_from_the_whole_source():
    cmd, deps, outs = _stages()["code"]
    used = {d for name, (_, ds, _) in _stages().items() if name != "code" for d in ds if d.startswith("data/code/")}
    named = cmd.split()[cmd.split().index("code") + 1:]
    assert sorted(outs) == sorted(used) == sorted(f"data/code/{s}.json" for s in named)
    assert sorted(deps) == sorted(PACKAGES)  # any edit under src/ or pipeline/ re-runs it (a second or two)


# ----------------------------------------------------------------------------------------- the closure itself


def test_the_closure_follows_imports_inside_functions_and_package_inits():
    graph = ImportGraph(ROOT)
    assert ROOT / "src" / "errors.py" in graph.closure(ROOT / "src" / "tasks" / "base.py")  # imported in a function
    closure = graph.closure(ROOT / "src" / "data" / "sources" / "voc.py")
    assert {ROOT / "src" / "__init__.py", ROOT / "src" / "data" / "__init__.py", ROOT / "src" / "data" / "sources" / "__init__.py"} <= closure


def test_the_code_of_a_training_stage_reaches_the_update_rules_and_utils_but_no_neutral_module():
    code = stage_code(ROOT, "train")
    for module in ("pipeline/train.py", "pipeline/paths.py", "src/steps.py", "src/loop.py", "src/utils.py",
                   "src/methods.py", "src/losses.py", "src/cqmix.py", "src/tasks/base.py", "src/tasks/det.py",
                   "src/distributed.py", "src/models/official.py", "src/data/fetch.py"):
        assert module in code, module
    assert not set(OUTPUT_NEUTRAL) & set(code)
    assert "src/report.py" not in code and "pipeline/evaluate.py" not in code
    assert "src/report.py" in stage_code(ROOT, "report") and "src/loop.py" not in stage_code(ROOT, "report")


@pytest.mark.parametrize("stage", ["download", "degrade", "pretrain_sr", "train", "evaluate", "report"])
def test_every_module_python_loads_for_a_stage_is_in_its_fingerprint(stage):
    """The AST closure against the interpreter: importing the stage script must load no project module the
    fingerprint leaves out (imports inside functions run later, so this checks a subset, not equality)."""
    probe = (f"import sys; sys.argv = ['x']; import pipeline.{stage}; "
             "print('\\n'.join(sorted(m.__file__ for m in list(sys.modules.values()) if getattr(m, '__file__', None))))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    loaded = {Path(f).resolve() for f in out.stdout.split()}
    ours = {p.relative_to(ROOT).as_posix() for p in loaded if p.is_relative_to(ROOT) and p.parts[len(ROOT.parts)] in PACKAGES}
    missing = ours - set(stage_code(ROOT, stage)) - set(OUTPUT_NEUTRAL) - {"pipeline/__main__.py"}
    assert ours and not missing, f"{stage}: loaded but not fingerprinted: {sorted(missing)}"


# ------------------------------------------------------------------ a fingerprint changes exactly with its code


def _toy(root: Path) -> Path:
    """A two-package project: pipeline/x.py imports src.a at module level and src.b inside a function;
    src/c.py is on no path, src/tracking.py is output-neutral."""
    files = {
        "src/__init__.py": "", "pipeline/__init__.py": "", "pipeline/__main__.py": "import sys\n",
        "pipeline/x.py": "from src import a\nfrom src.tracking import log\n\ndef main():\n    from src.b import f\n    return f()\n",
        "src/a.py": "A = 1\n", "src/b.py": "def f():\n    return 2\n", "src/c.py": "C = 3\n",
        "src/tracking.py": "from src.a import A\n\ndef log():\n    pass\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_a_fingerprint_names_the_modules_on_the_path_and_their_md5(tmp_path):
    root = _toy(tmp_path)
    fp = fingerprint(root, "x")
    assert fp["stage"] == "x"
    assert sorted(fp["files"]) == ["pipeline/__init__.py", "pipeline/x.py", "src/__init__.py", "src/a.py", "src/b.py"]
    import hashlib
    assert fp["files"]["src/b.py"] == hashlib.md5(b"def f():\n    return 2\n").hexdigest()


@pytest.mark.parametrize(("rel", "changes"), [("src/b.py", True), ("src/a.py", True), ("pipeline/x.py", True),
                                              ("src/c.py", False), ("src/tracking.py", False),
                                              ("pipeline/__main__.py", False)])
def test_the_written_file_changes_exactly_when_a_module_on_the_path_does(tmp_path, rel, changes):
    root = _toy(tmp_path)
    out = root / "data" / "code"
    path = write_fingerprints(root, out, ["x"])["x"]
    before = path.read_bytes()
    write_fingerprints(root, out, ["x"])
    assert path.read_bytes() == before  # the same code, the same bytes: DVC leaves the stages cached
    (root / rel).write_text((root / rel).read_text() + "# an edit\n")
    write_fingerprints(root, out, ["x"])
    assert (path.read_bytes() != before) is changes
    assert json.loads(path.read_text())["stage"] == "x" and not list(out.glob(".*tmp"))


def test_a_new_import_brings_its_module_into_the_fingerprint(tmp_path):
    root = _toy(tmp_path)
    assert "src/c.py" not in fingerprint(root, "x")["files"]
    (root / "src/b.py").write_text("from src.c import C\n\ndef f():\n    return C\n")
    assert "src/c.py" in fingerprint(root, "x")["files"]


def test_an_unknown_stage_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="pipeline/nope.py"):
        fingerprint(_toy(tmp_path), "nope")


def test_the_committed_lock_holds_only_stages_that_dvc_yaml_defines():
    """DVC never drops the lock entry of a stage that dvc.yaml stops defining (a renamed matrix, a removed
    method), and it re-parses and rewrites the whole lock after every stage it runs: stale entries cost time on
    every stage of every run (37 of them, a quarter of the file, were left when the seed axis renamed the stages)."""
    import yaml

    locked = yaml.load((ROOT / "dvc.lock").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["stages"]
    stale = sorted(set(locked) - set(_stages()))
    assert stale == [], f"dvc.lock has entries for stages dvc.yaml no longer defines (delete them from dvc.lock): {stale}"
