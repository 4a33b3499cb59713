#!/usr/bin/env python
"""Training pace: the loader alone, the bare step (with and without an optimizer) and the fastai loop, for the plain
baseline (`iau_stages=()`) and IAUnet, on the CPU or a GPU.

    .venv/bin/python bench/bench_train.py                     # CPU: ResNet-18 at 64x32, P×K 4×4: the loop's fixed costs
    .venv/bin/python bench/bench_train.py --device cuda --amp --channels-last --arch resnet50 --size 256,128 \
        --pk 16x4 --workers 14 --preset medium --world-size 128,64     # the GPU table of issue 12

Rows (images/s, one process, same model and batches):
  loader          iterate `dls.train` (decode, resize, part masks, collate, batch transforms on the device)
  bare            forward + `ReIDLoss` + backward on batches already on the device, no optimizer step
  bare + torch    bare + `torch.optim.Adam` (fused on CUDA, foreach on the CPU), L2 weight decay 5e-4
  bare + fastai   bare + fastai's `Adam`
  fastai loop     `learn.fit` with the learner's default optimizer, train phase only (validation skipped), timed
                  between two batches after warm-up with device syncs; data loading included
On the CPU (`num_workers=0`, nothing overlaps) the loop's own cost per batch is
`loop − loader − (bare + the learner's optimizer)` in ms. With `--profile` the script also writes a torch.profiler
table of one training batch of the fastai loop (top ops by self time, host syncs). Writes
bench/results/train-<device>.md (a section of BENCHMARKS.md, see bench/collect.py).
"""
import argparse, datetime, os, platform, sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastai.callback.core import Callback, CancelFitException, CancelValidException
from fastai.optimizer import Adam as FastaiAdam
from iaunet_fastai.core import seed_everything
from iaunet_fastai.synthetic import make_synthetic_reid
from iaunet_fastai.datasets import market1501_df
from iaunet_fastai.part_masks import precompute_part_masks
from iaunet_fastai.data import reid_dls
from iaunet_fastai.learner import iaunet_learner, TorchAdam
from iaunet_fastai.losses import ReIDLoss
from iaunet_fastai.layers import CIAU, MATMUL_PRECISIONS

def _pair(s, sep=','): return tuple(int(v) for v in str(s).replace('x', sep).split(sep))

def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()

class LoopTimer(Callback):
    "Time training batches `warmup+1 .. warmup+steps` of a fit (device-synced), skip validation, then stop the fit."
    order = 99
    def __init__(self, warmup, steps, device): self.warmup, self.steps, self.device, self.t = warmup, steps, device, {}
    def after_batch(self):
        if not self.training: return
        n = self.train_iter       # batches done so far, over epochs
        if n == self.warmup: sync(self.device); self.t['start'] = time.perf_counter()
        if n == self.warmup + self.steps:
            sync(self.device); self.t['end'] = time.perf_counter(); raise CancelFitException()
    def before_validate(self): raise CancelValidException()
    @property
    def seconds(self): return self.t['end'] - self.t['start']

def world(args):
    root = Path(args.data)
    path = make_synthetic_reid(root, preset=args.preset, img_size=_pair(args.world_size), seed=0, datasets=('market1501',),
                               workers=max(1, args.workers or 1))
    masks = root/f'masks_{args.size.replace(",", "x")}'
    precompute_part_masks(path/'Market-1501', masks, parser='lip', label_dir=path/'parsing'/'Market-1501',
                          size=_pair(args.size), n_workers=args.workers or 0, progress=False)
    return market1501_df(path/'Market-1501'), masks

def make_dls(df, masks, args, device):
    P, K = _pair(args.pk)
    return reid_dls(df, size=_pair(args.size), P=P, K=K, masks=masks, num_workers=args.workers, seed=0, device=device)

def loader_ips(dls, n, device):
    "Images/s of iterating the train loader for `n` batches (after one warm-up batch), batch transforms included."
    def forever():
        while True: yield from dls.train
    it = forever(); next(it); sync(device)
    t, k = time.perf_counter(), 0
    for _, b in zip(range(n), it): k += len(b[0])
    sync(device)
    return k / (time.perf_counter() - t)

