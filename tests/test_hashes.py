"""pHash and PDQ baselines as descriptor models: cosine equals 1 - 2 * hamming / bits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import make_photo, photo_array

from copyscan.models import create_model


@pytest.mark.parametrize("name,bits", [("phash", 64), ("pdq", 256)])
def test_hash_vectors_rank_by_hamming(name, bits):
    pytest.importorskip("imagehash" if name == "phash" else "pdqhash")
    model = create_model(name)
    assert model.dim == bits and model.info.runtime == "python"
    size = model.input_size
    a = photo_array((size, size), 1)
    b = np.asarray(Image.fromarray(a).resize((size // 2, size // 2)).resize((size, size)))  # a resized copy
    c = photo_array((size, size), 2)  # another picture
    v = model.embed(np.stack([a, b, c]))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    signs = v > 0
    for i, j in ((0, 1), (0, 2)):
        hamming = int((signs[i] != signs[j]).sum())
        assert float(v[i] @ v[j]) == pytest.approx(1 - 2 * hamming / bits, abs=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]  # the copy is nearer than the other picture


def test_hash_model_indexes_a_folder(tmp_path):
    pytest.importorskip("imagehash")
    import copyscan

    for i in range(3):
        make_photo(tmp_path / "p" / f"{i}.jpg", size=(200, 150), seed=i)
    s = copyscan.index_folder(tmp_path / "p", index_dir=tmp_path / "idx", model="phash", extraction=copyscan.Extraction(workers=0))
    assert s.embedded == 3 and s.model == "phash"
