"""Pydantic models that cross a process boundary: workflow, activity, signal,
update and query payloads, and the cluster spec users write.

Every call boundary has exactly one model, so fields can be added without
breaking callers or replay.
"""
