"""Which image of a group of copies to keep: the one most likely to be the original.

Copies are made from an original by lossy steps (downscale, crop, re-encode, grayscale, a
screenshot or paste into a bigger frame, a caption), each made independently. So:

1. Detail of the shared content decides first, not pixel count. Each image's *footprint* is the
   part of its frame that holds the photo: uniform borders (a screenshot's or a paste's frame, a
   caption bar) are trimmed. A footprint larger than another's but holding no detail beyond it
   (the smaller one upsampled to its size explains it, as with a phone screenshot of a small
   photo) is worth only that smaller one's detail. Images within DETAIL_TOLERANCE of the most
   detailed stay contenders.
2. Among contenders, in this order, the first rule that leaves one image decides: fewer signs
   of a derived image (transparency, a frame, a caption bar); colour over grayscale; EXIF camera
   data; an older modification time (by more than MTIME_SLACK: files copied together tie); the
   image nearest the group's consensus (each edit moves its copy away from the original in its
   own direction, so the original sits in the middle); more bytes per pixel; the shorter path.
3. Identical twins never reach this: within a set of files with identical pixels, a lossy file
   (JPEG, WebP, HEIC) is the original of a lossless re-save (PNG, BMP, TIFF), the smaller file
   otherwise (see `twin_key`).

User rules come on top (`KEEP_RULES`), and `protect` folders are never touched. Each choice
returns the reason that decided it.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .decode import DecodeError, open_image, read_bytes
from .errors import UserError

KEEP_ORIGINAL = "original"
KEEP_RULES = {
    KEEP_ORIGINAL: "the likely original: most detail of the shared content, then fewer signs of editing (default)",
    "resolution": "most pixels, then most bytes per pixel",
    "oldest": "oldest modification time",
    "newest": "newest modification time",
    "largest": "largest file",
    "smallest": "smallest file",
}
LOSSLESS_EXTENSIONS = frozenset({".png", ".bmp", ".tif", ".tiff", ".gif"})
DETAIL_TOLERANCE = 0.15  # footprints within 15 % of the most detailed one tie on detail
MTIME_SLACK_NS = 60 * 10**9  # files written within a minute of each other were copied together
ANALYSIS_SIDE = 1024  # footprints are analysed at most this long (upscale test, consensus)
FRAME_SIDE = 512  # frames are looked for at most this long
FRAME_MARGIN = 0.08  # a frame counts when it covers this much more of the image than the group's typical one
UPSCALE_RESIDUAL = 0.4  # below this, a footprint holds no detail beyond the smaller one (see _explains)
ASPECT_SLACK = 0.4  # footprint shapes that differ more show other content (a crop), not an upsample
CONSENSUS_SIDE = 64  # footprints are compared with each other at this size
CONSENSUS_MARGIN = 0.97  # the nearest image must be this much nearer than the next to decide


@dataclass
class Candidate:
    """What the chooser knows of one image without opening it."""

    path: str
    width: int
    height: int
    bytes: int
    mtime_ns: int = 0
    protected: bool = False
    preferred: bool = False  # chosen by the user in an earlier review


@dataclass
class Facts:
    """What opening one image tells about whether it is an original."""

    box: tuple[int, int, int, int]  # footprint (x0, y0, x1, y1) in the image's own pixels
    frame: str = ""  # "frame" or "caption bar" when uniform borders were trimmed
    transparency: float = 0.0  # share of pixels not fully opaque
    grayscale: bool = False
    camera: str = ""  # EXIF make/model
    luma: np.ndarray | None = field(default=None, repr=False)  # footprint, float32, at most ANALYSIS_SIDE
    small: np.ndarray | None = field(default=None, repr=False)  # footprint luminance, CONSENSUS_SIDE square
    scaled: bool = False  # analysed below its own resolution (too large, or decoded at reduced scale)
    frame_share: float = 0.0  # share of the image outside the footprint
    canvas_aspect: float = 1.0  # width / height of the whole image
    whole: np.ndarray | None = field(default=None, repr=False)  # the whole image's luminance, at most ANALYSIS_SIDE
    whole_scaled: bool = False

    @property
    def area(self) -> int:
        x0, y0, x1, y1 = self.box
        return max(1, (x1 - x0) * (y1 - y0))

    @property
    def aspect(self) -> float:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) / max(1, y1 - y0)

    def framed(self, typical: tuple[float, float]) -> bool:
        """Whether this image holds the photo in a frame the group's typical image has not
        (`typical`: its frame share and canvas shape, see _typical): a wider frame, or a canvas of
        another shape around a footprint of the typical shape (a phone screenshot of a photo
        with a flat background of its own). An original's own border passes to its copies."""
        if not self.frame:
            return False
        share, aspect = typical
        if self.frame_share > share + FRAME_MARGIN:
            return True
        return abs(self.canvas_aspect / aspect - 1) > 0.1 and abs(self.aspect / aspect - 1) < 0.1

    def penalties(self, typical: tuple[float, float] = (0.0, 1.0)) -> list[str]:
        """Signs of a derived image: transparency, a frame (see `framed`)."""
        out = [self.frame] if self.framed(typical) else []
        if self.transparency > 0.01:
            out.append(f"transparency ({self.transparency:.0%} of pixels)")
        return out


