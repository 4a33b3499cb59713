"""Benchmark open-set verification (`verification_report`): time and peak extra memory at Market-1501 and MSMT17 size,
and (Market size) equality with scikit-learn's `roc_curve`/`roc_auc_score` on the explicit 53 M pairs.

    .venv/bin/python bench/bench_verification.py                 # market (+ sklearn check) and msmt, writes bench/results/verification-market-msmt.md
    .venv/bin/python bench/bench_verification.py --skip-market --dim 2048

Each part runs in its own subprocess so that its peak extra memory (ru_maxrss after the run minus the resident size
once its inputs exist) is its own. Inputs: seeded random identity-structured features (bench_metrics.make_set).
"""
import argparse, json, os, platform, resource, subprocess, sys, time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'bench'))
from bench_metrics import make_set, rss_mb, peak_mb   # noqa: E402

OUT = ROOT/'bench'/'results'/'verification-{}.md'   # per set of sizes run
SIZES = dict(market=(3368, 15913, 751, 2793), msmt=(11659, 82161, 3060, 0))
FPRS = (1e-4, 1e-3, 1e-2)


def part(args):
    import torch
    from iaunet_fastai.verification import verification_report, sklearn_verification, pair_arrays
    from iaunet_fastai.metrics import pairwise_distance
    torch.set_num_threads(args.threads)
    Q, G, ids, distr = SIZES[args.part]
    qf, gf, qp, gp, qc, gc = make_set(Q, G, args.dim, ids, distr, seed=0)
    qf, gf = torch.from_numpy(qf), torch.from_numpy(gf)
    base, cpu0 = rss_mb(), time.process_time()
    t = time.perf_counter()
    res = verification_report(qf, gf, qp, gp, qc, gc, fprs=FPRS)
    secs, extra, cpu = time.perf_counter() - t, peak_mb() - base, time.process_time() - cpu0
    out = dict(part=args.part, Q=Q, G=G, dim=args.dim, secs=secs, cpu_secs=cpu, peak_extra_mb=extra, n_pos=res['n_pos'], n_neg=res['n_neg'],
               n_junk=res['n_junk'], auc=res['auc'], eer=res['eer'], eer_threshold=res['eer_threshold'],
               tpr={str(k): v for k, v in res['tpr@fpr'].items()}, thr={str(k): v for k, v in res['threshold@fpr'].items()})
    if args.part == 'market' and not args.skip_sklearn:      # the reference: every pair explicit (several GB)
        t = time.perf_counter()
        d, y = pair_arrays(pairwise_distance(qf, gf).numpy(), qp, gp, qc, gc)
        ref = sklearn_verification(d, y, FPRS)
        out['sklearn_secs'] = time.perf_counter() - t
        out['sklearn_peak_extra_mb'] = peak_mb() - base
        out['equal'] = bool(np.isclose(ref['auc'], res['auc'], rtol=0, atol=1e-12) and np.isclose(ref['eer'], res['eer'], rtol=0, atol=1e-12)
                            and ref['eer_threshold'] == res['eer_threshold']
                            and all(ref['tpr@fpr'][f] == res['tpr@fpr'][f] and ref['threshold@fpr'][f] == res['threshold@fpr'][f] for f in FPRS))
        out['auc_diff'] = abs(ref['auc'] - res['auc'])
    return out


def run_part(name, argv):
    p = subprocess.run([sys.executable, __file__, '--part', name] + argv, capture_output=True, text=True, cwd=ROOT)
    if p.returncode: sys.exit(f"part {name} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--part', choices=list(SIZES)); ap.add_argument('--dim', type=int, default=512)
    ap.add_argument('--threads', type=int, default=2); ap.add_argument('--skip-market', action='store_true')
    ap.add_argument('--skip-msmt', action='store_true'); ap.add_argument('--skip-sklearn', action='store_true')
    args = ap.parse_args()
    if args.part: print(json.dumps(part(args))); return
    argv = ['--dim', str(args.dim), '--threads', str(args.threads)] + (['--skip-sklearn'] if args.skip_sklearn else [])
    load0 = os.getloadavg()
    parts = [p for p in SIZES if not getattr(args, f'skip_{p}')]
    res = {p: run_part(p, argv) for p in parts}
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    lines = [f"# verification_report: time and memory ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit})", '',
             f"`{' '.join(['.venv/bin/python bench/bench_verification.py'] + sys.argv[1:])}` on {platform.processor() or platform.machine()}, "
             f"{args.threads} torch threads, load average before {load0[0]:.2f} / after {os.getloadavg()[0]:.2f} "
             "(a shared machine: other jobs ran at the same time). Random identity-structured features, "
             f"dim {args.dim}, float32, CPU; FPRs {FPRS}.", '',
             '| size | pairs (pos / neg / junk) | time (CPU time of the process) | peak extra memory | AUC | EER | TPR@1e-4 / 1e-3 / 1e-2 | vs sklearn |',
             '|---|---|---|---|---|---|---|---|']
    for p, r in res.items():
        chk = ('equal' if r.get('equal') else 'DIFFERENT') + f" (sklearn: {r['sklearn_secs']:.0f} s, {r['sklearn_peak_extra_mb']:.0f} MB)" \
            if 'equal' in r else '—'
        lines.append(f"| {p} {r['Q']:,}×{r['G']:,} | {r['n_pos']:,} / {r['n_neg']:,} / {r['n_junk']:,} | {r['secs']:.1f} s ({r['cpu_secs']:.0f} s) | "
                     f"{r['peak_extra_mb']:.0f} MB | {r['auc']:.6f} | {r['eer']:.6f} | "
                     f"{' / '.join(f'{v:.4f}' for v in r['tpr'].values())} | {chk} |")
    out = Path(str(OUT).format('-'.join(parts)))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__': main()
