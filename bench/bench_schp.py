#!/usr/bin/env python
"""Speed of `parser='schp'` (the SCHP ResNet-101 human parser run inside the part-mask stage) on the synthetic world's
Market-style crops: model load, the whole stage (decode + warp + network + warp back + argmax + grouping + cache) in
images/s, and the network alone. Random weights unless `--weights` names a real SCHP checkpoint (speed does not depend
on the values). With `--precision both`, also the share of cached part-map pixels on which bf16 and fp32 agree.

    .venv/bin/python bench/bench_schp.py                                     # CPU, 8 images -> bench/results/schp.md
    python3 bench/bench_schp.py --device cuda --n 1024 --precision both --out bench/results/schp_cuda.md
"""
import argparse, datetime, os, platform, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from iaunet_fastai.part_masks import precompute_part_masks
from iaunet_fastai.schp import SCHPNet, load_schp, schp_normalize, _cached_model


def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def make_images(dst, n, img_size):
    "n Market-style crops: the synthetic world's train images, repeated under new names until there are n."
    from iaunet_fastai.synthetic import make_synthetic_reid
    world = make_synthetic_reid(dst/'world', preset='tiny', datasets=('market1501',), img_size=img_size)
    src = sorted((Path(world)/'Market-1501'/'bounding_box_train').glob('*.jpg'))
    out = dst/'imgs'; out.mkdir()
    for i in range(n): shutil.copy(src[i % len(src)], out/f'{i:06d}_{src[i % len(src)].name}')
    return out


def calibrate(model, dev, size=(473, 473)):
    "Give a random network realistic normalisation: every ABN's running statistics from one image (SCHP's BN re-estimation)."
    from iaunet_fastai.schp import ActivatedBatchNorm
    def hook(m, inp):
        x = inp[0].detach().float()
        m.running_mean.copy_(x.mean((0, 2, 3))); m.running_var.copy_(x.var((0, 2, 3), unbiased=False) + 1e-3)
    hs = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, ActivatedBatchNorm)]
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, *size, 3), dtype=np.uint8)).to(dev)
    with torch.no_grad(): model.eval()(schp_normalize(img))
    for h in hs: h.remove()
    return model


def agreement(dev, imgs, k=8):
    "Pixel agreement of label maps: GPU fp32 and GPU bf16 against the CPU (fp32), same calibrated random network, k images."
    import cv2
    from iaunet_fastai.schp import schp_parse_images
    torch.manual_seed(0)
    net = calibrate(SCHPNet(20).to(dev), dev)
    bgr = [cv2.imread(str(p)) for p in sorted(imgs.iterdir())[:k]]
    ref = schp_parse_images(net.cpu(), bgr, batch_size=4)
    net = net.to(dev)
    res = {}
    for prec in ('fp32', 'bf16'):
        got = schp_parse_images(net, bgr, precision=prec, batch_size=k)
        res[prec] = float(np.mean([(a == b).mean() for a, b in zip(got, ref)]))
    return res, len(np.unique(np.concatenate([r.ravel() for r in ref])))


