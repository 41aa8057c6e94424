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
    for rel in ("src/engine.py", "src/losses.py", "src/cqmix.py", "src/methods.py", "src/experiment.py"):
        text = (ROOT / rel).read_text()
        for name in ("'cls'", '"cls"', "'seg'", '"seg"', "'det'", '"det"'):
            assert name not in text, f"{rel} mentions the task {name}"
