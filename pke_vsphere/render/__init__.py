"""Pure rendering of what a node receives: its cloud-config, the ``pke install``
command line, the keepalived configuration and the guestinfo encoding.

Nothing here does I/O; the activities and the node API call these functions.
"""
