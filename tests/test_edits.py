"""The copy-edit library (copyscan.edits): every edit, chains, and the training augmentation."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from conftest import make_photo, photo_array

from copyscan.edits import DIFFICULTIES, EDITS, STAGES, TrainAugment, apply_edits, random_chain, sticker
from copyscan.edits.basic import jitter_colour
from copyscan.edits.stickers import KINDS

PHOTO = Image.fromarray(photo_array((96, 72), seed=3), "RGB")
REQUIRED = {
    "crop", "downscale", "jpeg", "rotate", "hflip", "vflip", "grayscale", "color", "blur", "noise", "pixelate",
    "pad", "aspect", "perspective", "text", "emoji", "meme", "screenshot", "paste",
}


def pixels(img: Image.Image) -> bytes:
    return img.size[0].to_bytes(4, "little") + img.size[1].to_bytes(4, "little") + img.tobytes()


def test_registry_has_the_disc_edits():
    assert REQUIRED <= set(EDITS)
    assert all(EDITS[name].stage in STAGES for name in EDITS)


@pytest.mark.parametrize("name", sorted(EDITS))
@pytest.mark.parametrize("strength", [0.0, 0.5, 1.0])
def test_edit_gives_a_sensible_rgb_image_and_label(name, strength):
    out, label = EDITS[name].apply(PHOTO, random.Random(1), strength)
    assert out.mode == "RGB"
    w, h = out.size
    # Nothing grows past a few times the input, nothing vanishes.
    assert 1 <= w <= 4 * PHOTO.width + 64 and 1 <= h <= 4 * PHOTO.height + 128
    assert label.split("(")[0] == name
    assert EDITS[name](PHOTO, random.Random(1), strength).tobytes() == out.tobytes()  # callable form


@pytest.mark.parametrize("name", sorted(EDITS))
def test_edit_is_deterministic_and_seeded(name):
    a = EDITS[name].apply(PHOTO, random.Random(5), 0.7)
    b = EDITS[name].apply(PHOTO, random.Random(5), 0.7)
    assert pixels(a[0]) == pixels(b[0]) and a[1] == b[1]
    if name not in ("hflip", "vflip", "grayscale"):  # these have nothing to draw
        outs = {pixels(EDITS[name](PHOTO, random.Random(seed), 0.7)) for seed in range(6)}
        assert len(outs) > 1


@pytest.mark.parametrize("size", [(1, 1), (3, 500), (500, 3), (2, 7)])
@pytest.mark.parametrize("name", sorted(EDITS))
def test_edit_survives_tiny_and_odd_sizes(name, size):
    img = Image.new("RGB", size, (200, 30, 90))
    for strength in (0.0, 1.0):
        out = EDITS[name](img, random.Random(0), strength)
        assert out.mode == "RGB" and out.width >= 1 and out.height >= 1


def test_strength_sets_severity():
    def value(name, strength):
        label = EDITS[name].apply(PHOTO, random.Random(2), strength)[1]
        return float(label[label.index("(") + 1 : label.index(")")].split(",")[0])

    assert value("crop", 1.0) < value("crop", 0.0)  # side fraction kept
    assert value("jpeg", 1.0) < value("jpeg", 0.0)  # quality
    assert value("blur", 1.0) > value("blur", 0.0)  # radius
    assert value("downscale", 1.0) < value("downscale", 0.0)


def test_apply_edits_chain_is_reproducible_and_labelled():
    names = ["crop", "color", "text", "emoji", "meme", "jpeg"]
    a, labels = apply_edits(PHOTO, names, seed=11, strength=0.6)
    b, labels_b = apply_edits(PHOTO, names, seed=11, strength=0.6)
    assert pixels(a) == pixels(b) and labels == labels_b
    assert [label.split("(")[0] for label in labels] == names
    c, _ = apply_edits(PHOTO, names, seed=12, strength=0.6)
    assert pixels(a) != pixels(c)
    d, _ = apply_edits(PHOTO, names, seed=11, strength=(0.2, 0.9))  # a range: each edit draws its own
    assert d.mode == "RGB"


def test_apply_edits_takes_any_mode_and_refuses_unknown_names():
    for mode in ("L", "RGBA", "P", "CMYK"):
        out, _ = apply_edits(PHOTO.convert(mode), ["crop", "jpeg"], seed=0)
        assert out.mode == "RGB"
    with pytest.raises(ValueError, match="unknown edit bogus; known: crop"):
        apply_edits(PHOTO, ["crop", "bogus"], seed=0)


def test_paste_uses_the_background_provider(tmp_path):
    bg_path = make_photo(tmp_path / "bg.jpg", size=(120, 90), seed=8)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with_paths = {pixels(apply_edits(PHOTO, ["paste"], seed=s, backgrounds=[str(bg_path), str(broken)])[0]) for s in range(6)}
    generated = {pixels(apply_edits(PHOTO, ["paste"], seed=s)[0]) for s in range(6)}
    assert with_paths.isdisjoint(generated)  # a broken file falls back to a generated background
    calls = []

    def provider(rng):
        calls.append(1)
        return Image.new("RGB", (50, 40), (0, 90, 0))

    out, labels = apply_edits(PHOTO, ["paste"], seed=1, strength=1.0, backgrounds=provider)
    assert calls and labels[0].startswith("paste(")
    # The background is the provider's (a flat green), the photo shrunk onto it.
    arr = np.asarray(out)
    assert (arr == (0, 90, 0)).all(axis=2).mean() > 0.5


def test_random_chain_rules():
    rng = random.Random(0)
    for difficulty, level in DIFFICULTIES.items():
        for _ in range(50):
            chain = random_chain(rng, difficulty=difficulty)
            assert level.chain[0] <= len(chain) <= level.chain[1]
            assert len(set(chain)) == len(chain)
            assert sum(EDITS[n].stage == "frame" for n in chain) <= 1
            stages = [STAGES.index(EDITS[n].stage) for n in chain]
            assert stages == sorted(stages)
    assert set(random_chain(rng, 5, mix=["crop", "jpeg"])) == {"crop", "jpeg"}
    assert random_chain(rng, 1, mix="blur") == ["blur"]
    assert random_chain(rng, 2, mix={"crop": 1.0, "text": 0.0, "blur": 2.0}) in (["crop", "blur"],)
    assert random_chain(random.Random(4), 3) == random_chain(random.Random(4), 3)
    with pytest.raises(ValueError, match="unknown difficulty"):
        random_chain(rng, difficulty="brutal")
    with pytest.raises(ValueError, match="unknown edit"):
        random_chain(rng, mix=["crop", "sepia"])


def test_colour_jitter_identity_and_full_hue_turn():
    assert jitter_colour(PHOTO, 1, 1, 1, 0).tobytes() == PHOTO.tobytes()
    assert jitter_colour(PHOTO, 1, 1, 1, 1.0).tobytes() == PHOTO.tobytes()
    grey = Image.new("RGB", (8, 8), (120, 120, 120))
    assert jitter_colour(grey, 1, 1, 2.0, 0.3).getpixel((0, 0)) == (120, 120, 120)  # grey stays grey


def test_stickers_are_drawn():
    for kind in KINDS:
        art = sticker(kind, 32, random.Random(0))
        assert art.mode == "RGBA" and art.size == (32, 32)
        alpha = np.asarray(art)[..., 3]
        assert 0.2 < (alpha > 0).mean() < 1.0  # a shape on a transparent ground


def test_train_augment_views():
    aug = TrainAugment(64, seed=3)
    big = Image.fromarray(photo_array((160, 120), seed=4), "RGB")
    views = [aug(big) for _ in range(8)]
    assert all(v.size == (64, 64) and v.mode == "RGB" for v in views)
    assert len({v.tobytes() for v in views}) == 8
    again = TrainAugment(64, seed=3)
    assert [again(big).tobytes() for _ in range(8)] == [v.tobytes() for v in views]
    assert aug.view(big, 123).tobytes() == TrainAugment(64).view(big, 123).tobytes()
    for size in ((1, 1), (3, 500), (500, 3)):
        assert aug(Image.new("RGB", size, (1, 2, 3))).size == (64, 64)
    assert aug(big.convert("L")).mode == "RGB"
    with pytest.raises(ValueError, match="at least 1 pixel"):
        TrainAugment(0)
