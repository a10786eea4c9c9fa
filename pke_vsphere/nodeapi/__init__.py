"""The HTTP service booting nodes call: authenticated by each node's own token,
it turns a node's calls into queries, updates and signals on its cluster's and
its own workflows. It holds no state of its own beyond the update ids of calls
whose answer has not reached their node yet (``unanswered.py``)."""
