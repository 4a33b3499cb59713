"""Loader throughput of `reid_dls`: images/s (image block) and frames/s (tracklet block), 256x128, JPEG input.

    .venv/bin/python bench/bench_data.py [--workers 2] [--batches 12]

Writes a temporary tree of JPEGs (Market-1501 and MARS layouts, 128x64 source crops like the real datasets'),
parses it with the library's parsers, and times full training epochs' worth of batches (decode + bicubic resize +
mask lookup + collate + normalise + flip + erasing) after one warm-up batch. Result section → bench/results/data.md.
"""
import argparse, datetime, os, platform, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iaunet_fastai.datasets import market1501_df, mars_df
from iaunet_fastai.data import reid_dls

SRC = (64, 128)   # (W, H) of the stored crops: Market-1501's size


def _img(rng):
    a = rng.integers(0, 255, (SRC[1]//8, SRC[0]//8, 3), dtype=np.uint8)
    return Image.fromarray(a).resize(SRC, Image.BILINEAR)


def write_market(root, n_ids, per_id, rng):
    for split, d, n in (('train', 'bounding_box_train', per_id), ('query', 'query', 1), ('gallery', 'bounding_box_test', 2)):
        for pid in range(1, n_ids+1):
            for k in range(n):
                p = root/d/f'{pid:04d}_c{k % 6 + 1}s1_{k:06d}_01.jpg'; p.parent.mkdir(parents=True, exist_ok=True)
                _img(rng).save(p, quality=90)
    return root


def write_mars(root, n_ids, n_frames, rng):
    from scipy.io import savemat
    (root/'info').mkdir(parents=True, exist_ok=True)
    for sub in ('train', 'test'):
        names, info = [], []
        for pid in range(1, n_ids+1):
            for cam in (1, 2, 3, 4):
                fr = [f'{pid:04d}C{cam}T0001F{f:03d}.jpg' for f in range(1, n_frames+1)]
                for n in fr:
                    p = root/f'bbox_{sub}/{pid:04d}/{n}'; p.parent.mkdir(parents=True, exist_ok=True)
                    _img(rng).save(p, quality=90)
                info.append([len(names)+1, len(names)+n_frames, pid, cam]); names += fr
        (root/'info'/f'{sub}_name.txt').write_text('\n'.join(names))
        savemat(root/'info'/f'tracks_{sub}_info.mat', {f'track_{sub}_info': np.array(info, float)})
    savemat(root/'info'/'query_IDX.mat', {'query_IDX': np.arange(1, 4*n_ids, 4)[None]})
    return root


class HalfMasks:
    "Stand-in part-mask store (a [64, 32] uint8 map per image, as a PartMasks cache returns)."
    def __init__(self): self.m = np.ascontiguousarray(np.repeat(np.arange(5, dtype=np.uint8), 13)[:64, None].repeat(32, 1))
    def get(self, p): return self.m


def time_loader(dl, n_batches):
    "Items (frames) per second over `n_batches` batches after a warm-up batch; epochs restart as in training."
    it = iter(dl); next(it)                                   # warm-up (worker start, first batch)
    t0, n, done = time.perf_counter(), 0, 0
    while done < n_batches:
        for b in it:
            n += b[0].shape[0] * (b[0].shape[1] if b[0].ndim == 5 else 1); done += 1
            if done >= n_batches: break
        it = iter(dl)
    return n / (time.perf_counter() - t0), done


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--batches', type=int, default=12)
    ap.add_argument('--repeats', type=int, default=3, help='median of this many timings per row')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'data.md'))
    a = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter('ignore')
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mdf = market1501_df(write_market(tmp/'Market-1501', n_ids=64, per_id=14, rng=rng))
        vdf = mars_df(write_mars(tmp/'MARS', n_ids=32, n_frames=16, rng=rng))
        for name, df, kw, unit in [
            ('image block, P×K 16×4 (batch 64)', mdf, dict(P=16, K=4), 'images/s'),
            ('image block, same, 0 workers (main process only)', mdf, dict(P=16, K=4, num_workers=0), 'images/s'),
            ('image block + part masks', mdf, dict(P=16, K=4, masks=HalfMasks()), 'images/s'),
            ('tracklet block, T=4, P×K 8×2 (16 clips, 64 frames)', vdf, dict(P=8, K=2, seq_len=4), 'frames/s'),
            ('evaluation loader, images (batch 128)', mdf, dict(P=16, K=4), 'images/s'),
            ('evaluation loader, tracklets (clips of 4, batch 32)', vdf, dict(P=8, K=2, seq_len=4), 'frames/s'),
        ]:
            dls = reid_dls(df, size=(256, 128), **{'num_workers': a.workers, 'seed': 0, **kw})
            dl = dls.valid if name.startswith('evaluation') else dls.train
            rates = [time_loader(dl, a.batches) for _ in range(a.repeats)]
            rate, nb = float(np.median([r for r, _ in rates])), rates[0][1]
            rows.append((name, unit, rate, nb))
            print(f'{name}: {rate:.0f} {unit} over {nb} batches', flush=True)
    cmd = f'.venv/bin/python bench/bench_data.py --workers {a.workers} --batches {a.batches} --repeats {a.repeats}'
    md = [f'## Data loading (`reid_dls`)', '', f'Command: `{cmd}`', '',
          f'Machine: 2-core CPU, no GPU ({platform.processor() or platform.machine()}, torch threads '
          f'{torch.get_num_threads()}, {os.cpu_count()} CPUs visible), {a.workers} loader workers; '
          f'{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. '
          + (f'Load average {os.getloadavg()[0]:.1f} at the end of the run ' + ('(other jobs were sharing the 2 cores: treat rates as lower bounds).' if os.getloadavg()[0] > 1.5 else '(no other job running).')), '',
          'Input: JPEG crops of 128×64 (Market-1501 size) resized bicubic to 256×128; the train loaders include '
          'decoding, resize, collate, ImageNet normalisation, flip and random erasing. Each timing runs the given number '
          'of batches after a warm-up batch, restarting epochs as training does (so the small evaluation sets include '
          'worker start-up once per pass).', '',
          '| loader | throughput (median of repeats) | batches per timing |', '|---|---|---|']
    md += [f'| {n} | {r:,.0f} {u} | {nb} |' for n, u, r, nb in rows]
    md += ['', 'JPEG decoding and the bicubic resize in PIL dominate; per frame a clip costs the same as an image, '
           'so frames/s of the tracklet block should match images/s of the image block (differences here are noise '
           'from the shared CPU). On 2 cores, worker processes compete with the main process (normalisation and '
           'augmentation of the batch) for the same cores, so 2 workers are not faster than 0 here; with more cores '
           'they scale. A GPU training at a few hundred images/s needs more cores/workers (or pre-resized crops).', '']
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text('\n'.join(md))
    print('\n'.join(md))


if __name__ == '__main__':
    main()
