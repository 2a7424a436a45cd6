"""Stage 8 (report): a self-contained HTML page to look at results: queries beside their matches, or
groups of copies with the image that is kept.

The page opens offline (inline CSS, no script, a Content-Security-Policy that forbids any) and
every path in it comes from a user's disk, so each one is escaped; thumbnails are JPEGs in
`thumbs/` named by a hash, never by the user's file name.
"""

from __future__ import annotations

import hashlib
import html
import os
import pathlib
import tempfile
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

from .decode import load_thumbnail
from .results import MATCH_IDENTICAL_FILE, MATCH_IDENTICAL_PIXELS, MATCH_NEAR, Group, QueryResult

THUMB_DIR = "thumbs"
_BADGES = {
    MATCH_IDENTICAL_FILE: ("identical file", "b-file"),
    MATCH_IDENTICAL_PIXELS: ("identical pixels", "b-pix"),
    MATCH_NEAR: ("near copy", "b-near"),
}

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;background:#f6f7f9;color:#1d232b}
h1{font-size:22px;margin:0 0 12px}
table.sum{border-collapse:collapse;margin-bottom:12px;background:#fff}
table.sum th,table.sum td{border:1px solid #dde1e6;padding:4px 10px;text-align:left}
table.sum th{background:#eef1f4;font-weight:600}
.note{background:#fff7d6;border:1px solid #e8d48b;padding:8px 12px;border-radius:6px;margin:12px 0}
.group{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:12px;margin:14px 0}
.group h2{font-size:15px;margin:0 0 8px;font-weight:600}
.row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.card a{text-decoration:none}
.card{width:var(--t);border:1px solid #dde1e6;border-radius:6px;padding:6px;background:#fbfcfd}
.card.keep,.card.query{border:2px solid #2f7d32;background:#f1f8f1}
.card.query{border-color:#2b5fb4;background:#eff4fc}
.thumb{display:block;width:var(--t);height:var(--t);object-fit:contain;background:#e9ecef;border-radius:4px}
.nopv{display:flex;align-items:center;justify-content:center;color:#6c757d;background:#d6d9dd;font-size:13px}
.score{font-size:18px;font-weight:700;font-variant-numeric:tabular-nums}
.meta{color:#555;font-size:12px}
.path{font:11px/1.3 ui-monospace,Menlo,Consolas,monospace;overflow-wrap:anywhere;color:#333;margin-top:4px}
.badge{display:inline-block;border-radius:10px;padding:1px 8px;font-size:12px;font-weight:600;margin:4px 0}
.b-keep{background:#2f7d32;color:#fff}.b-query{background:#2b5fb4;color:#fff}
.b-file{background:#6a1b9a;color:#fff}.b-pix{background:#ad1457;color:#fff}.b-near{background:#ffe0b2;color:#7a4100}
.none{color:#6c757d;font-style:italic;align-self:center}
"""


def _text(s: object) -> str:
    """Escape for HTML, also inside attributes. Paths from os.fsdecode may hold lone
    surrogates: turned back into their bytes, then shown with U+FFFD where not UTF-8."""
    s = str(s)
    try:
        s = s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that surrogateescape cannot carry (e.g. U+D800)
        s = s.encode("utf-8", "replace").decode("utf-8")
    return html.escape(s, quote=True)


def _uri(path: str) -> str:
    """A file:// link to the original (percent-encoded, so only ASCII remains)."""
    try:
        return pathlib.Path(os.path.abspath(path)).as_uri()
    except (ValueError, UnicodeError, OSError):
        return "file://" + urllib.parse.quote(path.encode("utf-8", "surrogatepass"))


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _thumb_name(path: str, thumb_size: int) -> str | None:
    # Size and mtime are in the key, so a file that changed gets a new thumbnail while an
    # unchanged one is reused from an earlier run.
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    key = f"{thumb_size}:{st.st_size}:{st.st_mtime_ns}:".encode() + path.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(key, digest_size=16).hexdigest() + ".jpg"


def _make_thumb(path: str, thumb_dir: pathlib.Path, thumb_size: int) -> str | None:
    """Relative src of the thumbnail, or None where the file cannot be previewed."""
    name = _thumb_name(path, thumb_size)
    if name is None:
        return None
    target = thumb_dir / name
    if target.is_file():
        return f"{THUMB_DIR}/{name}"
    tmp = None
    try:
        img = load_thumbnail(path, thumb_size)
        # A unique temporary name then os.replace: a reader (or another run) never sees half a JPEG.
        fd, tmp = tempfile.mkstemp(dir=thumb_dir, prefix=".tmp-", suffix=".jpg")
        with os.fdopen(fd, "wb") as fh:
            img.save(fh, "JPEG", quality=82)
        os.replace(tmp, target)
        return f"{THUMB_DIR}/{name}"
    except Exception:  # anything a user's file (or a full disk) throws: show a placeholder
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return None


def _thumbs(paths: list[str], out_dir: pathlib.Path, thumb_size: int) -> dict[str, str | None]:
    thumb_dir = out_dir / THUMB_DIR
    thumb_dir.mkdir(parents=True, exist_ok=True)
    unique = list(dict.fromkeys(paths))
    # Decoding releases the GIL in Pillow, so a few threads go several times faster.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        srcs = pool.map(lambda p: _make_thumb(p, thumb_dir, thumb_size), unique)
        return dict(zip(unique, srcs))


def _card(path: str, src: str | None, body: str, cls: str = "") -> str:
    if src is None:
        img = '<div class="thumb nopv">no preview</div>'
    else:
        img = f'<img class="thumb" src="{_text(src)}" alt="" loading="lazy">'
    return (
        f'<div class="card {cls}"><a href="{_text(_uri(path))}">{img}</a>{body}'
        f'<div class="path">{_text(path)}</div></div>'
    )


def _page(title: str, summary: dict[str, object], notes: list[str], body: list[str], thumb_size: int) -> str:
    rows = "".join(
        f"<tr><th>{_text(k)}</th><td>{_text(f'{v:.4g}' if isinstance(v, float) else v)}</td></tr>"
        for k, v in summary.items()
    )
    note_html = f'<p class="note">{" ".join(notes)}</p>'
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        # No script may run in this page whatever a file name smuggles in.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "img-src 'self' file: data:; style-src 'unsafe-inline'\">"
        f"<title>{_text(title)}</title><style>:root{{--t:{int(thumb_size)}px}}{_CSS}</style></head>"
        f"<body><h1>{_text(title)}</h1><table class=\"sum\">{rows}</table>{note_html}\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _write(out_dir: pathlib.Path, text: str) -> pathlib.Path:
    target = out_dir / "report.html"
    tmp = out_dir / f".report.html.{os.getpid()}.tmp"
    # errors="replace" is a last guard: all text is already made valid by _text().
    tmp.write_text(text, encoding="utf-8", errors="replace")
    os.replace(tmp, target)
    return target


def _left_out(total: int, shown: int, what: str, csv_name: str) -> list[str]:
    if total <= shown:
        return [f"Showing all {total} {what}."]
    return [
        f"Showing the first {shown} of {total} {what}: <b>{total - shown} left out</b>. "
        f"The full list is in <code>{csv_name}</code> next to this page."
    ]


def write_query_report(
    out_dir: str | os.PathLike,
    results: list[QueryResult],
    summary: dict[str, object],
    max_items: int = 2000,
    thumb_size: int = 192,
) -> pathlib.Path:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Queries with a match first, best score first; sorted() is stable, so the rest keep their order.
    ordered = sorted(results, key=lambda r: -max((m.score for m in r.matches), default=float("-inf")))
    shown = ordered[: max(0, max_items)]
    srcs = _thumbs([p for r in shown for p in [r.query_path, *(m.reference_path for m in r.matches)]], out, thumb_size)
    body = []
    for r in shown:
        size = f'<div class="meta">{r.width} x {r.height}</div>' if r.width and r.height else ""
        cards = [_card(r.query_path, srcs[r.query_path], f'<span class="badge b-query">QUERY</span>{size}', "query")]
        for m in sorted(r.matches, key=lambda m: m.rank):
            meta = f'<div class="score">{m.score:.3f}</div><div class="meta">rank {int(m.rank)}</div>'
            cards.append(_card(m.reference_path, srcs[m.reference_path], meta))
        if not r.matches:
            cards.append('<div class="none">no match at or above the threshold</div>')
        body.append(f'<div class="group"><div class="row">{"".join(cards)}</div></div>')
    with_match = sum(1 for r in results if r.matches)
    notes = [f"{with_match} of {len(results)} queries have at least one match."]
    notes += _left_out(len(results), len(shown), "queries", "matches.csv")
    return _write(out, _page("copyscan: matches", summary, notes, body, thumb_size))


def write_dedupe_report(
    out_dir: str | os.PathLike,
    groups: list[Group],
    summary: dict[str, object],
    max_items: int = 2000,
    thumb_size: int = 192,
) -> pathlib.Path:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shown = groups[: max(0, max_items)]
    srcs = _thumbs([m.path for g in shown for m in g.members], out, thumb_size)
    body = []
    for g in shown:
        cards = []
        for i, m in enumerate(g.members):
            wh = f"{int(m.width)} x {int(m.height)} · " if m.width and m.height else ""
            dims = f'<div class="meta">{wh}{_human_bytes(m.bytes)}</div>'
            if i == 0:  # the kept image is always first (Group.keep)
                reason = f'<div class="meta">{_text(g.keep_reason)}</div>' if g.keep_reason else ""
                cards.append(_card(m.path, srcs[m.path], f'<span class="badge b-keep">KEEP</span>{reason}{dims}', "keep"))
            else:
                label, cls = _BADGES.get(m.match, (m.match, "b-near"))
                meta = f'<div class="score">{m.score:.3f}</div><span class="badge {cls}">{_text(label)}</span>{dims}'
                cards.append(_card(m.path, srcs[m.path], meta))
        n = len(g.members) - 1
        head = f"<h2>Group {_text(g.group_id)} · {n} cop{'y' if n == 1 else 'ies'}</h2>"
        body.append(f'<div class="group">{head}<div class="row">{"".join(cards)}</div></div>')
    n_copies = sum(len(g.members) - 1 for g in groups)
    notes = [f"{len(groups)} groups, {n_copies} copies in all."]
    notes += _left_out(len(groups), len(shown), "groups", "groups.csv")
    return _write(out, _page("copyscan: duplicates", summary, notes, body, thumb_size))
