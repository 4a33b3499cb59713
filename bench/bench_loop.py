#!/usr/bin/env python
"""The fastai loop's own per-batch cost, apart from the model's work: host time by callback event and by loader,
and the PyTorch ops (kernel launches on a GPU) each part dispatches, for one training batch.

    .venv/bin/python bench/bench_loop.py                         # CPU, ResNet-18 IAUnet at 64x32, P×K 4×4
    python bench/bench_loop.py --device cuda --amp --channels-last --arch resnet50 --size 256,128 --pk 16x4 --workers 14

On a GPU the step is host-bound (BENCHMARKS "Training pace on CUDA"): every op the loop dispatches outside the
model's forward, loss, backward and optimizer step is a kernel launch (or more host work) that the bare step does
not pay. The script runs the real `learn.fit` of `iaunet_learner` and splits each training batch into
  model      forward (`learn.model(*xb)`)
  loss       `learn.loss_func(pred, *yb)` and fastai's `loss.clone()`
  backward   `loss_grad.backward()`
  step       `opt.step()` and `opt.zero_grad()`
  events     each per-batch callback event (`before_batch` .. `after_batch`): the dispatch and the callbacks' work
  loader     the rest: fetching the batch (collate, device copy, batch transforms), fastai's `_split`
Times are host wall time per batch (no device syncs: what the host spends dispatching, which on a GPU runs
ahead of the device), medians over `--steps` batches after warm-up; op counts are per batch, from a
`TorchDispatchMode` pass (views and other ops that launch no kernel are counted apart).
Writes bench/results/loop-<device>.md (a section of BENCHMARKS.md, see bench/collect.py).
"""
import argparse, collections, datetime, os, platform, statistics, sys, time
from pathlib import Path
import torch
from torch.utils._python_dispatch import TorchDispatchMode
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastai.learner import Learner
from fastai.callback.core import Callback, CancelFitException, CancelValidException
from bench_train import world, make_dls, learner, _pair

# ops that only make a view or metadata (no kernel on any device)
NO_KERNEL = {'view', '_unsafe_view', 'reshape', 'transpose', 't', 'permute', 'expand', 'unsqueeze', 'squeeze', 'select',
             'slice', 'detach', 'alias', 'as_strided', 'empty', 'empty_strided', 'empty_like', 'split', 'unbind',
             'chunk', 'split_with_sizes', 'scalar_tensor', 'narrow', 'diagonal', 'lift_fresh', 'view_as_real', 'set_', 'resize_', 'is_same_size'}

class _Phase:
    "Which part of the batch the host is in (set by the patched methods), with a stack for nesting."
    def __init__(self): self.stack = ['loader']
    @property
    def now(self): return self.stack[-1]

class OpCounter(TorchDispatchMode):
    """Ops dispatched while active: `kernels` and `views` counters by op name, or by `key()` when given (e.g. the part
    of the batch). The bench scripts and `tests/test_perf.py` count with it."""
    def __init__(self, key=None): super().__init__(); self.key, self.kernels, self.views = key, collections.Counter(), collections.Counter()
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        k = self.key() if self.key else name
        (self.views if name.rstrip('_') in NO_KERNEL else self.kernels)[k] += 1
        return func(*args, **(kwargs or {}))

class Probe(Callback):
    "Collect per-batch timings between `warmup` and `warmup+steps` training batches, then stop the fit."
    order = 99
    def __init__(self, warmup, steps, rec): self.warmup, self.steps, self.rec, self.t0 = warmup, steps, rec, None
    def before_validate(self): raise CancelValidException()
    def after_batch(self):
        if not self.training: return
        now = time.perf_counter()
        n = self.train_iter
        if self.t0 is not None and n > self.warmup: self.rec.batch_end(now - self.t0)
        else: self.rec.reset()
        self.t0 = now
        if n >= self.warmup + self.steps: raise CancelFitException()

class Recorder:
    "Accumulates host seconds per phase for the current batch; `batch_end` closes a batch."
    def __init__(self): self.cur, self.batches = collections.Counter(), []
    def reset(self): self.cur = collections.Counter()
    def add(self, k, dt): self.cur[k] += dt
    def batch_end(self, total):
        d = dict(self.cur); d['total'] = total
        d['loader'] = total - sum(v for k, v in self.cur.items())
        self.batches.append(d); self.reset()

def instrument(learn, phase, rec):
    "Patch `learn` (instance attributes only) so that each part of a batch is timed and labelled."
    def wrap(name, f):
        def g(*a, **k):
            phase.stack.append(name); t = time.perf_counter()
            try: return f(*a, **k)
            finally: rec.add(name, time.perf_counter() - t); phase.stack.pop()
        return g
    model, lf = learn.model, learn.loss_func
    learn.model.forward = wrap('model', model.forward)
    lf.forward = wrap('loss', lf.forward)          # the module stays `learn.loss_func` (callbacks read its terms)
    learn._backward = wrap('backward', learn._backward)
    learn._step = wrap('step', learn._step)
    base_call = type(learn).__call__             # the learner's own dispatch (ReIDLearner's or fastai's)
    def call(event):
        if event in ('before_fit', 'after_fit', 'before_epoch', 'after_epoch', 'before_train', 'after_train',
                     'before_validate', 'after_validate'): return base_call(learn, event)
        phase.stack.append(f'event:{event}'); t = time.perf_counter()
        try: return base_call(learn, event)
        finally: rec.add(phase.now, time.perf_counter() - t); phase.stack.pop()
    learn.__call__ = call
    return learn

