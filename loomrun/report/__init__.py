"""`loom report`: one self-contained HTML file for a run (spec §11). Runs in the `loom` process.

`data.py` reads the run's documents (the on-disk contract of spec §5, nothing else) into one
JSON-able dict; `page.py` puts it into a page whose inline script draws the timeline, the summary
table and the failing step's output. No network, no external file: the page opens from disk.
"""
