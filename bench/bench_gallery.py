"""Benchmark `ReIDGallery` at scale: writing the shards, exact chunked search, FAISS (recall@k vs exact, speed).

    .venv/bin/python bench/bench_gallery.py --sizes 100000 1000000 --dim 256      # writes bench/results/gallery.md
    .venv/bin/python bench/bench_gallery.py --sizes 100000 --dim 2048

Embeddings are seeded random clustered vectors (a model's embedding throughput is measured by bench_models), so the
"build" figure is the gallery's own cost: writing memory-mapped shards chunk by chunk with atomic progress records
(through `ReIDGallery._fill` with a stand-in extractor). Each size runs in a fresh subprocess (its own peak RSS).
Search: `n_queries` queries, k = 10, exact (`topk_search` over the memory maps) and FAISS IVF (nlist = 4·√N or
`--nlist`, nprobe 16) / HNSW (M = 32, efSearch 64); recall@10 = share of the exact top-10 that FAISS returns.
"""
import argparse, json, os, platform, resource, shutil, subprocess, sys, tempfile, time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT/'bench'/'results'/'gallery.md'


def clustered(n, d, seed, n_centres=None):
    "Unit vectors around `n_centres` random centres (identities), float32, chunked."
    rng = np.random.default_rng(seed)
    cen = rng.standard_normal((n_centres or max(1, n // 20), d), dtype=np.float32)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 65536):
        e = min(s + 65536, n)
        x = cen[rng.integers(0, len(cen), e - s)] + rng.standard_normal((e - s, d), dtype=np.float32)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


class _Stand:
    "Stands in for a FeatureExtractor: returns the precomputed embeddings of the items (their row numbers)."
    def __init__(self, X): self.X, self.fingerprint, self.size = X, 'bench', (256, 128)
    def __call__(self, items):
        import torch
        return torch.from_numpy(self.X[items[0]:items[-1] + 1])


def case(n, d, n_queries, kinds, nlist=None):
    import pandas as pd, torch
    from iaunet_fastai.gallery import ReIDGallery, topk_search, GALLERY_FORMAT
    X = clustered(n, d, 0); Q = clustered(n_queries, d, 1)
    tmp = Path(tempfile.mkdtemp(dir=os.environ.get('BENCH_TMP')))
    try:
        info = dict(format=GALLERY_FORMAT, fingerprint='bench', dim=d, metric='cosine', size=[256, 128], flip_tta=False,
                    model=None, shards=[])
        gal = ReIDGallery(tmp, info)
        meta = pd.DataFrame(dict(item=np.arange(n), pid=pd.array(np.arange(n) // 20, dtype='Int64'),
                                 camid=pd.array(np.arange(n) % 6, dtype='Int64')))
        t = time.perf_counter(); gal = gal._start_shard(_Stand(X), meta, 8192, False); t_build = time.perf_counter() - t
        res = dict(n=n, d=d, n_queries=n_queries, build_s=t_build, build_items_per_s=n / t_build,
                   disk_mb=sum(f.stat().st_size for f in tmp.iterdir()) / 2**20)
        t = time.perf_counter(); ed, ei = topk_search(Q, gal.shards, 10); res['exact_s'] = time.perf_counter() - t
        res['exact_q_per_s'] = n_queries / res['exact_s']
        t = time.perf_counter(); gal.search(Q, k=10, where='camid != 0'); res['exact_where_s'] = time.perf_counter() - t
        for kind in kinds:
            t = time.perf_counter(); gal.build_faiss(kind, nlist=nlist, n_eval=200, verbose=False); tb = time.perf_counter() - t
            t = time.perf_counter(); fd, fi = gal._faiss_search(Q, 10); ts = time.perf_counter() - t
            rec = float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(fi.tolist(), ei.numpy().tolist())]))
            res[kind] = dict(build_s=tb, search_s=ts, q_per_s=n_queries / ts, recall_at_10=rec)
        res['peak_rss_gb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        res['embeddings_gb'] = X.nbytes / 2**30
        return res
    finally: shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--sizes', type=int, nargs='+', default=[100000, 1000000])
    ap.add_argument('--dim', type=int, default=256)
    ap.add_argument('--queries', type=int, default=1000)
    ap.add_argument('--faiss', nargs='*', default=['ivf', 'hnsw'])
    ap.add_argument('--nlist', type=int, help='IVF lists (default: build_faiss\'s 4·√N)')
    ap.add_argument('--case', nargs=3, type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case: print(json.dumps(case(*a.case, a.faiss, a.nlist))); return
    import torch
    rows, load0 = [], os.getloadavg()[0]
    for n in a.sizes:
        p = subprocess.run([sys.executable, __file__, '--case', str(n), str(a.dim), str(a.queries), '--faiss', *a.faiss]
                           + (['--nlist', str(a.nlist)] if a.nlist else []),
                           capture_output=True, text=True, cwd=ROOT)
        if p.returncode: raise RuntimeError(p.stderr[-3000:])
        rows.append(json.loads(p.stdout.strip().splitlines()[-1])); print(rows[-1], flush=True)
    L = ['## Gallery: build and search at scale (`bench/bench_gallery.py`)', '',
         f"Command: `.venv/bin/python bench/bench_gallery.py {' '.join(sys.argv[1:])}`  ",
         f"Machine: {platform.machine()} CPU, 2 cores shared with other jobs (load average {load0:.1f} → {os.getloadavg()[0]:.1f}), "
         f"torch {torch.__version__}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit "
         f"{subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=ROOT).stdout.strip()}. "
         f"Random clustered unit embeddings, {a.queries} queries, k = 10.", '',
         '| gallery | dim | write shards (items/s) | on disk (MB) | exact search (queries/s) | exact + `where` (s) | '
         + ' | '.join(f'FAISS {k}: build (s) / queries/s / recall@10' for k in a.faiss) + ' | peak RSS (GB) |',
         '|---:|---:|---:|---:|---:|---:|' + '---|' * len(a.faiss) + '---:|']
    for r in rows:
        L.append(f"| {r['n']:,} | {r['d']} | {r['build_items_per_s']:,.0f} | {r['disk_mb']:.0f} | {r['exact_q_per_s']:.1f} "
                 f"| {r['exact_where_s']:.1f} | " + ' | '.join(f"{r[k]['build_s']:.1f} / {r[k]['q_per_s']:.0f} / {r[k]['recall_at_10']:.3f}"
                                                               for k in a.faiss) + f" | {r['peak_rss_gb']:.2f} |")
    OUT.parent.mkdir(parents=True, exist_ok=True); OUT.write_text('\n'.join(L) + '\n'); print('\n'.join(L))


if __name__ == '__main__': main()
