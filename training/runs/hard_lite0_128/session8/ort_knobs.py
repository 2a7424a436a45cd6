import time, statistics, numpy as np, onnxruntime as ort, glob, sys
path = sys.argv[1]
print(path)
rng = np.random.default_rng(0)
def sess(threads=0, spin="0", level=None):
    o = ort.SessionOptions()
    if threads: o.intra_op_num_threads = threads
    o.add_session_config_entry("session.intra_op.allow_spinning", spin)
    if level is not None: o.graph_optimization_level = level
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
cfgs = {"default": sess(), "t1": sess(1), "t2": sess(2), "spin": sess(0, "1"), "basic": sess(0, "0", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)}
name = cfgs["default"].get_inputs()[0].name
res = {}
for r in range(3):
    for k, s in cfgs.items():
        for b in (16, 32, 64):
            x = rng.integers(0, 255, (b, 160, 160, 3), dtype=np.uint8)
            s.run(None, {name: x})
            t = time.perf_counter()
            for _ in range(max(1, 256 // b)): s.run(None, {name: x})
            res.setdefault((k, b), []).append(max(1, 256 // b) * b / (time.perf_counter() - t))
for (k, b), v in res.items():
    print(k, b, f"{statistics.median(v):.1f}")
