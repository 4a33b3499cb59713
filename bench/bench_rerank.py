"""Benchmark k-reciprocal re-ranking (`iaunet_fastai.metrics.re_ranking`) against its floor: one full N×N fp32 product.

    .venv/bin/python bench/bench_rerank.py --sizes 10000 20000 40000 --dims 256 2048     # one row per (N, dim)
    .venv/bin/python bench/bench_rerank.py --sizes 93820 --dims 256 2048                  # MSMT17 size (minutes, ~5 GB)
    .venv/bin/python bench/bench_rerank.py --equal 19281 --dims 2048 --old b2a12cc        # vs the implementation at a commit

Every case runs in a fresh subprocess (its peak RSS is its own): seeded clustered features (MSMT17's query share,
11,659 / 93,820 of N), then the floor (the N×N product `X @ X.T`, in blocks of rows written into one reused buffer:
the same multiply-adds as the k-NN distances, no other work), then `re_ranking(k1=20, k2=6, lambda=0.3)`, then the
floor again; the ratio is re-ranking time / mean floor, so load from other jobs affects both alike. Phase times come
from wrapping the module's internal steps. Results are appended to bench/results/rerank.jsonl; the table
bench/results/rerank.md is written from all recorded rows (newest per case).
`--equal N --old COMMIT` instead runs the re-ranking of that commit (read with `git show`) and this one on the same
features and reports the largest difference of their outputs and both times.
"""
import argparse, importlib.util, json, os, platform, resource, subprocess, sys, tempfile, time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT/'bench'/'results'
Q_SHARE = 11659 / 93820                                    # MSMT17: queries / (queries + gallery)


