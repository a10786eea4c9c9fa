"""Payload encryption: what keeps cluster keys, join tokens and node details out
of Temporal's history in plain text, and the codec server that lets people read
histories in the Web UI and the ``temporal`` CLI."""
