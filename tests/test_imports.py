"""The package's import structure: no import cycles at any depth, and a CLI that starts without
torch (nor numpy, Arrow, FAISS), so that `copyscan --help` and an unchanged `index` are fast.

The cycle check reads the source (every import statement, module level or inside a function,
and the package's lazy-export tables), so a cycle hidden behind a function-level import fails
too. The start-up checks run in fresh interpreters and look at `sys.modules`.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_photo

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "copyscan"
HEAVY = ("torch", "numpy", "pyarrow", "faiss", "PIL", "timm", "onnxruntime", "pandas")


# ---- static import graph ------------------------------------------------------------------------


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str, modules: set[str]) -> bool:
    return name in modules


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports (any statement anywhere in the file)."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                for alias in node.names:
                    sub = f"{origin}.{alias.name}"
                    targets.append(sub if sub in modules else origin)
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.endswith("_EXPORTS") for t in node.targets):
                # Lazy exports: {"name": "submodule"} tables read by a module __getattr__.
                if isinstance(node.value, ast.Dict):
                    targets = [f"{package}.{v.value}" for v in node.value.values if isinstance(v, ast.Constant)]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_lazy" and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    targets = [f"{package}.{first.value}"]
            for t in targets:
                # `import a.b.c` / `from a.b import c`: the deepest package module named.
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles_in_the_package():
    graph = import_graph(PACKAGE_DIR)
    assert "copyscan.api" in graph and "copyscan.store" in graph["copyscan.indexing"]
    assert find_cycles(graph) == []


def test_the_cycle_check_finds_a_function_level_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('_EXPORTS = {"run": "a"}\n')
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("import pkg\n")  # the package, whose lazy table names a
    cycles = find_cycles(import_graph(pkg))
    assert cycles == [["pkg", "pkg.a", "pkg.c", "pkg.sub.b"]]


# ---- start-up -----------------------------------------------------------------------------------


def _fresh(code: str, cwd: Path | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_DIR.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


LOADED = f"import json, sys; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"


def test_importing_the_cli_imports_no_torch():
    assert _fresh(f"import copyscan, copyscan.cli\n{LOADED}") == []


def test_help_and_models_import_no_torch():
    code = ("from typer.testing import CliRunner\nfrom copyscan.cli import app\n"
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output\n"
            "r = CliRunner().invoke(app, ['models']); assert r.exit_code == 0 and 'copyscan_lite0_128' in r.output, r.output\n"
            f"{LOADED}")
    assert _fresh(code) == []


def test_index_and_query_with_the_default_model_import_no_torch(tmp_path):
    """On a CPU the shipped model runs as its int8 ONNX twin, decoded by the torch-free pool: no
    torch at all (1.2-2 s of start-up here). Skipped where a GPU driver is present (torch runs)."""
    from copyscan.models.descriptor import GPU_DEVICE_FILES

    if not sys.platform.startswith("linux") or any(os.path.exists(p) for p in GPU_DEVICE_FILES):
        pytest.skip("no sign here that the machine has no GPU: torch is asked which device to use")
    for s in range(3):
        make_photo(tmp_path / "photos" / f"p{s}.jpg", size=(64, 48), seed=s)
    run = ("from typer.testing import CliRunner\nfrom copyscan.cli import app\n"
           "for args in (['index', 'photos', '--index-dir', 'idx', '-q'], ['query', 'photos', '--index', 'idx', '-q'],\n"
           "             ['query', 'photos', '--index', 'idx', '--no-regions', '-o', 'q2', '-q']):\n"
           "    r = CliRunner().invoke(app, args); assert r.exit_code == 0, r.output\n")
    loaded = _fresh(run + LOADED, cwd=tmp_path)
    assert "onnxruntime" in loaded and "torch" not in loaded and "timm" not in loaded
    assert (tmp_path / "copyscan-query" / "matches.csv").exists() and (tmp_path / "q2" / "matches.csv").exists()


def test_index_of_an_unchanged_folder_loads_no_model(tmp_path, tiny_model_path):
    for s in range(3):
        make_photo(tmp_path / "photos" / f"p{s}.jpg", size=(64, 48), seed=s)
    run = ("from typer.testing import CliRunner\nfrom copyscan.cli import app\n"
           f"r = CliRunner().invoke(app, ['index', 'photos', '--index-dir', 'idx', '--model', {str(tiny_model_path)!r}, '-j', '0', '-q'])\n"
           "assert r.exit_code == 0, r.output\nprint(r.output)\n")
    first = _fresh(run + "import json, sys; print(json.dumps('onnxruntime' in sys.modules))", cwd=tmp_path)
    assert first is True  # the first run embeds: it needs the model (on a CPU, its ONNX twin)
    faiss_file = tmp_path / "idx" / "index.faiss"
    before = faiss_file.stat().st_mtime_ns
    loaded = _fresh(run + LOADED, cwd=tmp_path)  # reads the shards' file list and the manifest only
    # pandas: pyarrow's dataset layer imports it; the store reads shards without it.
    assert not {"torch", "timm", "onnxruntime", "pandas"} & set(loaded), loaded
    assert faiss_file.stat().st_mtime_ns == before  # nothing to rebuild


@pytest.mark.parametrize("module", ["copyscan.store", "copyscan.identity", "copyscan.models", "copyscan.errors"])
def test_identity_and_store_modules_are_torch_free(module):
    assert "torch" not in _fresh(f"import {module}\n{LOADED}")
