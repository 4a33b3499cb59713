#!/usr/bin/env python
"""Ops dispatched per training step (forward + `ReIDLoss` + backward) of the baseline and IAUnet, under bf16 autocast
and channels_last: on a GPU each non-view op is one kernel launch, and the IAUnet step there is launch-bound
(BENCHMARKS "Training pace on CUDA"), so this count, which any machine can take, is what the IAU blocks cost the host.

    .venv/bin/python bench/bench_kernels.py                  # ResNet-50, images 256x128 batch 8 and clips 4x256x128 batch 2

The shapes do not change the count (only the batch's content would, through data-dependent ops, of which the model
has none). Views (`view`, `transpose`, `expand`, ...) launch nothing but still cost host time; they are counted apart.
The optimizer step is left out (fused Adam on CUDA is a few launches whatever the model). Writes
bench/results/kernels.md (a section of BENCHMARKS.md, see bench/collect.py).
"""
import argparse, collections, datetime, platform, subprocess, sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1])); sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loop import OpCounter
from iaunet_fastai.models import IAUnet, VideoIAUnet
from iaunet_fastai.losses import ReIDLoss

def step_counts(model, x, y, m):
    "(kernels, views, casts, products) of one forward + loss + backward (after one warm-up step)."
    lf = ReIDLoss()
    lf.ce_loss._checked = True; lf.ce_loss.check_labels = lambda *a: None   # the CPU label check is not a GPU op
    def step():
        with torch.autocast('cpu', dtype=torch.bfloat16): loss = lf(model(x), y, m)
        loss.backward()
        model.zero_grad(set_to_none=True)       # as fastai's OptimWrapper between steps: no gradient accumulation ops
    step()
    with OpCounter() as c: step()
    k = c.kernels
    return sum(k.values()), sum(c.views.values()), k['_to_copy'], k['bmm'] + k['mm'] + k['addmm']

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--arch', default='resnet50'); ap.add_argument('--out', default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cl = torch.channels_last
    img = (torch.randn(8, 3, 256, 128).contiguous(memory_format=cl), torch.arange(4).repeat_interleave(2),
           torch.randint(0, 5, (8, 256, 128)))
    vid = (torch.randn(2, 4, 3, 256, 128), torch.arange(2), torch.randint(0, 5, (2, 4, 256, 128)))
    rows = []
    for kind, data in (('images', img), ('clips (T=4)', vid)):
        res = {}
        for name, st in (('baseline', ()), ('IAUnet', (2, 3))):
            mk = (lambda: VideoIAUnet(args.arch, 10, seq_len=4, pretrained=False, iau_stages=st)) if kind != 'images' else \
                 (lambda: IAUnet(args.arch, 10, pretrained=False, iau_stages=st))
            model = mk().to(memory_format=cl).train()   # VideoIAUnet: channels_last_3d for its 5-D weights
            res[name] = step_counts(model, *data)
            print(kind, name, res[name], flush=True)
        rows.append((kind, res))
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    lines = [f'## Ops per training step (`bench/bench_kernels.py`)', '',
             f'`python bench/bench_kernels.py {" ".join(argv if argv is not None else sys.argv[1:])}` — {datetime.date.today()}, '
             f'commit {commit}, torch {torch.__version__}, {platform.machine()}. {args.arch}, forward + `ReIDLoss` + backward '
             'under bf16 autocast, channels_last; ops dispatched per step (each non-view op is a kernel launch on a GPU):', '',
             '| input | model | kernels | of which casts | of which matrix products | views | IAU extra kernels |',
             '|---|---|---:|---:|---:|---:|---:|']
    for kind, res in rows:
        b = res['baseline'][0]
        for name, (k, v, casts, mm) in res.items():
            extra = '' if name == 'baseline' else f'+{k - b} (+{(k - b) / b:.0%})'
            lines.append(f'| {kind} | {name} | {k} | {casts} | {mm} | {v} | {extra} |')
    out = Path(args.out or Path(__file__).parent/'results'/'kernels.md')
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines)); print(f'-> {out}')

if __name__ == '__main__': main()
