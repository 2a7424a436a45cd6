import sys, time, statistics, numpy as np
sys.path.insert(0, "/work/main/benchmarks")
from copy_detection import register_mnv4
from copyscan.models import create_model
names = sys.argv[1].split(",")
models = {}
for n in names:
    if n.startswith("sscd_distilled"): register_mnv4(n)
    models[n] = create_model(n, "cpu")
rng = np.random.default_rng(0)
rates = {n: [] for n in names}
for r in range(5):
    for n, m in models.items():
        s = m.info.input_size
        x = rng.integers(0, 255, (32, s, s, 3), dtype=np.uint8)
        m.embed(x)
        t = time.perf_counter()
        for _ in range(4): m.embed(x)
        rates[n].append(128 / (time.perf_counter() - t))
for n in names:
    print(n, type(models[n]).__name__, models[n].info.input_size, f"{statistics.median(rates[n]):.1f} img/s")
