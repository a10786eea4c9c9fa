"""Temporal workflows: deterministic orchestration only. All I/O lives in
:mod:`activities`; the workflows record identities and decisions in history."""
