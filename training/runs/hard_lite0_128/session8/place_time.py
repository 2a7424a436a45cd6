"""dedupe --regions on an indexed folder: placing whole-image pairs below 0.9 on / off, alternated."""
import statistics, sys, time
from pathlib import Path
import copyscan, copyscan.region_search as rs
work = Path("/work/runs/s8/dedupe-r")
real = rs.place_boxes
placed = []
MODE = ["on"]
def counting(pairs, paths, limit=100_000, stored=None, place_below=None):
    n = real(pairs, paths, limit=limit, stored=stored, place_below=place_below if MODE[0] == "on" else None)
    placed.append(n)
    return n
rs.place_boxes = counting
times = {"on": [], "off": []}
for r in range(3):
    for mode in ("on", "off"):
        MODE[0] = mode
        t = time.perf_counter()
        copyscan.dedupe(work / "photos", output=work / f"pt-{mode}", threshold=0.69, index_dir=work / "index", report=False, regions=True)
        times[mode].append(time.perf_counter() - t)
        print(r, mode, f"{times[mode][-1]:.1f} s, placed {placed[-1]}", flush=True)
print({k: round(statistics.median(v), 1) for k, v in times.items()})
