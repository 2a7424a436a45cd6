"""Heads of other widths fitted on frozen trunk features (copyscan.train.head_fit)."""

from __future__ import annotations

import pytest
import torch

from copyscan.train import head_fit


def _world(n=120, views=2, feat=48, seed=0):
    """Photos as random feature vectors; a view is its photo plus a strong nuisance that lives in
    a few feature directions of large variance (so the strongest PCA axes are the nuisance, and
    a head must learn to ignore them: PCA alone scores badly, a fitted head well)."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(8, feat, generator=torch.Generator().manual_seed(99))  # content spans 8 directions
    content = torch.randn(n, 8, generator=g) @ mixing
    nuisance_dirs = torch.zeros(4, feat)
    nuisance_dirs[:, :4] = torch.eye(4) * 12.0

    def view_of(x):
        return x + 0.3 * torch.randn(x.shape, generator=g) + torch.randn(x.shape[0], 4, generator=g) @ nuisance_dirs

    originals = content + torch.randn(n, 4, generator=g) @ nuisance_dirs
    views_ = torch.cat([view_of(content) for _ in range(views)])
    owner = torch.arange(n).repeat(views)
    teacher = content.clone()  # the teacher sees the content only
    return head_fit.Features(originals, views_, owner), teacher, mixing, view_of


def _held(mixing, view_of, n=60, seed=1):
    g = torch.Generator().manual_seed(seed)
    refs_content = torch.randn(n, 8, generator=g) @ mixing
    distract = torch.randn(n, 8, generator=g) @ mixing
    refs = view_of(refs_content)
    queries = torch.cat([view_of(refs_content), view_of(distract)])
    return {"refs": refs, "hard": queries, "plain": queries, "n_copies": n}


def test_fitted_head_beats_its_pca_start_on_unseen_photos():
    feats, teacher, mixing, view_of = _world()
    held = _held(mixing, view_of)
    start = head_fit.heldout_score(*head_fit.pca_init(feats.originals, 8), held)
    result = head_fit.fit_head(feats, teacher, head_fit.HeadSettings(dim=8, epochs=15, batch=64, lr=1e-2), held)
    assert result.weight.shape == (8, feats.originals.shape[1])
    assert result.best_epoch > 0  # an epoch beat the start
    assert result.best_score > start["score"] + 0.1, (start["score"], result.best_score)
    # The kept head is the best epoch's, and its score is reproducible from it.
    again = head_fit.heldout_score(result.weight, result.bias, held)
    assert again["score"] == pytest.approx(result.best_score, abs=1e-4)


def test_with_head_changes_the_descriptor_width():
    from copyscan.models.base import DescriptorNet

    class Trunk(torch.nn.Module):
        def forward_features(self, x):
            return torch.nn.functional.relu(torch.nn.functional.conv2d(x, torch.ones(16, 3, 3, 3) / 27))

    net = DescriptorNet(Trunk(), 16, 8)
    w, b = torch.randn(12, 16), torch.randn(12)
    head_fit.with_head(net, w, b)
    assert net.out_dim == 12
    out = net(torch.rand(2, 3, 16, 16))
    assert out.shape == (2, 12)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError):
        head_fit.with_head(net, torch.randn(4, 10), torch.randn(4))


def test_teacher_rows_must_match_originals():
    feats, teacher, _, _ = _world(n=20)
    with pytest.raises(ValueError):
        head_fit.fit_head(feats, teacher[:10], head_fit.HeadSettings(dim=4, epochs=1))
