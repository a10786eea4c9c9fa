"""The protocol's names live in pke_vsphere/contracts/protocol.py only.

Every workflow type, query, update, signal and error type is a member of one of
its enums; a literal in their place anywhere else (a rename there would silently
turn a 409 into a 503) fails here, with the file and line.
"""

from __future__ import annotations

import ast
import inspect
from enum import StrEnum
from pathlib import Path

import pytest

from pke_vsphere.contracts import protocol
from pke_vsphere.contracts.protocol import ErrorType, Query, Refusal, Signal, Update, WorkflowType

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["pke_vsphere", "workflows", "activities", "starter", "worker.py", "sim", "tests"]
PROTOCOL = ROOT / "pke_vsphere" / "contracts" / "protocol.py"

# Calls whose first argument names a workflow type, query, update or signal.
NAMED_CALLS = {
    "query",
    "execute_update",
    "start_update",
    "signal",
    "execute_update_with_start_workflow",
    "start_workflow",
    "execute_workflow",
    "start_child_workflow",
    "execute_child_workflow",
    "WithStartWorkflowOperation",
}
# Decorators whose name= is a protocol name.
NAMED_DECORATORS = {"defn", "query", "update", "signal"}
# Distinctive names: any literal spelling one of them is a copy.
DISTINCT = {m.value for enum in (WorkflowType, ErrorType, Refusal) for m in enum}
EVERY_NAME = DISTINCT | {m.value for enum in (Query, Update, Signal) for m in enum}


def python_files() -> list[Path]:
    files: list[Path] = []
    for entry in SOURCES:
        path = ROOT / entry
        files.extend([path] if path.is_file() else sorted(path.rglob("*.py")))
    return [f for f in files if f not in (PROTOCOL, Path(__file__).resolve())]


def _name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _is_str(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def literals(source: str) -> list[tuple[int, str]]:
    """(line, why) for each protocol name spelled as a literal."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = _name(node.func)
            if name in NAMED_CALLS and node.args and _is_str(node.args[0]):
                found.append((node.lineno, f"{name}({ast.unparse(node.args[0])}, ...)"))
            for keyword in node.keywords:
                # workflow.defn/query/update/signal(name="..."); an activity's name is its function's.
                if keyword.arg == "name" and name in NAMED_DECORATORS and _is_str(keyword.value):
                    found.append((node.lineno, f"{name}(name={ast.unparse(keyword.value)})"))
                if keyword.arg == "type" and name == "ApplicationError" and _is_str(keyword.value):
                    found.append((node.lineno, f"ApplicationError(type={ast.unparse(keyword.value)})"))
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Attribute) and s.attr == "type" for s in sides) and any(
                isinstance(s, ast.Constant) and s.value in EVERY_NAME for s in sides
            ):
                found.append((node.lineno, f"comparison {ast.unparse(node)}"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in DISTINCT:
            found.append((node.lineno, f"the literal {node.value!r}"))
    return sorted(set(found))


def test_no_protocol_name_is_spelled_outside_the_protocol_module() -> None:
    problems = [
        f"{path.relative_to(ROOT)}:{line}: {why}"
        for path in python_files()
        for line, why in literals(path.read_text())
    ]
    assert problems == [], "use pke_vsphere.contracts.protocol instead:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('handle.query("status")', "query('status', ...)"),
        ('await handle.execute_update("scale_pool", {})', "execute_update('scale_pool', ...)"),
        ('@workflow.update(name="delete")\ndef f(): ...', "update(name='delete')"),
        ('raise ApplicationError("x", type="NotYet")', "ApplicationError(type='NotYet')"),
        ('if err.type != "ClusterDeleting": pass', "comparison err.type != 'ClusterDeleting'"),
        ('KIND = "ScaleClusterWorkflow"', "the literal 'ScaleClusterWorkflow'"),
    ],
)
def test_the_check_finds_each_kind_of_literal(source: str, expected: str) -> None:
    assert any(why == expected for _, why in literals(source)), literals(source)


def test_the_check_lets_the_protocols_members_through() -> None:
    source = "handle.query(Query.STATUS)\nraise ApplicationError('x', type=ErrorType.DELETING)\n"
    assert literals(source) == []


def test_every_name_is_unique_across_the_protocol() -> None:
    """A query and an update, or two error types, of one spelling would be told apart by nothing."""
    enums = [c for _, c in inspect.getmembers(protocol, inspect.isclass) if issubclass(c, StrEnum)]
    assert {WorkflowType, Query, Update, Signal, ErrorType, Refusal} <= set(enums)
    values = [m.value for enum in enums for m in enum]
    assert len(values) == len(set(values)), sorted(v for v in values if values.count(v) > 1)
