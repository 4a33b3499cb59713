"""IAU blocks in a fastai image classifier: fastai's own `vision_learner` (plain timm backbone) vs
`iau_vision_learner(blocks='ciau')` vs `iau_vision_learner(blocks='iau')`, same head (fastai's `create_head`) and
schedule (`fit_one_cycle`), from scratch, several seeds, on two small classification tasks:

* `digits`: scikit-learn's handwritten digits (1,797 real 8×8 scans), upsampled to `--size` px, 80/20 stratified split;
* `synth`: the synthetic reID world's training identities (`make_synthetic_reid(preset='small', n_train_ids=30)`,
  Market-1501 layout, 64×32 px) as classes, 75/25 split per identity.

    .venv/bin/python bench/bench_classify.py [--seeds 5] [--configs fastai,ciau,iau] [--tasks digits,synth]
    .venv/bin/python bench/bench_classify.py --summarize        # only rewrite bench/results/classify.md

Configurations, interleaved per seed (so machine load affects all alike):
* `fastai`: `vision_learner(dls, arch, pretrained=False)` -- timm's init (zero-initialised last BN of each residual block);
* `plain`: `iau_vision_learner(dls, arch, iau_stages=())` -- the same network without blocks, from the authors' init
  (no zero-initialised residual BN: `timm_stages` from scratch);
* `ciau`, `iau`: `iau_vision_learner(dls, arch, blocks=...)` with blocks after stages 2 and 3 (the authors' init);
* `iau-timm`: `iau` with timm's init (`zero_init_last=True`), to compare the inits with blocks.
The default runs `fastai,ciau,iau`; `plain` and `iau-timm` are there for the init comparison.
Each run appends one JSON line to bench/results/classify.jsonl (accuracy, train and inference images/s, parameters,
multiply-adds per image, load average, commit); the summary (mean ± std over seeds, min-max) goes to classify.md.
The loaders hold the images as tensors in memory, so the images/s measure the model, not image decoding."""
import argparse, datetime, json, os, platform, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np, torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fastai.vision.all import vision_learner, accuracy, CrossEntropyLossFlat, set_seed
from fastai.data.load import DataLoader
from fastai.data.core import DataLoaders
from iaunet_fastai.classifier import iau_vision_learner

OUT = ROOT/'bench'/'results'
CONFIGS = ('fastai', 'plain', 'ciau', 'iau', 'iau-timm')

def split(y, frac, seed=0):
    "Stratified split: indices of (train, valid), `frac` of each class to valid."
    rng, tr, va = np.random.default_rng(seed), [], []
    for c in np.unique(y):
        i = rng.permutation(np.flatnonzero(y == c)); n = max(1, int(round(len(i) * frac)))
        va += list(i[:n]); tr += list(i[n:])
    return np.array(sorted(tr)), np.array(sorted(va))

def digits_task(size):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16
    x = F.interpolate(x, size=(size, size), mode='bicubic', align_corners=False).clamp(0, 1).expand(-1, 3, -1, -1)
    return x.contiguous(), torch.tensor(d.target), 0.2

def synth_task(tmp, n_ids):
    from PIL import Image
    from iaunet_fastai.synthetic import make_synthetic_reid
    from iaunet_fastai.datasets import market1501_df
    root = make_synthetic_reid(tmp/'synth', preset='small', img_size=(64, 32), datasets=('market1501',), seed=0,
                               n_train_ids=n_ids, n_test_ids=1, n_junk=0, n_distractors=0)
    df = market1501_df(root/'Market-1501')
    df = df[df.split == 'train'].reset_index(drop=True)
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert('RGB'))).permute(2, 0, 1) for p in df.path]).float() / 255
    pids = sorted(df.pid.unique())
    return x, torch.tensor([pids.index(p) for p in df.pid]), 0.25

def tensor_dls(x, y, frac, bs):
    tr, va = split(y.numpy(), frac)
    dls = DataLoaders(DataLoader(list(zip(x[tr], y[tr])), bs=bs, shuffle=True, drop_last=True),
                      DataLoader(list(zip(x[va], y[va])), bs=2 * bs))
    dls.c = int(y.max()) + 1
    return dls, len(tr), len(va)

def make_learner(cfg, dls, arch):
    kw = dict(pretrained=False, metrics=accuracy, loss_func=CrossEntropyLossFlat())
    if cfg == 'fastai': return vision_learner(dls, arch, **kw)
    if cfg == 'plain': return iau_vision_learner(dls, arch, iau_stages=(), **kw)
    blocks, _, init = cfg.partition('-')            # 'iau-timm': timm's init (zero-initialised last BN per residual block)
    return iau_vision_learner(dls, arch, blocks=blocks, **kw, **(dict(zero_init_last=True) if init == 'timm' else {}))

def macs_per_image(model, x):
    from torch.utils.flop_counter import FlopCounterMode
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc: model(x[:1])
    return fc.get_total_flops() / 2