def features(N, D, seed=0):
    "Seeded features with identity structure (~8 items per identity over the whole set), float32, chunked."
    rng = np.random.default_rng(seed)
    pid = rng.integers(0, max(1, N // 8), N)
    cen = rng.standard_normal((max(1, N // 8), D), dtype=np.float32)
    X = np.empty((N, D), np.float32)
    for s in range(0, N, 4096):
        e = min(s + 4096, N)
        X[s:e] = cen[pid[s:e]] + 1.5 * rng.standard_normal((e - s, D), dtype=np.float32)
    return X


def floor_product(X, rows=1024, every=1):
    """Seconds for the full N×N fp32 product `X @ X.T` in blocks of `rows` rows (one reused output buffer). `every` > 1
    times every `every`-th block only (spread over the rows) and scales up by the rows done: an estimate of the same
    product under the same load, for sizes where a full product takes most of an hour on a busy machine."""
    import torch
    N = len(X); buf = torch.empty(min(rows, N), N); done = 0
    t = time.perf_counter()
    for s in range(0, N, rows * every): torch.mm(X[s:s + rows], X.T, out=buf[:min(rows, N - s)]); done += min(rows, N - s)
    return (time.perf_counter() - t) * N / done


def timed_phases(mod, names):
    "Wrap `mod`'s functions `names` so each call adds its seconds to the returned dict."
    times = {}
    for n in names:
        f = getattr(mod, n)
        def w(*a, _f=f, _n=n, **k):
            t = time.perf_counter(); r = _f(*a, **k); times[_n] = times.get(_n, 0.) + time.perf_counter() - t; return r
        setattr(mod, n, w)
    return times


def case(N, D, every=1):
    "One (N, D) case: floor, re-ranking, floor; times, phases, peak RSS."
    import torch
    import iaunet_fastai.metrics as M
    X = torch.from_numpy(features(N, D)); Q = int(round(N * Q_SHARE))
    load0 = os.getloadavg()[0]
    f1 = floor_product(X, every=every)
    phases = timed_phases(M, ['_knn', '_expansion_pairs', '_pair_sqdist', '_blend_into'])
    t = time.perf_counter(); d = M.re_ranking(X[:Q], X[Q:], k1=20, k2=6, lambda_=0.3); t_rr = time.perf_counter() - t
    f2 = floor_product(X, every=every)
    return dict(N=N, D=D, Q=Q, t_rerank=t_rr, t_floor=[f1, f2], ratio=t_rr / ((f1 + f2) / 2), phases=phases,
                peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, inputs_gb=X.numel() * 4 / 2**30,
                out_gb=d.nbytes / 2**30, load=[load0, os.getloadavg()[0]], threads=torch.get_num_threads(),
                date=f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", commit=git('rev-parse', '--short', 'HEAD'),
                torch=torch.__version__, floor_every=every)


def git(*a): return subprocess.run(['git', *a], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def module_at(commit):
    "The `metrics` module as it was at `commit` (for the equality check)."
    src = git('show', f'{commit}:iaunet_fastai/metrics.py').replace('from .core import', 'from iaunet_fastai.core import')
    p = Path(tempfile.mkdtemp())/f'metrics_{commit}.py'; p.write_text(src)
    spec = importlib.util.spec_from_file_location(p.stem, p); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m


def equal(N, D, commit):
    "Old (`commit`) vs current re-ranking on the same features: largest |difference|, both times."
    import torch
    import iaunet_fastai.metrics as M
    old = module_at(commit)
    X = torch.from_numpy(features(N, D, seed=1)); Q = int(round(N * 3368 / 19281))   # Market-1501's query share
    t = time.perf_counter(); a = old.re_ranking(X[:Q], X[Q:]); t_old = time.perf_counter() - t
    t = time.perf_counter(); b = M.re_ranking(X[:Q], X[Q:]); t_new = time.perf_counter() - t
    return dict(equal=True, N=N, D=D, Q=Q, old=commit, t_old=t_old, t_new=t_new, max_abs_diff=float(np.abs(a - b).max()),
                same_top1=float((a.argmin(1) == b.argmin(1)).mean()), load=os.getloadavg()[0],
                date=f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", commit=git('rev-parse', '--short', 'HEAD'))


def run_sub(args):
    p = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    if p.returncode: raise RuntimeError(f"{args} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def table(rows):
    "Markdown table of the newest row per (N, D) and of the equality checks."
    cases = {}
    for r in rows: cases[(r.get('equal', False), r['N'], r['D'])] = r
    L = ['| N (Q + G) | dim | re-ranking (s) | N×N product, floor (s) | ratio | k-NN pass / sets / weights / Jaccard (s) '
         '| peak RSS (GB) | load avg | date, commit |', '|---|---:|---:|---:|---:|---|---:|---:|---|']
    for (eq, N, D), r in sorted(cases.items()):
        if eq: continue
        p = r['phases']; ph = ' / '.join(f"{p.get(k, p.get(old, 0)):.1f}" for k, old in (('_knn',) * 2, ('_expansion_pairs',) * 2, ('_pair_sqdist',) * 2,
                                                                      ('_blend_into', '_jaccard_into')))   # renamed in 23's redesign
        fl = f"{r['t_floor'][0]:.1f}, {r['t_floor'][1]:.1f}" + (f" (1/{r['floor_every']} timed)" if r.get('floor_every', 1) > 1 else '')
        L.append(f"| {N:,} ({r['Q']:,} + {N - r['Q']:,}) | {D} | {r['t_rerank']:.1f} | {fl} "
                 f"| **{r['ratio']:.2f}×** | {ph} | {r['peak_rss_gb']:.2f} | {r['load'][0]:.1f} → {r['load'][1]:.1f} | {r['date']}, {r['commit']} |")
    eqs = [r for (eq, *_), r in sorted(cases.items()) if eq]
    if eqs:
        L += ['', '| N (Q + G) | dim | old commit | old (s) | new (s) | max abs difference | same top-1 | load avg |', '|---|---:|---|---:|---:|---:|---:|---:|']
        L += [f"| {r['N']:,} ({r['Q']:,} + {r['N'] - r['Q']:,}) | {r['D']} | {r['old']} | {r['t_old']:.1f} | {r['t_new']:.1f} "
              f"| {r['max_abs_diff']:.1e} | {100 * r['same_top1']:.2f}% | {r['load']:.1f} |" for r in eqs]
    return '\n'.join(L) + '\n'


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--sizes', type=int, nargs='*', default=[10000, 20000, 40000])
    ap.add_argument('--dims', type=int, nargs='+', default=[256, 2048])
    ap.add_argument('--equal', type=int, help='compare with --old at this N instead of timing against the floor')
    ap.add_argument('--old', default='b2a12cc', help='commit of the implementation to compare with (--equal)')
    ap.add_argument('--floor-every', type=int, default=1, help='time every n-th block of the floor product and scale up')
    ap.add_argument('--case', type=int, nargs=3, help=argparse.SUPPRESS)
    ap.add_argument('--equal-case', nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case: print(json.dumps(case(*a.case))); return
    if a.equal_case: print(json.dumps(equal(int(a.equal_case[0]), int(a.equal_case[1]), a.equal_case[2]))); return
    log = RES/'rerank.jsonl'; RES.mkdir(parents=True, exist_ok=True)
    jobs = [['--equal-case', a.equal, D, a.old] for D in a.dims] if a.equal else [['--case', N, D, a.floor_every] for N in a.sizes for D in a.dims]
    for j in jobs:
        r = run_sub(j); r['command'] = ' '.join(['.venv/bin/python bench/bench_rerank.py'] + sys.argv[1:]); print(r, flush=True)
        with open(log, 'a') as f: f.write(json.dumps(r) + '\n')
    rows = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
    (RES/'rerank.md').write_text(f"Machine: {platform.machine()} CPU, 2 cores shared with other jobs; torch threads as in each row.\n\n" + table(rows))
    print((RES/'rerank.md').read_text())


if __name__ == '__main__': main()
