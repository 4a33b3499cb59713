#!/usr/bin/env python
"""Loader workers per epoch: what a new epoch of `dls.train` and `dls.valid` costs when fastai starts new worker
processes every epoch (`reid_dls(persistent_workers=False)`, fastai's behaviour) and when the workers are kept
(`persistent_workers=True`, the default), under each multiprocessing start method.

    .venv/bin/python bench/bench_workers.py                          # fork and forkserver, 2 workers
    .venv/bin/python bench/bench_workers.py --methods fork,forkserver,spawn --workers 14 --pk 16x4   # a GPU host

`fork` is Linux's default up to Python 3.13; Python 3.14 made `forkserver` the default on Linux (`spawn` is macOS's and
Windows', where fastai runs without workers). Each configuration runs in its own process: `--epochs` epochs of train
then valid; reported are the first-batch latency of an epoch (median over the epochs after the first) and the whole
epoch (median over the same epochs). Writes bench/results/workers-cpu.md (see bench/collect.py).
"""
import argparse, datetime, json, os, platform, subprocess, sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

def _pair(s): return tuple(int(v) for v in str(s).replace('x', ',').split(','))

def world(args):
    from iaunet_fastai.synthetic import make_synthetic_reid
    from iaunet_fastai.datasets import market1501_df
    path = make_synthetic_reid(Path(args.data), preset=args.preset, img_size=_pair(args.world_size), seed=0,
                               datasets=('market1501',), workers=max(1, args.workers))
    return market1501_df(path/'Market-1501')

def measure(args):
    "One configuration (in a process of its own, with its start method set first): latencies and epoch times."
    import multiprocessing as mp, torch
    mp.set_start_method(args.method, force=True)
    from iaunet_fastai.data import reid_dls
    P, K = _pair(args.pk)
    dls = reid_dls(world(args), size=_pair(args.size), P=P, K=K, num_workers=args.workers, seed=0, device='cpu',
                   persistent_workers=args.persistent)
    res = {}
    for name in ('train', 'valid'):
        dl, first, whole = getattr(dls, name), [], []
        for _ in range(args.epochs):
            t = time.perf_counter(); it = iter(dl); next(it); first.append(time.perf_counter() - t)
            for _ in it: pass
            whole.append(time.perf_counter() - t)
        res[name] = dict(first=first, whole=whole, batches=len(dl))
    print('RESULT ' + json.dumps(res))

def med(v): v = sorted(v); return v[len(v)//2]

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--methods', default='fork,forkserver')
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--epochs', type=int, default=4)
    ap.add_argument('--pk', default='16x4')
    ap.add_argument('--size', default='256,128')
    ap.add_argument('--preset', default='small')
    ap.add_argument('--world-size', default='128,64', help='image size the synthetic world is rendered at')
    ap.add_argument('--data', default='/tmp/bench_workers_world')
    ap.add_argument('--out', default=None)
    ap.add_argument('--method', help=argparse.SUPPRESS)
    ap.add_argument('--persistent', type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method: return measure(args)
    world(args)                                                   # render once, before the timed processes
    rows = []
    for method in args.methods.split(','):
        for persistent in (0, 1):
            cmd = [sys.executable, __file__, '--method', method, '--persistent', str(persistent)] + [
                a for k in ('workers', 'epochs', 'pk', 'size', 'preset', 'world_size', 'data')
                for a in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            r = json.loads(out.split('RESULT ', 1)[1])
            rows.append((method, persistent, r))
            print(method, 'kept' if persistent else 'new', {k: (round(med(v['first'][1:]), 3), round(med(v['whole'][1:]), 3))
                                                           for k, v in r.items()}, flush=True)
    import torch
    head = (f"## Loader workers per epoch (`bench/bench_workers.py`)\n\n`python bench/bench_workers.py --methods {args.methods} "
            f"--workers {args.workers} --epochs {args.epochs} --pk {args.pk} --size {args.size}` — "
            f"{datetime.datetime.utcnow():%Y-%m-%d}, {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}. Synthetic "
            f"Market-1501 ({args.preset}, images {args.world_size.replace(',', '×')}) decoded at {args.size.replace(',', '×')}, "
            f"P×K {args.pk}, {args.workers} loader workers, no part masks, CPU batches. Medians over epochs 2–{args.epochs} "
            f"of each loader (the first epoch starts the workers in both modes); seconds.\n")
    tab = ['| start method | workers | train: first batch | train: epoch | valid: first batch | valid: epoch |',
           '|---|---|---:|---:|---:|---:|']
    for method, persistent, r in rows:
        tab.append(f"| {method} | {'kept (persistent)' if persistent else 'new every epoch (fastai)'} | "
                   + ' | '.join(f"{med(r[n][k][1:]):.2f}" for n in ('train', 'valid') for k in ('first', 'whole')) + ' |')
    nb = rows[0][2]
    text = head + '\n' + '\n'.join(tab) + (f"\n\nThe train loader has {nb['train']['batches']} batches per epoch here and "
                                           f"the valid loader {nb['valid']['batches']}.\n")
    out = Path(args.out or ROOT/'bench'/'results'/'workers-cpu.md')   # the batches stay on the CPU
    out.parent.mkdir(parents=True, exist_ok=True); out.write_text(text)
    print(text)

if __name__ == '__main__': main()
