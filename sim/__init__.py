"""The simulated data center used by the demo and the tests: govmomi's vCenter
simulator (built from Debian's source with our own small Go main) and simulated
booting nodes that behave like PKE using only what their cloud-init gave them.

Nothing in here is used by the worker or the node API in production.
"""
