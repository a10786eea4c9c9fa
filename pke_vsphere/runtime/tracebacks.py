"""Tracebacks formatted in many threads at once, safely on Python 3.11.

Python 3.11 marks the failing part of a traceback line (``^^^^``) by parsing the
line with ``ast``, whose constructor keeps its recursion depth per interpreter,
not per thread (CPython gh-106905). When activity threads format tracebacks
together the count goes wrong, and every later ``ast.parse`` in the process fails
with "AST constructor recursion depth mismatch" (seen in the worker's tests:
pytest could no longer report a failure). Tracebacks keep their lines, without
the marks.
"""

from __future__ import annotations

import sys
import traceback


def install() -> None:
    """Format tracebacks without parsing (a no-op where Python is not affected)."""
    if sys.version_info < (3, 12) and hasattr(traceback, "_extract_caret_anchors_from_line_segment"):
        traceback._extract_caret_anchors_from_line_segment = lambda segment: None  # type: ignore[attr-defined]
