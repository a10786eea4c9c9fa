"""Temporal activities: every piece of I/O the workflows need.

All activities here are synchronous and run on the worker's thread pool
(pyvmomi and key generation block). Each is idempotent and safe to retry.
"""
