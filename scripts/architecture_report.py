"""Figures of the package's structure, read from its source with `ast` (nothing is imported).

    python scripts/architecture_report.py [--json] [package_dir]

- import circles between modules and between subpackages (every import counts, also those inside functions);
- functions below the action layer that take the whole spec (a parameter named `cfg` or typed DictConfig),
  outside the spec readers (config/, cli.py, actions/, the Lightning module and datamodule), and apart from
  them those that take one block of it typed by its schema class (e.g. SegmentDatasetConfig);
- task branches: comparisons with the strings "segment" / "classify" outside task.py;
- `raise ... from None`, rich Console() and Progress() constructions, and process-wide patches.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Set

# Modules that may read the whole spec (the schema/loader, the CLI, the action layer, Lightning's classes).
SPEC_READERS = ("config.", "cli", "actions.", "train.module", "train.datamodule")
TASK_HOME = ("task",)
TASK_WORDS = {"segment", "classify"}
SCHEMA_CLASSES: Set[str] = set()  # filled from config/schema.py


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def read_modules(root: Path) -> Dict[str, ast.Module]:
    return {module_name(p, root): ast.parse(p.read_text(), str(p)) for p in sorted(root.rglob("*.py"))}


def imports_of(name: str, tree: ast.Module, package: str, known: Set[str]) -> Set[str]:
    """The package's modules that `name` imports anywhere in its body (relative to the package)."""
    found: Set[str] = set()
    is_package = any(k.startswith(name + ".") for k in known) or name == ""
    for node in ast.walk(tree):
        targets: List[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                base = ".".join([package, *anchor, *([base] if base else [])])
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if target != package and not target.startswith(package + "."):
                continue
            relative = target[len(package) + 1:] if target != package else ""
            while relative and relative not in known:
                relative = relative.rpartition(".")[0]
            if relative and relative != name:
                found.add(relative)
    return found


def strongly_connected(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Tarjan's algorithm; components with more than one node (the circles)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def subpackage(module: str) -> str:
    """The first-level part a module belongs to (top-level modules are their own part)."""
    return module.split(".")[0] if module else "<package>"


def takes_whole_spec(func: ast.AST) -> bool:
    args = func.args  # type: ignore[attr-defined]
    for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
        annotation = ast.unparse(arg.annotation) if arg.annotation is not None else ""
        if arg.arg == "cfg" or "DictConfig" in annotation:
            return True
    return False


def takes_spec_block(func: ast.AST) -> bool:
    """A parameter annotated with a schema class of config/schema.py (one typed block, not the whole spec)."""
    args = func.args  # type: ignore[attr-defined]
    return any(arg.annotation is not None and ast.unparse(arg.annotation).strip("'\"") in SCHEMA_CLASSES
               for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs])


def is_task_branch(node: ast.Compare) -> bool:
    operands = [node.left, *node.comparators]
    for operand in operands:
        if isinstance(operand, ast.Constant) and operand.value in TASK_WORDS:
            return True
        if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) and any(
                isinstance(e, ast.Constant) and e.value in TASK_WORDS for e in operand.elts):
            return True
    return False


def calls_named(tree: ast.Module, names: Iterable[str]) -> int:
    wanted = set(names)
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            count += name in wanted
    return count


def report(root: Path) -> Dict[str, object]:
    package = root.name
    modules = read_modules(root)
    known = set(modules)
    graph = {name: imports_of(name, tree, package, known) for name, tree in modules.items()}
    # Importing a submodule runs its package's __init__: edges to a package's own __init__ are not circles.
    module_graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items() if m}
    package_graph: Dict[str, Set[str]] = defaultdict(set)
    package_edges: Dict[str, List[str]] = defaultdict(list)  # "a -> b": the module imports behind it
    for source, targets in module_graph.items():
        for target in targets:
            a, b = subpackage(source), subpackage(target)
            if a != b:
                package_graph[a].add(b)
                package_edges[f"{a} -> {b}"].append(f"{source} -> {target}")
    circles = strongly_connected(dict(package_graph))
    in_circle = {part: number for number, circle in enumerate(circles) for part in circle}
    circle_edges = {edge: sorted(found) for edge, found in sorted(package_edges.items())
                    if edge.split(" -> ")[0] in in_circle and in_circle.get(edge.split(" -> ")[0]) == in_circle.get(edge.split(" -> ")[1])}

    SCHEMA_CLASSES.update(n.name for n in ast.walk(modules.get("config.schema", ast.Module(body=[], type_ignores=[])))
                          if isinstance(n, ast.ClassDef))
    spec_functions: List[str] = []
    block_functions: List[str] = []
    task_branches: List[str] = []
    raise_from_none = consoles = progresses = 0
    for name, tree in modules.items():
        reader = name.startswith(SPEC_READERS) or name in ("cli", "config")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not reader and takes_whole_spec(node):
                spec_functions.append(f"{name}.{node.name}")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not reader and takes_spec_block(node):
                block_functions.append(f"{name}.{node.name}")
            if isinstance(node, ast.Compare) and name not in TASK_HOME and is_task_branch(node):
                task_branches.append(f"{name}:{node.lineno}")
            if isinstance(node, ast.Raise) and isinstance(node.cause, ast.Constant) and node.cause.value is None:
                raise_from_none += 1
        consoles += calls_named(tree, ["Console"])
        progresses += calls_named(tree, ["Progress"])
    lines = sum(len(p.read_text().splitlines()) for p in root.rglob("*.py"))
    return {
        "lines": lines,
        "modules": len(modules),
        "module_circles": strongly_connected(module_graph),
        "subpackage_circles": circles,
        "functions_taking_the_spec_below_actions": len(spec_functions),
        "functions_taking_one_typed_spec_block": len(block_functions),
        "task_branches_outside_task_py": len(task_branches),
        "task_branch_files": len({b.split(":")[0] for b in task_branches}),
        "raise_from_none": raise_from_none,
        "console_constructions": consoles,
        "progress_constructions": progresses,
        "details": {"functions_taking_the_spec": spec_functions, "functions_taking_a_block": block_functions,
                    "task_branches": task_branches,
                    "subpackage_circle_edges": [f"{edge}: {', '.join(found)}" for edge, found in circle_edges.items()]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", nargs="?", default=str(Path(__file__).resolve().parents[1] / "changenet"))
    parser.add_argument("--json", action="store_true", help="the whole report as JSON")
    parser.add_argument("--details", action="store_true", help="list the functions and branches counted")
    args = parser.parse_args()
    result = report(Path(args.package))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for key, value in result.items():
        if key == "details":
            continue
        if isinstance(value, list):
            print(f"{key}: {len(value)}")
            for item in value:
                print(f"  {' <-> '.join(item)}")
        else:
            print(f"{key}: {value}")
    if args.details:
        for key, items in result["details"].items():  # type: ignore[union-attr]
            print(f"{key}:")
            for item in items:
                print(f"  {item}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