def main(device='cpu', n=8, batch_size=None, precision='fp32', weights=None, out=None, img_size=(256, 128), reps=3):
    dev = torch.device(device)
    rows, agree = [], None
    precs = ['fp32', 'bf16'] if precision == 'both' else [precision]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        imgs = make_images(tmp, n, img_size)
        if weights is None:
            torch.manual_seed(0)
            torch.save({'state_dict': {'module.' + k: v for k, v in SCHPNet(20).state_dict().items()}}, tmp/'random.pth')
            weights, kind = tmp/'random.pth', 'random weights (full ResNet-101, 66.8 M numbers)'
        else: kind = f'checkpoint {Path(weights).name}'
        t = time.perf_counter(); model, ds = load_schp(weights, device=dev); sync(dev); t_load = time.perf_counter() - t
        rows.append(('load checkpoint + build network', 1, t_load, float('nan')))
        _cached_model(weights, None, dev)   # the stage reuses this process's model: its load is not in the stage times
        bs = batch_size or (16 if dev.type == 'cuda' else 4)
        caches = {}
        for prec in precs:
            kw = dict(parser='schp', weights=weights, size=(256, 128), progress=False, verbose=False,
                      schp_kwargs=dict(device=str(dev), batch_size=bs, precision=prec))
            warm = tmp/f'warm_{prec}'; warm.mkdir()   # cuDNN / oneDNN set-up happens on the first batches
            for p in sorted(imgs.iterdir())[:2 * bs]: shutil.copy(p, warm/p.name)
            precompute_part_masks(warm, tmp/f'cw_{prec}', **kw)
            sync(dev); t = time.perf_counter()
            pm = precompute_part_masks(imgs, tmp/f'c_{prec}', **kw)
            sync(dev); dt = time.perf_counter() - t
            caches[prec] = np.asarray(pm.masks)
            rows.append((f'stage `parser=\'schp\'`, {prec}, batch {bs} (images -> cache)', n, dt, n / dt))
            # the network alone on one batch at SCHP's 473x473 input
            x = schp_normalize(torch.randint(0, 256, (bs, 473, 473, 3), dtype=torch.uint8, device=dev))
            if dev.type == 'cuda': x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=prec == 'bf16'):
                model(x, fusion_only=True); sync(dev); t = time.perf_counter()
                for _ in range(reps): model(x, fusion_only=True)
                sync(dev); dt = time.perf_counter() - t
            rows.append((f'network forward only, {prec}, batch {bs} at 473x473', bs * reps, dt, bs * reps / dt))
        if len(caches) == 2: agree = float((caches['fp32'] == caches['bf16']).mean())
        check = agreement(dev, imgs) if dev.type == 'cuda' else None
    gpu = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else None
    mach = (f"{gpu}, {os.cpu_count()} CPU cores" if gpu else f"{os.cpu_count()}-core CPU, no GPU") + \
           f" ({platform.machine()}), torch {torch.__version__}, torch threads {torch.get_num_threads()}"
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    cmd = 'python bench/bench_schp.py ' + ' '.join(sys.argv[1:])
    md = [f"## SCHP parser (`bench/bench_schp.py`)", "",
          f"Command: `{cmd.strip()}`", "",
          f"Machine: {mach}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Load average {load:.1f} at the end of the run.", "",
          f"Data: {n} synthetic Market-style crops of {img_size[0]}x{img_size[1]} px (HxW), JPEG; {kind}; SCHP's LIP input "
          f"473x473; cache 256x128.", "",
          "| step | images | seconds | images/s |", "|---|---:|---:|---:|"]
    for name, k, s, r in rows: md.append(f"| {name} | {k} | {s:.3f} | {'—' if r != r else f'{r:,.1f}' if r >= 10 else f'{r:.2f}'} |")
    if agree is not None:
        md += ["", f"bf16 vs fp32: {agree:.4%} of the cached part-map pixels agree"
               + (" (random weights: indicative only; rerun with `--weights` of the real checkpoint)" if 'random' in kind else ".")]
    if check is not None:
        md += ["", f"Same calibrated random ResNet-101 (ABN statistics re-estimated on one image; {check[1]} LIP classes in its maps), "
               f"8 images, label pixels equal to the CPU's: GPU fp32 {check[0]['fp32']:.4%}, GPU bf16 {check[0]['bf16']:.4%}."]
    text = '\n'.join(md) + '\n'
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True); Path(out).write_text(text)
    return rows


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='cpu')
    p.add_argument('--n', type=int, default=8, help='images through the stage')
    p.add_argument('--batch-size', type=int, default=None)
    p.add_argument('--precision', default='fp32', choices=['fp32', 'bf16', 'both'])
    p.add_argument('--weights', default=None, help='a real SCHP checkpoint (default: random weights)')
    p.add_argument('--reps', type=int, default=3, help='timed batches for the network-only row')
    p.add_argument('--out', default=None, help='markdown file to write (default: bench/results/schp.md on the CPU)')
    a = p.parse_args()
    out = a.out or (ROOT/'bench'/'results'/'schp.md' if a.device == 'cpu' else None)
    main(a.device, a.n, a.batch_size, a.precision, a.weights, out, reps=a.reps)
