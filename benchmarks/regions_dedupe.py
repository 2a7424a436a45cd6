"""`dedupe` with and without --regions on a benchmark's references mixed with their copies (issue 18).

Links the first N references of a `copyscan bench synth` folder, every copy query of those
references and as many distractor queries into one folder, runs `copyscan.dedupe` on it: plain
(--no-verify) into a fresh index, then again on it with and without the verification of
uncertain pairs (side by side: indexing left out); --regions into a fresh index (its seconds
include indexing the region rows), then again on that index without and with the verification. It scores the groups as pairs: a (reference, copy) pair is
found when both sit in one group; a wrong pair is two images of one group from
different sources. Per edit: the share of copies grouped with their reference.

    nice -n 19 python benchmarks/regions_dedupe.py .bench/dev --references 300 --out .bench/regD
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copyscan import api  # noqa: E402
from copyscan.evaluate import load_labels  # noqa: E402

EDITS_SHOWN = ("paste", "screenshot", "crop", "pad", "meme")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path)
    ap.add_argument("--references", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path(".bench/regD"))
    args = ap.parse_args()
    gt = list(csv.DictReader(open(args.bench / "gt.csv", encoding="utf-8")))
    labels = load_labels(args.bench / "labels.csv")
    refs = sorted(p.name for p in (args.bench / "references").iterdir())[: args.references]
    chosen = set(refs)
    copies = [(r["query_id"], r["reference_id"]) for r in gt if r["reference_id"] in chosen]
    distractors = [r["query_id"] for r in gt if not r["reference_id"]][: len(copies)]
    shutil.rmtree(args.out, ignore_errors=True)
    folder = args.out / "photos"
    folder.mkdir(parents=True)
    source = {}
    for name in refs:
        (folder / name).symlink_to((args.bench / "references" / name).resolve())
        source[name] = name
    for q, r in copies:
        (folder / q).symlink_to((args.bench / "queries" / q).resolve())
        source[q] = r
    for q in distractors:
        (folder / q).symlink_to((args.bench / "queries" / q).resolve())
        source[q] = q
    report = {"command": " ".join(sys.argv), "images": len(source), "copies": len(copies), "runs": {}}
    # (name, --regions, --verify, index folder): each index is built by its first run (the seconds
    # include indexing); the later runs on it are side by side.
    runs = (("plain, no verification of uncertain pairs, indexed", False, False, "plain"),
            ("plain, no verification of uncertain pairs", False, False, "plain"),
            ("plain", False, True, "plain"),
            ("regions, indexed", True, True, "regions"),
            ("regions, no verification of uncertain pairs", True, False, "regions"),
            ("regions", True, True, "regions"))
    for name, regions, verify, folder_name in runs:
        t = time.perf_counter()
        s = api.dedupe(folder, output=args.out / f"out-{name.replace(',', '').replace(' ', '-')}", index_dir=args.out / f"index-{folder_name}",
                       regions=regions, verify=verify, report=False)
        seconds = time.perf_counter() - t
        group_of = {}
        for g in s.groups:
            for m in g.members:
                group_of[Path(m.path).name] = g.group_id
        found = {q for q, r in copies if q in group_of and group_of.get(r) == group_of[q]}
        members = defaultdict(list)
        for n, gid in group_of.items():
            members[gid].append(n)
        pairs = [(a, b) for ms in members.values() for a, b in itertools.combinations(ms, 2)]
        wrong = sum(1 for a, b in pairs if source[a] != source[b])
        per_edit = {}
        for e in EDITS_SHOWN:
            qs = [q for q, _ in copies if e in labels.get(q, [])]
            per_edit[e] = (sum(q in found for q in qs) / len(qs)) if qs else None
        run = {"seconds": seconds, "groups": len(s.groups), "copies_found": len(found), "recall": len(found) / len(copies),
               "pairs": len(pairs), "wrong_pairs": wrong, "precision": 1 - wrong / len(pairs) if pairs else None,
               "per_edit_recall": per_edit}
        report["runs"][name] = run
        print(f"{name}: {json.dumps(run)}", flush=True)
    (args.out / "regions_dedupe.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
