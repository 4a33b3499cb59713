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

def _block(ciau_cls=None):
    torch.manual_seed(0)
    blk = IAUBlock(32)
    if ciau_cls is not None: blk.ciau = ciau_cls(32)
    nn.init.normal_(blk.ciau.update[1].weight); nn.init.normal_(blk.siau.update[1].weight)
    return blk.to(memory_format=torch.channels_last)

def test_iau_block_no_layout_copy_channels_last():
    x = torch.randn(4, 32, 16, 8).contiguous(memory_format=torch.channels_last)
    blk = _block()
    assert map_copies(blk, x) == 0
    assert is_channels_last(blk(x)[0])
    # the profiler does see such copies: the previous CIAU makes the update conv convert layouts
    assert map_copies(_block(_ContiguousCIAU), x) > 0

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
