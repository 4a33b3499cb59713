#!/usr/bin/env python
"""IAU blocks under bf16 + channels_last: time of one block (forward + backward) and the error of the fast path
against the fp32 and fp64 computations, on realistic activations (ResNet-50 stage-2/3 maps of synthetic pedestrians).

    .venv/bin/python bench/bench_iau_blocks.py --device cuda          # batch 64, 256x128 input: C=512@32x16, C=1024@16x8
    .venv/bin/python bench/bench_iau_blocks.py --batch 4              # CPU smoke run

Rows: `IAUBlock` as the library computes it now (bf16 autocast, channels_last, fp32-output channel gram), the same
block compiled (`compile_iau_blocks`, `--compile`; its compile time is reported) and the previous CIAU (`x.float()`
copied to a contiguous [B, C, HW] fp32 tensor, fp32 matmuls) for comparison. Kernels: what one forward + backward
launches (CUDA: kernels and copies in the profiler; CPU: dispatched non-view ops of the eager blocks). Errors: the
block output under bf16 autocast vs the same block run in fp32 (autocast off) and in fp64 from the same bf16 input,
as max |Δ| / max |ref| and mean |Δ| / mean |ref|. Writes bench/results/iau-blocks-<device>.md.
"""
import argparse, datetime, platform, sys, time
from pathlib import Path
import torch, torch.nn as nn
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iaunet_fastai.core import seed_everything
from iaunet_fastai.layers import IAUBlock, CIAU, fp32_region, MATMUL_PRECISIONS
from iaunet_fastai.models import IAUnet, compile_iau_blocks
from bench_loop import OpCounter

class PreviousCIAU(CIAU):
    "The CIAU of commit 0e5f684: casts the map to a contiguous fp32 [B, C, HW] copy and multiplies in fp32."
    def aggregate(self, x):
        B, hw = x.shape[0], x.shape[-2] * x.shape[-1]
        with fp32_region(x):
            g = x.float().reshape(B, -1, hw)
            A = torch.softmax(g @ g.transpose(1, 2), dim=-1)
            return (A @ g).view(x.shape).to(x.dtype)

def sync(d):
    if d.type == 'cuda': torch.cuda.synchronize()

def activations(device, batch, size):
    "Stage-2 and stage-3 maps of a ResNet-50 (He init, train-mode BN) on synthetic pedestrians, bf16, channels_last."
    from iaunet_fastai.synthetic import make_synthetic_reid
    from iaunet_fastai.datasets import market1501_df
    from iaunet_fastai.data import load_reid_image
    import numpy as np
    from fastai.vision.core import imagenet_stats
    path = make_synthetic_reid('/tmp/iaunet_bench_blocks', preset='tiny', img_size=size, seed=0, datasets=('market1501',))
    df = market1501_df(path/'Market-1501')
    ims = [torch.from_numpy(np.asarray(load_reid_image(p, size)).copy()).permute(2, 0, 1) for p in df.path[:batch]]
    while len(ims) < batch: ims += ims[:batch - len(ims)]
    x = torch.stack(ims).float().div(255)
    x = ((x - torch.tensor(imagenet_stats[0])[:, None, None]) / torch.tensor(imagenet_stats[1])[:, None, None]).to(device)
    m = IAUnet('resnet50', 10, pretrained=False, iau_stages=()).to(device).to(memory_format=torch.channels_last).train()
    feats = {}
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        h, want = x.contiguous(memory_format=torch.channels_last), {m.stages[s][0]: s for s in (2, 3)}
        for k, mod in m.backbone.items():
            h = mod(h)
            if k in want: feats[want[k]] = h.detach()
            if len(feats) == len(want): break
    return feats

def block(C, device, previous=False):
    torch.manual_seed(C)
    b = IAUBlock(C)
    if previous: b.ciau = PreviousCIAU(C)
    for bn in (b.ciau.update[1], b.siau.update[1]): nn.init.normal_(bn.weight, 0, 0.5)   # a non-trivial update
    return b.to(device).to(memory_format=torch.channels_last)

def time_block(b, x, device, iters):
    x = x.detach().requires_grad_()
    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out, lg = b(x)
        (out.float().square().mean() + lg.float().mean()).backward()
    for _ in range(3): step()
    sync(device); t = time.perf_counter()
    for _ in range(iters): step()
    sync(device)
    return (time.perf_counter() - t) / iters * 1000

