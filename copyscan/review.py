"""`copyscan review OUT`: a page on 127.0.0.1 to click through a dedupe run's groups before acting.

For each group a person can change the kept image or mark a false match; "Save" writes
OUT/decisions.csv (only what differs from dedupe's proposal), which `copyscan apply` honours,
and remembers the decisions for later dedupe runs of that folder (copyscan.review_memory).

Why a local server rather than a static page: a page opened from disk cannot write a file, and
a download lands wherever the browser puts it. The server listens on 127.0.0.1 only, answers
only requests for its own host and port, and takes a save only with the random token the page
was served with, so another web page open in the same browser cannot post decisions.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .errors import UserError
from .groups_file import DECISIONS, DECISIONS_CSV, Decision, DedupeRun, read_dedupe_output, write_decisions
from .same_files import path_from_b64, path_to_b64
from .report import escape, human_bytes, thumbnails
from .review_memory import remember

THUMB_RE = re.compile(r"^/thumbs/([0-9a-f]{32}\.jpg)$")
MAX_BODY = 64 << 20

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;background:#f6f7f9;color:#1d232b}
.bar{position:sticky;top:0;background:#fff;border:1px solid #dde1e6;padding:8px 12px;border-radius:8px;z-index:1}
.group{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:12px;margin:14px 0}
.group h2{font-size:15px;margin:0 0 8px}
.row{display:flex;flex-wrap:wrap;gap:10px}
.card{width:200px;border:1px solid #dde1e6;border-radius:6px;padding:6px;background:#fbfcfd}
.card.keep{border:2px solid #2f7d32}.card.not-a-copy{opacity:.55}
.thumb{display:block;width:192px;height:192px;object-fit:contain;background:#e9ecef}
.path{font:11px monospace;overflow-wrap:anywhere}
label{display:block;font-size:13px}
"""

_SCRIPT = """
const token = document.body.dataset.token;
function refresh(card) {
  const v = card.querySelector('input:checked').value;
  card.className = 'card ' + v;
}
document.querySelectorAll('input[type=radio]').forEach(r => r.addEventListener('change', ev => {
  const card = ev.target.closest('.card');
  if (ev.target.value === 'keep') {
    // one kept image per group: the previous one becomes a copy
    card.closest('.group').querySelectorAll('.card').forEach(other => {
      if (other !== card && other.querySelector('input[value=keep]').checked) {
        other.querySelector('input[value=copy]').checked = true; refresh(other);
      }
    });
  }
  refresh(card);
}));
document.getElementById('save').addEventListener('click', async () => {
  const rows = [];
  document.querySelectorAll('.card').forEach(card => rows.push({
    group_id: Number(card.dataset.group), path_b64: card.dataset.path,
    decision: card.querySelector('input:checked').value}));
  const status = document.getElementById('status');
  try {
    const res = await fetch('/decisions', {method: 'POST', headers: {'Content-Type': 'application/json',
      'X-Copyscan-Token': token}, body: JSON.stringify({decisions: rows})});
    const doc = await res.json();
    status.textContent = res.ok ? `saved ${doc.saved} decisions to ${doc.file}` : `not saved: ${doc.error}`;
  } catch (e) { status.textContent = 'not saved: ' + e; }
});
"""


def _page(run: DedupeRun, token: str, nonce: str, srcs: dict[str, str | None], current: dict[tuple[int, str], str]) -> str:
    body = []
    for gid, records in sorted(run.groups.items()):
        members = [r for r in records if not r.alias_of]
        reclaim = sum(r.bytes for r in members if r.role == "copy")
        cards = []
        for r in members:
            state = current.get((gid, r.path), "keep" if r.role == "keep" else "copy")
            radios = "".join(
                f'<label><input type="radio" name="g{gid}-{escape(path_to_b64(r.path))}" value="{d}"'
                f'{" checked" if d == state else ""}{" disabled" if r.role == "protected" else ""}> {d}</label>'
                for d in DECISIONS
            )
            src = srcs.get(r.path)
            img = f'<img class="thumb" src="{escape(src)}" alt="">' if src else '<div class="thumb">no preview</div>'
            note = " (protected)" if r.role == "protected" else ""
            cards.append(
                f'<div class="card {state}" data-group="{gid}" data-path="{escape(path_to_b64(r.path))}">{img}'
                f'<div>{escape(human_bytes(r.bytes))}{note}</div>{radios}<div class="path">{escape(r.path)}</div></div>'
            )
        body.append(f'<div class="group" id="group-{gid}"><h2>Group {gid} · {escape(human_bytes(reclaim))} reclaimable · '
                    f'{escape(run.keep_reasons.get(gid, ""))}</h2><div class="row">{"".join(cards)}</div></div>')
    total = sum(r.bytes for rs in run.groups.values() for r in rs if r.role == "copy" and not r.alias_of)
    csp = (f"default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; "
           "connect-src 'self'")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="{csp}">'
        f"<title>copyscan review</title><style>{_CSS}</style></head><body data-token=\"{token}\">"
        f'<div class="bar"><b>copyscan review</b> · {len(run.groups)} groups · {escape(human_bytes(total))} reclaimable in all · '
        f'<button id="save">Save decisions</button> <span id="status"></span></div>'
        + "".join(body)
        + f'<script nonce="{nonce}">{_SCRIPT}</script></body></html>'
    )


