"""docs/design.md section 2, enforced: who may import whom (an AST check over every module)."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = {"torch", "transformers", "onnx", "onnxruntime", "onnxscript", "executorch"}


def _imports(path: Path) -> set[str]:
    """Top-level names a module imports: import statements, and importlib.import_module("x")/__import__("x")
    calls with a literal name (an import the statement check would miss)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            names.add(node.args[0].value.split(".")[0])
    return names


def _is_dynamic_import(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or \
        (isinstance(func, ast.Name) and func.id in ("import_module", "__import__"))


def _forbidden(path: Path) -> set[str]:
    if path.name == "ray_backend.py":  # Ray, an optional extra, lives in these modules only
        return _package_rule(path) - {"ray"}
    return _package_rule(path)


def _package_rule(path: Path) -> set[str]:
    package, *rest = path.relative_to(REPO).parts
    if package == "shared":
        return HEAVY | {"cloud", "device", "simulator", "ray"}
    if package == "cloud":
        return {"device", "simulator", "ray"}
    if package == "device":
        banned = {"cloud", "simulator", "ray"}
        if rest[0] == "runtime":  # the on-device runtime: onnxruntime/executorch runtimes only, never torch
            return banned | (HEAVY - {"onnxruntime", "executorch"})
        if rest[0] == "executorch_backend.py":  # the optional ExecuTorch add-on: its bindings take torch tensors
            return banned | (HEAVY - {"onnxruntime", "executorch", "torch"})
        return banned
    return set()


MODULES = sorted(p for pkg in ("shared", "cloud", "device") for p in (REPO / pkg).rglob("*.py")
                 if "rpc" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_module_respects_the_import_table(path):
    bad = _imports(path) & _forbidden(path)
    assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}, which docs/design.md section 2 forbids"


def test_only_the_ray_backend_imports_ray():
    packages = ("shared", "cloud", "device", "simulator", "benchmarks")
    users = [p for pkg in packages for p in (REPO / pkg).rglob("*.py") if "ray" in _imports(p)]
    assert all(p.name == "ray_backend.py" for p in users), users


def test_a_dynamic_import_of_torch_in_the_runtime_is_caught(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text('import importlib\nnn = importlib.import_module("torch.nn")\nt = __import__("transformers")\n')
    assert {"torch", "transformers"} <= _imports(sneaky) & _forbidden(REPO / "device" / "runtime" / "sneaky.py")
