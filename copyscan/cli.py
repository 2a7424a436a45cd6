"""The `copyscan` command: a thin Typer layer over copyscan.api.

Every error a user can cause (a missing folder, an unknown model, an index of another model, a
second writer) is a `UserError` and ends in one clear line on stderr and exit 1, never a traceback.

Start-up is kept fast: this module imports only Typer, Rich's console and torch-free constants;
each command imports what it uses when it runs (tests/test_imports.py checks that no torch,
numpy or Arrow is imported with it).
"""

from __future__ import annotations

import errno
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
from .score import DEFAULT_TOP_K
from .speed import STAGES as SPEED_STAGES
from .validate import MAX_BATCH_SIZE, MAX_TOP_K, MAX_WORKERS
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


class KeepRule(str, Enum):  # copyscan.keep.KEEP_RULES
    original = "original"
    resolution = "resolution"
    oldest = "oldest"
    newest = "newest"
    largest = "largest"
    smallest = "smallest"


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
    except OSError as exc:
        message = _os_error_message(exc)
        if message is None or os.environ.get("COPYSCAN_DEBUG"):
            _internal_error(exc)
        err.print(f"[red]error:[/] {message}")
        raise typer.Exit(1)
    except Exception as exc:
        _internal_error(exc)


def _internal_error(exc: BaseException) -> None:
    # A bug of ours, not the user's input: one line, and the traceback on request.
    if os.environ.get("COPYSCAN_DEBUG"):
        raise exc
    err.print(f"[red]internal error:[/] {type(exc).__name__}: {_plain(exc)} (set COPYSCAN_DEBUG=1 for the traceback)")
    raise typer.Exit(2)


def _os_error_message(exc: OSError) -> str | None:
    """A user's OSError that no stage turned into a UserError (a missing path, a full disk, a
    protected folder) as one line naming the path; None for anything else: an internal error."""
    from .oserrors import explain, is_user_fixable

    if exc.errno is None and exc.args:  # raised with a message of its own
        return _plain(exc)
    if is_user_fixable(exc):
        return _esc(str(explain(exc, exc.filename or ".")))
    if exc.errno == errno.ENOENT and exc.filename:
        return _esc(f"no such file or folder: {exc.filename}")
    return None


def _plain(exc: BaseException) -> str:
    return display_path(str(exc.args[0]) if exc.args else str(exc)).replace("[", r"\[")


def _esc(text: str) -> str:
    return display_path(text).replace("[", r"\[")