def kernels(b, x, device):
    "Kernels (CUDA, from the profiler) or non-view ops (CPU, eager only) of one forward + backward; None if unknown."
    x = x.detach().requires_grad_()
    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out, lg = b(x)
        (out.float().square().mean() + lg.float().mean()).backward()
    step(); sync(device)
    if device.type == 'cuda':
        from torch.profiler import profile, ProfilerActivity
        with profile(activities=[ProfilerActivity.CUDA]) as p: step(); sync(device)
        return sum(1 for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    if getattr(b, 'compiled', False): return None      # a dispatch mode does not see inside compiled code
    with OpCounter() as c: step()
    return sum(c.kernels.values()) - 4          # less the test loss's own ops (square, mean, mean, add) in the forward

def saved_mb(b, x):
    "MB of the distinct tensors one forward under bf16 autocast keeps for the backward (the block's activation memory)."
    seen = {}
    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes(); return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast(x.device.type, dtype=torch.bfloat16):
        b(x.detach().requires_grad_())
    return sum(seen.values()) / 2**20

def rel(a, r): return ((a - r).abs().max() / r.abs().max()).item(), ((a - r).abs().mean() / r.abs().mean()).item()

def errors(b, x, ref=None):
    """Errors of `b` under bf16 autocast (with gradients on: the path training takes, compiled for a compiled `b`)
    against `ref` (default `b` itself; a compiled `b` is checked against its eager twin) in fp32 and fp64."""
    ref = ref or b
    with torch.autocast(x.device.type, dtype=torch.bfloat16): fast = b(x)[0].detach().double()
    with torch.no_grad():
        fp32 = ref(x.float())[0].double()                             # autocast off: the fp32 computation
        fp64 = ref.double()(x.double())[0]; ref.float()
    return rel(fast, fp64), rel(fp32, fp64), rel(fast, fp32)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cpu'); ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--size', default='256,128'); ap.add_argument('--iters', type=int, default=20)
    ap.add_argument('--compile', action='store_true', help='also the block compiled with compile_iau_blocks')
    ap.add_argument('--out', default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    size = tuple(int(v) for v in args.size.split(','))
    out = Path(args.out or Path(__file__).parent/'results'/f'iau-blocks-{device.type}.md')
    seed_everything(0)
    if device.type == 'cuda': torch.backends.cudnn.benchmark = True
    feats = activations(device, args.batch, size)
    rows, comp_s = [], {}
    for st, x in feats.items():
        C, H, W = x.shape[1:]
        bold = block(C, device, previous=True)
        conv = nn.Conv2d(C, C, 3, padding=1, bias=False).to(device).to(memory_format=torch.channels_last)
        t_conv = time_block(lambda z: (conv(z), z[:, :4]), x, device, args.iters)
        variants = [('previous (fp32 copy)', bold)]
        for pr in MATMUL_PRECISIONS:
            b = block(C, device); b.load_state_dict(bold.state_dict()); b.ciau.matmul_precision, b.ciau.fused = pr, False
            variants.append((f"now, matmul_precision='{pr}'", b, None))
        for pr in ('tf32', 'bf16'):                   # one attention kernel (`CIAU.fused`), no [B, C, C] affinity stored
            b = block(C, device); b.load_state_dict(bold.state_dict()); b.ciau.matmul_precision = pr; b.ciau.fused = True
            variants.append((f"now, fused, matmul_precision='{pr}'", b, None))
        variants = [(n, b, None) for n, b in variants[:1]] + variants[1:]
        if args.compile:
            bc = block(C, device); bc.load_state_dict(bold.state_dict()); bc.ciau.fused = False; eager = variants[1][1]
            compile_iau_blocks(bc)
            t0 = time.perf_counter(); time_block(bc, x, device, 1); comp_s[st] = time.perf_counter() - t0
            variants.append(('now, compiled (`compile_iau_blocks`)', bc, eager))
        for name, b, ref in variants:
            t = time_block(b, x, device, args.iters)
            e_fast64, e_fp32_64, e_fast32 = errors(b, x, ref)
            rows.append((st, f'{C}@{H}×{W}', name, t, t_conv, kernels(b, x, device), saved_mb(b, x), e_fast32, e_fast64, e_fp32_64))
            print(rows[-1], flush=True)
    fmt = lambda e: f'{e[0]:.1e} / {e[1]:.1e}'
    lines = [f'## IAU blocks under bf16 + channels_last on {device.type.upper()} (`bench/bench_iau_blocks.py`)', '',
             f'`python bench/bench_iau_blocks.py {" ".join(argv if argv is not None else sys.argv[1:])}` — {datetime.date.today()}, '
             f'{torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "CPU"}, torch {torch.__version__}, '
             f'batch {args.batch}, input {size[0]}×{size[1]}; activations: ResNet-50 stage outputs (He init, train-mode BN) '
             'of synthetic pedestrians under bf16 autocast, channels_last. Update BNs drawn N(0, 0.5) so the block is not '
             'the identity; the block runs in train mode (batch statistics), as in training.', '',
             '| stage | map | CIAU | IAUBlock fwd+bwd (ms) | kernels | saved for backward (MB) | 3×3 conv C→C (ms) | bf16 vs fp32 | bf16 vs fp64 | fp32 vs fp64 |',
             '|---|---|---|---:|---:|---:|---:|---|---|---|']
    for st, m, name, t, tc, k, mb, e1, e2, e3 in rows:
        lines.append(f'| {st} | {m} | {name} | {t:.2f} | {"—" if k is None else k} | {mb:.1f} | {tc:.2f} | {fmt(e1)} | {fmt(e2)} | {fmt(e3)} |')
    lines += ['', 'Errors of the block output under bf16 autocast against the same block in fp32 (autocast off) and in fp64 '
              '(same bf16 input): max |Δ| / max |ref| and mean |Δ| / mean |ref|. For scale: rounding a map to bf16 alone is '
              'up to 2⁻⁹ ≈ 2.0e-3 relative per value.']
    if comp_s: lines += ['', 'Compile time of the compiled block (first forward + backward, s): ' +
                         ', '.join(f'stage {st} {v:.1f}' for st, v in comp_s.items()) + '.']
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines)); print(f'-> {out}')

if __name__ == '__main__': main()
