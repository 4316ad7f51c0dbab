"""A content hash of the project code a function runs, found by static import analysis.

The workflow puts it in every step's fingerprint, so a code change reruns exactly the steps that
can execute the changed code and reuses the others. What counts, for a step function `f`:

* `f` itself, the top-level statements of its module other than definitions (imports,
  constants), and the top-level functions and classes of that module that `f` names, transitively;
* every project module (`read_model`, `dataset_builders`, `pipelines`) those import, and every
  project module *they* import anywhere in their body (the project imports lazily inside
  functions, so function-level imports count), transitively, parent packages included.

Modules are hashed by their syntax tree, so a comment or a reformat does not rerun a step while
any change to code or docstrings does. Third-party library versions are not part of the hash.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_PACKAGES = ("read_model", "dataset_builders", "pipelines")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class CodeHash:
    """The digest, and the project modules (dotted names) that went into it."""

    digest: str
    modules: tuple[str, ...]


def function_code_hash(fn: Callable[..., Any], root: Path = PROJECT_ROOT) -> CodeHash:
    """The code hash of module-level function `fn` (see the module docstring)."""
    try:
        source_file = Path(inspect.getsourcefile(fn) or "")
    except TypeError as error:
        raise ValueError(f"{fn!r} has no Python source file to fingerprint") from error
    return code_hash(source_file, fn.__name__, root)


def code_hash(source_file: Path, function: str, root: Path = PROJECT_ROOT) -> CodeHash:
    """The code hash of top-level `function` in `source_file`, over project modules under `root`."""
    tree = _parse(source_file)
    definitions = {node.name: node for node in tree.body
                   if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
    if function not in definitions:
        raise ValueError(f"{source_file} has no top-level function {function!r}")
    used = _used_definitions(function, definitions)
    preamble = [node for node in tree.body if not isinstance(
        node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    own_nodes = preamble + [definitions[name] for name in sorted(used)]
    module = _module_name(source_file, root)
    imported = _imports(own_nodes, module, source_file.name == "__init__.py")
    if module:  # running the module runs its parent packages' __init__ first
        imported |= set(_prefixes(module)[:-1])
    modules = _closure(imported, root)

    digest = hashlib.sha256()
    for node in own_nodes:
        digest.update(ast.dump(node).encode())
    for name in modules:
        digest.update(f"\0{name}\0{_tree_digest(_module_file(name, root).read_bytes())}".encode())
    return CodeHash(digest.hexdigest(), tuple(modules))


def _used_definitions(function: str, definitions: dict[str, ast.AST]) -> set[str]:
    """`function` and the module's top-level definitions it names, transitively."""
    used, pending = set(), [function]
    while pending:
        name = pending.pop()
        if name in used:
            continue
        used.add(name)
        pending += [node.id for node in ast.walk(definitions[name])
                    if isinstance(node, ast.Name) and node.id in definitions]
    return used


def _closure(start: Iterable[str], root: Path) -> list[str]:
    """Every project module reachable from `start` through imports anywhere in a module."""
    seen: set[str] = set()
    pending = [name for name in start if _module_file(name, root)]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name, root)
        imported = _imports([_parse(path)], name, path.name == "__init__.py")
        pending += [other for other in imported if other not in seen and _module_file(other, root)]
    return sorted(seen)


def _imports(nodes: Iterable[ast.AST], module: str | None, is_package: bool) -> set[str]:
    """Dotted names of what `nodes` import (and their parent packages), project or not."""
    names: set[str] = set()
    for top in nodes:
        for node in ast.walk(top):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, module, is_package)
                if base:
                    names.add(base)
                    names.update(f"{base}.{alias.name}" for alias in node.names)
    return {prefix for name in names for prefix in _prefixes(name)}


def _absolute(node: ast.ImportFrom, module: str | None, is_package: bool) -> str | None:
    if not node.level:
        return node.module
    if module is None:
        return None
    parts = module.split(".")
    anchor = parts if is_package else parts[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join([*anchor, node.module] if node.module else anchor) or None


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _module_file(name: str, root: Path) -> Path | None:
    """The file of project module `name` under `root`; None for anything else."""
    parts = name.split(".")
    if parts[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _module_name(path: Path, root: Path) -> str | None:
    """Dotted name of a file under `root` (None outside it, e.g. a test module)."""
    try:
        relative = path.resolve().relative_to(root.resolve()).with_suffix("")
    except ValueError:
        return None
    parts = list(relative.parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or None


def _parse(path: Path) -> ast.Module:
    try:
        return _parse_source(path.read_bytes())
    except SyntaxError as error:
        raise ValueError(f"{path}: cannot fingerprint a module that does not parse: {error}") from error


@functools.lru_cache(maxsize=1024)
def _tree_digest(source: bytes) -> str:
    """sha256 of a module's syntax tree: blind to comments and layout."""
    return hashlib.sha256(ast.dump(_parse_source(source)).encode()).hexdigest()


@functools.lru_cache(maxsize=1024)
def _parse_source(source: bytes) -> ast.Module:
    """Parsed once per file content (reading is cheap; parsing ~50 modules per step is not)."""
    return ast.parse(source)
