"""The report's HTML: one file, its style and script inline, the run's data as a JSON block that the
script draws from (a timeline of jobs and steps by slot, coloured by status; the summary table with
the wall time and the critical path; the failing step's output). Runs in the `loom` process.
"""

from __future__ import annotations

import html
import json
from typing import Any

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1d1f23;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.meta{color:#5b6270}.verdict{font-weight:600;padding:1px 8px;border-radius:4px;color:#fff}
.passed{--c:#2e9e44}.failed{--c:#d13b3b}.allowed{--c:#e08a00}.canceled{--c:#8a8f98}.skipped{--c:#c2c6cc}
.verdict.passed,.verdict.failed{background:var(--c)}
table{border-collapse:collapse;min-width:640px}
th,td{text-align:left;padding:4px 12px 4px 0;border-bottom:1px solid #e4e6ea}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.status span{display:inline-block;width:9px;height:9px;border-radius:2px;margin-right:6px;background:var(--c)}
svg text{font:12px system-ui,sans-serif;fill:#1d1f23}svg .axis{fill:#5b6270}
svg .lane{fill:#f4f5f7}svg rect.bar{fill:var(--c)}svg rect.step{fill:#fff;opacity:.55}
svg rect.step.failed{fill:#3d0000;opacity:.6}svg text.name{fill:#fff;font-weight:600}
.legend span{display:inline-block;margin-right:14px}.legend i{display:inline-block;width:10px;height:10px;
border-radius:2px;margin-right:5px;background:var(--c)}
pre{background:#15171a;color:#e8e8e8;padding:12px;border-radius:6px;overflow:auto;max-height:480px;font-size:12.5px}
.path{font-variant-numeric:tabular-nums}
"""

SCRIPT = r"""
(function () {
  const D = JSON.parse(document.getElementById("loom-data").textContent);
  const NS = "http://www.w3.org/2000/svg";
  const el = (tag, attrs, text) => {
    const e = tag.startsWith("svg:") ? document.createElementNS(NS, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const word = j => j.status === "success" ? "passed"
    : j.status === "failed" && j.allow_failure ? "failed (allowed)" : j.status;
  const cls = j => j.status === "success" ? "passed" : j.status === "failed" && j.allow_failure ? "allowed" : j.status;
  const secs = ms => (ms / 1000).toFixed(2) + "s";
  const ran = D.jobs.filter(j => j.start !== null && j.end !== null);

  // header
  const head = document.getElementById("head");
  head.append(el("h1", {}, "loom run " + D.run_id));
  const meta = el("div", {class: "meta"});
  const verdict = el("span", {class: "verdict " + (D.status === "success" ? "passed" : "failed"), id: "verdict"},
                     D.status === "success" ? "passed" : "failed");
  meta.append(verdict, " " + (D.started_at || "") + " \u00b7 wall time " + secs(D.duration_ms || 0)
              + " \u00b7 " + D.jobs.length + " jobs" + (D.error ? " \u00b7 " + D.error : ""));
  head.append(meta);

  // timeline: a lane per worker slot (the lowest free one, as the writer's trace.json does)
  const lanes = [];
  const byStart = ran.slice().sort((a, b) => a.start - b.start);
  const laneOf = new Map();
  for (const j of byStart) {
    let n = lanes.findIndex(end => end <= j.start);
    if (n < 0) { n = lanes.length; lanes.push(0); }
    lanes[n] = j.end; laneOf.set(j.id, n);
  }
  const total = Math.max(1, D.duration_ms || 0, ...ran.map(j => j.end));
  const W = 1100, left = 70, right = 30, top = 22, LH = 30, H = top + Math.max(1, lanes.length) * LH + 8;
  const x = t => left + (W - left - right) * Math.max(0, t) / total;
  const svg = el("svg:svg", {viewBox: `0 0 ${W} ${H}`, width: W, height: H, id: "timeline", role: "img"});
  const step = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000, 120000, 300000, 600000]
    .find(s => total / s <= 10) || 600000;
  for (let t = 0; t <= total; t += step) {
    svg.append(el("svg:text", {x: x(t), y: 14, class: "axis", "text-anchor": "middle"},
                  total < 2000 ? t + "ms" : (t / 1000) + "s"));
  }
  lanes.forEach((_, n) => {
    svg.append(el("svg:rect", {x: left, y: top + n * LH, width: W - left - right, height: LH - 6, class: "lane"}));
    svg.append(el("svg:text", {x: 4, y: top + n * LH + 16, class: "axis"}, "slot " + (n + 1)));
  });
  for (const j of ran) {
    const y = top + laneOf.get(j.id) * LH;
    const g = el("svg:g", {class: "job " + cls(j), "data-job": j.id, "data-status": word(j)});
    g.append(el("svg:title", {}, `${j.id} (${j.stage}, ${j.provider}): ${word(j)} in ${secs(j.end - j.start)}`
                + (j.message && j.status !== "success" ? " \u2014 " + j.message : "")));
    const w = Math.max(2, x(j.end) - x(j.start));
    g.append(el("svg:rect", {x: x(j.start), y: y, width: w, height: LH - 6, rx: 3, class: "bar"}));
    for (const s of j.steps) {
      if (s.start === null || s.end === null) continue;
      const r = el("svg:rect", {x: x(s.start), y: y + LH - 12, width: Math.max(1, x(s.end) - x(s.start) - 1),
                               height: 5, class: "step " + (s.status || ""), "data-step": s.index});
      r.append(el("svg:title", {}, `${j.id} step ${s.index}: ${s.command} (${s.status}, ${secs(s.end - s.start)})`));
      g.append(r);
    }
    if (w > 40) g.append(el("svg:text", {x: x(j.start) + 5, y: y + 14, class: "name"}, j.id));
    svg.append(g);
  }
  const tl = document.getElementById("timeline-box");
  tl.append(svg);
  const legend = el("div", {class: "legend"});
  for (const [c, t] of [["passed", "passed"], ["failed", "failed"], ["allowed", "failed (allowed)"],
                        ["canceled", "canceled"]]) {
    const s = el("span", {class: c}); s.append(el("i"), t); legend.append(s);
  }
  tl.append(legend);

  // summary table, by start; jobs that never started last
  const rows = ran.slice().sort((a, b) => a.start - b.start).concat(D.jobs.filter(j => !ran.includes(j)));
  const table = el("table", {id: "summary"});
  const hr = el("tr");
  for (const h of ["job", "stage", "provider", "status", "duration", "failure"]) hr.append(el("th", {}, h));
  table.append(hr);
  for (const j of rows) {
    const tr = el("tr", {class: cls(j), "data-job": j.id});
    tr.append(el("td", {}, j.id), el("td", {}, j.stage), el("td", {}, j.provider));
    const st = el("td", {class: "status"}); st.append(el("span"), word(j)); tr.append(st);
    tr.append(el("td", {class: "num"}, j.start !== null && j.end !== null ? secs(j.end - j.start) : "-"));
    tr.append(el("td", {}, j.failure_kind || ""));
    table.append(tr);
  }
  const sum = document.getElementById("summary-box");
  sum.append(table);
  const spans = new Map(ran.map(j => [j.id, j]));
  const path = D.critical_path.map(n => `${n} (${secs(spans.get(n).end - spans.get(n).start)})`).join(" \u2192 ");
  sum.append(el("p", {class: "path", id: "critical-path"},
                "wall time " + secs(D.duration_ms || 0) + (path ? "; critical path: " + path : "")));

  // the failing step's output
  const fail = document.getElementById("failure-box");
  if (D.failing) {
    const f = D.failing;
    const where = f.step ? `step ${f.step} (exit code ${f.exit_code}): ${f.command}` : `section ${f.section}`;
    fail.append(el("h2", {}, `Failure: job "${f.job}", ${where}`));
    if (f.cut) fail.append(el("p", {class: "meta"},
      `${f.cut} earlier lines not shown: loom logs ${D.run_id} --job ${f.job}`));
    fail.append(el("pre", {id: "failing-output"}, f.lines.join("\n")));
  }
})();
"""


def render(data: dict[str, Any]) -> str:
    # `</` inside the JSON would end the script element early: JSON allows `<\/` for it.
    blob = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    title = html.escape(f"loom run {data.get('run_id', '')}")
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>{title}</title><style>{STYLE}</style></head>\n<body>\n"
        "<div id=\"head\"></div>\n<h2>Timeline</h2><div id=\"timeline-box\"></div>\n"
        "<h2>Jobs</h2><div id=\"summary-box\"></div>\n<div id=\"failure-box\"></div>\n"
        "<noscript>This report draws itself with JavaScript.</noscript>\n"
        f"<script type=\"application/json\" id=\"loom-data\">{blob}</script>\n"
        f"<script>{SCRIPT}</script>\n</body></html>\n"
    )
