"""Wall time of the commands a user types most, whole process included: `copyscan --help`,
`copyscan models`, and `copyscan index` of a folder that has not changed since it was indexed.

    python benchmarks/startup.py PHOTOS [--count 600] [--repeats 7] [--before OTHER_CHECKOUT]

PHOTOS: a folder of photos; the first `--count` (by path) are linked into a scratch folder and
indexed once (not timed), then every command is timed `--repeats` times in a fresh process.
With `--before`, the same commands run from another checkout of copyscan (for instance the
commit before a change) alternately with this one, each with its own index, and the medians
are printed side by side: the machine's noise falls on both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
COMMANDS = ("--help", "models", "index (unchanged)")


def _run(checkout: Path, args: list[str], env: dict, cwd: Path) -> float:
    # `python -m` puts the current folder first on sys.path: run from a scratch folder, so that
    # PYTHONPATH alone says which checkout runs.
    env = dict(env, PYTHONPATH=str(checkout))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "copyscan", *args], env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{checkout}: copyscan {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
    return seconds


def _check_runs_from(checkout: Path, env: dict, cwd: Path) -> None:
    code = "import copyscan, os; print(os.path.realpath(copyscan.__file__))"
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONPATH=str(checkout)), cwd=cwd,
                         capture_output=True, text=True)
    if not out.stdout.strip().startswith(str(checkout.resolve())):
        raise SystemExit(f"copyscan imports from {out.stdout.strip() or out.stderr}, not from {checkout}")


def link_photos(source: Path, count: int, folder: Path) -> int:
    exts = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".jpe"}
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in exts)[:count]
    folder.mkdir(parents=True)
    for i, p in enumerate(files):
        (folder / f"{i:05d}{p.suffix.lower()}").symlink_to(p.resolve())
    return len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos", type=Path)
    ap.add_argument("--count", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--before", type=Path, help="another copyscan checkout to compare with")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    checkouts = {"after": HERE} if args.before is None else {"before": args.before.resolve(), "after": HERE}
    with tempfile.TemporaryDirectory(prefix="copyscan-startup-") as tmp:
        tmp = Path(tmp)
        n = link_photos(args.photos, args.count, tmp / "photos")
        # One model cache for all (the ONNX twin is exported once); no index in the current folder.
        env = dict(os.environ, COPYSCAN_CACHE=str(tmp / "cache"))
        env.pop("COPYSCAN_INDEX_DIR", None)
        commands = {
            "--help": lambda name: ["--help"],
            "models": lambda name: ["models"],
            "index (unchanged)": lambda name: ["index", str(tmp / "photos"), "--index-dir", str(tmp / f"idx-{name}"), "-q"],
        }
        for name, checkout in checkouts.items():  # the first, untimed run embeds the photos
            _check_runs_from(checkout, env, tmp)
            _run(checkout, commands["index (unchanged)"](name), env, tmp)
        times: dict[str, dict[str, list[float]]] = {c: {name: [] for name in checkouts} for c in COMMANDS}
        for _ in range(args.repeats):
            for command in COMMANDS:
                for name, checkout in checkouts.items():  # alternately
                    times[command][name].append(_run(checkout, commands[command](name), env, tmp))
    medians = {c: {name: statistics.median(v) for name, v in by.items()} for c, by in times.items()}
    if args.json:
        print(json.dumps({"photos": n, "repeats": args.repeats, "medians_s": medians, "runs_s": times}))
        return
    print(f"{n} photos, {args.repeats} runs each, {os.cpu_count()} cores; median wall seconds")
    names = list(checkouts)
    print(f"{'command':<20}" + "".join(f"{name:>10}" for name in names) + ("   after/before" if len(names) == 2 else ""))
    for command in COMMANDS:
        row = f"{command:<20}" + "".join(f"{medians[command][name]:>10.2f}" for name in names)
        if len(names) == 2:
            row += f"   {medians[command]['after'] / medians[command]['before']:>12.2f}"
        print(row)


if __name__ == "__main__":
    main()
