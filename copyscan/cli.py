"""The `copyscan` command: a thin Typer layer over copyscan.api.

Every error a user can cause (a missing folder, an unknown model, an index of another model, a
second writer) is a `UserError` and ends in one clear line on stderr and exit 1, never a traceback.

Start-up is kept fast: this module imports only Typer, Rich's console and torch-free constants;
each command imports what it uses when it runs (tests/test_imports.py checks that no torch,
numpy or Arrow is imported with it).
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from enum import Enum
from pathlib import Path
from typing import Optional

from typing import TYPE_CHECKING

import typer
from rich.console import Console

from .discover import display_path
from .errors import Interrupted, UserError
from .models import DEFAULT_MODEL
from .score import DEFAULT_THRESHOLD, DEFAULT_TOP_K
from .speed import STAGES as SPEED_STAGES
from .version import __version__

if TYPE_CHECKING:
    from .discover import Skipped
    from .results import IndexSummary

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="Find copies of images in bulk: resized, cropped, re-encoded, filtered, overlaid, screenshotted.",
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _run(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Interrupted as exc:
        err.print(f"[yellow]{exc}[/]")
        raise typer.Exit(130)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted: run the same command again to resume (finished work is kept)[/]")
        raise typer.Exit(130)
    except UserError as exc:
        err.print(f"[red]error:[/] {_plain(exc)}")
        raise typer.Exit(1)
    except Exception as exc:
        # A bug of ours, not the user's input: one line, and the traceback on request.
        if os.environ.get("COPYSCAN_DEBUG"):
            raise
        err.print(f"[red]internal error:[/] {type(exc).__name__}: {_plain(exc)} (set COPYSCAN_DEBUG=1 for the traceback)")
        raise typer.Exit(2)


def _plain(exc: BaseException) -> str:
    return display_path(str(exc.args[0]) if exc.args else str(exc)).replace("[", r"\[")


def _esc(text: str) -> str:
    return display_path(text).replace("[", r"\[")


EngineOpt = typer.Option("local", "--engine", help="Where decoding and embedding run (and dedupe's pair search): local, or ray (a Ray cluster; pip install \"copyscan[ray]\").")
RayAddressOpt = typer.Option(None, "--ray-address", help="Ray cluster to join with --engine ray [default: $RAY_ADDRESS, else a new local one].", show_default=False)
BudgetOpt = typer.Option(None, "--memory-budget", help="Memory the search index may take (e.g. 8G, 512M): picks Flat, IVF-Flat, IVF-SQ8, IVF-PQ or on-disk lists [default: a quarter of the memory available].", show_default=False)
DirArg = typer.Argument(..., help="Folder of images (searched recursively).", show_default=False)
IndexOpt = typer.Option(None, "--index-dir", "--index", help="Index folder [default: $COPYSCAN_INDEX_DIR or ./.copyscan/index].")
ModelOpt = typer.Option(None, "--model", "-m", help="Registered model name (see `copyscan models`) or a model file path.")
BatchOpt = typer.Option(32, "--batch-size", "-b", min=1, help="Images per model call.")
WorkersOpt = typer.Option(None, "--workers", "-j", min=0, help="Decoding processes [default: one a core, at most 8; on a GPU all cores but one, at most 16].")
DeviceOpt = typer.Option(Device.auto, "--device", help="Where the model runs.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar.")
# Post-processing: given on index, query, dedupe or eval, it is stored in the index for later runs.
BackgroundOpt = typer.Option(None, "--background", help="Photos unrelated to the references and queries to fit whitening and score normalisation on (both on by default); kept in the index.", show_default=False)
WhitenOpt = typer.Option(None, "--whiten/--no-whiten", help="PCA whitening + L2 norm of descriptors [default: as stored in the index].", show_default=False)
ScoreNormOpt = typer.Option(None, "--score-norm/--no-score-norm", help="Subtract beta x a query's mean similarity to its 3 nearest background images [default: as stored].", show_default=False)
WhitenDimOpt = typer.Option(None, "--whiten-dim", min=1, help="Whitened dimension [default: background images / 4, at most 256 and the model's].", show_default=False)
BetaOpt = typer.Option(None, "--beta", help="Score normalisation weight [default: 1].", show_default=False)


def _post(background, whiten, score_norm, whiten_dim, beta):
    from .background import PostOptions

    return PostOptions(background, whiten, score_norm, whiten_dim, beta)


def _extraction(batch_size: int, workers: Optional[int], device: Device, quiet: bool):
    from .extraction import Extraction

    return Extraction(batch_size=batch_size, workers=workers, device=device.value, progress=not quiet)


@app.command()
def index(
    folder: Path = DirArg,
    index_dir: Optional[Path] = IndexOpt,
    model: Optional[str] = ModelOpt,
    batch_size: int = BatchOpt,
    workers: Optional[int] = WorkersOpt,
    device: Device = DeviceOpt,
    quiet: bool = QuietOpt,
    background: Optional[Path] = BackgroundOpt,
    whiten: Optional[bool] = WhitenOpt,
    score_norm: Optional[bool] = ScoreNormOpt,
    whiten_dim: Optional[int] = WhitenDimOpt,
    beta: Optional[float] = BetaOpt,
    engine: str = EngineOpt,
    ray_address: Optional[str] = RayAddressOpt,
    memory_budget: Optional[str] = BudgetOpt,
) -> None:
    """Embed the images of FOLDER into an index (only new or changed files; removed ones are dropped)."""
    from .api import index_folder

    s = _run(index_folder, folder, index_dir=index_dir, model=model or DEFAULT_MODEL,
             extraction=_extraction(batch_size, workers, device, quiet), post=_post(background, whiten, score_norm, whiten_dim, beta),
             engine=engine, ray_address=ray_address, memory_budget=memory_budget)
    _print_index_summary(s)


@app.command()
def query(
    folder: Path = DirArg,
    index_dir: Optional[Path] = IndexOpt,
    output: Path = typer.Option(Path("copyscan-query"), "--output", "-o", help="Folder for matches.csv and report.html."),
    threshold: Optional[float] = typer.Option(None, "--threshold", "-t", help="Keep matches scoring at least this; -1 keeps every top-k match [default: 0.75, or the index's with post-processing].", show_default=False),
    top_k: int = typer.Option(DEFAULT_TOP_K, "--top-k", "-k", min=1, help="Matches per query at most."),
    model: Optional[str] = ModelOpt,
    batch_size: int = BatchOpt,
    workers: Optional[int] = WorkersOpt,
    device: Device = DeviceOpt,
    quiet: bool = QuietOpt,
    background: Optional[Path] = BackgroundOpt,
    whiten: Optional[bool] = WhitenOpt,
    score_norm: Optional[bool] = ScoreNormOpt,
    whiten_dim: Optional[int] = WhitenDimOpt,
    beta: Optional[float] = BetaOpt,
) -> None:
    """Match every image of FOLDER against the index; writes OUTPUT/matches.csv and OUTPUT/report.html."""
    from .api import query_folder

    s = _run(query_folder, folder, index_dir=index_dir, output=output, threshold=threshold, top_k=top_k, model=model,
             extraction=_extraction(batch_size, workers, device, quiet), post=_post(background, whiten, score_norm, whiten_dim, beta))
    out.print(f"[bold]{s.queries}[/] queries, [bold]{s.with_match}[/] with a match, {s.matches} matches in all ({s.seconds:.1f} s)")
    _print_skipped(s.skipped, None)
    out.print(f"matches: {_esc(s.csv_path)}")
    if s.report_path:
        out.print(f"report:  {_esc(s.report_path)}")


@app.command()
def dedupe(
    folder: Path = DirArg,
    output: Path = typer.Option(Path("copyscan-dedupe"), "--output", "-o", help="Folder for groups.csv, groups.json and report.html."),
    threshold: Optional[float] = typer.Option(None, "--threshold", "-t", help="Two images are copies when their score is at least this [default: 0.75, or the index's with post-processing].", show_default=False),
    index_dir: Optional[Path] = IndexOpt,
    model: Optional[str] = ModelOpt,
    batch_size: int = BatchOpt,
    workers: Optional[int] = WorkersOpt,
    device: Device = DeviceOpt,
    quiet: bool = QuietOpt,
    background: Optional[Path] = BackgroundOpt,
    whiten: Optional[bool] = WhitenOpt,
    score_norm: Optional[bool] = ScoreNormOpt,
    whiten_dim: Optional[int] = WhitenDimOpt,
    beta: Optional[float] = BetaOpt,
    engine: str = EngineOpt,
    ray_address: Optional[str] = RayAddressOpt,
    memory_budget: Optional[str] = BudgetOpt,
) -> None:
    """Find groups of copies inside FOLDER and choose the image to keep in each. Nothing is moved or deleted."""
    from .api import dedupe as run_dedupe

    s = _run(run_dedupe, folder, output=output, threshold=threshold, index_dir=index_dir, model=model,
             extraction=_extraction(batch_size, workers, device, quiet), post=_post(background, whiten, score_norm, whiten_dim, beta),
             engine=engine, ray_address=ray_address, memory_budget=memory_budget)
    _print_index_summary(s.index)
    out.print(
        f"[bold]{len(s.groups)}[/] groups of copies among {s.images} images: {s.copies} copies "
        f"({s.exact_copies} exact) could go, one image kept per group"
    )
    out.print(f"groups: {_esc(s.csv_path)}")
    if s.report_path:
        out.print(f"report: {_esc(s.report_path)}")


@app.command()
def models() -> None:
    """List the registered descriptor models."""
    from rich.table import Column, Table

    from .models import list_models

    # Names are what users type: never wrapped, whatever the terminal's width.
    table = Table(Column("name", no_wrap=True), "dim", "input", "licence", "needs", "description")
    for m in list_models():
        name = f"{m.name} (default)" if m.name == DEFAULT_MODEL else m.name
        table.add_row(name, str(m.dim), str(m.input_size), m.license, m.requires, m.description)
    out.print(table)


def _opt(default_note: str, *names: str, **kw):
    """A training option whose default comes from the recipe, else from TrainConfig."""
    return typer.Option(None, *names, help=f"{kw.pop('help')} [default: {default_note}]", show_default=False, **kw)


@app.command()
def train(
    data_dir: Optional[Path] = typer.Argument(None, help="Folder of training photos (no labels; searched recursively).", show_default=False),
    teacher: Optional[str] = _opt("sscd_r50", "--teacher", help="Frozen teacher: sscd_r50, sscd_r50_int8, a model file, or none (SSCD-style training)."),
    student: Optional[str] = _opt("efficientnet_lite0", "--student", help="timm backbone; efficientnet_lite0 starts from copyscan's ImageNet Lite0 weights."),
    student_weights: Optional[str] = _opt("random, or ImageNet for lite0", "--student-weights", help="Local timm state dict to start another student from."),
    dim: Optional[int] = _opt("128", "--dim", help="Descriptor size (64, 128, 256 ...)."),
    output: Optional[Path] = _opt("copyscan-train", "--output", "-o", help="Run folder: model.safetensors, state.pt, metrics.jsonl."),
    steps: Optional[int] = _opt("epochs x steps per epoch", "--steps", help="Optimizer steps in all."),
    epochs: Optional[int] = _opt("1", "--epochs", help="Passes over DATA_DIR (when --steps is not given)."),
    batch_size: Optional[int] = _opt("64", "--batch-size", "-b", help="Images per step and process."),
    image_size: Optional[int] = _opt("224", "--image-size", help="Side of the square training views."),
    lr: Optional[float] = _opt("0.05", "--lr", help="Peak learning rate (after warm-up; cosine decay to 0)."),
    optimizer: Optional[str] = _opt("sgd", "--optimizer", help="sgd or adamw."),
    warmup_steps: Optional[int] = _opt("5% of the steps", "--warmup-steps", help="Linear warm-up steps."),
    device: Optional[Device] = _opt("auto", "--device", help="Where the student trains."),
    workers: Optional[int] = _opt("CPU count, at most 8", "--workers", "-j", help="Data loading processes."),
    seed: Optional[int] = _opt("0", "--seed", help="Seed of the data order, the views and the projector."),
    projector_init: Optional[str] = _opt("random", "--projector-init", help="random, or pca: the top principal axes of the trunk's features (a pretrained trunk starts where it already is)."),
    pca_images: Optional[int] = _opt("1024", "--pca-images", help="Photos the PCA projector init looks at."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output exactly where it stopped."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="TOML file of settings (see training/); options given here win."),
    teacher_cache: Optional[Path] = _opt("none", "--teacher-cache", help="Folder from `copyscan cache-teacher`: read the teacher's embeddings instead of running it."),
    queue_size: Optional[int] = _opt("65536", "--queue-size", help="MoCo queue of keys (capped below the number of images)."),
    bank_size: Optional[int] = _opt("65536", "--bank-size", help="Relational-distillation bank."),
    mixup: Optional[float] = _opt("0", "--mixup", help="Probability that a key view is mixed (mixup or cutmix) with another."),
    rel: Optional[bool] = _opt("on with a teacher", "--rel/--no-rel", help="Relational distillation loss."),
    con: Optional[bool] = _opt("on with a teacher", "--con/--no-con", help="MoCo contrastive loss."),
    hn: Optional[bool] = _opt("on with a teacher", "--hn/--no-hn", help="Hard-negative loss."),
    infonce: Optional[bool] = _opt("on without a teacher", "--infonce/--no-infonce", help="SSCD InfoNCE loss."),
    koleo: Optional[bool] = _opt("on without a teacher", "--koleo/--no-koleo", help="KoLeo entropy loss."),
    w_rel: Optional[float] = _opt("1", "--w-rel", help="Weight of the relational loss."),
    w_con: Optional[float] = _opt("1", "--w-con", help="Weight of the MoCo loss."),
    w_hn: Optional[float] = _opt("5", "--w-hn", help="Weight of the hard-negative loss."),
    w_infonce: Optional[float] = _opt("1", "--w-infonce", help="Weight of InfoNCE."),
    w_koleo: Optional[float] = _opt("30", "--w-koleo", help="Weight of KoLeo."),
    checkpoint_every: Optional[int] = _opt("200", "--checkpoint-every", help="Steps between resumable checkpoints."),
    amp: Optional[bool] = _opt("on (CUDA only)", "--amp/--no-amp", help="Mixed precision on CUDA."),
    quiet: bool = QuietOpt,
) -> None:
    """Train a compact descriptor by RDCD distillation from a teacher (or SSCD-style with --teacher none).

    The result, OUTPUT/model.safetensors, works as is with `copyscan index --model`. Under
    torchrun (`torchrun --nproc-per-node N -m copyscan train ...`) each process trains on its
    share of every batch (DDP).
    """
    from .train import build_config
    from .train import train as run_training

    def go():
        # Checked by run_training; built unchecked here so that a missing DATA_DIR can first
        # check the teacher that the options and the recipe settled on.
        config = build_config(
            recipe, validate=False, data_dir=str(data_dir) if data_dir else None, teacher=teacher, student=student, student_weights=student_weights, dim=dim,
            output=str(output) if output else None, steps=steps, epochs=epochs, batch_size=batch_size,
            image_size=image_size, lr=lr, optimizer=optimizer, warmup_steps=warmup_steps,
            device=device.value if device else None, workers=workers, seed=seed, projector_init=projector_init,
            pca_images=pca_images, resume=resume or None,
            teacher_cache=str(teacher_cache) if teacher_cache else None, queue_size=queue_size, bank_size=bank_size,
            mixup=mixup, use_rel=rel, use_con=con, use_hn=hn, use_infonce=infonce, use_koleo=koleo, w_rel=w_rel,
            w_con=w_con, w_hn=w_hn, w_infonce=w_infonce, w_koleo=w_koleo, checkpoint_every=checkpoint_every,
            amp=amp, progress=False if quiet else None,
        )
        if not config.data_dir:
            _ask_for_photos(config)
        return run_training(config)

    s = _run(go)
    if os.environ.get("RANK", "0") != "0":
        return
    losses = ", ".join(f"{k} {v:.4f}" for k, v in s.last.items() if k in ("loss", "rel", "con", "hn", "infonce", "koleo"))
    out.print(f"trained steps {s.start_step}-{s.steps} of {s.total_steps} in {s.seconds:.1f} s ({s.rate:.1f} images/s); last: {losses}")
    out.print(f"model: {_esc(s.model_path)}  (use: copyscan index DIR --model {_esc(s.model_path)})")


def _ask_for_photos(config) -> None:
    """`copyscan train` with no DATA_DIR: make sure the teacher is here first (offline, its
    loader says where the weights go), then ask for the photos."""
    from .train.teacher import load_teacher

    ready = ""
    if config.teacher != "none" and not config.teacher_cache:
        load_teacher(config.teacher, "cpu")
        ready = f"the teacher {config.teacher} is ready; "
    raise UserError(f"{ready}give the folder of training photos: copyscan train PHOTOS --teacher {config.teacher}")


@app.command("cache-teacher")
def cache_teacher_cmd(
    data_dir: Path = typer.Argument(..., help="The training photos (the same folder `train` will use).", show_default=False),
    teacher: str = typer.Option("sscd_r50", "--teacher", help="sscd_r50, sscd_r50_int8 or a model file."),
    output: Path = typer.Option(..., "--output", "-o", help="Cache folder, for `train --teacher-cache`."),
    views: int = typer.Option(1, "--views", "--epochs", min=1, help="Query views per image (one per epoch; later epochs reuse them)."),
    image_size: int = typer.Option(224, "--image-size", help="Must equal train's --image-size."),
    seed: int = typer.Option(0, "--seed", help="Must equal train's --seed."),
    batch_size: int = BatchOpt,
    workers: Optional[int] = WorkersOpt,
    device: Device = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Compute the teacher's embeddings of the training views ahead, so a slow teacher never holds training up.

    Interrupted, the same command continues where it stopped.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .train import cache_teacher

    progress = Progress(TextColumn("[bold]teacher[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=err, disable=quiet)
    with progress:
        task = progress.add_task("cache", total=None)
        s = _run(cache_teacher, str(data_dir), teacher, str(output), views, image_size, seed, batch_size, workers,
                 device.value, lambda done, total: progress.update(task, completed=done, total=total))
    out.print(f"teacher cache {_esc(s.folder)}: {s.teacher}, {s.images} images x {s.views} views; "
              f"{s.computed} embedded in {s.seconds:.1f} s ({s.rate:.1f} images/s)")


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: speed of each stage, synthetic copy-detection sets.")
app.add_typer(bench_app, name="bench")


@bench_app.command("speed")
def bench_speed(
    folder: Path = DirArg,
    model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="Model to measure; repeat to compare models (measured alternately)."),
    limit: int = typer.Option(1000, "--limit", "-n", min=1, help="Images of the folder to use (the first, by path)."),
    repeats: int = typer.Option(3, "--repeats", "-r", min=1, help="Measurements per stage and model; medians are shown."),
    stages: str = typer.Option(",".join(SPEED_STAGES), "--stages", help="Comma-separated subset of discover,decode,model,store,index."),
    batch_size: int = BatchOpt,
    workers: Optional[int] = WorkersOpt,
    device: Device = typer.Option(Device.cpu, "--device", help="Where the model runs."),
    profile: Optional[Path] = typer.Option(None, "--profile", help="Write a cProfile listing of the first `index` run here."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Images/s of each stage alone (discover, decode + resize, model, store) and of `index` end to end."""
    from rich.table import Table

    from .speed import bench_speed as run_bench, format_table, ratios

    chosen = tuple(s.strip() for s in stages.split(",") if s.strip())
    unknown = [s for s in chosen if s not in SPEED_STAGES]
    if unknown:
        err.print(f"[red]error:[/] unknown stage {unknown[0]!r}: use some of {', '.join(SPEED_STAGES)}")
        raise typer.Exit(1)
    models_ = model or [DEFAULT_MODEL]
    note = (lambda r: err.print(f"  {r.stage:8s} {_esc(r.model)}: {r.rate:,.1f}/s")) if not json_out else None
    report = _run(run_bench, folder, models_, limit, batch_size, workers, device.value, repeats, chosen, None, profile, note)
    if json_out:
        import json

        print(json.dumps(report.to_json()))
        return
    table = Table("model", "stage", "speed (median)", "CPU", "peak RSS",
                  title=f"{report.images} images, {report.cores} cores, {repeats} repeats")
    for row in format_table(report):
        table.add_row(*[_esc(c) for c in row])
    out.print(table)
    for m in report.models():
        r = ratios(report, m)
        if r:
            out.print(f"{_esc(m)}: index / model-only = {r.get('index_over_model', float('nan')):.2f} "
                      f"(steady {r.get('steady_over_model', float('nan')):.2f}), "
                      f"index / decode-only = {r.get('index_over_decode', float('nan')):.2f}")
    if report.profile_path:
        out.print(f"profile of the first index run: {_esc(report.profile_path)}")