def is_lossless(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in LOSSLESS_EXTENSIONS


def twin_key(path: str, nbytes: int, mtime_ns: int) -> tuple:
    """Order of files with identical pixels, the original first: a lossy file before a lossless
    re-save of its pixels, then the smaller file, the older, the shorter path."""
    return (is_lossless(path), nbytes, mtime_ns, len(path), path)


# ---- looking at one image ----------------------------------------------------------------------


def facts_of(path: str, within: tuple[float, float, float, float] | None = None) -> Facts | None:
    """Facts of one image, or None when it cannot be decoded (it then only ties on detail).

    Analysed at most ANALYSIS_SIDE long (a large JPEG decoded at reduced scale); the footprint
    box is given back in the image's own pixels. `within`: where `dedupe --regions` found the
    group's shared content in this image (fractions x0, y0, x1, y1); when it is smaller than the
    trimmed footprint, it is the footprint (a photo pasted on a busy background has no uniform
    frame to trim, yet fills only that box).
    """
    try:
        data = read_bytes(path)
        img, width, height = open_image(data, min_side=ANALYSIS_SIDE)
        raw = Image.open(io.BytesIO(data))
        alpha = _alpha_share(raw)
        camera = _camera(raw)
    except (DecodeError, OSError, ValueError, SyntaxError):
        return None
    draft = img.size != (width, height)  # a large JPEG decoded at reduced scale
    rgb = np.asarray(img, dtype=np.uint8)
    k = min(1.0, FRAME_SIDE / max(img.size))  # frames are found on a small version, for speed
    probe = rgb if k == 1.0 else np.asarray(img.resize((max(1, round(img.width * k)), max(1, round(img.height * k))), Image.Resampling.BOX))
    (px0, py0, px1, py1), frame = footprint(probe)
    if within is not None:
        ph, pw = probe.shape[:2]
        bx0, by0, bx1, by1 = (round(within[0] * pw), round(within[1] * ph), round(within[2] * pw), round(within[3] * ph))
        if bx1 > bx0 and by1 > by0 and (bx1 - bx0) * (by1 - by0) < (px1 - px0) * (py1 - py0):
            (px0, py0, px1, py1), frame = (bx0, by0, bx1, by1), "frame"
    fx, fy = img.width / probe.shape[1], img.height / probe.shape[0]
    x0, y0, x1, y1 = round(px0 * fx), round(py0 * fy), round(px1 * fx), round(py1 * fy)
    region = img.crop((x0, y0, x1, y1))
    scaled = draft or max(region.size) > ANALYSIS_SIDE
    arr = np.asarray(_at_most(region, ANALYSIS_SIDE), dtype=np.uint8)
    luma = _luma(arr)
    # The whole canvas too: for an image that is not framed unlike its group, its footprint
    # (trimmed of the photo's own flat background) is not what a screenshot of it shows.
    whole = luma if (x0, y0, x1, y1) == (0, 0, img.width, img.height) else _luma(np.asarray(_at_most(img, ANALYSIS_SIDE), dtype=np.uint8))
    whole_scaled = draft or max(img.size) > ANALYSIS_SIDE
    small = np.asarray(Image.fromarray(luma, "F").resize((CONSENSUS_SIDE, CONSENSUS_SIDE), Image.Resampling.BOX), dtype=np.float32)
    spread = np.abs(arr[..., 0].astype(np.int16) - arr[..., 1]) + np.abs(arr[..., 1].astype(np.int16) - arr[..., 2])
    grayscale = bool(np.mean(spread <= 6) > 0.99)
    sx, sy = width / img.width, height / img.height
    box = (round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy))
    frame_share = 1 - (x1 - x0) * (y1 - y0) / (img.width * img.height)
    return Facts(box, frame, alpha, grayscale, camera, luma, small, scaled, frame_share, width / max(1, height), whole, whole_scaled)


