"""The node labeler: every node says whether it may be a GVirtuS frontend or backend."""