class SynthDifficulty(str, Enum):
    easy = "easy"
    medium = "medium"
    hard = "hard"
    mixed = "mixed"


@bench_app.command("synth")
def bench_synth(
    src: Path = typer.Argument(..., metavar="SRC", help="Folder of photos to build the benchmark from (searched recursively).", show_default=False),
    out_dir: Path = typer.Argument(..., metavar="OUT", help="Benchmark folder to create (absent or empty).", show_default=False),
    references: Optional[int] = typer.Option(None, "--references", "-n", help="Reference photos \\[default: up to 1000, leaving SRC's share for the distractors]."),
    copy_fraction: float = typer.Option(0.5, "--copy-fraction", help="Share of the references that get an edited copy among the queries."),
    distractors: Optional[int] = typer.Option(None, "--distractors", help="Edited photos that are no reference's copy, among the queries \\[default: as many as copies]."),
    distractor_source: Optional[Path] = typer.Option(None, "--distractor-source", help="Folder to take the distractors from \\[default: held out of SRC]."),
    edits: Optional[str] = typer.Option(None, "--edits", help="Comma-separated edits to draw from \\[default: all]; the names are in README's \"Copy edits\" (a wrong one lists them)."),
    difficulty: SynthDifficulty = typer.Option(SynthDifficulty.mixed, "--difficulty", help="How many and how strong edits a query gets; mixed draws one level per query."),
    seed: int = typer.Option(0, "--seed", help="The same seed and options give byte-identical files."),
    max_side: int = typer.Option(512, "--max-side", help="Longest side of the written images, in pixels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a benchmark already in OUT."),
    quiet: bool = QuietOpt,
) -> None:
    """Make a copy-detection benchmark: OUT/references/, OUT/queries/, gt.csv, labels.csv, bench.json."""
    from .synth import synthesize

    s = _run(
        synthesize, src, out_dir, references, copy_fraction, distractors, distractor_source, edits, difficulty.value,
        seed, max_side, overwrite, not quiet,
    )
    out.print(
        f"benchmark [bold]{_esc(s.out)}[/]: {s.references} references, {s.queries} queries "
        f"({s.copies} copies, {s.distractors} distractors), {len(s.skipped)} skipped ({s.seconds:.1f} s)"
    )
    for line in s.shortfall:
        out.print(f"[yellow]{_esc(line)}[/]")
    _print_skipped(s.skipped, Path(s.out) / "bench.json")


