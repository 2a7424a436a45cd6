"""The registry of named edits, edit chains and difficulty levels."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from PIL import Image

from . import basic, frames, overlays
from .common import rgb

# The order edits are applied in a chain, as a copy is made in real life: the picture is cropped
# or turned first, its colours changed, text and stickers put on, it is framed (padded, captioned,
# screenshotted, pasted somewhere) and finally resized and re-encoded when posted again.
STAGES = ("geometry", "pixel", "overlay", "frame", "final")


@dataclass(frozen=True)
class Edit:
    """One named edit. Calling it as `edit(img, rng, strength)` returns the edited RGB image;
    `edit.apply(...)` returns the image and its label with parameters, e.g. `crop(0.62)`."""

    name: str
    run: Callable[[Image.Image, random.Random, float], tuple[Image.Image, str]]
    stage: str
    weight: float = 1.0  # how often random_chain picks it, relative to the others

    def apply(self, img: Image.Image, rng: random.Random, strength: float) -> tuple[Image.Image, str]:
        out, label = self.run(rgb(img), rng, float(strength))
        return rgb(out), label

    def __call__(self, img: Image.Image, rng: random.Random, strength: float) -> Image.Image:
        return self.apply(img, rng, strength)[0]


def _edit(run, stage: str, weight: float = 1.0, name: str | None = None) -> Edit:
    return Edit(name or run.__name__, run, stage, weight)


EDITS: dict[str, Edit] = {
    e.name: e
    for e in (
        _edit(basic.crop, "geometry", 1.5),
        _edit(basic.rotate, "geometry"),
        _edit(basic.rotate90, "geometry", 0.4),
        _edit(basic.hflip, "geometry", 0.6),
        _edit(basic.vflip, "geometry", 0.3),
        _edit(basic.aspect, "geometry"),
        _edit(basic.perspective, "geometry"),
        _edit(basic.grayscale, "pixel", 0.6),
        _edit(basic.color, "pixel"),
        _edit(basic.blur, "pixel"),
        _edit(basic.noise, "pixel"),
        _edit(basic.pixelate, "pixel", 0.6),
        _edit(overlays.text, "overlay", 1.2),
        _edit(overlays.emoji, "overlay", 1.2),
        _edit(basic.pad, "frame", 0.8),
        _edit(overlays.meme, "frame"),
        _edit(frames.screenshot, "frame"),
        _edit(frames.make_paste(None), "frame", name="paste"),
        _edit(basic.downscale, "final"),
        _edit(basic.jpeg, "final", 1.2),
    )
}


@dataclass(frozen=True)
class Difficulty:
    strength: tuple[float, float]  # each edit's strength is drawn from this range
    chain: tuple[int, int]  # how many edits a copy gets (inclusive range)


DIFFICULTIES: dict[str, Difficulty] = {
    "easy": Difficulty((0.0, 0.35), (1, 1)),
    "medium": Difficulty((0.3, 0.7), (1, 2)),
    "hard": Difficulty((0.6, 1.0), (2, 4)),
}


def check_names(names: Iterable[str]) -> list[str]:
    """`names` as a list, or ValueError naming the unknown ones and the known edits."""
    names = [n.strip() for n in names if n and n.strip()]
    unknown = [n for n in names if n not in EDITS]
    if unknown:
        raise ValueError(f"unknown edit{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; known: {', '.join(EDITS)}")
    return names


def _weights(mix: Mapping[str, float] | Iterable[str] | str | None) -> dict[str, float]:
    if mix is None:
        return {name: e.weight for name, e in EDITS.items()}
    if isinstance(mix, str):
        mix = mix.split(",")
    if isinstance(mix, Mapping):
        check_names(mix)
        return {name: float(w) for name, w in mix.items() if float(w) > 0}
    return {name: EDITS[name].weight for name in check_names(mix)}


def random_chain(
    rng: random.Random,
    n: int | None = None,
    mix: Mapping[str, float] | Iterable[str] | str | None = None,
    difficulty: str = "medium",
) -> list[str]:
    """Names of `n` distinct edits (by default as many as `difficulty` gives), in the order to apply.

    `mix` limits the choice: a list of names (or a comma-separated string), or a dict of name ->
    weight; by default every edit at its registry weight. A chain holds at most one framing
    edit (pad, meme, screenshot, paste): a copy framed twice is rare and mostly frame.
    """
    level = DIFFICULTIES.get(difficulty)
    if level is None:
        raise ValueError(f"unknown difficulty {difficulty!r}; one of: {', '.join(DIFFICULTIES)}")
    pool = _weights(mix)
    if n is None:
        n = rng.randint(*level.chain)
    picked: list[str] = []
    while pool and len(picked) < n:
        names = sorted(pool)
        name = rng.choices(names, weights=[pool[x] for x in names])[0]
        picked.append(name)
        del pool[name]
        if EDITS[name].stage == "frame":
            pool = {x: w for x, w in pool.items() if EDITS[x].stage != "frame"}
    order = list(EDITS)  # within a stage, registry order: downscale before jpeg
    return sorted(picked, key=lambda x: (STAGES.index(EDITS[x].stage), order.index(x)))


def apply_edits(
    img: Image.Image,
    names: Iterable[str],
    seed: int | random.Random,
    strength: float | tuple[float, float] = 0.5,
    backgrounds: frames.BackgroundProvider | None = None,
) -> tuple[Image.Image, list[str]]:
    """Apply the edits `names` in order; returns the RGB result and each edit's label.

    `strength` is one value for every edit, or a (low, high) range each edit draws its own from.
    `backgrounds` feeds the `paste` edit (see copyscan.edits.frames). The same image, names,
    seed and strength always give the same pixels.
    """
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    out = rgb(img)
    labels: list[str] = []
    for name in check_names(names):
        edit = EDITS[name]
        if name == "paste" and backgrounds is not None:
            edit = Edit("paste", frames.make_paste(backgrounds), "frame")
        s = rng.uniform(*strength) if isinstance(strength, tuple) else strength
        out, label = edit.apply(out, rng, s)
        labels.append(label)
    return out, labels