@torch.inference_mode()
def infer_images_per_s(model, x, bs=128, reps=2):
    model.eval(); best = 0.
    for _ in range(reps):
        t = time.perf_counter()
        for i in range(0, len(x), bs): model(x[i:i+bs])
        best = max(best, len(x) / (time.perf_counter() - t))
    return best

def commit():
    try: return subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()
    except OSError: return '?'

def run_one(task, cfg, seed, data, a):
    x, y, frac = data
    set_seed(seed, reproducible=True)
    dls, n_tr, n_va = tensor_dls(x, y, frac, a.bs)
    learn = make_learner(cfg, dls, a.arch)
    t = time.perf_counter()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(a.epochs[task], a.lr)
    fit_s = time.perf_counter() - t
    loss, acc = learn.validate()
    m = learn.model
    return dict(task=task, config=cfg, seed=seed, arch=a.arch, epochs=a.epochs[task], lr=a.lr, bs=a.bs,
                img=list(x.shape[-2:]), n_train=n_tr, n_valid=n_va, n_classes=dls.c, acc=float(acc), valid_loss=float(loss),
                train_img_s=n_tr * a.epochs[task] / fit_s, infer_img_s=infer_images_per_s(m, x[:512]),
                params=sum(p.numel() for p in m.parameters()), macs=macs_per_image(m, x),
                loadavg=os.getloadavg(), threads=torch.get_num_threads(), commit=commit(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))

def summarize(jsonl, md):
    rows = [json.loads(l) for l in jsonl.read_text().splitlines() if l.strip()]
    if not rows: return
    lines = ['| task | config | seeds | accuracy mean ± std | min–max | train img/s | inference img/s | params | MACs/image |',
             '|---|---|---|---|---|---|---|---|---|']
    for task in dict.fromkeys(r['task'] for r in rows):
        base = None
        for cfg in CONFIGS:
            rs = [r for r in rows if r['task'] == task and r['config'] == cfg]
            if not rs: continue
            acc = np.array([r['acc'] for r in rs])
            p, mac = rs[0]['params'], rs[0]['macs']
            base = base or (p, mac)
            over = lambda v, b: f'{v/1e6:.2f} M' + ('' if v == b else f' ({(v - b) / b:+.1%})')
            lines.append(f"| {task} ({rs[0]['img'][0]}×{rs[0]['img'][1]}, {rs[0]['n_classes']} classes, {rs[0]['epochs']} ep) "
                         f"| {cfg} | {len(rs)} | {acc.mean():.4f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.4f} "
                         f"| {acc.min():.4f}–{acc.max():.4f} | {np.median([r['train_img_s'] for r in rs]):.0f} "
                         f"| {np.median([r['infer_img_s'] for r in rs]):.0f} | {over(p, base[0])} | {over(mac, base[1])} |")
    la = [r['loadavg'][0] for r in rows]
    lines += ['', f"{len(rows)} runs, {rows[0]['date']} to {rows[-1]['date']}, commits {sorted({r['commit'] for r in rows})}, "
                  f"arch {rows[0]['arch']}, bs {rows[0]['bs']}, lr {rows[0]['lr']}, torch threads {rows[0]['threads']}; "
                  f"1-min load average during the runs {min(la):.1f}–{max(la):.1f} (other jobs shared the machine). "
                  "Images/s are medians over seeds; overheads are relative to the first configuration listed.", '']
    md.write_text('\n'.join(lines))
    print('\n'.join(lines))

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--seeds', type=int, default=5)
    p.add_argument('--first-seed', type=int, default=0)
    p.add_argument('--configs', default='fastai,ciau,iau')
    p.add_argument('--tasks', default='digits,synth')
    p.add_argument('--arch', default='resnet18')
    p.add_argument('--size', type=int, default=24, help='digits: upsampled image side')
    p.add_argument('--synth-ids', type=int, default=30, help='synth: identities (classes)')
    p.add_argument('--epochs-digits', type=int, default=3)
    p.add_argument('--epochs-synth', type=int, default=5)
    p.add_argument('--lr', type=float, default=1e-2)
    p.add_argument('--bs', type=int, default=32)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default=str(OUT/'classify.jsonl'))
    p.add_argument('--summarize', action='store_true')
    a = p.parse_args()
    out = Path(a.out)
    if not a.summarize:
        torch.set_num_threads(a.threads)
        a.epochs = dict(digits=a.epochs_digits, synth=a.epochs_synth)
        tasks = a.tasks.split(',')
        tmp = Path(tempfile.mkdtemp())
        data = {t: digits_task(a.size) if t == 'digits' else synth_task(tmp, a.synth_ids) for t in tasks}
        for seed in range(a.first_seed, a.first_seed + a.seeds):
            for task in tasks:
                for cfg in a.configs.split(','):
                    r = run_one(task, cfg, seed, data[task], a)
                    with open(out, 'a') as f: f.write(json.dumps(r) + '\n')
                    print(json.dumps(r), flush=True)
    summarize(out, out.with_suffix('.md'))

if __name__ == '__main__': main()