def run(learn, warmup, steps, count=False):
    "Fit until `warmup+steps` training batches; per-batch host seconds by phase and (with `count`) op counts."
    phase, rec = _Phase(), Recorder()
    instrument(learn, phase, rec)
    # fastai calls `self(event)` on the instance: route through the patched callable
    learn.__class__ = type('Timed' + type(learn).__name__, (type(learn),), {'__call__': lambda self, e: self.__dict__['__call__'](e)})
    n_epoch = -(-(warmup + steps) // len(learn.dls.train)) + 1
    probe = Probe(warmup, steps, rec)
    oc = OpCounter(key=lambda: phase.now) if count else None
    with learn.no_bar(), learn.no_logging():
        if oc is None: learn.fit(n_epoch, 3.5e-4, cbs=probe)
        else:
            with oc: learn.fit(n_epoch, 3.5e-4, cbs=probe)
    return rec.batches, oc

def summarise(batches, oc, steps, counted_batches):
    keys = sorted({k for b in batches for k in b}, key=lambda k: (k.startswith('event'), k))
    med = {k: statistics.median(b.get(k, 0.) for b in batches) * 1e3 for k in keys}
    ops = collections.Counter()
    if oc is not None:
        for kind, c in (('kernel', oc.kernels), ('view', oc.views)):
            for ph, n in c.items(): ops[(ph, kind)] += n
    return med, {k: v / counted_batches for k, v in ops.items()}

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cpu'); ap.add_argument('--amp', action='store_true', help='bf16 autocast')
    ap.add_argument('--channels-last', action='store_true')
    ap.add_argument('--arch', default='resnet18'); ap.add_argument('--size', default='64,32'); ap.add_argument('--pk', default='4x4')
    ap.add_argument('--workers', type=int, default=0); ap.add_argument('--preset', default='small')
    ap.add_argument('--world-size', default='128,64')
    ap.add_argument('--steps', type=int, default=20); ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--variants', default='baseline,iaunet')
    ap.add_argument('--data', default='/tmp/iaunet_bench_train'); ap.add_argument('--out', default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda': torch.backends.cudnn.benchmark = True
    df, masks = world(args)
    dls = make_dls(df, masks, args, device)
    out = Path(args.out or Path(__file__).parent/'results'/f'loop-{device.type}.md')
    res = {}
    for v in args.variants.split(','):
        learn = learner(dls, args, baseline=(v == 'baseline'))
        batches, _ = run(learn, args.warmup, args.steps)
        learn = learner(dls, args, baseline=(v == 'baseline'))
        _, oc = run(learn, 1, 2, count=True)        # ops of 3 batches (warm-up 1 + 2) / 3
        res[v] = summarise(batches, oc, args.steps, 3)
        print(v, {k: round(x, 2) for k, x in res[v][0].items()}, flush=True)
        print(v, 'ops/batch', {f'{a}/{b}': round(n, 1) for (a, b), n in sorted(res[v][1].items())}, flush=True)
    write(out, args, device, res)

def write(out, args, device, res):
    vs = list(res)
    phases = sorted({k for v in vs for k in res[v][0]} | {p for v in vs for p, _ in res[v][1]},
                    key=lambda k: (k == 'total', k.startswith('event'), k))
    dev = torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or platform.machine()
    lines = [f'## The fastai loop\'s own cost per batch on {device.type.upper()} (`bench/bench_loop.py`)', '',
             f'`python bench/bench_loop.py {" ".join(sys.argv[1:])}` — {datetime.date.today()}, {platform.node()}, {dev}, '
             f'{os.cpu_count()} cores, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}. {args.arch} at '
             f'{args.size}, P×K {args.pk}, {"bf16 autocast" if args.amp else "fp32"}'
             f'{", channels_last" if args.channels_last else ""}, {args.workers} loader workers. Host ms per training batch '
             f'(median of {args.steps}) and ops dispatched per batch (kernels / views), by part of the batch:', '',
             '| part | ' + ' | '.join(f'{v} ms | {v} kernels | {v} views' for v in vs) + ' |',
             '|---|' + '---:|' * (3 * len(vs))]
    for p in phases:
        cells = []
        for v in vs:
            med, ops = res[v]
            cells += [f'{med[p]:.2f}' if p in med else '', f'{ops.get((p, "kernel"), 0):.0f}' if p != 'total' else
                      f'{sum(n for (a, k), n in ops.items() if k == "kernel"):.0f}',
                      f'{ops.get((p, "view"), 0):.0f}' if p != 'total' else f'{sum(n for (a, k), n in ops.items() if k == "view"):.0f}']
        lines.append(f'| {p} | ' + ' | '.join(cells) + ' |')
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('\n'.join(lines) + '\n')
    print(f'wrote {out}')

if __name__ == '__main__': main()