def _at_most(img: Image.Image, side: int) -> Image.Image:
    if max(img.size) <= side:
        return img
    q = side / max(img.size)
    return img.resize((max(1, round(img.width * q)), max(1, round(img.height * q))), Image.Resampling.BOX)


def _luma(arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:
        return 1


def _alpha_share(img: Image.Image) -> float:
    if img.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and not (img.mode == "P" and "transparency" in img.info):
        return 0.0
    alpha = np.asarray(img.convert("RGBA"), dtype=np.uint8)[..., 3]
    return float(np.mean(alpha < 250))


def _camera(img: Image.Image) -> str:
    try:
        exif = img.getexif()
    except Exception:
        return ""
    make, model = str(exif.get(0x010F, "") or "").strip(" \0"), str(exif.get(0x0110, "") or "").strip(" \0")
    return " ".join(p for p in (make, model) if p)


def _flat_lines(rgb: np.ndarray, axis: int) -> np.ndarray:
    """Per row (axis=1) or column (axis=0): whether at least 85 % of its pixels are within 6 of
    the line's median colour (JPEG noise allowed), i.e. a frame or a bar rather than a photo."""
    med = np.median(rgb, axis=axis, keepdims=True)
    close = np.all(np.abs(rgb.astype(np.int16) - med.astype(np.int16)) <= 10, axis=2)
    return close.mean(axis=axis) >= 0.85


def _longest_run(busy: np.ndarray, gap: int) -> tuple[int, int]:
    """[start, end) of the longest run of busy lines, bridging flat gaps up to `gap` lines."""
    idx = np.flatnonzero(busy)
    if len(idx) == 0:
        return 0, len(busy)
    breaks = np.flatnonzero(np.diff(idx) > gap + 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], [idx[-1]]]) + 1
    k = int(np.argmax(ends - starts))
    return int(starts[k]), int(ends[k])


