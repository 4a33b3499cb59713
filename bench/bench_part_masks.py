#!/usr/bin/env python
"""Benchmark of the part-mask stage on the synthetic world: build speed from LIP label PNGs, read-back speed
(random access through `PartMasks.get` and sequential), and the offline prior parser's speed and per-part IoU
against the world's true LIP maps. Writes bench/results/part_masks.md.

    .venv/bin/python bench/bench_part_masks.py [--preset small] [--n-prior 400]
"""
import argparse, datetime, os, platform, sys, tempfile, time
from pathlib import Path
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from iaunet_fastai.part_masks import (PARTS, lip_to_parts, load_part_masks, precompute_part_masks, resize_nearest)


def timed(f, *a, **k):
    t = time.perf_counter(); r = f(*a, **k); return r, time.perf_counter() - t


def iou_table(pm, lab_dir, size):
    "Per-part IoU of the cached maps against the true LIP maps (dataset-level: sum of intersections / sum of unions)."
    inter, union, per_img = np.zeros(5), np.zeros(5), [[] for _ in range(5)]
    for i, n in enumerate(pm.names):
        gt = resize_nearest(lip_to_parts(np.asarray(Image.open(lab_dir/Path(n).with_suffix('.png')))), size)
        pr = pm.get(n)
        if pr is None: pr = np.zeros(size, np.uint8)   # an invalid prior counts as an empty prediction
        for k in range(5):
            g, p = (gt > 0, pr > 0) if k == 0 else (gt == k, pr == k)
            a, b = (g & p).sum(), (g | p).sum()
            inter[k] += a; union[k] += b
            if b: per_img[k].append(a / b)
    return inter / np.maximum(union, 1), np.array([np.mean(v) if v else np.nan for v in per_img])


def main(preset='small', n_prior=200, seed=0, world=None):
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        given = world
        if world is None:
            from iaunet_fastai.synthetic import make_synthetic_reid
            world = tmp/'world'; make_synthetic_reid(world, preset=preset)
        world = Path(world)
        mk = world/'Market-1501'/'bounding_box_train'   # the train images
        lab = world/'parsing'/'Market-1501'             # label PNGs of every split, matched by stem
        size = (256, 128)
        # ---- build from label PNGs (all Market splits), in-process and with 2 workers
        pm, t0 = timed(precompute_part_masks, mk, tmp/'c0', label_dir=lab, size=size, progress=False, verbose=False)
        n = len(pm)
        rows.append(('build from LIP PNGs, 1 process', n, t0, n / t0))
        pm2, t2 = timed(precompute_part_masks, mk, tmp/'c2', label_dir=lab, size=size, n_workers=2, progress=False, verbose=False)
        rows.append(('build from LIP PNGs, 2 workers', n, t2, n / t2))
        _, tr = timed(precompute_part_masks, mk, tmp/'c0', label_dir=lab, size=size, progress=False, verbose=False)
        rows.append(('rerun on the finished cache (no work)', n, tr, float('nan')))
        assert pm.valid.all(), pm.meta['counts']
        # ---- read back: fresh open, random access by name and by absolute path, sequential rows
        pm, t_open = timed(load_part_masks, tmp/'c0')
        rows.append(('load_part_masks (open memmap + index)', n, t_open, float('nan')))
        rng = np.random.default_rng(seed)
        k = 20000
        names = [pm.names[i] for i in rng.integers(0, n, k)]
        t = time.perf_counter(); s = sum(int(np.asarray(pm.get(x))[128, 64]) for x in names); t_rand = time.perf_counter() - t
        rows.append(('read back: random `pm.get(name)` + copy', k, t_rand, k / t_rand))
        paths = [str(mk/x) for x in names]
        t = time.perf_counter(); s = sum(np.array(pm.get(x)).shape[0] for x in paths); t_abs = time.perf_counter() - t
        rows.append(('read back: random `pm.get(absolute path)` + copy', k, t_abs, k / t_abs))
        t = time.perf_counter(); s = sum(np.array(pm.masks[i]).shape[0] for i in range(n)); t_seq = time.perf_counter() - t
        rows.append(('read back: sequential rows `pm.masks[i]` + copy', n, t_seq, n / t_seq))
        # ---- offline prior parser on the first n_prior train images (sorted names)
        sub = tmp/'prior_imgs'; sub.mkdir()
        for x in pm.names[:n_prior]:
            (sub/x).parent.mkdir(parents=True, exist_ok=True); os.symlink(mk/x, sub/x)
        pp, tp = timed(precompute_part_masks, sub, tmp/'cp', parser='prior', size=size, progress=False, verbose=False)
        rows.append(('offline prior parser (GrabCut + proportions), 1 process', len(pp), tp, len(pp) / tp))
        iou, iou_img = iou_table(pp, lab/mk.name, size)
        lip_iou, _ = iou_table(load_part_masks(tmp/'c0'), lab/mk.name, size)
        img_size = Image.open(mk/pm.names[0]).size
        return dict(rows=rows, iou=iou, iou_img=iou_img, lip_iou=lip_iou, n=n, n_prior=len(pp),
                    prior_invalid=int((~pp.valid).sum()), prior_reasons=pp.meta['counts']['invalid_by_reason'],
                    world=f'preset `{preset}`' if given is None else f'folder `{given}`', img_size=img_size)


