"""`loom report [RUN_ID] [-o FILE]`: one self-contained HTML file for the newest (or given) run
(spec §11). Runs in the `loom` process. The default file is `.loom/.runtime/reports/<run_id>.html`
(outside `logs/` and `receipts/`, which only the writer writes); its path is printed on stdout and
nothing is opened.
"""

from __future__ import annotations

from pathlib import Path

from loomrun.errors import LoomError


def main(run_id: str | None, output: str | None) -> int:
    from loomrun.commands.logs import find_receipt, find_runtime
    from loomrun.report.data import collect
    from loomrun.report.page import render
    from loomrun.supervisor.abandoned import reap_with_oneshot_writer

    runtime = find_runtime()
    reap_with_oneshot_writer(runtime)  # a dead run shows as abandoned, not as missing
    receipt = find_receipt(runtime, run_id)
    data = collect(receipt)
    target = Path(output) if output else runtime / "reports" / f"{data['run_id']}.html"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(render(data), encoding="utf-8")
        tmp.replace(target)
    except OSError as exc:
        raise LoomError(f"cannot write {target}: {exc.strerror or exc}") from exc
    print(target.absolute())
    return 0
