"""Where a cluster spec file is read and validated for the CLI: every problem
becomes one line naming the file, and the line or the field, never a traceback."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from pke_vsphere.contracts.spec import ClusterSpec, validation_problems

MAPPING = "a cluster spec is a mapping of fields (name, vsphere, pools, ...)"


class SpecFileError(Exception):
    """The spec file cannot be used; the message is the one line to show."""


def load(path: Path) -> ClusterSpec:
    """Read and validate a YAML or JSON spec (a workflow input file, ``{"spec": ...}``, too)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SpecFileError(f"{path}: a directory, not a spec file") from None
    except PermissionError:
        raise SpecFileError(f"{path}: not readable (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise SpecFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise SpecFileError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecFileError(f"{path}: {_yaml_problem(exc)}") from None
    if data is None:
        raise SpecFileError(f"{path}: empty; {MAPPING}")
    if isinstance(data, dict) and "spec" in data and "name" not in data:
        data = data["spec"]
    if not isinstance(data, dict):
        raise SpecFileError(f"{path}: {MAPPING}, not a {_kind(data)}")
    try:
        return ClusterSpec.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc)
        count = f"{len(problems)} problem(s)"
        raise SpecFileError(f"{path}: invalid cluster spec ({count}): " + "; ".join(problems)) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}not valid YAML: {problem}"


def _kind(data: object) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(data), type(data).__name__
    )
