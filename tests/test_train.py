"""`copyscan train` and `copyscan cache-teacher`: losses, data determinism, the teacher cache,
exact resume, the CLI end to end (tiny student, tiny teacher), and DDP with gloo (slow)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from conftest import make_photo

from copyscan.cli import app
from copyscan.train import build_config, train
from copyscan.train.config import ConfigError
from copyscan.train.data import SampleOrder, ViewPairs, list_images, mix_keys
from copyscan.train.losses import EmbeddingQueue, hard_negative, info_nce, koleo, moco_contrast, relational_kl
from copyscan.train.monitor import read_metrics

runner = CliRunner()

# A run small enough for CI: test_efficientnet trunk, 64 px views, batches of 8.
TINY = dict(student="test_efficientnet", dim=16, image_size=64, batch_size=8, queue_size=16, bank_size=32, workers=0,
            optimizer="sgd", lr=0.02, progress=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train_photos")
    for i in range(32):
        make_photo(folder / f"sub{i % 2}" / f"p{i:02d}.png", size=(96, 80), seed=500 + i)
    return folder


# ------------------------------------------------------------------ losses


def test_queue_is_fifo_and_reports_slots():
    q = EmbeddingQueue(5, 2, torch.device("cpu"))
    assert q.push(torch.ones(3, 2)).tolist() == [0, 1, 2]
    assert q.filled == 3
    assert q.push(torch.full((3, 2), 2.0)).tolist() == [3, 4, 0]  # the oldest row is overwritten
    assert q.filled == 5 and q.rows[0, 0] == 2.0 and q.rows[1, 0] == 1.0
    scores = q.scores(torch.ones(2, 2), own_slots=torch.tensor([3, 4]))
    assert scores.shape == (2, 5) and scores[0, 3] == -math.inf and scores[1, 4] == -math.inf


def test_relational_kl_is_zero_when_student_ranks_like_teacher():
    sims = torch.tensor([[0.9, 0.1, -0.2], [0.3, 0.5, 0.0]])
    assert relational_kl(sims, sims, 0.04).item() == pytest.approx(0.0, abs=1e-6)
    assert relational_kl(sims, sims.flip(1), 0.04).item() > 1.0
    masked = sims.clone()
    masked[0, 0] = -math.inf  # a sample's own slot adds nothing and makes no NaN
    assert torch.isfinite(relational_kl(masked, masked, 0.04))


def test_contrast_and_hard_negative_follow_their_formulas():
    q = F.normalize(torch.tensor([[1.0, 0.0]]), dim=1)
    k = q.clone()
    negatives = torch.tensor([[0.5, -0.3, -math.inf]])
    expected = -math.log(math.exp(1 / 0.07) / (math.exp(1 / 0.07) + math.exp(0.5 / 0.07) + math.exp(-0.3 / 0.07)))
    assert moco_contrast(q, k, negatives, 0.07).item() == pytest.approx(expected, rel=1e-3)
    assert hard_negative(negatives).item() == pytest.approx(-math.log(1 - 0.5), rel=1e-6)
    assert hard_negative(torch.zeros(1, 0)).item() == 0.0  # no negatives yet


def test_sscd_losses_prefer_matching_views_and_spread():
    a = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    b = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    assert info_nce(a, a, 0.05) < info_nce(a, b, 0.05)
    collapsed = F.normalize(torch.ones(6, 8) + 0.01 * a, dim=1)
    assert koleo(a, a) < koleo(collapsed, collapsed)
    # One embedding per instance: each row's nearest OTHER row, as with the rows given twice.
    assert torch.allclose(koleo(a), koleo(a, a), atol=1e-6)
    assert torch.allclose(koleo(collapsed), koleo(collapsed, collapsed), atol=1e-6)


def test_mix_keys_keeps_most_of_each_own_image():
    keys = torch.zeros(4, 16, 16, 3, dtype=torch.uint8)
    keys[1] = 200
    mixed = mix_keys(keys, 1.0, 2.0, np.random.default_rng(0))
    assert not torch.equal(mixed, keys)
    own_share = (mixed[0].float() == 0).float().mean().item() + (mixed[0].float() < 100).float().mean().item()
    assert own_share >= 1.0  # key 0 stays mostly key 0, whichever of mixup or cutmix it got
    assert torch.equal(mix_keys(keys, 0.0, 2.0, np.random.default_rng(0)), keys)


# ------------------------------------------------------------------ settings and data


def test_recipe_then_command_line(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('dim = 64\n[losses]\nw-hn = 2.5\nuse_con = false\n')
    c = build_config(recipe, data_dir="x", dim=256)
    assert c.dim == 256 and c.w_hn == 2.5 and set(c.losses()) == {"rel", "hn"}
    (tmp_path / "bad.toml").write_text("dimension = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'dimension'"):
        build_config(tmp_path / "bad.toml", data_dir="x")
    assert set(build_config(data_dir="x", teacher="none").losses()) == {"infonce", "koleo"}
    with pytest.raises(ConfigError, match="needs a teacher"):
        build_config(data_dir="x", teacher="none", use_rel=True)


@pytest.mark.parametrize("recipe_dim", [64, 128, 256])
def test_shipped_recipes_load(recipe_dim):
    path = os.path.join(os.path.dirname(__file__), "..", "training", f"rdcd_lite0_{recipe_dim}.toml")
    c = build_config(path, data_dir="x")
    assert c.dim == recipe_dim and c.student == "efficientnet_lite0"


def test_views_are_rebuilt_identically(photos):
    paths = list_images(str(photos))
    order = SampleOrder(len(paths), 8, seed=3)
    first = ViewPairs(str(photos), paths, order, 48, seed=3)[5]
    again = ViewPairs(str(photos), paths, order, 48, seed=3)[5]
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], first[1])  # query and key are two different views
    seen = {order.sample(0, j).image for j in range(8)} | {order.sample(1, j).image for j in range(8)}
    assert len(seen) == 16  # no image twice within an epoch


# ------------------------------------------------------------------ runs


def test_resume_continues_exactly(photos, tiny_model_path, tmp_path):
    kw = dict(TINY, data_dir=str(photos), teacher=str(tiny_model_path), steps=4, checkpoint_every=100)
    train(build_config(output=str(tmp_path / "whole"), **kw))
    train(build_config(output=str(tmp_path / "split"), **kw), stop_after=2)
    train(build_config(output=str(tmp_path / "split"), resume=True, **kw))
    whole, split = read_metrics(str(tmp_path / "whole")), read_metrics(str(tmp_path / "split"))
    assert [r["step"] for r in split] == [1, 2, 3, 4]
    for a, b in zip(whole, split):
        for key in ("loss", "rel", "con", "hn", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["step"], key)


def test_pca_projector_init_keeps_the_trunk_geometry(photos):
    """With the principal axes as projector, the untrained student's embedding reproduces the
    centred feature's cosines (all 32 photos fit in 32 axes); a random projector does not."""
    import torch.nn.functional as F

    from copyscan.train.student import build_student, pca_init_projector

    torch.manual_seed(0)
    net, cfg = build_student("test_efficientnet", 32, 64)
    paths = list_images(str(photos))
    from copyscan.decode import decode_file

    pixels = torch.from_numpy(np.stack([decode_file(str(photos / p), 64).pixels for p in paths]))
    m = torch.tensor(cfg["mean"]).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(cfg["std"]).view(1, 3, 1, 1) * 255.0
    x = (pixels.permute(0, 3, 1, 2).float() - m) / s
    net.eval()
    with torch.no_grad():
        f = net.features(x).double()  # what the projector sees
        centred = F.normalize(f - f.mean(0), dim=1)
        target = centred @ centred.T
        before = (net(x).double() @ net(x).double().T - target).abs().max().item()
    info = pca_init_projector(net, [pixels[:20], pixels[20:]], cfg["mean"], cfg["std"], torch.device("cpu"))
    with torch.no_grad():
        z = net(x)
        after = (z.double() @ z.double().T - target).abs().max().item()
    assert info["images"] == 32 and info["variance_kept"] == pytest.approx(1.0, abs=1e-5)
    assert after < 1e-3 < before


