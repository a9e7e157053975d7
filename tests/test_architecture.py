"""The package's layout is its architecture (docs/design.md): what each sub-package may import.

core/ is pure (numpy at most), so the protocol can be audited and simulated without torch or MPI;
only mpi/ talks MPI; sub-packages import only those below them; no module imports itself back
through others. The checks read every import statement, lazy ones inside functions included."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "podlt_mpi")
# each sub-package may import itself and those listed (the order of docs/design.md's diagram)
ALLOWED = {
    "core": set(),
    "io": {"core"},
    "mpi": {"core"},
    "compute": {"core", "io", "mpi"},
    "run": {"core", "io", "mpi", "compute"},
    "tools": {"core", "io", "mpi", "compute", "run"},
}
FORBIDDEN_IN_CORE = {"torch", "mpi4py", "h5py", "triton", "matplotlib", "tqdm"}


def modules() -> dict[str, str]:
    """Dotted name -> path of every module in the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                found[".".join(rel)] = os.path.join(folder, f)
    return found


def imports(name: str, path: str, lazy: bool = True) -> set[str]:
    """Every module `name` imports: absolute names, relative ones resolved; module-level only
    unless `lazy`."""
    tree = ast.parse(open(path).read())
    nodes = ast.walk(tree) if lazy else tree.body
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return out


MODULES = modules()


def internal(name, path, lazy=True):
    return {m for m in imports(name, path, lazy) if m in MODULES and m != name}


def sub_package(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


def test_every_module_lives_in_a_sub_package():
    loose = [m for m in MODULES if m.count(".") == 1 and m.split(".")[1] not in ALLOWED
             and m not in ("podlt_mpi.__main__",)]
    assert loose == [], f"modules outside the sub-packages: {loose}"
    assert {sub_package(m) for m in MODULES} - {None} == set(ALLOWED)


def test_core_imports_neither_torch_nor_mpi():
    bad = {m: sorted(i.split(".")[0] for i in imports(m, p) if i.split(".")[0] in FORBIDDEN_IN_CORE)
           for m, p in MODULES.items() if sub_package(m) == "core"}
    assert {m: b for m, b in bad.items() if b} == {}


def test_only_mpi_imports_mpi4py():
    users = sorted(m for m, p in MODULES.items()
                   if any(i.split(".")[0] == "mpi4py" for i in imports(m, p)))
    assert users and all(sub_package(m) == "mpi" for m in users), users


def test_sub_packages_import_only_those_below_them():
    wrong = []
    for m, p in MODULES.items():
        own = sub_package(m)
        if own is None:
            continue
        for i in internal(m, p):
            other = sub_package(i)
            if other and other != own and other not in ALLOWED[own]:
                wrong.append(f"{m} imports {i}")
    assert wrong == []


def test_no_import_cycles():
    """Among all imports, lazy ones inside functions included: a lazy import that closes a
    cycle cannot deadlock an import, but it is still two modules that need each other."""
    graph = {m: internal(m, p) for m, p in MODULES.items()}
    # a sub-package's __init__ is imported on the way to any of its modules: not an edge back
    graph = {m: {i for i in deps if not (i in ALLOWED or i.count(".") == 1 and i.split(".")[1]
                                         in ALLOWED)} for m, deps in graph.items()}
    state, cycle = {}, []

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycle.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycle == []


@pytest.mark.timeout(120)
def test_core_loads_without_torch_or_mpi():
    """What the static check promises, observed: importing all of core/ loads neither."""
    core = sorted(m for m in MODULES if sub_package(m) == "core")
    code = ("import importlib, sys\n"
            f"for m in {core!r}: importlib.import_module(m)\n"
            f"print(sorted(set(m.split('.')[0] for m in sys.modules) & {FORBIDDEN_IN_CORE!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=100, env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_sub_package_is_a_package_that_git_keeps():
    """A sub-package without __init__.py is not installed by a regular pip install, and a
    .gitignore pattern like `dist/` once hid a sub-package named dist/ from commits."""
    assert all(f"podlt_mpi.{p}" in MODULES for p in ALLOWED)
    if not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout")
    files = [os.path.relpath(p, ROOT) for p in MODULES.values()]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=ROOT,
                             capture_output=True, text=True, timeout=60).stdout.split()
    assert ignored == []


def test_no_sub_package_has_a_name_tools_skip():
    """pytest's norecursedirs and ruff's exclude skip build-output names, and a reader takes
    `dist` for torch.distributed: the MPI package was once podlt_mpi/dist/."""
    assert set(ALLOWED) & {"dist", "build", "venv", "node_modules", "_build"} == set()
