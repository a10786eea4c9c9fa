"""The pyvmomi wrapper: a reusable vCenter session, property reads through the
PropertyCollector, inventory lookups, and the VM operations the activities need.

Everything here blocks; activities run it on a thread pool. Faults are mapped
once, in :mod:`vsphere.errors`.
"""