EngineOpt = typer.Option("local", "--engine", help="Where decoding and embedding run (and dedupe's pair search): local, or ray (a Ray cluster; pip install \"copyscan\\[ray]\") \\[default: local].", show_default=False)
RayAddressOpt = typer.Option(None, "--ray-address", help="Ray cluster to join with --engine ray \\[default: $RAY_ADDRESS, else a new local one].", show_default=False)
BudgetOpt = typer.Option(None, "--memory-budget", help="Memory the search index may take (e.g. 8G, 512M): picks Flat, IVF-Flat, IVF-SQ8, IVF-PQ or on-disk lists \\[default: a quarter of the memory available].", show_default=False)
DirArg = typer.Argument(..., help="Folder of images (searched recursively).", show_default=False)
IndexOpt = typer.Option(None, "--index-dir", "--index", help="Index folder \\[default: $COPYSCAN_INDEX_DIR or ./.copyscan/index].", show_default=False)
ModelOpt = typer.Option(None, "--model", "-m", help=f"Registered model name (see `copyscan models`) or a model file path \\[default: the model that built the index; {DEFAULT_MODEL} for a new one].", show_default=False)
BatchOpt = typer.Option(32, "--batch-size", "-b", min=1, max=MAX_BATCH_SIZE, help="Images per model call.")
WorkersOpt = typer.Option(None, "--workers", "-j", min=0, max=MAX_WORKERS, help="Decoding processes, 0 for none (decode in the main process) \\[default: one a core, at most 8; on a GPU all cores but one, at most 16].", show_default=False)
DeviceOpt = typer.Option(Device.auto, "--device", help="Where the model runs.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar \\[default: off].", show_default=False)
QueryRegionsOpt = typer.Option(True, "--regions/--no-regions", help="Partial copies too (a photo inside a screenshot or collage, a crop): crops of uncertain queries and geometric verification of uncertain matches; each match gets the box of the copy on each side. --no-regions: whole images only, about half the time \\[default: on].", show_default=False)
RegionsOpt = typer.Option(False, "--regions", help="Partial copies too (a photo inside a screenshot or collage, a crop): region rows and local features (about 18 KB an image) in the index, crops of uncertain queries, geometric verification; each match gets the box of the copy on each side \\[default: off].", show_default=False)
# Post-processing: given on index, query, dedupe or eval, it is stored in the index for later runs.
BackgroundOpt = typer.Option(None, "--background", help="Folder of photos unrelated to the references and queries, to fit whitening and score normalisation on (a new one turns both on); kept in the index \\[default: the index's, if any].", show_default=False)
WhitenOpt = typer.Option(None, "--whiten/--no-whiten", help="PCA whitening + L2 norm of descriptors \\[default: as stored in the index; off in a new one].", show_default=False)
ScoreNormOpt = typer.Option(None, "--score-norm/--no-score-norm", help="Subtract beta x a query's mean cosine to its 3 nearest background images \\[default: as stored in the index; off in a new one].", show_default=False)
WhitenDimOpt = typer.Option(None, "--whiten-dim", min=1, help="Whitened dimension, in components \\[default: background images / 4, at most 256 and the model's].", show_default=False)
BetaOpt = typer.Option(None, "--beta", help="Score normalisation weight (a factor on the background cosine) \\[default: 1].", show_default=False)


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
    regions: bool = RegionsOpt,
    engine: str = EngineOpt,
    ray_address: Optional[str] = RayAddressOpt,
    memory_budget: Optional[str] = BudgetOpt,
) -> None:
    """Embed the images of FOLDER into an index (only new or changed files; removed ones are dropped).

    Examples:

    copyscan index ./refs

    copyscan index ./refs --index-dir ./refs-index --model copyscan_lite0_64
    """
    from .api import index_folder

    s = _run(index_folder, folder, index_dir=index_dir, model=model or DEFAULT_MODEL,
             extraction=_extraction(batch_size, workers, device, quiet), post=_post(background, whiten, score_norm, whiten_dim, beta),
             regions=regions, engine=engine, ray_address=ray_address, memory_budget=memory_budget)
    _print_index_summary(s)


@app.command()
def query(
    folder: Path = DirArg,
    index_dir: Optional[Path] = IndexOpt,
    output: Path = typer.Option(Path("copyscan-query"), "--output", "-o", help="Folder for matches.csv and report.html (created if missing)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", "-t", help="Keep matches scoring at least this: a cosine similarity, -1 to 1 (wider with score normalisation); -1 keeps every top-k match \\[default: the model's calibrated threshold (`copyscan models` shows it; 0.75 for a model without one), or the index's suggested threshold with score normalisation].", show_default=False),
    top_k: int = typer.Option(DEFAULT_TOP_K, "--top-k", "-k", min=1, max=MAX_TOP_K, help="Matches per query at most."),
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
    regions: bool = QueryRegionsOpt,
) -> None:
    """Match every image of FOLDER against the index; writes OUTPUT/matches.csv and OUTPUT/report.html.

    Examples:

    copyscan query ./uploads

    copyscan query ./uploads --index ./refs-index -t 0.6 -k 10 -o ./matches
    """
    from .api import query_folder

    s = _run(query_folder, folder, index_dir=index_dir, output=output, threshold=threshold, top_k=top_k, model=model,
             extraction=_extraction(batch_size, workers, device, quiet), post=_post(background, whiten, score_norm, whiten_dim, beta),
             regions=regions)
    _print_notes(s.notes)
    out.print(f"[bold]{s.queries}[/] queries, [bold]{s.with_match}[/] with a match, {s.matches} matches in all ({s.seconds:.1f} s)")
    _print_skipped(s.skipped, None)
    out.print(f"matches: {_esc(s.csv_path)}")
    if s.report_path:
        out.print(f"report:  {_esc(s.report_path)}")


