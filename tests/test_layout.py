"""The layout rules of the package: scripts import the installed package (no ``sys.path`` edits,
nothing imports ``train_net``), the package has no import cycle, its layers import downwards only,
its root keeps only what every layer shares, and each registry lives in its folder's build.py."""
import ast
from pathlib import Path
from typing import Dict, List, Set

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


# layers: a package on the left never imports one on the right (arrows point down only)
_FORBIDDEN = {
    "maskformer_d2.modeling": ("deploy", "engine", "evaluation", "visualization", "convert"),
    "maskformer_d2.inference": ("modeling", "deploy", "engine", "evaluation", "visualization", "convert"),
    "maskformer_d2.data": ("modeling", "deploy", "engine", "evaluation", "visualization", "convert"),
    "maskformer_d2.checkpoint": ("modeling", "deploy", "engine", "evaluation", "visualization", "convert"),
    "maskformer_d2.config": ("modeling", "deploy", "engine", "evaluation", "visualization", "convert"),
    "maskformer_d2.evaluation": ("deploy", "engine", "visualization", "convert"),
}


def _all_imports(path: Path, name: str) -> Set[str]:
    """Every module ``name`` imports, at module level or inside functions."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)] if node.level else []
            found.add(".".join(base + ([node.module] if node.module else [])))
    return found


def test_lower_layers_never_import_higher_ones():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        for layer, forbidden in _FORBIDDEN.items():
            if name != layer and not name.startswith(layer + "."):
                continue
            for target in _all_imports(path, name):
                if any(target == f"maskformer_d2.{f}" or target.startswith(f"maskformer_d2.{f}.") for f in forbidden):
                    offenders.append(f"{name} imports {target}")
    assert offenders == []


def test_the_package_root_keeps_only_what_every_layer_shares():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert modules == ["__init__.py", "errors.py", "registry.py"]
    assert (PACKAGE / "config" / "__init__.py").is_file()


def test_each_registry_lives_in_the_build_py_of_its_folder():
    homes = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("Registry", "NamedRegistry")
                    and path.name != "registry.py"):
                homes.append(str(path.relative_to(PACKAGE)))
    assert sorted(homes) == ["data/mappers/build.py", "modeling/pixel_decoder/build.py",
                             "modeling/transformer_decoder/build.py"]


def test_public_names_stay_importable():
    import maskformer_d2
    from maskformer_d2.checkpoint import CheckpointMismatchError, CheckpointReadError, MaskFormerCheckpointer
    from maskformer_d2.data import build_mapper, register_mapper  # noqa: F401
    from maskformer_d2.engine.predictor import MaskFormerPredictor
    from maskformer_d2.evaluation import build_evaluators  # noqa: F401
    from maskformer_d2.modeling import PIXEL_DECODER_REGISTRY, TRANSFORMER_PREDICTOR_REGISTRY  # noqa: F401

    assert maskformer_d2.MaskFormerPredictor is MaskFormerPredictor
    assert maskformer_d2.MaskFormerCheckpointer is MaskFormerCheckpointer
    assert issubclass(CheckpointReadError, OSError) and issubclass(CheckpointMismatchError, ValueError)
    assert callable(maskformer_d2.add_maskformer_config)
