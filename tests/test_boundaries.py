"""Architecture rules: MLflow and Optuna live at the edges; the loop never branches on a task name."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDGES = {"mlflow": {"src/tracking.py"}, "optuna": {"src/tune.py"}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_mlflow_and_optuna_are_imported_only_at_the_edges():
    for path in sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "pipeline").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for lib, allowed in EDGES.items():
            if lib in _imports(path):
                assert rel in allowed, f"{rel} imports {lib}; only {sorted(allowed)} may"


def test_training_loop_does_not_branch_on_task_names():
    for rel in ("src/steps.py", "src/loop.py", "src/optim.py", "src/losses.py", "src/cqmix.py", "src/methods.py", "src/experiment.py"):
        text = (ROOT / rel).read_text()
        for name in ("'cls'", '"cls"', "'seg'", '"seg"', "'det'", '"det"'):
            assert name not in text, f"{rel} mentions the task {name}"


def _compares_step_to_a_name(path: Path) -> list[int]:
    """Lines where ``<x>.step`` is compared with a string literal (e.g. ``method.step == "alternate"``)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Attribute) and o.attr == "step" for o in operands) and \
                    any(isinstance(o, ast.Constant) and isinstance(o.value, str) for o in operands):
                lines.append(node.lineno)
    return lines


def test_only_the_update_rules_know_which_rule_a_method_runs(tmp_path):
    """What differs per method outside its update rule (e.g. the TDP warm-up) is declared on ``Method``."""
    offenders = {str(p.relative_to(ROOT)): _compares_step_to_a_name(p)
                 for p in sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "pipeline").rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}
    probe = tmp_path / "probe.py"  # the check can fail
    probe.write_text('warmup = 2 if method.step == "alternate" else 0\n')
    assert _compares_step_to_a_name(probe) == [1]