@app.command()
def dedupe(
    folder: Path = DirArg,
    output: Path = typer.Option(Path("copyscan-dedupe"), "--output", "-o", help="Folder for groups.csv, groups.json and report.html (created if missing)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", "-t", help="Two images are copies when their score is at least this: a cosine similarity, -1 to 1 (wider with score normalisation) \\[default: the model's calibrated threshold (`copyscan models` shows it; 0.75 for a model without one), or the index's suggested threshold with score normalisation].", show_default=False),
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
    keep: KeepRule = typer.Option("original", "--keep", help="Which image of a group to keep: original (the likely original: most detail of the shared content, fewest signs of editing), resolution, oldest, newest, largest, smallest."),
    protect: Optional[list[Path]] = typer.Option(None, "--protect", help="A folder whose files are always kept and never touched; repeatable \\[default: none].", show_default=False),
    regions: bool = RegionsOpt,
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check each ungrouped image's best partner (and a close runner-up) just below the threshold with local features, and group the pair when its geometry agrees (finds crops, pastes and screenshots the descriptor doubts; 2,000 photos: about 5 s more). Not done with --engine ray or --memory-budget."),
    engine: str = EngineOpt,
    ray_address: Optional[str] = RayAddressOpt,
    memory_budget: Optional[str] = BudgetOpt,
) -> None:
    """Find groups of copies inside FOLDER and choose the image to keep in each. Nothing is moved or deleted.

    The folder gets its own index (under .copyscan/dedupe/, unless --index-dir): it is never
    added to the default index that `query` searches. `copyscan apply` then acts on the result.

    Examples:

    copyscan dedupe ./photos

    copyscan dedupe ./photos --threshold 0.65 --output ./dupes
    """
    from .api import dedupe as run_dedupe

    s = _run(run_dedupe, folder, output=output, threshold=threshold, index_dir=index_dir, model=model,
             extraction=_extraction(batch_size, workers, device, quiet), post=_post(background, whiten, score_norm, whiten_dim, beta),
             keep=keep.value, protect=protect, regions=regions, verify=verify, engine=engine, ray_address=ray_address,
             memory_budget=memory_budget)
    _print_index_summary(s.index)
    out.print(
        f"[bold]{len(s.groups)}[/] groups of copies among {s.images} images: {s.copies} copies "
        f"({s.exact_copies} exact) could go, one image kept per group"
    )
    out.print(f"groups: {_esc(s.csv_path)}")
    if s.report_path:
        out.print(f"report: {_esc(s.report_path)}")
    if s.groups:
        out.print(f"next: copyscan review {_esc(s.output)}  (optional), then copyscan apply {_esc(s.output)} --move-to DIR")


@app.command()
def models() -> None:
    """List the registered descriptor models.

    Examples:

    copyscan models

    copyscan index ./refs --model lite0_gem
    """
    import shutil
    import textwrap

    from .models import list_models, model_threshold
    from .models.runtime import int8_twin_path

    # One block per model, wrapped to the terminal: a table squeezed into 80 columns cut almost
    # every cell ("Apache-...", "copysca..."). Names are what users type: never wrapped.
    width = max(40, shutil.get_terminal_size((100, 24)).columns)
    for i, m in enumerate(list_models()):
        name = f"{m.name} (default)" if m.name == DEFAULT_MODEL else m.name
        if i:
            out.print()
        out.print(f"[bold]{_esc(name)}[/]")
        own = model_threshold(m.name)
        twin = int8_twin_path(m.checkpoint)
        int8 = twin is not None and os.path.isfile(twin)
        for text in (f"{m.dim}-d descriptor, {m.input_size} px input; licence: {m.license}", m.description,
                     f"default threshold: {own:g} (calibrated for this model)" if own is not None else "",
                     f"needs: {m.requires}" if m.requires else "",
                     "on a CPU: its shipped int8 twin (COPYSCAN_RUNTIME=onnx-fp32 for the exact fp32 one)" if int8 else ""):
            for line in textwrap.wrap(text, width - 1, initial_indent="  ", subsequent_indent="    ",
                                      break_long_words=False, break_on_hyphens=False):
                out.print(_esc(line))


