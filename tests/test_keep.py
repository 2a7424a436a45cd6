"""Keep choice (issue 13): the original is kept, not the image with the most pixels.

The folder of the issue in small: synthetic originals with the 8 copies of
benchmarks/keep_family.py (resize 50 %, JPEG q30, crop 80 %, grayscale, mirror, a 720x1280
phone screenshot, a text overlay, a PNG re-save), grouped by build_groups with every copy
paired to its original, keep chosen by copyscan.keep. The real-photo version with numbers
before and after is benchmarks/keep_accuracy.py.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_photo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from keep_family import make_copies, set_times  # noqa: E402

from copyscan.decode import decode_file  # noqa: E402
from copyscan.errors import UserError  # noqa: E402
from copyscan.group import Item, build_groups  # noqa: E402
from copyscan.same_files import refine_pixel_hashes  # noqa: E402
from copyscan.keep import Candidate, choose_keep, facts_of, footprint, make_chooser  # noqa: E402


def _item(path: Path) -> Item:
    d = decode_file(str(path), 64)
    st = os.stat(path)
    return Item(str(path), d.width, d.height, st.st_size, d.content_hash, d.pixel_hash, st.st_mtime_ns)


def _family_groups(folder: Path, n: int, copies_newer: bool, rule: str = "original"):
    originals, items = [], []
    for s in range(n):
        orig = make_photo(folder / f"photo{s}.jpg", size=(400, 300), seed=40 + s, quality=88)
        copies = make_copies(orig, folder, f"photo{s}", random.Random(s))
        # the copies made after the original (a minute apart), or all at one time (a `cp -r`)
        set_times([orig, *copies.values()], 1.6e9 + s * 1e5, 3600.0 if copies_newer else 0.0)
        originals.append(str(orig))
        items += [_item(orig), *(_item(p) for p in copies.values())]
    # every copy scored against its original, as a search would find them
    pairs = [(i, j, 0.9) for i in range(0, len(items), 9) for j in range(i + 1, i + 9)]
    items = refine_pixel_hashes(items, [(i, j) for i, j, _ in pairs])
    return originals, build_groups(items, pairs, 0.75, choose=make_chooser(rule))


@pytest.mark.parametrize("copies_newer", [True, False], ids=["copies-newer", "same-mtimes"])
def test_the_original_is_kept_in_every_group(tmp_path, copies_newer):
    originals, groups = _family_groups(tmp_path, 3, copies_newer)
    assert len(groups) == 3
    kept = {g.keep.path for g in groups}
    assert kept == set(originals), [(g.keep.path, g.keep_reason) for g in groups]
    for g in groups:
        by_name = {Path(m.path).name: m for m in g.members}
        png = next(m for n, m in by_name.items() if n.endswith("_png.png"))
        assert png.match == "identical-pixels" and png.role == "copy"  # found on the full decode
        assert len(g.members) == 9 and g.keep_reason


def test_old_rule_resolution_keeps_the_screenshot(tmp_path):
    """What the issue found: by pixel count the screenshot wins. `--keep resolution` still does that."""
    _, groups = _family_groups(tmp_path, 1, True, rule="resolution")
    assert groups[0].keep.path.endswith("_screenshot.png")
    assert "resolution" in groups[0].keep_reason


def test_screenshot_footprint_and_frame(tmp_path):
    orig = make_photo(tmp_path / "o.jpg", size=(400, 300), seed=3)
    shot = make_copies(orig, tmp_path, "o", random.Random(0))["screenshot"]
    f = facts_of(str(shot))
    x0, y0, x1, y1 = f.box
    assert f.frame and 700 <= x1 - x0 <= 720 and 520 <= y1 - y0 <= 560  # the photo, 720 x 540, inside 720 x 1280
    g = facts_of(str(orig))
    assert not g.frame and g.box == (0, 0, 400, 300)


def test_caption_bar_counts_against():
    rgb = np.asarray(Image.fromarray((np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)))
    bar = np.full((60, 400, 3), 255, np.uint8)
    bar[20:40, 40:200] = 0  # the caption's text
    box, what = footprint(np.concatenate([bar, rgb]))
    assert what == "caption bar" and box == (0, 60, 400, 360)


def test_transparency_counts_against(tmp_path):
    """A half-transparent RGBA PNG of a JPEG: more bytes, same pixels count, not the original."""
    jpg = make_photo(tmp_path / "p.jpg", size=(300, 200), seed=8, quality=90)
    rgba = Image.open(jpg).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(tmp_path / "p_alpha.png")
    cands = [Candidate(str(tmp_path / "p_alpha.png"), 300, 200, os.path.getsize(tmp_path / "p_alpha.png")),
             Candidate(str(jpg), 300, 200, os.path.getsize(jpg))]
    c = choose_keep(cands)
    assert c.index == 1 and "transparency" in c.reason


def test_exif_camera_and_older_mtime_count_for(tmp_path):
    a = make_photo(tmp_path / "a.jpg", size=(300, 200), seed=9, quality=90)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "EOS 5D"
    b = make_photo(tmp_path / "b.jpg", size=(300, 200), seed=9, quality=85, exif=exif.tobytes())
    cands = [Candidate(str(a), 300, 200, a.stat().st_size, 10**18), Candidate(str(b), 300, 200, b.stat().st_size, 2 * 10**18)]
    c = choose_keep(cands)
    assert c.index == 1 and "Canon" in c.reason
    b2 = make_photo(tmp_path / "c.jpg", size=(300, 200), seed=9, quality=85)
    cands[1] = Candidate(str(b2), 300, 200, b2.stat().st_size, 2 * 10**18)
    c = choose_keep(cands)
    assert c.index == 0 and "older" in c.reason


def test_user_rules_and_protect(tmp_path):
    small = make_photo(tmp_path / "keepme" / "s.jpg", size=(200, 150), seed=2)
    big = make_photo(tmp_path / "b.jpg", size=(400, 300), seed=2)
    cands = [Candidate(str(big), 400, 300, big.stat().st_size, 5), Candidate(str(small), 200, 150, small.stat().st_size, 1)]
    assert choose_keep(cands).index == 0
    assert choose_keep(cands, "oldest").index == 1 and "--keep oldest" in choose_keep(cands, "oldest").reason
    assert choose_keep(cands, "newest").index == 0
    assert choose_keep(cands, "smallest").index == 1
    cands[1].protected = True
    c = choose_keep(cands)
    assert c.index == 1 and "protected" in c.reason
    with pytest.raises(UserError):
        choose_keep(cands, "prettiest")


def test_cli_keep_choices_are_the_keep_rules():
    # cli.py names them without importing keep.py (numpy, Pillow) at start-up: kept equal here
    from copyscan.cli import KeepRule
    from copyscan.keep import KEEP_RULES

    assert [r.value for r in KeepRule] == list(KEEP_RULES)


def test_decode_failure_does_not_crash_the_choice(tmp_path):
    good = make_photo(tmp_path / "g.jpg", size=(300, 200), seed=1)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    c = choose_keep([Candidate(str(tmp_path / "bad.jpg"), 300, 200, 12), Candidate(str(good), 300, 200, good.stat().st_size)])
    assert c.index in (0, 1) and c.reason


def test_region_box_is_the_footprint_of_a_paste_on_a_busy_background(tmp_path):
    """Issue 18: `dedupe --regions` knows where the copy sits. A photo pasted at 30% of the area
    of a busy (untrimmable) picture holds 30% of its pixels of detail, so the standalone original
    wins although the collage has more pixels."""
    orig = make_photo(tmp_path / "orig.jpg", size=(300, 225), seed=5)
    background = np.asarray(Image.open(make_photo(tmp_path / "bg.png", size=(600, 450), seed=11)))
    noise = np.random.default_rng(0).integers(0, 60, background.shape, dtype=np.uint8)
    canvas = Image.fromarray(np.clip(background.astype(int) + noise, 0, 255).astype(np.uint8))
    canvas.paste(Image.open(orig).resize((330, 247)), (150, 100))  # 30% of the area
    (tmp_path / "bg.png").unlink()
    collage = tmp_path / "collage.jpg"
    canvas.save(collage, quality=95)
    box = (150 / 600, 100 / 450, 480 / 600, 347 / 450)

    plain = facts_of(str(collage))
    assert plain.box == (0, 0, 600, 450)  # nothing uniform to trim: the whole picture
    boxed = facts_of(str(collage), within=box)
    x0, y0, x1, y1 = boxed.box
    assert abs(x0 - 150) <= 2 and abs(y0 - 100) <= 2 and abs(x1 - 480) <= 2 and abs(y1 - 347) <= 2
    assert boxed.frame  # the rest of the picture is not the photo: it counts against
    assert facts_of(str(collage), within=(0.0, 0.0, 1.0, 1.0)).box == (0, 0, 600, 450)  # a box never grows it

    cands = [Candidate(str(collage), 600, 450, collage.stat().st_size), Candidate(str(orig), 300, 225, orig.stat().st_size)]
    assert choose_keep(cands).index == 0  # by pixels of the whole frame, the collage would win
    boxes = {str(collage): box}
    assert choose_keep(cands, facts_fn=lambda p: facts_of(p, within=boxes.get(p))).index == 1
