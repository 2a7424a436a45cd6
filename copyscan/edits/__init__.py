"""Seeded, composable copy edits (DISC 2021 style) and the training augmentation.

    from copyscan.edits import EDITS, apply_edits, random_chain
    out, labels = apply_edits(img, ["crop", "text", "jpeg"], seed=7, strength=0.6)
    # labels == ['crop(0.57)', 'text(2,0.13)', 'jpeg(38)'] (for example)

Every edit is registered by name in `EDITS` and callable as `EDITS[name](img, rng, strength)`
with a PIL image, a `random.Random` and a strength in [0, 1] (mild to severe); it returns an RGB
image. `TrainAugment` gives the random views a descriptor is trained on.
"""

from .augment import TrainAugment
from .frames import generated_background, make_paste
from .registry import DIFFICULTIES, EDITS, STAGES, Difficulty, Edit, apply_edits, check_names, random_chain
from .stickers import sticker

__all__ = [
    "DIFFICULTIES", "EDITS", "STAGES", "Difficulty", "Edit", "TrainAugment", "apply_edits", "check_names",
    "generated_background", "make_paste", "random_chain", "sticker",
]