def _read_current(run: DedupeRun) -> dict[tuple[int, str], str]:
    from .groups_file import read_decisions

    path = run.folder / DECISIONS_CSV
    if not path.exists():
        return {}
    try:
        return {(d.group_id, d.path): d.decision for d in read_decisions(path, run)}
    except UserError:
        return {}  # an outdated file: the page starts from dedupe's proposal


def save_decisions(run: DedupeRun, rows: list[dict]) -> tuple[Path, int]:
    """Check posted rows against the run; write the ones that differ from dedupe's proposal."""
    decisions = []
    for row in rows:
        try:
            gid, path, decision = int(row["group_id"]), path_from_b64(str(row["path_b64"])), str(row["decision"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"bad decision row {row!r}: {exc}") from None
        if decision not in DECISIONS:
            raise UserError(f"bad decision {decision!r}")
        record = next((r for r in run.groups.get(gid, []) if r.path == path and not r.alias_of), None)
        if record is None:
            raise UserError(f"no such file in group {gid}")
        proposed = "keep" if record.role == "keep" else "copy"
        if decision != proposed and record.role != "protected":
            decisions.append(Decision(gid, path, decision))
    target = run.folder / DECISIONS_CSV
    write_decisions(target, decisions)
    remember(run, decisions)
    return target, len(decisions)


@dataclass
class ReviewServer:
    server: ThreadingHTTPServer
    thread: threading.Thread
    url: str

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start(out_dir: str | Path, port: int = 0) -> ReviewServer:
    """Serve the review page of OUT on 127.0.0.1 in a background thread."""
    run = read_dedupe_output(out_dir)
    srcs = thumbnails([r.path for rs in run.groups.values() for r in rs if not r.alias_of], run.folder, 192)
    token, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(16)
    state = {"run": run}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet: the CLI prints what matters
            pass

        def _host_ok(self) -> bool:
            return self.headers.get("Host", "") in (f"127.0.0.1:{self.server.server_port}", f"localhost:{self.server.server_port}")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if not self._host_ok():
                return self._send(403, b"forbidden", "text/plain")
            if self.path in ("/", "/index.html"):
                page = _page(state["run"], token, nonce, srcs, _read_current(state["run"]))
                return self._send(200, page.encode("utf-8"), "text/html; charset=utf-8")
            m = THUMB_RE.match(self.path)
            if m:
                f = run.folder / "thumbs" / m.group(1)
                if f.is_file():
                    return self._send(200, f.read_bytes(), "image/jpeg")
            self._send(404, b"not found", "text/plain")

        def do_POST(self) -> None:
            if not self._host_ok() or self.path != "/decisions" or not secrets.compare_digest(self.headers.get("X-Copyscan-Token", ""), token):
                return self._send(403, b'{"error": "forbidden"}', "application/json")
            try:
                length = int(self.headers.get("Content-Length", "0"))
                if length > MAX_BODY:
                    raise UserError("too many decisions in one request")
                rows = json.loads(self.rfile.read(length)).get("decisions", [])
                target, n = save_decisions(state["run"], rows)
            except (UserError, ValueError, AttributeError) as exc:
                return self._send(400, json.dumps({"error": str(exc)}).encode(), "application/json")
            self._send(200, json.dumps({"saved": n, "file": str(target)}).encode(), "application/json")

    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError as exc:
        raise UserError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}; try another --port") from None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return ReviewServer(server, thread, f"http://127.0.0.1:{server.server_port}/")
