"""Remote runs on a Ray cluster (spec §12): the gateway process (`gateway.py`, the run's only Ray
driver; `rayapi.py` is the one module that imports `ray`) and the supervisor's handle on it
(`handle.py`, which never imports `ray`)."""
