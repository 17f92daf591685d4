"""The layout rules of the package: scripts import the installed package (no ``sys.path`` edits,
nothing imports ``train_net``), the package has no import cycle, and moved names keep working for
one release with a DeprecationWarning."""
import ast
import importlib
from pathlib import Path
from typing import Dict, List, Set

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "maskformer_d2"
NO_PATH_EDITS = ["maskformer_d2", "scripts", "benchmarks", "tools", "demo", "train_net.py"]


def _python_files(*places: str) -> List[Path]:
    files: List[Path] = []
    for place in places:
        path = REPO / place
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return files


def test_no_sys_path_edits_and_nothing_imports_train_net():
    offenders = []
    for path in _python_files(*NO_PATH_EDITS, "tests"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                if path.parent.name != "tests":
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} uses sys.path")
            if isinstance(node, ast.Import) and any(a.name == "train_net" for a in node.names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} imports train_net")
            if isinstance(node, ast.ImportFrom) and node.module == "train_net":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} imports train_net")
    assert offenders == []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports(path: Path, name: str, modules: Set[str]) -> Set[str]:
    """The package modules ``name`` imports when it is imported (function bodies excluded)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.parse(path.read_text()).body:
        for stmt in [node] + (list(ast.walk(node)) if isinstance(node, (ast.If, ast.Try)) else []):
            if isinstance(stmt, ast.Import):
                targets = [a.name for a in stmt.names]
            elif isinstance(stmt, ast.ImportFrom):
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (stmt.level - 1)] if stmt.level else []
                module = ".".join(base + ([stmt.module] if stmt.module else []))
                targets = [module] + [f"{module}.{a.name}" for a in stmt.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
    return found


def test_the_package_has_no_import_cycle():
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: Dict[str, Set[str]] = {n: _module_level_imports(p, n, set(files)) for n, p in files.items()}
    # importing a module first imports its parent packages
    for name in files:
        parent = name.rpartition(".")[0]
        if parent in graph and parent != name:
            graph[name].add(parent)
    state: Dict[str, int] = {}
    cycles: List[str] = []

    def visit(node: str, stack: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):  # a package importing its own submodules is no cycle
                continue
            if state.get(nxt) == 1 and not node.startswith(nxt + "."):
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


@pytest.mark.parametrize("old, name, new", [
    ("maskformer_d2.inference", "semantic_inference", "maskformer_d2.postprocessing"),
    ("maskformer_d2.solver", "build_optimizer", "maskformer_d2.engine.solver"),
    ("maskformer_d2.test_time_augmentation", "SemanticSegmentorWithTTA", "maskformer_d2.engine.tta"),
    ("maskformer_d2.predictor", "VisualizationDemo", "maskformer_d2.visualization"),
    ("maskformer_d2.predictor", "read_image", "maskformer_d2.data.io"),
    ("maskformer_d2.data.dataset_mappers", "build_mapper", "maskformer_d2.data.mappers"),
    ("maskformer_d2.data", "UnreadableFileError", "maskformer_d2.errors"),
])
def test_moved_names_still_import_with_a_deprecation_warning(old, name, new):
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved to {new}\."):
        value = getattr(importlib.import_module(old), name)
    new_name = "ImageReadError" if name == "UnreadableFileError" else name
    assert value is getattr(importlib.import_module(new), new_name)


def test_public_names_stay_importable():
    import maskformer_d2
    from maskformer_d2.checkpoint import CheckpointMismatchError, CheckpointReadError, MaskFormerCheckpointer
    from maskformer_d2.data import build_mapper, register_mapper  # noqa: F401
    from maskformer_d2.evaluation import build_evaluators  # noqa: F401
    from maskformer_d2.modeling import PIXEL_DECODER_REGISTRY, TRANSFORMER_PREDICTOR_REGISTRY  # noqa: F401
    from maskformer_d2.predictor import MaskFormerPredictor

    assert maskformer_d2.MaskFormerPredictor is MaskFormerPredictor
    assert maskformer_d2.MaskFormerCheckpointer is MaskFormerCheckpointer
    assert issubclass(CheckpointReadError, OSError) and issubclass(CheckpointMismatchError, ValueError)
    assert callable(maskformer_d2.add_maskformer_config)