def report(r, cmd):
    lines = ['## Part masks (`bench/bench_part_masks.py`)', '', f'Command: `{cmd}`', '',
             f'Machine: 2-core CPU, no GPU ({platform.processor() or platform.machine()}), torch threads '
             f'{torch.get_num_threads()}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. '
             + (f'Load average {os.getloadavg()[0]:.1f} at the end of the run ' + ('(other jobs were sharing the 2 cores: treat rates as lower bounds).' if os.getloadavg()[0] > 1.5 else '(no other job running).')), '',
             f"Data: synthetic world {r['world']} (Market-1501 layout; {r['n']} `bounding_box_train` images of "
             f"{r['img_size'][1]}x{r['img_size'][0]} px (HxW) and their true LIP label PNGs); cache size 256x128.", '',
             '| step | items | seconds | items/s |', '|---|---:|---:|---:|']
    for name, k, t, rate in r['rows']:
        lines.append(f'| {name} | {k} | {t:.3f} | {"—" if rate != rate else f"{rate:,.0f}"} |')
    lines += ['', f"Offline prior parser vs the true maps ({r['n_prior']} train images, {r['prior_invalid']} found no "
              f"foreground{'; those count as empty predictions' if r['prior_invalid'] else ''}):", '',
              '| | foreground | ' + ' | '.join(PARTS) + ' | mean of 4 parts |', '|---|---:|' + '---:|' * 5]
    lines.append('| IoU, dataset-level (Σ∩/Σ∪) | ' + ' | '.join(f'{v:.3f}' for v in r['iou']) + f" | {r['iou'][1:].mean():.3f} |")
    lines.append('| IoU, mean per image | ' + ' | '.join(f'{v:.3f}' for v in r['iou_img']) + f" | {np.nanmean(r['iou_img'][1:]):.3f} |")
    lines.append("| `parser='lip'` on the true PNGs (sanity) | " + ' | '.join(f'{v:.3f}' for v in r['lip_iou']) +
                 f" | {r['lip_iou'][1:].mean():.3f} |")
    lines += ['', 'Reading back is a dict lookup plus a slice of the memory-mapped array, so it runs at hundreds of thousands '
              'of masks per second once the file is in the page cache (the target was thousands). Building from label PNGs '
              'is bound by PNG decoding and the image-header check (2 workers only pay off on an idle machine and larger sets). The offline prior is a rough substitute for a '
              'human parser: useful to get some mask supervision with nothing downloaded, not a match for JPPNet/SCHP.', '']
    return '\n'.join(lines)


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--preset', default='small', help='synthetic world preset')
    ap.add_argument('--n-prior', type=int, default=200, help='images for the offline prior parser')
    ap.add_argument('--world', default=None, help='an existing synthetic world folder instead of generating one')
    a = ap.parse_args()
    cmd = '.venv/bin/python bench/bench_part_masks.py' + ''.join(f' {x}' for x in sys.argv[1:])
    md = report(main(a.preset, a.n_prior, world=a.world), cmd)
    out = ROOT/'bench'/'results'/'part_masks.md'; out.parent.mkdir(parents=True, exist_ok=True); out.write_text(md)
    print(md)