def test_fold_centring_centres_and_whitens_the_background(photos):
    from copyscan.decode import decode_file
    from copyscan.train.student import build_student, fold_centring

    paths = list_images(str(photos))
    pixels = torch.from_numpy(np.stack([decode_file(str(photos / p), 64).pixels for p in paths]))
    torch.manual_seed(0)
    net, cfg = build_student("test_efficientnet", 8, 64)
    m = torch.tensor(cfg["mean"]).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(cfg["std"]).view(1, 3, 1, 1) * 255.0
    x = (pixels.permute(0, 3, 1, 2).float() - m) / s
    net.eval()

    def raw():
        with torch.no_grad():
            return net.projector(net.features(x)).double()

    before = raw()
    info = fold_centring(net, [pixels[:10], pixels[10:]], cfg["mean"], cfg["std"], torch.device("cpu"))
    after = raw()
    assert info["images"] == 32
    assert after.mean(0).abs().max() < 1e-4 * before.abs().max()  # centred on the background
    assert torch.allclose(after, before - before.mean(0), atol=1e-4)  # and nothing else changed
    fold_centring(net, [pixels], cfg["mean"], cfg["std"], torch.device("cpu"), whiten=1.0)
    cov = torch.cov(raw().T)
    assert torch.allclose(cov / cov.diagonal().mean(), torch.eye(8, dtype=cov.dtype), atol=1e-3)  # whitened
    with pytest.raises(Exception, match="needs at least 16"):
        fold_centring(net, [pixels[:10]], cfg["mean"], cfg["std"], torch.device("cpu"), whiten=1.0)
    torch.manual_seed(0)
    net, cfg = build_student("test_efficientnet", 8, 64)  # unwhitened again: axes of unequal variance
    net.eval()
    narrow = fold_centring(net, [pixels], cfg["mean"], cfg["std"], torch.device("cpu"), dims=3)
    assert net.out_dim == 3 and raw().shape == (32, 3) and narrow["images"] == 32
    variances = raw().var(0)
    assert variances[0] >= variances[1] >= variances[2]  # the strongest axes, strongest first


