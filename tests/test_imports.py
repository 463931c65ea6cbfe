"""The package's import graph has no cycle, counting imports inside functions (parsed with ast, nothing imported).

Imports under ``if TYPE_CHECKING:`` never run, so they do not count."""
import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

PACKAGE = "megatron_ultralong"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def _modules(root: Path = ROOT) -> Dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _targets(node: ast.AST, module: str, is_package: bool, modules: Dict[str, Path]) -> Set[str]:
    """Package modules one import statement names: ``import a.b`` names a.b; ``from a import x`` names the
    submodule a.x when there is one, else a itself (x is then an attribute of a, so a must have run)."""
    names: Set[str] = set()
    if isinstance(node, ast.Import):
        names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            names.add(sub if sub in modules else source)
    out = set()
    for name in names:
        while name and name not in modules:  # 'pkg.mod.attr' -> 'pkg.mod'
            name = name.rpartition(".")[0]
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            out.add(name)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST) -> Iterator[ast.AST]:
    """Every import statement below ``node`` (module level, in functions, classes, branches), except those
    guarded by ``if TYPE_CHECKING:`` (their ``else`` branch runs and counts)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                yield from _imports(ast.Module(body=[stmt], type_ignores=[]))
        else:
            yield from _imports(child)


def import_graph(modules: Optional[Dict[str, Path]] = None) -> Dict[str, Set[str]]:
    """Module -> the package modules it imports (anywhere in its body), plus the packages above each target that
    Python runs first. Those implicit parent packages are skipped when they contain the importer (already being
    imported); a package the statement names itself (``from . import Error``) counts: its __init__ must have run."""
    modules = _modules() if modules is None else modules
    graph: Dict[str, Set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: Set[str] = set()
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            for target in _targets(node, module, is_package, modules):
                parts = target.split(".")
                for i in range(2, len(parts)):
                    parent = ".".join(parts[:i])
                    if not (module == parent or module.startswith(parent + ".")):
                        edges.add(parent)
                if target != module:
                    edges.add(target)
        graph[module] = edges
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One cycle as [a, b, ..., a], or [] when the graph is acyclic."""
    state: Dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


def test_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert len(graph) > 30
    assert f"{PACKAGE}.config" in graph[f"{PACKAGE}.rope"]
    assert f"{PACKAGE}.model.attention" in graph[f"{PACKAGE}.model.specs"]  # imported inside layer_spec()
    assert f"{PACKAGE}.data" in graph[f"{PACKAGE}.data.loader"]  # from . import DataError
    assert graph[f"{PACKAGE}.convert.errors"] == set()  # the package's __init__ imports it first


def test_convert_errors_are_re_exported_by_the_package():
    from megatron_ultralong import convert
    from megatron_ultralong.convert import errors
    assert (convert.ConvertError, convert.VerificationError, convert.log) == \
        (errors.ConvertError, errors.VerificationError, errors.log)


def test_type_checking_imports_do_not_count_but_function_level_ones_do():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\nelse:\n    import b\n"
                     "def f():\n    import c\n")
    assert sorted(getattr(n, "module", None) or n.names[0].name for n in _imports(tree)) == ["b", "c", "typing"]


def test_find_cycle_reports_a_cycle_and_accepts_a_dag():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_explicit_import_of_an_ancestor_package_is_an_edge(tmp_path):
    """``from . import Error`` in a submodule needs the package's __init__ to have run: with an __init__ that
    imports the submodule, that is a cycle. ``from . import sibling`` and the implicit parent import are not."""
    pkg = tmp_path / PACKAGE / "sub"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("class Error(Exception):\n    pass\nfrom .a import f\n")
    (pkg / "a.py").write_text("from . import Error\nfrom . import b\nfrom .b import g\ndef f(): pass\n")
    (pkg / "b.py").write_text("from . import a\ndef g(): pass\n")
    graph = import_graph(_modules(tmp_path / PACKAGE))
    sub = f"{PACKAGE}.sub"
    assert graph[f"{sub}.a"] == {sub, f"{sub}.b"}
    assert graph[f"{sub}.b"] == {f"{sub}.a"}
    assert find_cycle(graph) == [sub, f"{sub}.a", sub]


def test_package_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle) + "; move the shared code to a module both can import"
