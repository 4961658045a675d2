"""The node side of remote runs (spec §12): code that runs on a Ray cluster node, in a pooled actor
(`node.py`) and in the guard process each actor starts (`guard.py`). Never imports `ray`."""
