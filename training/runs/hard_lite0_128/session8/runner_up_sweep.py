"""runner_up_within (and band) variants of query --regions on regions2's indexes; micro AP and seconds."""
import sys, time
from pathlib import Path
sys.path.insert(0, "/work/main/benchmarks"); sys.path.insert(0, "/work/main")
from regions import run_query
from copyscan.evaluate import load_labels
from copyscan.metrics import load_ground_truth
from copyscan.models import create_model
from copyscan.region_search import RegionSettings
bench = Path("/work/wt/regions/.bench/dev")
work = Path("/work/runs/s8/regions2/copyscan_lite0_128")
gt, labels = load_ground_truth(bench / "gt.csv"), load_labels(bench / "labels.csv")
model = create_model("copyscan_lite0_128", "cpu")
plain_idx = {"path": work / "index-plain", "bytes": 0, "seconds": 0}
idx = {"path": work / "index-regions", "bytes": 0, "seconds": 0}
variants = {"best-only": dict(runner_up_within=None)}
for w in (0.03, 0.05, 0.08, 0.12, 1.0):
    variants[f"ru{w}"] = dict(runner_up_within=w)
for band in ((0.28, 0.65), (0.30, 0.70)):
    variants[f"ru0.05 band{band}"] = dict(runner_up_within=0.05, verify_band=band)
variants["ru0.05 crop<0.5"] = dict(runner_up_within=0.05, crop_below=0.5)
run_query(bench, model, work, idx, "warm", gt, labels, True, queries=Path("/work/runs/s8/regions2/warm"))
for r in range(2):
    p = run_query(bench, model, work, plain_idx, "sw-plain", gt, labels, False)
    print(f"round {r} plain {p['micro_ap']:.4f} {p['query_seconds']:.2f}s", flush=True)
    for name, kw in variants.items():
        q = run_query(bench, model, work, idx, "sw", gt, labels, True, RegionSettings(**kw))
        print(f"round {r} {name}: {q['micro_ap']:.4f} acc1 {q['acc_at_1']:.4f} {q['query_seconds']:.2f}s x{q['query_seconds']/p['query_seconds']:.2f} at075 {q['copies_at_threshold']}/{q['pairs_at_threshold']}", flush=True)
