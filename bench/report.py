"""Turns the JSON lines the benchmarks record into a Markdown table and an SVG bar chart.

usage: report.py RESULTS.jsonl OUT.md OUT.svg
"""

import html
import json
import os
import platform
import sys
from datetime import datetime, timezone


def fmt(value, unit):
    if unit == "events/s":
        return f"{value / 1e6:.2f} M/s" if value >= 1e6 else f"{value / 1e3:.0f} k/s"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    return f"{value:g} {unit}"


def relative(r):
    """lambdaflow's speed relative to its peer: above 1, lambdaflow is faster."""
    if not r["peer_value"]:
        return None
    ratio = r["value"] / r["peer_value"]
    return ratio if r["higher_is_better"] else 1 / ratio


def table(results):
    machine = f"{os.cpu_count()} cores, {platform.machine()}"
    lines = [
        f"Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {machine}; each peer ran in the same benchmark run as what it is compared with.",
        "",
        "| benchmark | measured | lambdaflow | peer | peer's result | lambdaflow ÷ peer |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        peer = r["peer"] or "—"
        peer_value = fmt(r["peer_value"], r["unit"]) if r["peer_value"] else "—"
        if r["peer_value"]:
            ratio = r["value"] / r["peer_value"]
            kind = "rate" if r["higher_is_better"] else "time"
            ratio = f"{ratio:.2f}× ({kind})" if r["unit"] != "ms" else f"floor: {r['peer_value']:.2f} ms"
        else:
            ratio = "—"
        lines.append(
            f"| {r['bench']} | {r['what']} | {fmt(r['value'], r['unit'])} | {peer} | {peer_value} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def chart(results):
    # Throughput and batch time only: there the peer does the same work. A latency's peer is
    # a floor (an empty request), shown in the table but not as a ratio.
    bars = [
        (f"{r['bench']}: {r['what']}", relative(r), r["peer"])
        for r in results
        if relative(r) and r["unit"] in ("events/s", "s")
    ]
    width, left, row, top = 900, 380, 34, 40
    height = top + row * len(bars) + 40
    scale = max([2.0] + [b[1] for b in bars]) * 1.1
    x = lambda v: left + (width - left - 20) * v / scale
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="22" font-size="14" font-weight="bold">lambdaflow speed relative to its peer (peer = 1; higher is faster)</text>',
    ]
    for i, (label, value, peer) in enumerate(bars):
        y = top + i * row
        color = "#3ecf8e" if value >= 1 else "#4f8cff"
        out.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{html.escape(label)}</text>')
        out.append(f'<text x="{left - 8}" y="{y + 29}" text-anchor="end" fill="#888" font-size="10">vs {html.escape(peer)}</text>')
        out.append(f'<rect x="{left}" y="{y + 4}" width="{x(value) - left:.1f}" height="20" fill="{color}"/>')
        out.append(f'<text x="{x(value) + 6:.1f}" y="{y + 19}">{value:.2f}×</text>')
    out.append(f'<line x1="{x(1):.1f}" x2="{x(1):.1f}" y1="{top - 4}" y2="{height - 30}" stroke="#333" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{x(1):.1f}" y="{height - 14}" text-anchor="middle">peer</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    results_path, md_path, svg_path = sys.argv[1:4]
    with open(results_path) as f:
        results = [json.loads(line) for line in f if line.strip()]
    if not results:
        sys.exit(f"no results in {results_path}")
    with open(md_path, "w") as f:
        f.write(table(results))
    with open(svg_path, "w") as f:
        f.write(chart(results))


if __name__ == "__main__":
    main()
