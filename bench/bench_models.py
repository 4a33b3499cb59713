#!/usr/bin/env python
"""Parameters and training-step time of IAUnet vs the plain baseline (same backbone, `iau_stages=()`).

    .venv/bin/python bench/bench_models.py                  # ResNet-50, 256x128, batch 64, 3 timed steps each
    .venv/bin/python bench/bench_models.py --batch 16 --iters 2 --out /tmp/models.md   # quick look

One step = forward + ReIDLoss (CE-LS + triplet, + mask BCE for IAUnet) + backward, fp32, train mode, on CPU (or
on a GPU with --device cuda --amp for bf16 autocast + channels_last). Baseline and IAUnet steps are interleaved
so that contention from other processes hits both alike; the median step is reported. Writes bench/results/models.md.
"""
import argparse, datetime, os, platform, statistics, sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iaunet_fastai.core import seed_everything
from iaunet_fastai.models import IAUnet
from iaunet_fastai.losses import ReIDLoss

def n_params(m): return sum(p.numel() for p in m.parameters())

def fwd_gflops(model, H, W, device):
    "Forward FLOPs of one image (train mode, counted by torch's FlopCounterMode): load-independent."
    from torch.utils.flop_counter import FlopCounterMode
    fc = FlopCounterMode(display=False)
    with fc: model(torch.randn(2, 3, H, W, device=device))
    return fc.get_total_flops() / 2 / 1e9

def make_step(model, x, y, msk, device, amp):
    lf = ReIDLoss()
    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = lf(model(x), y, msk)
        loss.backward()
        if device.type == 'cuda': torch.cuda.synchronize()
        return loss.item()
    return step

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--arch', default='resnet50'); ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--size', type=int, nargs=2, default=(256, 128)); ap.add_argument('--iters', type=int, default=3)
    ap.add_argument('--warmup', type=int, default=1); ap.add_argument('--classes', type=int, default=751)
    ap.add_argument('--device', default='cpu'); ap.add_argument('--amp', action='store_true')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'models.md'))
    a = ap.parse_args(argv)
    seed_everything(0)
    device = torch.device(a.device)
    H, W = a.size
    x = torch.randn(a.batch, 3, H, W, device=device)
    y = torch.arange(a.batch, device=device) // 4 % a.classes                  # P×K = batch/4 × 4
    msk = torch.randint(0, 5, (a.batch, H, W), device=device)
    models = {name: IAUnet(a.arch, num_classes=a.classes, pretrained=False, iau_stages=st).to(device)
              for name, st in (('baseline', ()), ('IAUnet', (2, 3)))}
    if a.amp: x = x.contiguous(memory_format=torch.channels_last)
    for m in models.values():
        if a.amp: m.to(memory_format=torch.channels_last)
    steps = {k: make_step(m, x, y, msk, device, a.amp) for k, m in models.items()}
    times = {k: [] for k in models}
    for i in range(a.warmup + a.iters):
        for k, step in steps.items():
            t0 = time.perf_counter(); step(); dt = time.perf_counter() - t0
            if i >= a.warmup: times[k].append(dt)
            print(f'{k:9s} step {i}: {dt:.2f}s', flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    gf = {k: fwd_gflops(m, H, W, device) for k, m in models.items()}
    pb, pi = n_params(models['baseline']), n_params(models['IAUnet'])
    ratio = med['IAUnet'] / med['baseline'] - 1
    cmd = 'python bench/bench_models.py' + ('' if argv is None and len(sys.argv) == 1 else ' ' + ' '.join(argv or sys.argv[1:]))
    dev = (f'2-core CPU, no GPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, '
           f'{torch.get_num_threads()} threads; load average at the end {os.getloadavg()[0]:.1f} -- the cores were shared '
           'with other jobs, so step times carry +-20% noise') if device.type == 'cpu' else torch.cuda.get_device_name(device)
    lines = [
        '## Models: IAUnet vs plain baseline', '',
        f'Command: `{cmd}`  ', f'Machine: {dev}  ', f'Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  ',
        f'Setting: {a.arch}, {H}×{W}, batch {a.batch} (P×K {a.batch//4}×4), {a.classes} classes, train mode, '
        f'{"bf16 autocast + channels_last" if a.amp else "fp32"}; one step = forward + ReIDLoss + backward; '
        f'median of {a.iters} interleaved steps after {a.warmup} warm-up.', '',
        '| model | parameters | IAU parameters | forward GFLOPs / image | s / step | images / s |', '|---|---:|---:|---:|---:|---:|',
        f'| baseline (`iau_stages=()`) | {pb/1e6:.2f} M | 0 | {gf["baseline"]:.2f} | {med["baseline"]:.2f} | {a.batch/med["baseline"]:.1f} |',
        f'| IAUnet (`iau_stages=(2, 3)`) | {pi/1e6:.2f} M | {(pi-pb)/1e6:.2f} M | {gf["IAUnet"]:.2f} | {med["IAUnet"]:.2f} | {a.batch/med["IAUnet"]:.1f} |',
        '', f'IAU overhead: **{ratio*100:+.1f}%** step time, {(gf["IAUnet"]/gf["baseline"]-1)*100:+.1f}% forward FLOPs, '
        f'{(pi/pb-1)*100:+.1f}% parameters (target: at most +25% time). The FLOP ratio does not depend on machine load; '
        'the extra FLOPs are the two CIAU channel affinities (C×C×HW, computed in fp32) and their update convs.',
        f'All steps (s): baseline {[round(t, 2) for t in times["baseline"]]}, IAUnet {[round(t, 2) for t in times["IAUnet"]]}.', '']
    if device.type == 'cpu':
        lines += ['GPU training throughput (images/s with bf16 autocast and channels_last, `--device cuda --amp`) is '
                  '**blocked**: no GPU was lent to this issue; the script supports it unchanged.', '']
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('\n'.join(lines))
    print('\n'.join(lines))
    return med, ratio

if __name__ == '__main__': main()
