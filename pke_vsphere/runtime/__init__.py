"""Process plumbing shared by the worker, the node API and the starter:
the Temporal client (one data converter everywhere) and structured logging."""
