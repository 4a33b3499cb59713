"""Is today's `re_ranking` equal to the previous implementation (commit b2a12cc) at Market-1501 size?

    .venv/bin/python bench/bench_rerank_exact.py

b2a12cc ordered each row's k-NN candidates by fp32 whole-row products, so where a row's 21st/22nd neighbours are
within ~1e-6 its order was an accident of summation (bench_rerank.py --equal shows 2.3e-2 between it and today's code
on fp32 features). Run on the same features in float64, b2a12cc's k-NN order is exact; today's code orders near-tied
candidates exactly in float64 by design. This prints both differences."""
import sys, time, subprocess, types
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).parent)); from bench_rerank import features
from iaunet_fastai.metrics import re_ranking
N, D = 19281, 2048; Q = 3368
X = torch.from_numpy(features(N, D)); qf, gf = X[:Q], X[Q:]
t = time.time(); a = re_ranking(qf, gf); t32 = time.time() - t
t = time.time(); b = re_ranking(qf.double(), gf.double()); t64 = time.time() - t
a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
print(f"new: fp32 {t32:.1f}s, fp64 input {t64:.1f}s, max|fp32-fp64| {np.abs(a - b).max():.2e}")
src = subprocess.run(['git', 'show', 'b2a12cc:iaunet_fastai/metrics.py'], capture_output=True, text=True).stdout
m = types.ModuleType('old_metrics'); m.__package__ = 'iaunet_fastai'; exec(compile(src, 'old_metrics.py', 'exec'), m.__dict__)
t = time.time(); o64 = np.asarray(m.re_ranking(qf.double(), gf.double()), np.float64); to = time.time() - t
print(f"b2a12cc on fp64 input {to:.1f}s: max|old64 - new32| {np.abs(o64 - a).max():.2e}, max|old64 - new64| {np.abs(o64 - b).max():.2e}")
