"""training/fit_heads.py's views, training/fit_tail.py's split of the network and
training/average_checkpoints.py's mean of weights (issue 17)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_photo

TRAINING = Path(__file__).resolve().parents[1] / "training"


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(TRAINING))
    try:
        import average_checkpoints
        import fit_heads
        import fit_tail
        yield fit_heads, fit_tail, average_checkpoints
    finally:
        sys.path.remove(str(TRAINING))


def test_the_tail_after_the_cached_stem_is_the_whole_network(scripts):
    # fit_tail trains on cached inputs of the last block: stem + tail must be the net itself.
    import timm

    from copyscan.models.base import DescriptorNet
    from copyscan.models.lite0 import ARCH

    _, fit_tail, _ = scripts
    backbone = timm.create_model(ARCH, pretrained=False)
    backbone.reset_classifier(0, "")
    net = DescriptorNet(backbone, 1280, 32).eval()
    second = torch.nn.Linear(1280, 16)
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        tail = fit_tail.Tail(net, {32: net.projector, 16: second}).eval()
        out = tail(fit_tail.stem(net, x))
        assert torch.allclose(out[32], net(x), atol=1e-5)
        assert torch.allclose(out[16], torch.nn.functional.normalize(second(net.features(x)), dim=1), atol=1e-5)
    tail.train()  # trains with the BatchNorms' statistics frozen
    norms = [m for m in tail.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms) and tail.heads.training


def test_more_views_start_with_the_views_of_fewer(scripts, tmp_path):
    # A run with more views grows the cache of a run with fewer: view k of a photo is the same
    # image whether it is drawn alone or after views 0..k-1.
    fit_heads, _, _ = scripts
    for i in range(3):
        make_photo(tmp_path / f"p{i}.jpg", size=(200, 150), seed=40 + i)
    paths = sorted(p.name for p in tmp_path.iterdir())
    four = fit_heads._Views(str(tmp_path), paths, 64, 4, None, 7)[1]
    first_two = fit_heads._Views(str(tmp_path), paths, 64, 2, None, 7)[1]
    last_two = fit_heads._Views(str(tmp_path), paths, 64, 2, None, 7, first=2)[1]
    assert four.shape == (5, 64, 64, 3)
    assert np.array_equal(four[:3], first_two)  # the photo and views 0, 1
    assert np.array_equal(four[3:], last_two[1:])  # views 2, 3
    assert not np.array_equal(four[1], four[3])


def test_teacher_views_are_row_for_row_the_views_the_head_is_fitted_on(scripts, tmp_path):
    # --rel-anchor view pairs row k of Features.views with the teacher's embedding of that very
    # image: the teacher pass must see the same views, in the same order, as `collect`.
    fit_heads, _, _ = scripts
    for i in range(3):
        make_photo(tmp_path / f"p{i}.jpg", size=(200, 150), seed=50 + i)
    paths = sorted(p.name for p in tmp_path.iterdir())

    class MeanColour:  # a stand-in teacher: each image's mean colour and a constant
        def embed(self, pixels):
            return np.concatenate([pixels.reshape(len(pixels), -1, 3).mean(1), np.ones((len(pixels), 1))], 1)

    rows = fit_heads.collect_teacher_views(MeanColour(), str(tmp_path), paths, 64, 3, None, 7, 0)
    assert rows.shape == (9, 4)
    expected = np.concatenate([fit_heads._Views(str(tmp_path), paths, 64, 3, None, 7)[i][1:] for i in range(3)])
    want = torch.nn.functional.normalize(torch.from_numpy(MeanColour().embed(expected)).float(), dim=1)
    assert torch.allclose(rows, want, atol=1e-5)
    assert torch.allclose(rows.norm(dim=1), torch.ones(9), atol=1e-5)


def test_average_of_checkpoints_is_the_mean_of_their_weights(scripts, tmp_path, tiny_model_path):
    _, _, average_checkpoints = scripts
    from copyscan.models.checkpoint import load_checkpoint, read_config, save_checkpoint

    base = load_checkpoint(tiny_model_path, "cpu").net.float()
    paths = []
    for i, shift in enumerate((0.0, 0.3, 0.9)):
        net = load_checkpoint(tiny_model_path, "cpu").net.float()
        with torch.no_grad():
            net.projector.weight.add_(shift)
        paths.append(str(tmp_path / f"c{i}.safetensors"))
        save_checkpoint(net, read_config(tiny_model_path), paths[-1])
    mean, config = average_checkpoints.average(paths)
    assert torch.allclose(mean.projector.weight, base.projector.weight + 0.4, atol=1e-6)
    assert torch.equal(mean.projector.bias, base.projector.bias)
    assert config["training"]["averaged"] == ["c0.safetensors", "c1.safetensors", "c2.safetensors"]
    other = load_checkpoint(tiny_model_path, "cpu").net.float()
    other.projector = torch.nn.Linear(other.feature_dim, 8)
    save_checkpoint(other, dict(read_config(tiny_model_path), embed_dim=8), tmp_path / "other.safetensors")
    with pytest.raises(SystemExit, match="not the same architecture"):
        average_checkpoints.average([paths[0], str(tmp_path / "other.safetensors")])


def test_pack_photos_keeps_names_order_and_sizes(tmp_path):
    """training/pack_photos.py: the WebP copies that travel to a GPU machine keep each photo's
    place in the sorted list (the hold-out split) and its size."""
    import subprocess

    from PIL import Image

    from copyscan.train.data import list_images

    src = tmp_path / "src"
    for i, name in enumerate(["b/x.jpg", "a/y.png", "a/z.jpeg"]):
        make_photo(src / name, size=(90 + i, 70), seed=i)
    subprocess.run([sys.executable, str(TRAINING / "pack_photos.py"), str(src), str(tmp_path / "out"), "--quality", "60",
                    "--workers", "1"], check=True)
    packed = list_images(str(tmp_path / "out"))
    assert packed == ["a/y.webp", "a/z.webp", "b/x.webp"]
    assert [p.rsplit(".", 1)[0] for p in packed] == [p.rsplit(".", 1)[0] for p in list_images(str(src))]
    for i, name in enumerate(["b/x", "a/y", "a/z"]):
        with Image.open(tmp_path / "out" / f"{name}.webp") as im:
            assert im.format == "WEBP" and im.size == (90 + i, 70)
