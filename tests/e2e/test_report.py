"""`loom report` (spec §11): one self-contained HTML file, checked in a real headless browser
(Debian's chromium): what the page shows after its script ran (`--dump-dom`) and a screenshot.
Real runs; no network (the page's Content-Security-Policy forbids every fetch)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.e2e.browser import run_chromium
from tests.process.runner import Result, make_repo, run_loom

WORKFLOW = """
    version: v1
    stages: [build, test, ship]
    default:
      target: linux
    compile:
      stage: build
      script: ["echo compiled", "sleep 0.2"]
    docs:
      stage: build
      script: ["true"]
    unit:
      stage: test
      needs: [compile]
      script: ["echo setting up", "for i in $(seq 1 600); do echo \\"line $i <b>&\\"; done; exit 7"]
    flaky:
      stage: test
      needs: [docs]
      allow_failure: true
      script: ["exit 1"]
    deploy:
      stage: ship
      script: ["echo never"]
"""


class Node(NamedTuple):
    tag: str
    attrs: dict[str, str]
    text: list[str]  # the text inside it, descendants included


class Dom(HTMLParser):
    """Every element of a page with its attributes and its text (enough to read what it shows)."""

    VOID = {"meta", "br", "img", "input", "link", "hr"}

    def __init__(self, page: str) -> None:
        super().__init__()
        self.nodes: list[Node] = []
        self.stack: list[Node] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, [])
        self.nodes.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            if self.stack.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for node in self.stack:
            node.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[Node]:
        return [n for n in self.nodes if n.tag == tag and all(n.attrs.get(k.rstrip("_")) == v
                                                              for k, v in attrs.items())]

    def text(self, node: Node) -> str:
        return "".join(node.text)


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory) -> Result:
    repo = make_repo(tmp_path_factory.mktemp("report") / "repo", WORKFLOW)
    result = run_loom(repo, "run", "--local", "-j", "2")
    assert result.code == 1, result.stderr
    return result


def test_report_writes_one_self_contained_file_and_prints_its_path(failed_run: Result, tmp_path: Path) -> None:
    run_id = failed_run.receipt["run_id"]
    default = run_loom(failed_run.repo, "report")
    assert default.code == 0, default.stderr
    path = Path(default.stdout.strip())
    assert path == failed_run.repo / ".loom" / ".runtime" / "reports" / f"{run_id}.html"
    assert default.stderr == ""
    page = path.read_text()
    # self-contained: no file, script, style or font from anywhere, and a policy that forbids fetching
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|\bhref=|url\(|@import", page)
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg"}
    assert "default-src 'none'" in page
    chosen = run_loom(failed_run.repo, "report", run_id, "-o", str(tmp_path / "r.html"))
    assert chosen.code == 0 and chosen.stdout == f"{tmp_path / 'r.html'}\n"
    assert (tmp_path / "r.html").read_text() == page
    missing = run_loom(failed_run.repo, "report", "loom-run-local-1")
    assert missing.code == 1 and missing.stderr.startswith("loom report: no receipt for run loom-run-local-1")


def test_the_page_shows_timeline_table_and_failing_output_in_a_browser(failed_run: Result, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert run_loom(failed_run.repo, "report", "-o", str(out)).code == 0
    static = Dom(out.read_text())
    assert not static.find("tr") and not static.find("g")  # everything below is drawn by the page's script
    shown = run_chromium(["--dump-dom", out.as_uri()], tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    dom = Dom(shown.stdout)
    run_id = failed_run.receipt["run_id"]
    assert dom.text(dom.find("h1")[0]) == f"loom run {run_id}"
    assert dom.text(dom.find("span", id="verdict")[0]) == "failed"
    # timeline: a bar per job that ran, coloured by status, with its steps
    bars = {n.attrs["data-job"]: n.attrs["data-status"] for n in dom.find("g") if "data-job" in n.attrs}
    assert bars == {"compile": "passed", "docs": "passed", "unit": "failed", "flaky": "failed (allowed)"}
    steps = [n for n in dom.find("rect") if "data-step" in n.attrs]
    assert len(steps) == 2 + 1 + 2 + 1
    assert sum(1 for n in steps if "failed" in n.attrs["class"].split()) == 2  # unit's and flaky's last steps
    # the summary table, by start, the job that never ran last
    rows = [n for n in dom.find("tr") if "data-job" in n.attrs]
    table = [[dom.text(c) for c in dom.nodes[dom.nodes.index(r) + 1:] if c.tag == "td"][:6] for r in rows]
    assert [r[0] for r in table[:2]] in (["compile", "docs"], ["docs", "compile"])
    assert {r[0]: (r[1], r[2], r[3], r[5]) for r in table} == {
        "compile": ("build", "host", "passed", ""), "docs": ("build", "host", "passed", ""),
        "unit": ("test", "host", "failed", "step_failed"),
        "flaky": ("test", "host", "failed (allowed)", "step_failed"),
        "deploy": ("ship", "host", "skipped", "dependency_failed")}
    assert table[-1][0] == "deploy" and table[-1][4] == "-"
    assert all(re.fullmatch(r"\d+\.\d\ds", r[4]) for r in table[:-1])
    path = dom.text(dom.find("p", id="critical-path")[0])
    assert re.fullmatch(r"wall time \d+\.\d\ds; critical path: (compile|docs) \(\d+\.\d\ds\) \u2192 .*", path), path
    # the failing step's output: its last 500 lines, the markup in them shown as text
    heading = [dom.text(n) for n in dom.find("h2") if dom.text(n).startswith("Failure")]
    assert heading == ['Failure: job "unit", step 2 (exit code 7): for i in $(seq 1 600); do echo "line $i '
                       '<b>&"; done; exit 7']
    output = dom.text(dom.find("pre", id="failing-output")[0]).splitlines()
    assert output == [f"line {i} <b>&" for i in range(101, 601)]
    assert not dom.find("b")
    notes = [dom.text(n) for n in dom.find("p", class_="meta")]
    assert notes == [f"100 earlier lines not shown: loom logs {run_id} --job unit"]


def test_screenshot_of_the_report(failed_run: Result, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert run_loom(failed_run.repo, "report", "-o", str(out)).code == 0
    png = tmp_path / "shot.png"
    shot = run_chromium([f"--screenshot={png}", "--window-size=1200,900", out.as_uri()], tmp_path)
    assert shot.returncode == 0, shot.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000  # a page was drawn, not a blank
