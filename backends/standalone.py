"""`patternc compile --standalone`: a generated module with the runtime library copied in.

A module normally imports `patternc.runtime`.  For deployment where patternc is not installed,
the runtime's modules are inlined above the module's own code, in dependency order, with their
imports of each other removed: the result imports only torch, triton and the standard library.
The runtime keeps every top-level name unique across its modules, so they can share one file;
`standalone` checks that, and that the module's own names do not collide with them.
"""
from __future__ import annotations

import ast
from importlib import resources

from patternc import __version__
from patternc.errors import PatternError

RUNTIME = "patternc.runtime"


def _source(name: str) -> str:
    return resources.files(RUNTIME).joinpath(f"{name}.py").read_text()


def _local_imports(tree: ast.Module) -> list:
    """The runtime modules a runtime module imports (`from .x import ...`)."""
    return [node.module for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module]


def _order(roots: list) -> list:
    """Runtime modules reachable from `roots`, each after the modules it imports."""
    out, seen = [], set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for dep in _local_imports(ast.parse(_source(name))):
            visit(dep)
        out.append(name)
    for r in roots:
        visit(r)
    return out


def _defined(tree: ast.Module) -> set:
    """Top-level names a module defines (not the ones it imports)."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _cut(text: str, drop) -> str:
    """`text` without the top-level statements for which drop(node) is true."""
    tree = ast.parse(text)
    lines = text.splitlines()
    gone = set()
    for node in tree.body:
        if drop(node):
            gone |= set(range(node.lineno - 1, node.end_lineno))
    return "\n".join(x for k, x in enumerate(lines) if k not in gone).strip("\n")


def _runtime_import(node) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.module == "__future__" or node.level > 0 or (node.module or "").startswith(RUNTIME)
    if isinstance(node, ast.Try):  # `try: import triton ... except ImportError: from patternc.runtime.jit import ...`
        return any(isinstance(x, ast.ImportFrom) and (x.module or "").startswith(RUNTIME)
                   for h in node.handlers for x in h.body)
    return False


def _docstring(node) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def standalone(text: str) -> str:
    """The module `text` with the runtime modules it needs inlined."""
    tree = ast.parse(text)
    roots = ["module", "spec"] + [node.module.split(".")[-1] for node in tree.body
                                  if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(RUNTIME + ".")]
    header = ast.get_docstring(tree, clean=False)
    body = _cut(text, lambda node: _runtime_import(node) or (node is tree.body[0] and _docstring(node)))
    owner: dict = {}
    parts = []
    for name in _order(list(dict.fromkeys(roots))):
        src = _source(name)
        mod = ast.parse(src)
        for x in _defined(mod):
            if x in owner:
                raise PatternError(f"standalone: runtime modules {owner[x]} and {name} both define {x!r}")
            owner[x] = name
        summary = (ast.get_docstring(mod) or "").strip().splitlines()[:1]
        code = _cut(src, lambda node: _runtime_import(node) or (node is mod.body[0] and _docstring(node)))
        parts.append(f"# ---- {RUNTIME}.{name}" + (f": {summary[0]}" if summary else "") + "\n\n" + code)
    clash = _defined(ast.parse(body)) & set(owner)
    if clash:
        raise PatternError(f"standalone: the module and the runtime both define {sorted(clash)}")
    out = (f'"""{header}"""\nfrom __future__ import annotations\n\n'
           f"# {'=' * 94}\n# The patternc {__version__} runtime library, inlined (patternc compile --standalone).\n"
           f"# {'=' * 94}\n\n" + "\n\n\n".join(parts)
           + f"\n\n\n# {'=' * 94}\n# The pattern.\n# {'=' * 94}\n\n" + body + "\n")
    ast.parse(out)
    return out