def test_train_records_pca_init(photos, tiny_model_path, tmp_path):
    kw = dict(TINY, data_dir=str(photos), teacher=str(tiny_model_path), steps=1, projector_init="pca", pca_images=12)
    s = train(build_config(output=str(tmp_path / "r"), **kw))
    config = json.loads((tmp_path / "r" / "model.json").read_text())
    assert config["training"]["projector_init"]["images"] == 12 and math.isfinite(s.last["loss"])
    with pytest.raises(ConfigError, match="projector-init"):
        build_config(**dict(kw, projector_init="zeros"))


def test_teacher_none_trains_sscd_style(photos, tmp_path):
    s = train(build_config(**dict(TINY, data_dir=str(photos), teacher="none", steps=2, output=str(tmp_path / "r"))))
    assert s.steps == 2 and {"infonce", "koleo"} <= set(s.last) and "rel" not in s.last
    assert math.isfinite(s.last["loss"])


def test_cli_cache_train_and_index(photos, tiny_model_path, tmp_path):
    """The CI smoke test: cache the tiny teacher's views, train a tiny student, index with it."""
    cache, run, index = tmp_path / "cache", tmp_path / "run", tmp_path / "idx"
    r = runner.invoke(app, ["cache-teacher", str(photos), "--teacher", str(tiny_model_path), "-o", str(cache),
                            "--views", "2", "--image-size", "64", "-j", "0", "-q"])
    assert r.exit_code == 0, r.output
    assert "32 images x 2 views" in r.output
    # The hard-negative term is left out here: with a 16-key queue of a random tiny network it
    # drives the embedding to collapse (it is exercised by the resume test above).
    r = runner.invoke(app, ["train", str(photos), "--teacher", str(tiny_model_path), "--teacher-cache", str(cache),
                            "--student", "test_efficientnet", "--dim", "16", "--image-size", "64", "--batch-size", "8",
                            "--steps", "16", "--queue-size", "16", "--bank-size", "32", "--lr", "0.02", "--no-hn",
                            "-j", "0", "-o", str(run), "-q"])
    assert r.exit_code == 0, r.output
    rows = read_metrics(str(run))
    assert len(rows) == 16 and all(row["teacher"] == "cache" for row in rows)
    first, last = np.mean([x["loss"] for x in rows[:4]]), np.mean([x["loss"] for x in rows[-4:]])
    assert last < first, [round(x["loss"], 3) for x in rows]
    config = json.loads((run / "model.json").read_text())
    assert config["embed_dim"] == 16 and config["input_size"] == 64
    r = runner.invoke(app, ["index", str(photos), "--model", str(run / "model.safetensors"), "--index-dir", str(index),
                            "-q", "-j", "0"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["dim"] == 16 if "dim" in manifest else "16" in json.dumps(manifest)
    # The run's training state mistaken for the model: told which file to use instead.
    r = runner.invoke(app, ["index", str(photos), "--model", str(run / "state.pt"), "--index-dir", str(index), "-q"])
    message = " ".join(r.output.split())
    assert r.exit_code == 1 and "is a training state" in message and f"use {run / 'model.safetensors'}" in message


def test_cli_refuses_a_cache_of_other_settings(photos, tiny_model_path, tmp_path):
    cache = tmp_path / "cache"
    r = runner.invoke(app, ["cache-teacher", str(photos), "--teacher", str(tiny_model_path), "-o", str(cache),
                            "--image-size", "48", "-j", "0", "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", str(photos), "--teacher", str(tiny_model_path), "--teacher-cache", str(cache),
                            "--student", "test_efficientnet", "--image-size", "64", "--steps", "1", "-o",
                            str(tmp_path / "run"), "-q"])
    assert r.exit_code == 1
    assert "image-size" in r.output and "cache-teacher" in r.output and "Traceback" not in r.output


def test_offline_sscd_teacher_says_where_the_weights_go(photos, tmp_path, monkeypatch):
    from copyscan.models import weights

    def no_network(url, target):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("COPYSCAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "_download", no_network)
    r = runner.invoke(app, ["train", str(photos), "--teacher", "sscd_r50", "-o", str(tmp_path / "run"), "-q"])
    assert r.exit_code == 1
    message = " ".join(r.output.split())
    assert "https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_mixup.torchscript.pt" in message
    assert str(tmp_path / "cache" / "sscd_disc_mixup.torchscript.pt") in message
    assert "--teacher" in message and "Traceback" not in r.output


def test_train_as_typed_in_the_design_card(tmp_path, monkeypatch, tiny_model_path):
    # `copyscan train --teacher sscd_r50`, no photo folder: offline, it says where the weights go.
    from copyscan.models import weights

    def no_network(url, target):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("COPYSCAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "_download", no_network)
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["train", "--teacher", "sscd_r50"])
    message = " ".join(r.output.split())
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert str(tmp_path / "cache" / "sscd_disc_mixup.torchscript.pt") in message
    # With a teacher that is here, it asks for the photos instead, naming the teacher.
    r = runner.invoke(app, ["train", "--teacher", str(tiny_model_path)])
    message = " ".join(r.output.split())
    assert r.exit_code == 1 and "is ready" in message and "give the folder of training photos" in message
    r = runner.invoke(app, ["train", "--teacher", "none"])
    assert r.exit_code == 1 and "give the folder of training photos" in " ".join(r.output.split())
    assert not (tmp_path / "copyscan-train").exists()  # nothing was started


@pytest.mark.slow
def test_ddp_two_processes_with_gloo(photos, tiny_model_path, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COPYSCAN_RUNTIME": "torch"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517", "-m",
           "copyscan", "train", str(photos), "--teacher", str(tiny_model_path), "--student", "test_efficientnet",
           "--dim", "16", "--image-size", "64", "--batch-size", "4", "--steps", "3", "--queue-size", "16",
           "--bank-size", "16", "--device", "cpu", "-j", "0", "-o", str(run), "-q"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                          cwd=os.path.join(os.path.dirname(__file__), ".."))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_metrics(str(run))
    assert [r["step"] for r in rows] == [1, 2, 3]
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["world"] == 2 and state["queue"]["filled"] == 16  # 3 steps x 2 ranks x 4 keys, capped
