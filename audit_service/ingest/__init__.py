"""The write path: the batch transaction, the validation worker, the pipeline's ordering and
the daemon loop that wires them. May import everything but `auditing` and `dev`.
"""