def _opt(default_note: str, *names: str, **kw):
    """A training option whose default comes from the recipe, else from TrainConfig."""
    return typer.Option(None, *names, help=f"{kw.pop('help')} \\[default: {default_note}]", show_default=False, **kw)


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
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output exactly where it stopped \\[default: off: a new run].", show_default=False),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="TOML file of settings (see training/); options given here win \\[default: none].", show_default=False),
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

    Examples:

    copyscan train ./photos --teacher sscd_r50 --dim 128 --steps 2000 -o ./run

    copyscan train ./photos -o ./run --resume

    copyscan index ./refs --model ./run/model.safetensors
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
    output: Path = typer.Option(..., "--output", "-o", help="Cache folder, for `train --teacher-cache` (required)."),
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

    Examples:

    copyscan cache-teacher ./photos --teacher sscd_r50 -o ./teacher-cache

    copyscan train ./photos --teacher-cache ./teacher-cache -o ./run
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
    model: Optional[list[str]] = typer.Option(None, "--model", "-m", help=f"Model to measure; repeat to compare models (measured alternately) \\[default: {DEFAULT_MODEL}].", show_default=False),
    limit: int = typer.Option(1000, "--limit", "-n", min=1, help="Images of the folder to use (the first, by path)."),
    repeats: int = typer.Option(3, "--repeats", "-r", min=1, help="Measurements per stage and model; medians are shown."),
    stages: str = typer.Option(",".join(SPEED_STAGES), "--stages", help="Comma-separated subset of discover,decode,model,store,index."),
    batch_size: int = BatchOpt,
    workers: Optional[int] = WorkersOpt,
    device: Device = typer.Option(Device.cpu, "--device", help="Where the model runs."),
    profile: Optional[Path] = typer.Option(None, "--profile", help="Write a cProfile listing of the first `index` run to this file \\[default: none].", show_default=False),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table \\[default: off].", show_default=False),
) -> None:
    """Images/s of each stage alone (discover, decode + resize, model, store) and of `index` end to end.

    Examples:

    copyscan bench speed ../shared/data/imagenet-sample -n 500

    copyscan bench speed ./photos -m copyscan_lite0_128 -m lite0_gem --json
    """
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
    copy_fraction: float = typer.Option(0.5, "--copy-fraction", help="Share of the references that get an edited copy among the queries (0 to 1)."),
    distractors: Optional[int] = typer.Option(None, "--distractors", help="Edited photos that are no reference's copy, among the queries \\[default: as many as copies]."),
    distractor_source: Optional[Path] = typer.Option(None, "--distractor-source", help="Folder to take the distractors from \\[default: held out of SRC]."),
    edits: Optional[str] = typer.Option(None, "--edits", help="Comma-separated edits to draw from \\[default: all]; the names are in README's \"Copy edits\" (a wrong one lists them)."),
    difficulty: SynthDifficulty = typer.Option(SynthDifficulty.mixed, "--difficulty", help="How many and how strong edits a query gets; mixed draws one level per query."),
    seed: int = typer.Option(0, "--seed", help="The same seed and options give byte-identical files."),
    max_side: int = typer.Option(512, "--max-side", help="Longest side of the written images, in pixels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a benchmark already in OUT \\[default: off].", show_default=False),
    hard: bool = typer.Option(False, "--hard", help="Hard copies only: the photo small in a screenshot or chat, pasted into or under another photo, strong crops, rotations, pixelation, JPEG 5-20 (--edits and --difficulty do not apply) \\[default: off].", show_default=False),
    quiet: bool = QuietOpt,
) -> None:
    """Make a copy-detection benchmark: OUT/references/, OUT/queries/, gt.csv, labels.csv, bench.json.

    Examples:

    copyscan bench synth ./photos ./bench

    copyscan bench synth ./photos ./bench-hard --hard --references 500 --seed 1
    """
    from .synth import synthesize

    s = _run(
        synthesize, src, out_dir, references, copy_fraction, distractors, distractor_source, edits, difficulty.value,
        seed, max_side, overwrite, not quiet, hard,
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
    int8: bool = typer.Option(False, "--int8", help="Quantise the convolutions to int8 (static, calibrated) \\[default: off: fp32].", show_default=False),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="Folder of photos to calibrate int8 on \\[default: synthetic pictures].", show_default=False),
    calibration_images: int = typer.Option(128, "--calibration-images", min=1, help="Calibration images to use."),
) -> None:
    """Export a model to ONNX (uint8 pixels in, descriptor out) for onnxruntime; usable as --model FILE.

    Examples:

    copyscan export copyscan_lite0_128 -o lite0.onnx

    copyscan export ./run/model.safetensors -o model-int8.onnx --int8 --calibration ./photos
    """
    from .export import export_onnx

    r = _run(export_onnx, model, output, int8, calibration, calibration_images)
    out.print(f"wrote {_esc(r.path)}: {r.dim}-d, {r.input_size} px input, {'int8' if r.int8 else 'fp32'}, "
              f"{r.bytes / 1e6:.1f} MB" + (f", calibrated on {r.calibration_images} images" if r.int8 else ""))


