"""A validation report as a self-contained HTML page (no CDN assets, readable offline).

Great Expectations' Data Docs load their CSS and JavaScript from CDNs and look bare offline, so
the report is rendered here from the JSON report instead.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;width:100%;margin-bottom:2em}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}.ok{color:#1a7f37}.fail{color:#cf222e;font-weight:bold}
tr.fail td{background:#fff0f0}code{font-size:12px}
"""


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        value = json.dumps(value, default=str)
    return html.escape(str(value))


def render_html(report: Mapping[str, Any]) -> str:
    """Render a report from :func:`mlsd.validation.run.validate_frames` as one HTML page."""
    status = "PASSED" if report["success"] else f"FAILED ({len(report['failures'])} failed)"
    css = "ok" if report["success"] else "fail"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{_cell(report['stage'])} validation</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_cell(report['stage'])} validation: <span class='{css}'>{status}</span></h1>",
        f"<p>Validated at {_cell(report['validated_at'])}.</p>",
    ]
    if report["failures"]:
        items = "".join(f"<li><code>{_cell(line)}</code></li>" for line in report["failures"])
        parts.append(f"<h2>Failures</h2><ul>{items}</ul>")
    for table, info in report["tables"].items():
        parts.append(f"<h2>{_cell(table)}: {info['rows']} rows, {info['checks']} checks</h2>")
        parts.append(
            "<table><tr><th>result</th><th>expectation</th><th>column</th><th>arguments</th>"
            "<th>unexpected</th><th>examples / observed</th></tr>"
        )
        for row in (r for r in report["results"] if r["table"] == table):
            ok = row["success"]
            args = {k: v for k, v in row["kwargs"].items() if k != "column"}
            seen = row["error"] or row["examples"] or row["observed_value"]
            parts.append(
                f"<tr class='{'' if ok else 'fail'}'><td class='{'ok' if ok else 'fail'}'>"
                f"{'pass' if ok else 'FAIL'}</td><td>{_cell(row['expectation'])}</td>"
                f"<td>{_cell(row['column'])}</td><td><code>{_cell(args)}</code></td>"
                f"<td>{_cell(row['unexpected_count'])}</td><td><code>{_cell(seen)}</code></td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
