"""Hard copies (copyscan.edits.hard), `bench synth --hard`, the held-out check and the hard-view
fine-tuning run (copyscan.train.hardrun): tiny images, a tiny model, seconds on a CPU."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_photo

from copyscan.edits.hard import FRAMINGS, HARD_KINDS, HardAugment, chat, hard_copy, paste_into, paste_over
from copyscan.synth import synthesize
from copyscan.train import heldout
from copyscan.train.hardrun import HardConfig, HardRun, lr_at

RED, BLUE = (255, 0, 0), (0, 0, 255)


def solid(colour, size=(120, 90)) -> Image.Image:
    return Image.new("RGB", size, colour)


def share(img: Image.Image, colour) -> float:
    a = np.asarray(img).astype(int)
    return float((np.abs(a - np.array(colour)).sum(axis=2) < 60).mean())


def photo(seed: int, size=(96, 80)) -> Image.Image:
    from conftest import photo_array

    return Image.fromarray(photo_array(size, seed), "RGB")


# ------------------------------------------------------------------ framings


@pytest.mark.parametrize("area", [0.15, 0.35, 0.6])
def test_paste_into_covers_the_asked_share_of_the_other_photo(area):
    out, label = paste_into(solid(RED), solid(BLUE, (200, 150)), random.Random(1), area)
    assert share(out, RED) == pytest.approx(area, abs=0.05)
    assert share(out, RED) + share(out, BLUE) == pytest.approx(1.0, abs=0.01)
    assert label.startswith("paste_into(")


@pytest.mark.parametrize("area", [0.1, 0.4])
def test_paste_over_hides_the_asked_share_of_the_photo(area):
    out, _ = paste_over(solid(RED), solid(BLUE), random.Random(2), area)
    assert out.size == (120, 90)
    assert share(out, BLUE) == pytest.approx(area, abs=0.05)


def test_chat_shows_the_photo_small_in_a_tall_screen():
    out, label = chat(solid(RED, (100, 100)), random.Random(3), 1.0)
    assert out.height > 1.5 * out.width
    assert 0.05 < share(out, RED) < 0.5
    assert label.startswith("chat(")


@pytest.mark.parametrize("framing", FRAMINGS)
def test_hard_views_are_deterministic_square_and_framed_as_asked(framing):
    aug = HardAugment(64, framing_weights={framing: 1.0}, p_crop=0, p_rotate=0, p_perspective=0, p_color=0,
                      p_grayscale=0, p_blur=0, p_pixelate=0, p_text=0, p_emoji=0, p_jpeg=0)
    img, other = photo(1), photo(2)
    a, labels = aug.labelled(img, 42, other)
    b = aug.view(img, 42, other)
    assert a.size == (64, 64) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert aug.framing(42) == framing
    names = [lab.split("(")[0] for lab in labels]
    if framing == "plain":
        assert set(names) <= {"hflip"}
    elif framing == "screenshot":
        assert "screenshot" in names
    else:
        assert framing in names
    assert not np.array_equal(np.asarray(aug.view(img, 43, other)), np.asarray(a)) or framing == "plain"


def test_paste_framings_without_another_photo_fall_back_to_plain():
    aug = HardAugment(48, framing_weights={"paste_into": 1.0})
    _, labels = aug.labelled(photo(3), 5, None)
    assert not any(lab.startswith("paste") for lab in labels)


def test_default_hard_views_cover_every_framing_and_strong_jpeg():
    aug = HardAugment(32)
    seen, jpeg = set(), []
    for seed in range(200):
        seen.add(aug.framing(seed))
        _, labels = aug.labelled(photo(seed % 5, (48, 40)), seed, photo(7, (48, 40)))
        jpeg += [int(lab[5:-1]) for lab in labels if lab.startswith("jpeg(")]
    assert seen == set(FRAMINGS)
    assert min(jpeg) <= 20 and any(q <= 20 for q in jpeg)


def test_hard_copy_is_deterministic_and_names_its_kind_first():
    img, other = photo(4), photo(5)
    kinds = set()
    for seed in range(60):
        a, la = hard_copy(img, random.Random(seed), other)
        b, lb = hard_copy(img, random.Random(seed), other)
        assert la == lb and np.array_equal(np.asarray(a), np.asarray(b))
        kinds.add(la[0].split("(")[0])
    assert kinds == set(HARD_KINDS)
    no_other = {hard_copy(img, random.Random(s), None)[1][0].split("(")[0] for s in range(40)}
    assert not any(k.startswith("paste") for k in no_other)


def test_bench_synth_hard(tmp_path):
    src = tmp_path / "src"
    for i in range(30):
        make_photo(src / f"p{i:02d}.jpg", size=(80, 64), seed=i)
    a = synthesize(src, tmp_path / "a", references=10, copy_fraction=1.0, distractors=5, seed=3, hard=True)
    synthesize(src, tmp_path / "b", references=10, copy_fraction=1.0, distractors=5, seed=3, hard=True)
    assert (a.references, a.copies, a.distractors) == (10, 10, 5)
    with open(tmp_path / "a" / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["difficulty"] == "hard-framing" for r in rows)
    assert all(r["edits"].split(";")[0].split("(")[0] in HARD_KINDS for r in rows)
    for sub in ("queries", "references"):
        for f in (tmp_path / "a" / sub).iterdir():
            assert f.read_bytes() == (tmp_path / "b" / sub / f.name).read_bytes()
    assert json.loads((tmp_path / "a" / "bench.json").read_text())["options"]["difficulty"] == "hard-framing"


# ------------------------------------------------------------------ held-out scoring


def test_heldout_score_is_perfect_for_exact_copies_and_counts_kinds():
    refs = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    distractors = torch.nn.functional.normalize(torch.randn(3, 8), dim=1) * 0.1
    queries = torch.cat([refs, torch.nn.functional.normalize(distractors, dim=1) * 0.3])
    out = heldout.score(refs, queries, 6, ["a", "a", "b", "b", "b", "c", "", "", ""])
    assert out["micro_ap"] == pytest.approx(1.0) and out["acc_at_1"] == 1.0
    assert out["rank1"] == {"a": 1.0, "b": 1.0, "c": 1.0}
    shuffled = heldout.score(refs, queries[[1, 0, 2, 3, 4, 5, 6, 7, 8]], 6, ["a"] * 6 + [""] * 3)
    assert shuffled["rank1"]["a"] == pytest.approx(4 / 6, abs=1e-3)


def test_split_holds_out_every_nth_photo():
    train, held = heldout.split([f"{i}" for i in range(20)], 5)
    assert held == ["0", "5", "10", "15"] and len(train) == 16 and not set(train) & set(held)


# ------------------------------------------------------------------ the run


@pytest.fixture(scope="module")
def train_photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hard_photos")
    for i in range(40):
        make_photo(folder / f"p{i:02d}.png", size=(72, 60), seed=900 + i)
    return folder


def tiny_config(data, out, start, **kw) -> HardConfig:
    base = dict(teacher=str(start), teacher_size=64, image_size=64, batch_size=6, queue_size=12, bank_size=12,
                holdout_every=4, eval_every=2, checkpoint_every=100, log_every=1, workers=0, warmup_steps=2,
                frozen_blocks=1, steps=4)
    base.update(kw)
    return HardConfig(str(data), str(out), str(start), **base)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_hard_run_resumes_exactly_and_keeps_the_best(train_photos, tiny_model_path, tmp_path):
    HardRun(tiny_config(train_photos, tmp_path / "whole", tiny_model_path)).run()
    HardRun(tiny_config(train_photos, tmp_path / "split", tiny_model_path)).run(stop_after=2)
    with pytest.raises(Exception, match="--resume"):
        HardRun(tiny_config(train_photos, tmp_path / "split", tiny_model_path))
    resumed = HardRun(tiny_config(train_photos, tmp_path / "split", tiny_model_path), resume=True)
    assert resumed.step == 2
    resumed.run()
    whole, split = read_jsonl(tmp_path / "whole" / "metrics.jsonl"), read_jsonl(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in split] == [1, 2, 3, 4]
    for a, b in zip(whole, split):
        for key in ("loss", "rel", "con", "align"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    evals = read_jsonl(tmp_path / "whole" / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 2, 4]
    best = max(evals, key=lambda e: e["score"])
    assert evals[-1]["best_step"] == best["step"]
    from copyscan.models import create_model

    model = create_model(str(tmp_path / "whole" / "best.safetensors"), "cpu", runtime="torch")
    assert model.embed(np.zeros((1, 64, 64, 3), np.uint8)).shape == (1, 32)


def test_hard_run_refuses_a_changed_recipe_on_resume(train_photos, tiny_model_path, tmp_path):
    HardRun(tiny_config(train_photos, tmp_path / "r", tiny_model_path, eval_every=100)).run(stop_after=1)
    with pytest.raises(Exception, match="w-hn"):
        HardRun(tiny_config(train_photos, tmp_path / "r", tiny_model_path, w_hn=1.0), resume=True)


def test_relational_term_trains_the_embedding_towards_the_teacher(train_photos, tiny_model_path, tmp_path):
    """With only L_rel on, a few steps lower it: the student's hard views learn to rank the bank
    of originals as the teacher ranks the originals. (The tiny random teacher embeds every photo
    alike, so the run is given a teacher table with structure: two clusters of photos.)"""
    out = tmp_path / "rel"
    out.mkdir()
    g = np.random.default_rng(0)
    centres = g.normal(size=(2, 32))
    table = centres[np.arange(40) % 2] + 0.3 * g.normal(size=(40, 32))
    np.save(out / "teacher_orig.npy", (table / np.linalg.norm(table, axis=1, keepdims=True)).astype(np.float32))
    run = HardRun(tiny_config(train_photos, tmp_path / "rel", tiny_model_path, w_con=0.0, w_hn=0.0, lr=0.05,
                              holdout_every=0, steps=12, batch_size=8, bank_size=16, queue_size=16))
    run.run()
    rel = [r["rel"] for r in read_jsonl(tmp_path / "rel" / "metrics.jsonl")]
    assert np.mean(rel[-4:]) < np.mean(rel[2:6])


def test_lr_warms_up_then_holds_or_decays():
    c = HardConfig("", "", "", lr=0.1, warmup_steps=10)
    assert lr_at(c, 0) == pytest.approx(0.01) and lr_at(c, 9) == pytest.approx(0.1) and lr_at(c, 500) == 0.1
    c.decay_steps = 110
    assert lr_at(c, 60) == pytest.approx(0.05) and lr_at(c, 110) == pytest.approx(0.0, abs=1e-12)


def test_cli_bench_synth_hard(tmp_path):
    from typer.testing import CliRunner

    from copyscan.cli import app

    src = tmp_path / "src"
    for i in range(12):
        make_photo(src / f"p{i:02d}.jpg", size=(64, 48), seed=40 + i)
    r = CliRunner().invoke(app, ["bench", "synth", str(src), str(tmp_path / "b"), "--hard", "--references", "6",
                                 "--copy-fraction", "1", "--distractors", "3", "-q"])
    assert r.exit_code == 0, r.output
    with open(tmp_path / "b" / "labels.csv", newline="") as fh:
        assert {row["difficulty"] for row in csv.DictReader(fh)} == {"hard-framing"}


def test_sigterm_saves_the_state_of_every_step_done(train_photos, tiny_model_path, tmp_path, monkeypatch):
    """`kill PID` (SIGTERM) of a background run saves its state before it exits, as Ctrl-C does:
    with checkpoints only every 100 steps, nothing would be kept otherwise."""
    import os
    import signal

    import torch

    run = HardRun(tiny_config(train_photos, tmp_path / "t", tiny_model_path, eval_every=100))
    real = run.step_once

    def step_then_kill(*a):
        out = real(*a)
        if run.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(run, "step_once", step_then_kill)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        run.run()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the run's only while it runs
    state = torch.load(tmp_path / "t" / "state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 3


def test_match_term_learns_the_teachers_view_embeddings_and_resumes(train_photos, tiny_model_path,
                                                                     other_model_path, tmp_path):
    """L_match alone, another model as the teacher of each hard view. The ridge start already
    points the head where the teacher does (the tiny random teacher embeds every photo alike, so
    the fit is near exact); from a scrambled head a few steps lower the loss; a resumed run
    continues with the head it saved, loss for loss."""
    kw = dict(teacher=str(other_model_path), w_con=0.0, w_rel=0.0, w_align=0.0, w_match=1.0, lr=0.05,
              holdout_every=0, steps=10, batch_size=8, bank_size=16, queue_size=16)
    fitted = HardRun(tiny_config(train_photos, tmp_path / "fit", tiny_model_path, **kw))
    assert fitted.match_head is not None
    fitted.run(stop_after=1)
    assert read_jsonl(tmp_path / "fit" / "metrics.jsonl")[0]["match"] < 0.05

    def scrambled(out):
        run = HardRun(tiny_config(train_photos, out, tiny_model_path, **kw))
        torch.nn.init.normal_(run.match_head.weight, generator=torch.Generator().manual_seed(0))
        return run

    scrambled(tmp_path / "m").run()
    match = [r["match"] for r in read_jsonl(tmp_path / "m" / "metrics.jsonl")]
    assert match[0] > 0.3 and np.mean(match[-3:]) < 0.7 * np.mean(match[:3])
    scrambled(tmp_path / "s").run(stop_after=5)
    HardRun(tiny_config(train_photos, tmp_path / "s", tiny_model_path, **kw), resume=True).run()
    split = [r["match"] for r in read_jsonl(tmp_path / "s" / "metrics.jsonl")]
    assert split == pytest.approx(match, rel=1e-4, abs=1e-5)
    # The exported model is the plain student: the head is training's own.
    from copyscan.models.checkpoint import load_checkpoint

    exported = load_checkpoint(str(tmp_path / "m" / "model.safetensors"), "cpu").net.state_dict()
    assert not any("match" in k for k in exported)


def test_rel_anchor_is_checked(train_photos, tiny_model_path, tmp_path):
    with pytest.raises(Exception, match="rel-anchor"):
        HardRun(tiny_config(train_photos, tmp_path / "x", tiny_model_path, rel_anchor="both"))


def test_view_teacher_in_loader_workers_gives_the_same_steps(train_photos, tiny_model_path, other_model_path,
                                                             tmp_path):
    """The teacher of each hard view runs in the loader's workers (where a GPU run needs it);
    the steps are the same as with the teacher in the training process."""
    kw = dict(teacher=str(other_model_path), rel_anchor="view", rel_space="feature", w_hn=1.0, steps=3, eval_every=10)
    HardRun(tiny_config(train_photos, tmp_path / "main", tiny_model_path, workers=0, **kw)).run()
    HardRun(tiny_config(train_photos, tmp_path / "workers", tiny_model_path, workers=2, **kw)).run()
    main, workers = read_jsonl(tmp_path / "main" / "metrics.jsonl"), read_jsonl(tmp_path / "workers" / "metrics.jsonl")
    assert [r["step"] for r in workers] == [1, 2, 3]
    for a, b in zip(main, workers):
        for key in ("loss", "rel", "hn", "align"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)


def test_a_timed_run_stops_saved_and_scores_its_last_step(train_photos, tiny_model_path, tmp_path):
    run = HardRun(tiny_config(train_photos, tmp_path / "t", tiny_model_path, eval_every=100, steps=50))
    run.run(seconds=0)  # the time is up after the first step
    assert run.step == 1
    evals = read_jsonl(tmp_path / "t" / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 1]
    assert (tmp_path / "t" / "model.safetensors").exists() and (tmp_path / "t" / "state.pt").exists()
    assert HardRun(tiny_config(train_photos, tmp_path / "t", tiny_model_path, eval_every=100, steps=50),
                   resume=True).step == 1


def test_a_trained_checkpoint_drops_what_the_start_said_of_its_projector(train_photos, tiny_model_path, tmp_path):
    """A run from a shipped model (its header records a fold of the background and a calibrated
    threshold) exports checkpoints without them: training changed the projector they describe."""
    from copyscan.models.checkpoint import load_checkpoint, read_config, save_checkpoint

    start = tmp_path / "shipped.safetensors"
    config = dict(read_config(str(tiny_model_path)), threshold=0.71, folded_background={"images": 2000, "whiten": 0})
    save_checkpoint(load_checkpoint(str(tiny_model_path), "cpu").net, config, start)
    HardRun(tiny_config(train_photos, tmp_path / "r", start, steps=2)).run()
    for name in ("model.safetensors", "best.safetensors"):
        exported = read_config(str(tmp_path / "r" / name))
        assert "threshold" not in exported and "folded_background" not in exported
        assert exported["training"]["start"] == "shipped.safetensors"