@app.command()
def calibrate(
    folder: Path = DirArg,
    model: Optional[str] = ModelOpt,
    sample: int = typer.Option(100, "--sample", "-n", min=2, help="Photos of the folder to sample."),
    edits: Optional[str] = typer.Option(None, "--edits", help="Comma-separated edits to test \\[default: all but rotate90, vflip].", show_default=False),
    difficulty: str = typer.Option("medium", "--difficulty", help="easy, medium or hard edits."),
    precision: Optional[list[float]] = typer.Option(None, "--precision", "-p", help="Target precision (0 to 1); repeatable \\[default: 0.99 and 0.9].", show_default=False),
    threshold: Optional[float] = typer.Option(None, "--threshold", "-t", help="A threshold (cosine) to report as well \\[default: the model's own, the one `query` and `dedupe` use].", show_default=False),
    output: Path = typer.Option(Path("copyscan-calibrate"), "--output", "-o", help="Folder for report.html, calibration.json, scores.csv."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample and the edits."),
    batch_size: int = BatchOpt,
    workers: Optional[int] = WorkersOpt,
    device: Device = DeviceOpt,
    quiet: bool = QuietOpt,
    regions: bool = typer.Option(False, "--regions", help="Score the copies as `query` does (crops of uncertain copies, verification of uncertain best matches) \\[default: off: whole images].", show_default=False),
) -> None:
    """Pick a threshold from your own photos: edited copies of a sample against the rest, at a named precision.

    Examples:

    copyscan calibrate ./photos

    copyscan calibrate ./photos -n 300 -p 0.995 --edits crop,jpeg,text -o ./calibration
    """
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
                   tuple(precision or DEFAULT_PRECISIONS), threshold, seed, batch_size, workers, device.value, tick,
                   regions=regions)
    files = _run(write_outputs, cal, output)
    out.print(f"{cal.model} on {cal.originals} photos of {_esc(cal.folder)}: {cal.copies} edited copies, "
              f"{cal.non_copy_pairs:,} non-copy pairs")
    table = Table("", *[f"P >= {p.target_precision:g}" for p in cal.points], f"threshold {cal.at_threshold.threshold:g}")
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
    gt: Optional[Path] = typer.Option(None, "--gt", help="Ground truth CSV: query_id,reference_id (empty reference_id: no copy); with --predictions \\[default: none: score BENCH_DIR].", show_default=False),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Predictions CSV: query_id,reference_id,score; with --gt \\[default: none: score BENCH_DIR].", show_default=False),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of text \\[default: off].", show_default=False),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for matches.csv, predictions.csv, metrics.json \\[default: BENCH_DIR-eval beside it].", show_default=False),
    index_dir: Optional[Path] = typer.Option(None, "--index-dir", "--index", help="Index of the references; reused (incrementally) across runs \\[default: OUTPUT/index].", show_default=False),
    top_k: int = typer.Option(10, "--top-k", "-k", min=1, max=MAX_TOP_K, help="Predictions per query."),
    model: Optional[str] = ModelOpt,
    background: Optional[Path] = BackgroundOpt,
    whiten: Optional[bool] = WhitenOpt,
    score_norm: Optional[bool] = ScoreNormOpt,
    whiten_dim: Optional[int] = WhitenDimOpt,
    beta: Optional[float] = BetaOpt,
    regions: bool = typer.Option(False, "--regions", help="Index with --regions too (the references' region rows and local features) \\[default: off].", show_default=False),
    whole_images: bool = typer.Option(False, "--whole-images", help="Score whole images only, as `query --no-regions` (the model alone) \\[default: off: as `query` scores].", show_default=False),
    batch_size: int = BatchOpt,
    workers: Optional[int] = WorkersOpt,
    device: Device = DeviceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """DISC2021 metrics (micro AP, recall at 90% precision, accuracy at rank 1) of predictions, or of a benchmark run.

    Either --gt GT.csv --predictions PRED.csv, or BENCH_DIR: its references are indexed, its
    queries searched (top-k, any score) and scored, with a table per kind of edit.

    Examples:

    copyscan eval ./bench

    copyscan eval --gt gt.csv --predictions predictions.csv --json
    """
    import json

    from rich.table import Table

    from .evaluate import evaluate_bench
    from .metrics import evaluate, load_ground_truth, load_predictions

    given_files = gt is not None or predictions is not None
    if (bench_dir is not None and given_files) or (bench_dir is None and (gt is None or predictions is None)):
        err.print("[red]error:[/] give either BENCH_DIR, or both --gt GT.csv and --predictions PRED.csv")
        raise typer.Exit(1)
    if regions and whole_images:
        err.print("[red]error:[/] --regions indexes for region search and --whole-images turns it off: give one of them")
        raise typer.Exit(1)
    if bench_dir is None:
        metrics = _run(lambda: evaluate(load_ground_truth(gt), load_predictions(predictions)))
        doc, per_edit, bench_run = metrics.to_dict(), [], None
    else:
        result = _run(evaluate_bench, bench_dir, output=output, model=model, index_dir=index_dir, top_k=top_k,
                      post=_post(background, whiten, score_norm, whiten_dim, beta),
                      extraction=_extraction(batch_size, workers, device, quiet or json_out), regions=regions,
                      query_regions=not whole_images)
        metrics, doc, per_edit, bench_run = result.metrics, result.to_dict(), result.per_edit, result
    if json_out:
        print(json.dumps(doc))
        return
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    if bench_run is not None:
        post = bench_run.postprocess.get("pipeline", "none")
        out.print(f"{_esc(bench_run.model)} on {_esc(bench_run.bench)} (post-processing: {post}; search: {bench_run.search}); "
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


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        err.print(f"[yellow]note:[/] {_esc(note)}")


def _print_index_summary(s: IndexSummary | None) -> None:
    if s is None:
        return
    _print_notes(s.notes)
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
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit.")) -> None:
    pass


from .cli_act import register as _register_act  # noqa: E402

_register_act(app, run=_run, esc=_esc, out=out, err=err)  # apply, undo, review


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # `copyscan ... | head`
        sys.stderr.close()


if __name__ == "__main__":
    main()
