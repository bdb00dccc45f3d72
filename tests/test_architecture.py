"""The layers of the code, checked: no import runs back up, no function over 80 lines, and the
checkpoint format and prediction load without Lightning."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "seqvision"
# bottom to top (README "Layout of the code"); a module may import only from its own layer or below
LAYERS = ["errors", "redact", "io", "runtime", "data", "models", "tasks", "features", "config", "inference", "export", "streaming", "serving",
          "evaluation", "inspection",
          "training", "workflows", "tuning", "demo", "cli", "__main__", "__init__"]


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1] if len(parts) > 1 else "__init__")


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(("seqvision", *parts)).removesuffix(".__init__")
        yield name, ast.parse(path.read_text())


def _type_only(tree: ast.Module) -> set[int]:
    return {id(n) for top in tree.body if isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test) for n in ast.walk(top)}


def test_every_module_is_in_a_layer():
    for name, _ in _modules():
        assert _layer(name) >= 0, name


def test_no_import_runs_back_up_the_layers():
    upward = []
    for name, tree in _modules():
        skip = _type_only(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("seqvision.") and id(node) not in skip:
                if _layer(node.module) > _layer(name):
                    upward.append(f"{name} imports {node.module} (line {node.lineno})")
    assert not upward, upward


def test_no_function_is_over_80_lines():
    long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for name, tree in _modules() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80]
    assert not long, long


def test_predicting_evaluating_and_reading_a_checkpoint_do_not_load_lightning():
    code = ("import sys; import seqvision.inference.predict, seqvision.models.checkpoint, seqvision.evaluation.evaluate, "
            "seqvision.workflows; "
            "print([m for m in sys.modules if m == 'lightning' or m.startswith('lightning.')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
