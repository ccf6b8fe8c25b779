"""The stubs carry the runtime's docstrings, whole: an editor reading
`_native.pyi` shows what `help()` shows. When this fails, rewrite the
stub's docstrings from the runtime with

    VMB_BLESS=1 scripts/test-python.sh test_stub_docs.py
"""

from __future__ import annotations

import ast
import inspect
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import vmbackup._native as native

STUB = Path(__file__).resolve().parents[1] / "python" / "vmbackup" / "_native.pyi"

_Def = Union[ast.ClassDef, ast.FunctionDef]


def documented(tree: ast.Module) -> Dict[str, _Def]:
    """The stub's classes, their methods and properties, and its functions,
    by dotted name (an overloaded method's first declaration)."""
    out: Dict[str, _Def] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out.setdefault(node.name, node)
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and not item.name.startswith("__"):
                    out.setdefault(f"{node.name}.{item.name}", item)
        elif isinstance(node, ast.FunctionDef):
            out.setdefault(node.name, node)
    return out


def runtime_doc(name: str) -> Optional[str]:
    obj: object = native
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


def docstring_lines(doc: str, indent: str) -> List[str]:
    prefix = "r" if "\\" in doc else ""
    lines = doc.splitlines()
    if len(lines) == 1:
        return [f'{indent}{prefix}"""{doc}"""']
    body = [f"{indent}{line}" if line else "" for line in lines[1:]]
    return [f'{indent}{prefix}"""{lines[0]}', *body, f'{indent}"""']


def stale() -> List[Tuple[str, _Def, str]]:
    tree = ast.parse(STUB.read_text())
    out = []
    for name, node in documented(tree).items():
        want = runtime_doc(name)
        if want is not None and ast.get_docstring(node) != want:
            out.append((name, node, want))
    return out


def bless(changes: List[Tuple[str, _Def, str]]) -> None:
    lines = STUB.read_text().splitlines()
    # Bottom up, so that the line numbers of what is left stay right.
    for _, node, want in sorted(changes, key=lambda c: -c[1].lineno):
        indent = " " * (node.col_offset + 4)
        first = node.body[0]
        new = docstring_lines(want, indent)
        has_doc = (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        )
        if has_doc:
            assert first.end_lineno is not None
            lines[first.lineno - 1 : first.end_lineno] = new
        elif (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and first.value.value is Ellipsis
            and len(node.body) == 1
        ):
            # `def f(...) -> T: ...` on its last line: the docstring replaces `...`.
            at = first.lineno - 1
            text = lines[at]
            cut = text.rstrip()
            assert cut.endswith("..."), text
            lines[at] = cut[: -len("...")].rstrip()
            lines[at + 1 : at + 1] = new
        else:
            lines[first.lineno - 1 : first.lineno - 1] = new
    STUB.write_text("\n".join(lines) + "\n")


def test_the_stub_docstrings_are_the_runtime_ones() -> None:
    changes = stale()
    if changes and os.environ.get("VMB_BLESS"):
        bless(changes)
        changes = stale()
    assert not changes, (
        "stub docstrings differ from the runtime's (VMB_BLESS=1 rewrites them): "
        + ", ".join(name for name, _, _ in changes)
    )


def test_the_check_sees_every_class_and_method() -> None:
    names = documented(ast.parse(STUB.read_text()))
    # A sample that must be there, so that the walk cannot silently miss
    # classes, methods, properties or overloads.
    for name in ["Vault", "Vault.backup", "Vault.open", "RecoveryPoint.stats", "BackupStats.bytes_added"]:
        assert name in names, name
        assert runtime_doc(name), name
