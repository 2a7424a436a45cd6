"""The HTML page of `copyscan calibrate`: score distributions as inline SVG, thresholds, recall per edit.

One self-contained file (no scripts, no external assets), so it opens offline and can be mailed.
"""

from __future__ import annotations

import html

import numpy as np

_W, _H, _PAD = 760, 260, 40
_LO, _HI, _BINS = -0.2, 1.0, 60
_COLOURS = {"copy": "#2f7ed8", "non-copy": "#d8572f"}
_LINE = ["#111", "#6a3d9a", "#888"]

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:980px}
h1{font-size:20px} h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse} td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left}
.bar{display:inline-block;height:9px;background:#2f7ed8;vertical-align:middle;margin-right:6px}
.muted{color:#777}
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _x(score: float) -> float:
    return _PAD + (min(max(score, _LO), _HI) - _LO) / (_HI - _LO) * (_W - 2 * _PAD)


def histogram_svg(copy_scores: np.ndarray, non_copy_scores: np.ndarray, lines: list[tuple[str, float]]) -> str:
    """Both distributions as step outlines, each as a share of its own pairs, on one axis."""
    edges = np.linspace(_LO, _HI, _BINS + 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" role="img" '
             f'aria-label="score distributions of copy and non-copy pairs">']
    shares = {}
    for kind, scores in (("copy", copy_scores), ("non-copy", non_copy_scores)):
        counts, _ = np.histogram(np.clip(scores, _LO, _HI), edges)
        shares[kind] = counts / max(1, len(scores))
    top = max(float(max(v.max() for v in shares.values())), 1e-9)
    base = _H - _PAD
    for kind, share in shares.items():
        pts = []
        for i, v in enumerate(share):
            y = base - v / top * (_H - 2 * _PAD)
            pts += [f"{_x(edges[i]):.1f},{y:.1f}", f"{_x(edges[i + 1]):.1f},{y:.1f}"]
        colour = _COLOURS[kind]
        parts.append(f'<polygon points="{_x(_LO):.1f},{base} {" ".join(pts)} {_x(_HI):.1f},{base}" '
                     f'fill="{colour}" fill-opacity="0.25" stroke="{colour}" stroke-width="1.5"/>')
    parts.append(f'<line x1="{_PAD}" y1="{base}" x2="{_W - _PAD}" y2="{base}" stroke="#444"/>')
    for t in np.arange(-0.2, 1.01, 0.2):
        parts.append(f'<text x="{_x(t):.1f}" y="{base + 16}" font-size="11" text-anchor="middle">{t:.1f}</text>')
    for i, (label, value) in enumerate(lines):
        x = _x(value)
        parts.append(f'<line x1="{x:.1f}" y1="{_PAD - 8}" x2="{x:.1f}" y2="{base}" stroke="{_LINE[i % 3]}" '
                     f'stroke-dasharray="4 3"/><text x="{x + 3:.1f}" y="{_PAD - 10 + 13 * i}" font-size="11" '
                     f'fill="{_LINE[i % 3]}">{_e(label)} {value:.3f}</text>')
    legend_y = _H - 6
    for i, (kind, colour) in enumerate(_COLOURS.items()):
        parts.append(f'<rect x="{_PAD + 130 * i}" y="{legend_y - 9}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{_PAD + 14 + 130 * i}" y="{legend_y}" font-size="11">{kind} pairs</text>')
    parts.append("</svg>")
    return "".join(parts)


def render(cal) -> str:

    lines = [(f"P{p.target_precision:g}", p.threshold) for p in cal.points if p.threshold is not None]
    lines.append(("given", cal.at_threshold.threshold))
    points = list(cal.points) + [cal.at_threshold]
    head = "".join(f"<th>{'threshold ' + _fmt(p.threshold) if i == len(cal.points) else 'precision ≥ ' + _e(p.target_precision)}</th>"
                   for i, p in enumerate(points))
    summary_rows = [
        ("threshold", [_fmt(p.threshold) for p in points]),
        ("precision on this sample", [_fmt(p.precision) for p in points]),
        ("recall of copies", [_fmt(p.recall) for p in points]),
        ("false positives per non-copy pair", [_fmt(p.false_positive_rate, 6) for p in points]),
        ("expected false pairs in 10,000 unrelated photos",
         [_fmt(expected_false_pairs(p.false_positive_rate, 10_000), 0) for p in points]),
    ]
    summary = "".join(f"<tr><td>{_e(k)}</td>{''.join(f'<td>{_e(v)}</td>' for v in vals)}</tr>" for k, vals in summary_rows)
    edit_rows = []
    for name in cal.edits:
        if name not in cal.per_edit_median:
            continue
        cells = []
        for p in points:
            r = p.per_edit_recall.get(name)
            width = 0 if r is None else round(60 * r)
            cells.append(f'<td><span class="bar" style="width:{width}px"></span>{_fmt(r, 2)}</td>')
        edit_rows.append(f"<tr><td>{_e(name)}</td><td>{_fmt(cal.per_edit_median[name])}</td>{''.join(cells)}</tr>")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>copyscan calibrate</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>Threshold calibration: {_e(cal.folder)}</h1>"
        f"<p>Model <b>{_e(cal.model)}</b>; {cal.originals} photos sampled (seed {cal.seed}), {cal.copies} edited copies "
        f"({_e(cal.difficulty)} difficulty, one edit each); {cal.copy_pairs:,} copy pairs against "
        f"{cal.non_copy_pairs:,} non-copy pairs.</p>"
        f"<h2>Score distributions</h2>{histogram_svg(cal.copy_scores, cal.non_copy_scores, lines)}"
        "<p class=muted>Each curve is the share of its own pairs per score bin. Dashed lines: the thresholds "
        "that reach each target precision, and the given threshold.</p>"
        f"<h2>Operating points</h2><table><tr><th></th>{head}</tr>{summary}</table>"
        "<p class=muted>Precision depends on how many non-copy pairs a search meets: in a folder of N unrelated "
        "photos there are N(N-1)/2, so the false-positive rate per pair is the figure that carries over.</p>"
        f"<h2>Recall per edit</h2><table><tr><th>edit</th><th>median score</th>{head}</tr>{''.join(edit_rows)}</table>"
        "</body></html>"
    )


def expected_false_pairs(rate: float | None, images: int) -> float | None:
    """Non-copy pairs expected above the threshold in a folder of `images` unrelated photos."""
    return None if rate is None else rate * images * (images - 1) / 2
