"""dedupe --regions on an indexed folder: placing the whole-image pairs (below RegionSettings.dedupe_place_below)
on / off, alternated.   python place_time.py [WORK (/work/runs/s8/dedupe-r)] [THRESHOLD (0.69)]"""
import statistics, sys, time
from pathlib import Path
import copyscan, copyscan.region_search as rs
work = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/runs/s8/dedupe-r")
threshold = float(sys.argv[2]) if len(sys.argv) > 2 else 0.69
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
        copyscan.dedupe(work / "photos", output=work / f"pt-{mode}", threshold=threshold, index_dir=work / "index", report=False, regions=True)
        times[mode].append(time.perf_counter() - t)
        print(r, mode, f"{times[mode][-1]:.1f} s, placed {placed[-1]}", flush=True)
print({k: round(statistics.median(v), 1) for k, v in times.items()})