def epoch_start_s(dls, device, n=3):
    """Seconds from starting an epoch of `dls.train` to its first batch on the device (fastai starts new loader workers
    every epoch), median of `n`."""
    ts = []
    for _ in range(n):
        t = time.perf_counter(); it = iter(dls.train); next(it); sync(device); ts.append(time.perf_counter() - t)
        del it
    return sorted(ts)[len(ts) // 2]

def learner(dls, args, baseline, compile=False):
    kw = dict(compile=compile) if compile else {}
    learn = iaunet_learner(dls, args.arch, pretrained=False, iau_stages=() if baseline else (2, 3), **kw)
    learn.model.to(dls.device)
    if args.channels_last: learn.model.to(memory_format=torch.channels_last)
    if args.amp: learn = learn.to_bf16()
    return learn

def fixed_batches(dls, n, args):
    bs = []
    for _, b in zip(range(n), dls.train):
        x = b[0].contiguous(memory_format=torch.channels_last) if args.channels_last and b[0].ndim == 4 else b[0]
        bs.append((x.as_subclass(torch.Tensor),) + tuple(t.as_subclass(torch.Tensor) for t in b[1:]))
    return bs

def bare_ips(model, batches, steps, warmup, device, amp, opt=None):
    "Images/s of forward + ReIDLoss + backward (+ `opt.step()`), cycling over batches already on the device."
    lf, model = ReIDLoss(), model.train()
    def step(b):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = lf(model(b[0]), *b[1:])
        loss.backward()
        if opt is not None: opt.step(); opt.zero_grad()
        else: model.zero_grad(set_to_none=True)
    for i in range(warmup): step(batches[i % len(batches)])
    sync(device); t = time.perf_counter()
    for i in range(steps): step(batches[i % len(batches)])
    sync(device)
    return steps * len(batches[0][0]) / (time.perf_counter() - t)

def torch_adam(model, device):
    "The library's `TorchAdam` (fused on CUDA, foreach elsewhere), as the learner's default optimizer uses it."
    return TorchAdam(model.parameters(), lr=3.5e-4, weight_decay=5e-4)

def compile_modes(args, variant):
    "The compiled loops to time for `variant` (the baseline has no IAU block to compile on its own)."
    modes = {'model': ['model'], 'iau': ['iau'], 'both': ['model', 'iau'], None: []}[args.compile]
    return [m for m in modes if not (m == 'iau' and variant == 'baseline')]

def loop_ips(learn, steps, warmup, device):
    timer = LoopTimer(warmup, steps, device)
    n_epoch = -(-(warmup + steps) // len(learn.dls.train)) + 1
    with learn.no_bar(), learn.no_logging(): learn.fit(n_epoch, 3.5e-4, cbs=timer)
    return steps * learn.dls.train.bs / timer.seconds

def opt_name(learn):
    o = getattr(learn.opt, 'opt', None)
    if o is None: return f'fastai {type(learn.opt).__name__}'
    d = o.defaults
    return f"torch {type(o).__name__}" + (' fused' if d.get('fused') else ' foreach' if d.get('foreach') else '')

def profile_loop(learn, device, out):
    "torch.profiler over one training batch of the fastai loop, after warm-up: top ops by self time, host syncs."
    from torch.profiler import profile, ProfilerActivity, schedule
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    class Prof(Callback):
        order = 98
        def before_fit(self): self.p = profile(activities=acts, schedule=schedule(wait=2, warmup=1, active=1)); self.p.__enter__()
        def after_batch(self):
            if self.training: self.p.step()
        def after_fit(self): self.p.__exit__(None, None, None)
    pr = Prof()
    n_epoch = -(-5 // len(learn.dls.train)) + 1
    with learn.no_bar(), learn.no_logging(): learn.fit(n_epoch, 3.5e-4, cbs=[pr, LoopTimer(4, 1, device)])
    key = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    tab = pr.p.key_averages().table(sort_by=key, row_limit=15)
    syncs = sum(e.count for e in pr.p.key_averages() if e.key in ('aten::item', 'aten::_local_scalar_dense', 'cudaStreamSynchronize', 'cudaDeviceSynchronize'))
    copies = {e.key: e.count for e in pr.p.key_averages() if e.key in ('aten::copy_', 'aten::contiguous', 'aten::clone')}
    Path(out).write_text(tab)
    return syncs, copies

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cpu'); ap.add_argument('--amp', action='store_true', help='bf16 autocast')
    ap.add_argument('--channels-last', action='store_true')
    ap.add_argument('--arch', default=None, help='default resnet18 on the CPU, resnet50 on CUDA')
    ap.add_argument('--size', default=None, help='input H,W (default 64,32 on the CPU, 256,128 on CUDA)')
    ap.add_argument('--pk', default=None, help='P×K (default 4x4 on the CPU, 16x4 on CUDA)')
    ap.add_argument('--workers', type=int, default=None, help='loader workers (default 0 on the CPU, cores-2 on CUDA)')
    ap.add_argument('--preset', default=None, help="synthetic world preset (default 'small' on the CPU, 'medium' on CUDA)")
    ap.add_argument('--world-size', default='128,64', help='synthetic image size (Market crops are 128x64)')
    ap.add_argument('--steps', type=int, default=None); ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--variants', default='baseline,iaunet')
    ap.add_argument('--compile', nargs='?', const='model', default=None, choices=('model', 'iau', 'both'),
                    help="also time the loop with iaunet_learner(compile=True) ('model', the default), compile='iau' "
                         "(the IAU blocks only), or both")
    ap.add_argument('--ciau', default=None, choices=('fused', 'tf32', 'bf16', 'fp32', 'fused-bf16'),
                    help="CIAU computation: a `CIAU.matmul_precision` (default tf32), 'fused' (`CIAU.fused`: one attention "
                         "kernel) or 'fused-bf16' (both)")
    ap.add_argument('--profile', action='store_true'); ap.add_argument('--data', default='/tmp/iaunet_bench_train')
    ap.add_argument('--out', default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device); cuda = device.type == 'cuda'
    args.arch = args.arch or ('resnet50' if cuda else 'resnet18')
    args.size = args.size or ('256,128' if cuda else '64,32')
    args.pk = args.pk or ('16x4' if cuda else '4x4')
    args.preset = args.preset or ('medium' if cuda else 'small')
    if args.workers is None: args.workers = max(0, (os.cpu_count() or 2) - 2) if cuda else 0
    steps = args.steps or (30 if cuda else 8)
    out = Path(args.out or Path(__file__).parent/'results'/f'train-{device.type}.md')
    seed_everything(0)
    if cuda: torch.backends.cudnn.benchmark = True
    if args.ciau:                                   # 'fused', a precision, or 'fused-<precision>'
        CIAU.fused, pr = args.ciau.startswith('fused'), args.ciau.split('-')[-1]
        if pr in MATMUL_PRECISIONS: CIAU.matmul_precision = pr
    df, masks = world(args)
    dls = make_dls(df, masks, args, device)
    bs = dls.train.bs
    rows, notes = {}, []
    t0 = time.time()
    ld = loader_ips(dls, steps, device)
    print(f'loader: {ld:.0f} img/s', flush=True)
    es = epoch_start_s(dls, device)
    notes.append(f'a new training epoch delivers its first batch after {es:.2f} s ({args.workers} loader workers started, '
                 f'first batches decoded), {len(dls.train)} batches per epoch of this world')
    print(notes[-1], flush=True)
    batches = fixed_batches(dls, 4, args)
    for v in args.variants.split(','):
        r = rows[v] = {'loader': ld}
        learn = learner(dls, args, baseline=(v == 'baseline'))
        m = learn.model
        r['bare'] = bare_ips(m, batches, steps, args.warmup, device, args.amp)
        r['bare + torch Adam'] = bare_ips(m, batches, steps, args.warmup, device, args.amp, torch_adam(m, device))
        fa = FastaiAdam(list(m.parameters()), lr=3.5e-4, wd=5e-4)
        r['bare + fastai Adam'] = bare_ips(m, batches, steps, args.warmup, device, args.amp, fa)
        r['fastai loop'] = loop_ips(learn, steps, args.warmup, device)
        r['opt'] = opt_name(learn)
        for mode in compile_modes(args, v):
            learn_c = learner(dls, args, baseline=(v == 'baseline'), compile=True if mode == 'model' else mode)
            t = time.time(); loop_ips(learn_c, 1, 1, device); r[f'compile s, {mode}'] = time.time() - t
            r[f'fastai loop, compiled {mode}'] = loop_ips(learn_c, steps, args.warmup, device)
            del learn_c
        if args.profile:
            syncs, copies = profile_loop(learn, device, out.with_name(f'profile-{device.type}-{v}.txt'))
            notes.append(f'{v}: one profiled loop batch: {syncs} host syncs (item/_local_scalar_dense/stream syncs), copies {copies}')
        print(v, {k: (round(x) if isinstance(x, float) else x) for k, x in r.items()}, flush=True)
        del learn, m
        if cuda: torch.cuda.empty_cache()
    keys = ['loader', 'bare', 'bare + torch Adam', 'bare + fastai Adam', 'fastai loop'] + \
           [f'fastai loop, compiled {m}' for m in compile_modes(args, 'iaunet')]
    vs = list(rows)
    lines = [f'## Training pace on {device.type.upper()} (`bench/bench_train.py`)', '',
             f'`{" ".join(["python bench/bench_train.py"] + (argv if argv is not None else sys.argv[1:]))}` — '
             f'{datetime.date.today()}, {platform.node()}, {torch.cuda.get_device_name() if cuda else platform.processor() or "CPU"}, '
             f'{os.cpu_count()} cores, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}. '
             f'{args.arch} at {args.size.replace(",", "×")}, batch {bs} (P×K {args.pk}), '
             f'{"bf16 autocast" if args.amp else "fp32"}{", channels_last" if args.channels_last else ""}, '
             f'{args.workers} loader workers, synthetic Market-1501 layout ({args.preset}, images {args.world_size.replace(",", "×")}) '
             f'with part masks; {steps} timed steps after {args.warmup} warm-up. Optimizer of the loop: {rows[vs[0]]["opt"]}. '
             f'CIAU: {"fused, " if CIAU.fused else ""}matmul_precision {CIAU.matmul_precision!r}.', '',
             '| images/s | ' + ' | '.join(vs) + ' |', '|---|' + '---:|' * len(vs)]
    for k in keys: lines.append(f'| {k} | ' + ' | '.join(f'{rows[v][k]:,.0f}' if k in rows[v] else '—' for v in vs) + ' |')
    lines.append('| loop ÷ (bare + torch Adam) | ' + ' | '.join(f'{rows[v]["fastai loop"] / rows[v]["bare + torch Adam"]:.0%}' for v in vs) + ' |')
    if 'baseline' in rows and 'iaunet' in rows:
        over = lambda k: rows['baseline'][k] / rows['iaunet'][k] - 1
        lines += ['', f'IAU step-time overhead over the baseline: bare + torch Adam {over("bare + torch Adam"):+.0%}, '
                      f'fastai loop {over("fastai loop"):+.0%}.']
    if not cuda:
        for v in vs:
            r = rows[v]
            ms = lambda ips: 1000 * bs / ips
            step = r['bare + fastai Adam'] if r['opt'].startswith('fastai') else r['bare + torch Adam']
            lines.append(f'Per-batch cost of the fastai loop itself ({v}): {ms(r["fastai loop"]) - ms(r["loader"]) - ms(step):.1f} ms '
                         f'(loop {ms(r["fastai loop"]):.1f} − loader {ms(r["loader"]):.1f} − step with the same optimizer '
                         f'{ms(step):.1f} ms per batch).')
    ct = [f'{v} {k[len("compile s, "):]} {x:.0f}' for v in vs for k, x in rows[v].items() if k.startswith('compile s')]
    if ct: lines.append('Compile time (first compiled step, s): ' + ', '.join(ct) + '.')
    lines += [''] + [f'* {n}' for n in notes]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('\n'.join(lines).rstrip() + '\n')
    print('\n'.join(lines)); print(f'-> {out} ({time.time() - t0:.0f} s)')

if __name__ == '__main__': main()
