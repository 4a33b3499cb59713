"""GPU check of the default optimizer (issue 11): fastai `Adam` vs `torch_adam` (torch.optim.Adam, fused on CUDA).

    PYTHONPATH=. .venv/bin/python bench/bench_optim.py [--bs 64] [--steps 30]

1. Bare training step of IAUnet-R50 (pretrained=False, bf16 autocast, 256×128, batch `--bs`): images/s with each
   optimizer; asserts torch_adam picked the fused kernel.
2. fastai's own loop on CUDA with mixed precision: a tiny synthetic world, `iaunet_learner(...).to_bf16()` and
   `.to_fp16()` (GradScaler path), `fit_one_cycle(1)` with the default `torch_adam`; asserts finite losses.
Needs a CUDA GPU; prints one line per measurement."""
import argparse, sys, tempfile, time
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fastai.optimizer import Adam
from iaunet_fastai.models import IAUnet
from iaunet_fastai.losses import ReIDLoss
from iaunet_fastai.learner import torch_adam, reid_splitter, iaunet_learner


def bare_step(opt_name, bs, steps):
    torch.manual_seed(0)
    m = IAUnet('resnet50', num_classes=751, pretrained=False).cuda().train()
    opt = (Adam if opt_name == 'fastai Adam' else torch_adam)(reid_splitter(m), lr=3.5e-4)
    opt.set_hypers(wd=5e-4)
    lf = ReIDLoss()
    x = torch.randn(bs, 3, 256, 128, device='cuda')
    y = torch.arange(bs, device='cuda') // 4
    msk = torch.randint(0, 5, (bs, 256, 128), device='cuda')
    def step():
        with torch.autocast('cuda', dtype=torch.bfloat16): loss = lf(m(x), y, msk)
        loss.backward(); opt.step(); opt.zero_grad()
    for _ in range(5): step()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(steps): step()
    torch.cuda.synchronize(); dt = time.perf_counter() - t
    if opt_name != 'fastai Adam': assert all(g['fused'] for g in opt.opt.param_groups), 'torch_adam did not pick fused'
    print(f'{opt_name:12s}: {bs * steps / dt:8.1f} img/s (IAUnet-R50, bf16 autocast, batch {bs}, {torch.cuda.get_device_name()})',
          flush=True)


def fastai_loop():
    from iaunet_fastai.synthetic import make_synthetic_reid
    from iaunet_fastai.datasets import market1501_df
    from iaunet_fastai.data import reid_dls
    tmp = Path(tempfile.mkdtemp())
    world = make_synthetic_reid(tmp/'synth', preset='tiny', img_size=(128, 64))
    dls = reid_dls(market1501_df(world/'Market-1501'), size=(128, 64), P=4, K=4, num_workers=0, seed=0)
    for mp in ('to_bf16', 'to_fp16'):
        learn = getattr(iaunet_learner(dls, 'resnet18', pretrained=False), mp)()
        learn.fit_one_cycle(1, 1e-3)
        fused = [g['fused'] for g in learn.opt.opt.param_groups]
        vals = learn.recorder.values[-1]
        assert all(fused) and all(torch.isfinite(torch.tensor(v)) for v in vals[:2]), (fused, vals)
        print(f'fastai loop {mp}: fused={fused}, train_loss {vals[0]:.4f}, valid_loss {vals[1]:.4f}', flush=True)
        learn.lr_find(num_it=10, show_plot=False)
        print(f'lr_find {mp}: ok', flush=True)


if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--steps', type=int, default=30)
    a = p.parse_args()
    assert torch.cuda.is_available(), 'this check needs a CUDA GPU'
    torch.backends.cudnn.benchmark = True
    for name in ('fastai Adam', 'torch_adam', 'fastai Adam'):   # baseline rerun last: warm-up effects show
        bare_step(name, a.bs, a.steps)
    fastai_loop()
