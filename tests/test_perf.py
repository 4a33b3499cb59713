"""Performance contracts that need the profiler (kept out of the notebooks: the profiler prints to the console)."""
import math
import pytest
import torch, torch.nn as nn
from iaunet_fastai.layers import IAUBlock, CIAU, is_channels_last

def map_copies(blk, x):
    "Copy/clone/contiguous ops on tensors with at least `x.numel()` elements in one forward + backward of `blk`."
    from torch.profiler import profile, ProfilerActivity
    x = x.detach().requires_grad_()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        out = blk(x)
        out = out if isinstance(out, tuple) else (out,)
        sum((o * torch.randn_like(o)).sum() for o in out).backward()     # a real (channels_last) upstream gradient
    big = lambda e: any(math.prod(s) >= x.numel() for s in e.input_shapes if s)
    return sum(1 for e in prof.events() if e.name in ('aten::copy_', 'aten::clone', 'aten::contiguous') and big(e))

class _ContiguousCIAU(CIAU):
    "The previous CIAU: `y` computed from a `[B, C, HW]` view and written back as a plain NCHW map."
    def aggregate(self, x):
        g = x.reshape(x.shape[0], x.shape[1], -1)
        A = torch.softmax(g @ g.transpose(1, 2), -1)
        return (A @ g).view(x.shape)

def _block(ciau_cls=None, fused=False):
    "A block with non-zero updates; CIAU's products (`fused=False`, the CUDA default) unless `fused`."
    torch.manual_seed(0)
    blk = IAUBlock(32)
    if ciau_cls is not None: blk.ciau = ciau_cls(32)
    blk.ciau.fused = fused
    nn.init.normal_(blk.ciau.update[1].weight); nn.init.normal_(blk.siau.update[1].weight)
    return blk.to(memory_format=torch.channels_last)

def test_iau_block_no_layout_copy_channels_last():
    x = torch.randn(4, 32, 16, 8).contiguous(memory_format=torch.channels_last)
    blk = _block()
    assert map_copies(blk, x) == 0
    assert is_channels_last(blk(x)[0])
    # the profiler does see such copies: the previous CIAU makes the update conv convert layouts
    assert map_copies(_block(_ContiguousCIAU), x) > 0
    # the fused CIAU (the CPU default) pays for its attention kernel with three map copies (each seen as contiguous,
    # clone and copy_): the map into the kernel's layout, the result back to channels_last, the input gradient
    assert map_copies(_block(fused=True), x) == 3 * 3
    assert is_channels_last(_block(fused=True)(x)[0])

def test_loss_and_loop_do_not_sync_per_batch():
    "`ReIDLoss` keeps its terms as device tensors and calls no `.item()` (a host sync on a GPU)."
    from torch.profiler import profile, ProfilerActivity
    from iaunet_fastai.models import IAUnet
    from iaunet_fastai.losses import ReIDLoss
    m = IAUnet('resnet18', 4, pretrained=False).train()
    x, y = torch.randn(8, 3, 64, 32), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    msk = torch.randint(0, 5, (8, 64, 32))
    lf = ReIDLoss()
    lf(m(x), y, msk)
    # the label-range check is the loss's only host read; on a GPU it runs at the first batch only (CPU tensors:
    # always), so it is switched off here to see that nothing else reads back
    lf.ce_loss.check_labels = lambda logits, y: None
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss = lf(m(x), y, msk); loss.backward()
    reads = [e.name for e in prof.events() if e.name in ('aten::item', 'aten::_local_scalar_dense', 'aten::nonzero', 'aten::is_nonzero')]
    assert not reads, reads
    assert all(torch.is_tensor(v) for v in lf.terms.values())

def dispatched_kernels(f):
    "Non-view ops (each a kernel launch on a GPU) that `f()` dispatches, by name (`bench/bench_loop.py`'s counter)."
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'bench'))
    from bench_loop import OpCounter
    with OpCounter() as c: f()
    return c.kernels

def test_iau_block_kernel_budget_bf16_channels_last():
    """On a GPU the IAU step is host-bound: each dispatched op is a launch. One forward + backward of a block under
    bf16 autocast and channels_last dispatches at most this many (the block of commit 02e5e20: 134 ops, of them 23 casts
    and 12 batched products; now 110, 10 and 11; 17 of the ops are the parameters' gradient accumulation): a
    regression guard on the casts and products that issue 12 removed."""
    blk = _block()
    x = torch.randn(4, 32, 16, 8).contiguous(memory_format=torch.channels_last).bfloat16().requires_grad_()
    g_out, g_lg = torch.randn(4, 32, 16, 8).contiguous(memory_format=torch.channels_last).bfloat16(), torch.randn(4, 4, 16, 8)
    def step():
        with torch.autocast('cpu', dtype=torch.bfloat16): out, lg = blk(x)
        torch.autograd.backward([out, lg], [g_out, g_lg.to(lg.dtype)])
    step()
    c = dispatched_kernels(step)
    assert sum(c.values()) <= 112 and c['_to_copy'] <= 10, c
    assert c['bmm'] == 2 + 3 + 2 + 4, c          # CIAU: 2 products + 3 in the backward (Gram: 1); SIAU: 2 + 4
    xf, gf = x.detach().float().requires_grad_(), g_out.float()
    ciau = dispatched_kernels(lambda: torch.autograd.backward(blk.ciau(xf), gf))
    assert ciau['_to_copy'] == 0, ciau            # fp32 map: no cast at all
    blk.ciau.fused = True                         # one attention kernel forward and one backward, no products
    c = dispatched_kernels(step)
    assert sum(c.values()) <= 110 and c['bmm'] == 2 + 4, c
    assert sum(v for k, v in c.items() if 'attention' in k) == 2, c

def test_compiled_iau_blocks_train_in_the_fastai_loop(tmp_path):
    "`iaunet_learner(compile='iau')` fits and validates (train and eval shapes, partial last batch) with the real loop."
    from iaunet_fastai.synthetic import make_synthetic_reid
    from iaunet_fastai.datasets import market1501_df
    from iaunet_fastai.data import reid_dls
    from iaunet_fastai.learner import iaunet_learner
    path = make_synthetic_reid(tmp_path, preset='tiny', img_size=(64, 32), seed=0, datasets=('market1501',))
    dls = reid_dls(market1501_df(path/'Market-1501'), size=(64, 32), P=4, K=2, num_workers=0, seed=0)
    learn = iaunet_learner(dls, 'resnet18', pretrained=False, compile='iau')
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert all(b.compiled for b in learn.model.iau.values())
    m = learn.validate()
    assert all(math.isfinite(float(v)) for v in m), m