def footprint(rgb: np.ndarray) -> tuple[tuple[int, int, int, int], str]:
    """The box of an image that holds the photo, and what was trimmed around it ("" if nothing).

    Lines that are mostly one colour are frame; the photo is the longest run of other lines
    (short flat gaps inside it bridged), first top to bottom, then left to right within it.
    """
    h, w = rgb.shape[:2]
    full = (0, 0, w, h)
    if h < 16 or w < 16:
        return full, ""
    y0, y1 = _longest_run(~_flat_lines(rgb, 1), gap=max(1, h // 50))
    x0, x1 = _longest_run(~_flat_lines(rgb[y0:y1], 0), gap=max(1, w // 50))
    trimmed = 1 - ((x1 - x0) * (y1 - y0)) / (w * h)
    sides = sum(((y0 > h * 0.02), (y1 < h * 0.98), (x0 > w * 0.02), (x1 < w * 0.98)))
    if (x1 - x0) < w * 0.2 or (y1 - y0) < h * 0.2:
        return full, ""  # most of the picture flat: a graphic, not a photo in a frame
    if sides == 1 and trimmed >= 0.05:
        return (x0, y0, x1, y1), "caption bar"
    if sides >= 2 and trimmed >= 0.10:
        return (x0, y0, x1, y1), "screenshot or paste frame"
    return full, ""  # a thin flat edge (sky, a border of a few pixels) is part of the photo


# ---- comparing images --------------------------------------------------------------------------


def _explains(small: np.ndarray, large: np.ndarray) -> bool:
    """Whether picture `large` (luminance) holds no detail beyond `small` (an upsampled copy of it).

    Alignment-free: taking `large` down to `small`'s size and back up loses the band of detail
    between the two sizes. Natural images hold about as much detail in each band of the same
    width in octaves, so a `large` at its native resolution loses about what `small` loses over
    the same ratio below its own size; an upsampled one loses almost nothing (below
    UPSCALE_RESIDUAL of that). Only framed images are tested (see effective_detail), and their
    footprint may have lost some of the photo's own flat background to the trimming, so the
    shapes need only roughly agree (ASPECT_SLACK).
    """
    hh, ww = large.shape
    sh, sw = small.shape
    if abs((sw / sh) / (ww / hh) - 1) > ASPECT_SLACK or sh * sw * 1.15 >= hh * ww:
        return False
    lost_large = _band_energy(large, sw, sh)
    ratio = np.sqrt(sh * sw / (hh * ww))
    lost_small = _band_energy(small, max(8, round(sw * ratio)), max(8, round(sh * ratio)))
    if lost_small < 1e-3:
        return False  # a flat picture: nothing to tell by
    return lost_large / lost_small < UPSCALE_RESIDUAL


def _band_energy(arr: np.ndarray, w: int, h: int) -> float:
    """Mean squared detail of `arr` that a round trip through w x h loses (brightness normalised)."""
    arr = (arr - arr.mean()) / (arr.std() + 1e-6)
    hh, ww = arr.shape
    return float(np.mean((arr - _resize(_resize(arr, w, h), ww, hh)) ** 2))


def _resize(arr: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(arr, "F").resize((max(1, w), max(1, h)), Image.Resampling.BICUBIC), dtype=np.float32)


def _typical(facts: Sequence[Facts | None]) -> tuple[float, float]:
    """The group's median frame share and canvas shape: the original's own border or flat
    background and shape, since most copies keep them."""
    shown = [f for f in facts if f is not None]
    if not shown:
        return 0.0, 1.0
    return float(np.median([f.frame_share for f in shown])), float(np.median([f.canvas_aspect for f in shown]))


def effective_detail(facts: Sequence[Facts | None], cands: Sequence[Candidate]) -> list[int]:
    """Pixels of shared content each image really holds (see module doc, step 1)."""
    # Only a footprint framed unlike the group's typical image (a screenshot, a paste) counts
    # apart from its frame, and only it is tested for upsampling: an original's own border or
    # flat background is shared by most of its copies, and many originals are soft, so a soft
    # original must not lose to a copy that merely added sharp text.
    typical = _typical(facts)
    framed = [f is not None and f.framed(typical) for f in facts]
    area = [f.area if framed[i] else max(1, c.width * c.height) for i, (f, c) in enumerate(zip(facts, cands))]
    eff = list(area)
    for i in sorted(range(len(area)), key=lambda k: area[k]):
        fi = facts[i]
        if fi is None:
            continue
        for j in range(len(area)):
            fj = facts[j]
            if j == i or fj is None or not framed[i] or fi.scaled or area[j] >= area[i] or eff[j] >= eff[i]:
                continue
            # The smaller image's footprint or its whole canvas, whichever has the shape of the
            # framed one's footprint (a letterboxed original shows its bars in a screenshot too).
            views = [(fj.luma, fj.scaled), (fj.whole, fj.whole_scaled)]
            small, small_scaled = min(views, key=lambda v: abs(np.log((v[0].shape[1] / v[0].shape[0]) / fi.aspect)))
            if not small_scaled and _explains(small, fi.luma):
                eff[i] = eff[j]
    return eff


def _consensus_distance(facts: Sequence[Facts | None], voters: Sequence[Facts | None]) -> list[float]:
    """Each footprint's distance to the pixelwise median of the voters' (brightness normalised).

    Each copy departs from the original in its own way (a caption here, blocking there, a
    mirror), so the median picture of the whole group is close to the original and the original
    close to it. Voters of another shape (a crop to another aspect) are left out.
    """
    def vec(f: Facts) -> np.ndarray:
        v = f.small.ravel()
        return (v - v.mean()) / (v.std() + 1e-6)

    shown = [f for f in facts if f is not None and f.small is not None]
    if not shown:
        return [0.0] * len(facts)
    aspect = float(np.median([f.aspect for f in shown]))
    votes = [vec(f) for f in voters if f is not None and f.small is not None and abs(f.aspect / aspect - 1) < 0.03]
    if len(votes) < 3:
        return [0.0] * len(facts)
    centre = np.median(np.stack(votes), axis=0)
    return [float(np.mean(np.abs(vec(f) - centre))) if f is not None and f.small is not None else float("inf") for f in facts]


# ---- choosing ---------------------------------------------------------------------------------


@dataclass
class Choice:
    index: int  # into the candidates
    reason: str


def _human(n: float) -> str:
    return f"{n / 1e6:.2f} MP" if n >= 1e6 else f"{int(n):,} px"


def choose_keep(cands: Sequence[Candidate], rule: str = KEEP_ORIGINAL,
                facts_fn: Callable[[str], Facts | None] = facts_of) -> Choice:
    """The candidate to keep and why. `facts_fn` opens an image (tests may pass their own)."""
    if not cands:
        raise ValueError("no candidates")
    if len(cands) == 1:
        return Choice(0, "only image")
    if rule not in KEEP_RULES:
        raise UserError(f"--keep {rule}: not a keep rule; one of {', '.join(KEEP_RULES)}")
    alive = list(range(len(cands)))
    prefix = ""
    protected = [i for i in alive if cands[i].protected]
    if protected:
        if len(protected) == 1:
            return Choice(protected[0], "in a protected folder")
        alive, prefix = protected, "in a protected folder; "
    preferred = [i for i in alive if cands[i].preferred]
    if len(preferred) == 1:
        return Choice(preferred[0], prefix + "your choice in an earlier review")
    if preferred:
        alive, prefix = preferred, prefix + "your choice in an earlier review; "
    if rule != KEEP_ORIGINAL:
        return _by_user_rule(cands, alive, rule, prefix)
    return _likely_original(cands, alive, facts_fn, prefix)


def _by_user_rule(cands: Sequence[Candidate], alive: list[int], rule: str, prefix: str) -> Choice:
    keys = {
        "resolution": lambda c: (-(c.width * c.height), -(c.bytes / max(1, c.width * c.height))),
        "oldest": lambda c: (c.mtime_ns,),
        "newest": lambda c: (-c.mtime_ns,),
        "largest": lambda c: (-c.bytes,),
        "smallest": lambda c: (c.bytes,),
    }
    key = keys[rule]
    order = sorted(alive, key=lambda i: (*key(cands[i]), len(cands[i].path), cands[i].path))
    return Choice(order[0], f"{prefix}--keep {rule}: {KEEP_RULES[rule]}")


def _likely_original(cands: Sequence[Candidate], alive: list[int], facts_fn, prefix: str) -> Choice:
    facts = [facts_fn(c.path) if i in alive else None for i, c in enumerate(cands)]
    eff = effective_detail([facts[i] for i in alive], [cands[i] for i in alive])
    detail = dict(zip(alive, eff))

    def describe(i: int) -> str:
        return os.path.basename(cands[i].path)

    top = max(detail.values())
    left = [i for i in alive if detail[i] >= top * (1 - DETAIL_TOLERANCE)]
    if len(left) == 1:
        runner = max((i for i in alive if i != left[0]), key=lambda i: detail[i])
        return Choice(left[0], f"{prefix}most detail of the shared content ({_human(detail[left[0]])} vs {_human(detail[runner])})")

    typical = _typical(facts)
    steps: list[tuple[str, Callable[[int], float], Callable[[float, float], bool], Callable[[int, int], str]]] = [
        ("fewer signs of editing", lambda i: len(facts[i].penalties(typical)) if facts[i] else 0, lambda a, b: a < b,
         lambda k, r: f"the other has {', '.join(facts[r].penalties(typical))}" if facts[r] else ""),
        ("colour", lambda i: 1 if facts[i] and facts[i].grayscale else 0, lambda a, b: a < b,
         lambda k, r: "the other is grayscale"),
        ("EXIF camera data", lambda i: 0 if facts[i] and facts[i].camera else 1, lambda a, b: a < b,
         lambda k, r: facts[k].camera),
        ("older file", lambda i: cands[i].mtime_ns, lambda a, b: b - a > MTIME_SLACK_NS,
         lambda k, r: f"modified {(cands[r].mtime_ns - cands[k].mtime_ns) / 1e9 / 3600:.1f} h before {describe(r)}"),
    ]
    for name, value, better, detail_text in steps:
        values = {i: value(i) for i in left}
        best = min(left, key=lambda i: values[i])
        narrowed = [i for i in left if not better(values[best], values[i])]
        if len(narrowed) == 1:
            runner = next(i for i in left if i != best)
            note = detail_text(best, runner)
            return Choice(best, f"{prefix}same detail, {name}" + (f" ({note})" if note else ""))
        left = narrowed
    dist = dict(zip(left, _consensus_distance([facts[i] for i in left], facts))) if len(left) > 1 else {}
    if dist:
        order = sorted(left, key=lambda i: dist[i])
        if dist[order[0]] < CONSENSUS_MARGIN * dist[order[1]]:
            return Choice(order[0], f"{prefix}same detail, nearest to the group's consensus (distance {dist[order[0]]:.2f} vs {dist[order[1]]:.2f})")
    bpp = {i: cands[i].bytes / max(1, cands[i].width * cands[i].height) for i in left}
    order = sorted(left, key=lambda i: (-bpp[i], len(cands[i].path), cands[i].path))
    if bpp[order[0]] != bpp[order[1]]:
        return Choice(order[0], f"{prefix}same detail, least compressed ({bpp[order[0]]:.2f} vs {bpp[order[1]]:.2f} bytes per pixel)")
    return Choice(order[0], f"{prefix}same detail and size, shortest path")


# ---- for grouping ------------------------------------------------------------------------------


def under_any(path: str, folders: Sequence[str]) -> bool:
    real = os.path.realpath(path)
    return any(p == f or p.startswith(f.rstrip(os.sep) + os.sep) for f in folders for p in (path, real))


def make_chooser(rule: str = KEEP_ORIGINAL, protect: Sequence[str] = (), preferred: set[str] | frozenset[str] = frozenset(),
                 facts_fn: Callable[[str], Facts | None] = facts_of) -> Callable[[Sequence], tuple[int, str]]:
    """A chooser for group.build_groups: items (path, width, height, bytes, mtime_ns,
    content_hash) -> (index to keep, reason). `protect`: absolute folders never touched."""
    if rule not in KEEP_RULES:
        raise UserError(f"--keep {rule}: not a keep rule; one of {', '.join(KEEP_RULES)}")
    folders = [os.path.abspath(f) for f in protect]

    def choose(items: Sequence) -> tuple[int, str]:
        cands = [Candidate(it.path, it.width, it.height, it.bytes, it.mtime_ns, under_any(it.path, folders) if folders else False,
                           it.content_hash in preferred) for it in items]
        c = choose_keep(cands, rule, facts_fn)
        return c.index, c.reason

    return choose


def mark_protected(groups: Sequence, protect: Sequence[str]) -> None:
    """Copies in a protected folder become role "protected": shown, never acted on."""
    folders = [os.path.abspath(f) for f in protect]
    if not folders:
        return
    for g in groups:
        for m in g.members[1:]:
            if under_any(m.path, folders):
                m.role = "protected"