@app.command()
def export(
    model: str = typer.Argument(DEFAULT_MODEL, help="Registered model name or model file to export."),
    output: Path = typer.Option(..., "--output", "-o", help="The .onnx file to write."),
    int8: bool = typer.Option(False, "--int8", help="Quantise the convolutions to int8 (static, calibrated)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="Folder of photos to calibrate int8 on [default: synthetic pictures]."),
    calibration_images: int = typer.Option(128, "--calibration-images", min=1, help="Calibration images to use."),
) -> None:
    """Export a model to ONNX (uint8 pixels in, descriptor out) for onnxruntime; usable as --model FILE."""
    from .export import export_onnx

    r = _run(export_onnx, model, output, int8, calibration, calibration_images)
    out.print(f"wrote {_esc(r.path)}: {r.dim}-d, {r.input_size} px input, {'int8' if r.int8 else 'fp32'}, "
              f"{r.bytes / 1e6:.1f} MB" + (f", calibrated on {r.calibration_images} images" if r.int8 else ""))


@app.command()
def calibrate(
    folder: Path = DirArg,
    model: Optional[str] = ModelOpt,
    sample: int = typer.Option(100, "--sample", "-n", min=2, help="Photos of the folder to sample."),
    edits: Optional[str] = typer.Option(None, "--edits", help="Comma-separated edits to test [default: all but rotate90, vflip]."),
    difficulty: str = typer.Option("medium", "--difficulty", help="easy, medium or hard edits."),
    precision: Optional[list[float]] = typer.Option(None, "--precision", "-p", help="Target precision; repeatable [default: 0.99 and 0.9]."),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, "--threshold", "-t", help="A threshold to report as well."),
    output: Path = typer.Option(Path("copyscan-calibrate"), "--output", "-o", help="Folder for report.html, calibration.json, scores.csv."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample and the edits."),
    batch_size: int = BatchOpt,
    workers: Optional[int] = WorkersOpt,
    device: Device = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Pick a threshold from your own photos: edited copies of a sample against the rest, at a named precision."""
    from rich.table import Table

    from .calibrate import DEFAULT_PRECISIONS, calibrate as run_calibration, write_outputs

    names = [e.strip() for e in edits.split(",")] if edits else None
    done = [0]
    status = err.status("calibrating: embedding the sample", spinner="dots") if not quiet else nullcontext()
    with status as spinner:
        def tick(n: int) -> None:
            done[0] += n
            if spinner is not None:
                spinner.update(f"calibrating: {done[0]} photos and edited copies embedded")

        cal = _run(run_calibration, folder, model or DEFAULT_MODEL, sample, names, difficulty,
                   tuple(precision or DEFAULT_PRECISIONS), threshold, seed, batch_size, workers, device.value, tick)
    files = _run(write_outputs, cal, output)
    out.print(f"{cal.model} on {cal.originals} photos of {_esc(cal.folder)}: {cal.copies} edited copies, "
              f"{cal.non_copy_pairs:,} non-copy pairs")
    table = Table("", *[f"P >= {p.target_precision:g}" for p in cal.points], f"threshold {threshold:g}")
    pts = cal.points + [cal.at_threshold]
    fmt = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    table.add_row("threshold", *[fmt(p.threshold) for p in pts])
    table.add_row("precision", *[fmt(p.precision) for p in pts])
    table.add_row("recall", *[fmt(p.recall) for p in pts])
    table.add_row("false pos. per pair", *[fmt(p.false_positive_rate, 6) for p in pts])
    for name in cal.edits:
        if name in cal.per_edit_median:
            table.add_row(f"  recall: {name}", *[fmt(p.per_edit_recall.get(name), 2) for p in pts])
    out.print(table)
    for p in cal.points:
        if p.threshold is None:
            out.print(f"[yellow]no threshold reaches precision {p.target_precision:g} on this sample[/]")
    out.print(f"report: {_esc(files['html'])}")


@app.command("eval")
def eval_cmd(
    bench_dir: Optional[Path] = typer.Argument(None, metavar="[BENCH_DIR]", help="Benchmark folder (from `copyscan bench synth`) to index, query and score.", show_default=False),
    gt: Optional[Path] = typer.Option(None, "--gt", help="Ground truth CSV: query_id,reference_id (empty reference_id: no copy).", show_default=False),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Predictions CSV: query_id,reference_id,score.", show_default=False),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for matches.csv, predictions.csv, metrics.json [default: BENCH_DIR-eval beside it].", show_default=False),
    index_dir: Optional[Path] = typer.Option(None, "--index-dir", "--index", help="Index of the references [default: OUTPUT/index]; reused (incrementally) across runs.", show_default=False),
    top_k: int = typer.Option(10, "--top-k", "-k", min=1, help="Predictions per query."),
    model: Optional[str] = ModelOpt,
    background: Optional[Path] = BackgroundOpt,
    whiten: Optional[bool] = WhitenOpt,
    score_norm: Optional[bool] = ScoreNormOpt,
    whiten_dim: Optional[int] = WhitenDimOpt,
    beta: Optional[float] = BetaOpt,
    batch_size: int = BatchOpt,
    workers: Optional[int] = WorkersOpt,
    device: Device = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """DISC2021 metrics (micro AP, recall at 90% precision, accuracy at rank 1) of predictions, or of a benchmark run.

    Either --gt GT.csv --predictions PRED.csv, or BENCH_DIR: its references are indexed, its
    queries searched (top-k, any score) and scored, with a table per kind of edit.
    """
    import json

    from rich.table import Table

    from .evaluate import evaluate_bench
    from .metrics import evaluate, load_ground_truth, load_predictions

    given_files = gt is not None or predictions is not None
    if (bench_dir is not None and given_files) or (bench_dir is None and (gt is None or predictions is None)):
        err.print("[red]error:[/] give either BENCH_DIR, or both --gt GT.csv and --predictions PRED.csv")
        raise typer.Exit(1)
    if bench_dir is None:
        metrics = _run(lambda: evaluate(load_ground_truth(gt), load_predictions(predictions)))
        doc, per_edit, bench_run = metrics.to_dict(), [], None
    else:
        result = _run(evaluate_bench, bench_dir, output=output, model=model, index_dir=index_dir, top_k=top_k,
                      post=_post(background, whiten, score_norm, whiten_dim, beta),
                      extraction=_extraction(batch_size, workers, device, quiet or json_out))
        metrics, doc, per_edit, bench_run = result.metrics, result.to_dict(), result.per_edit, result
    if json_out:
        print(json.dumps(doc))
        return
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    if bench_run is not None:
        post = bench_run.postprocess.get("pipeline", "none")
        out.print(f"{_esc(bench_run.model)} on {_esc(bench_run.bench)} (post-processing: {post}); "
                  f"{bench_run.queries_skipped} queries and {bench_run.references_skipped} references skipped")
    out.print(f"micro AP       {fmt(metrics.micro_ap)}")
    out.print(f"recall @ P90   {fmt(metrics.recall_at_p90)}  (threshold {fmt(metrics.threshold_at_p90)})")
    out.print(f"accuracy @ 1   {fmt(metrics.acc_at_1)}")
    out.print(f"{metrics.n_queries} queries, {metrics.n_positive_pairs} copy pairs, {metrics.n_predictions} predictions"
              + (f" ({metrics.n_unknown_query_predictions} for queries not in the ground truth)" if metrics.n_unknown_query_predictions else ""))
    if per_edit:
        table = Table("edit", "copies", "recall @ P90 threshold", "accuracy @ 1")
        for row in per_edit:
            table.add_row(_esc(row.edit), str(row.copies), fmt(row.recall_at_p90), fmt(row.acc_at_1))
        out.print(table)
    if bench_run is not None:
        out.print(f"predictions: {_esc(bench_run.predictions_path)}\nmetrics:     {_esc(bench_run.metrics_path)}")


def _print_index_summary(s: IndexSummary | None) -> None:
    if s is None:
        return
    rate = f", {s.rate:.1f} images/s" if s.embedded else ""
    out.print(
        f"index [bold]{_esc(s.index_dir)}[/] ({s.model}, {s.faiss}): {s.found} images found, "
        f"{s.embedded} embedded, {s.unchanged} unchanged, {s.removed} removed, {len(s.skipped)} skipped; "
        f"{s.total} in the index ({s.seconds:.1f} s{rate})"
    )
    _print_skipped(s.skipped, Path(s.skipped_record) if s.skipped_record else None)


def _print_skipped(skipped: list[Skipped], record: Path | None, show: int = 10) -> None:
    if not skipped:
        return
    where = f" (all listed in {_esc(str(record))})" if record else ""
    out.print(f"[yellow]{len(skipped)} files skipped{where}:[/]")
    for s in skipped[:show]:
        out.print(f"  {_esc(s.path)}: {_esc(s.reason)}")
    if len(skipped) > show:
        out.print(f"  ... and {len(skipped) - show} more")


def _version(value: bool) -> None:
    if value:
        out.print(f"copyscan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version.")) -> None:
    pass


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # `copyscan ... | head`
        sys.stderr.close()


if __name__ == "__main__":
    main()
