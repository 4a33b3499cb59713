"""The default blocks compute SPEC section 3 exactly (issue 11), checked in fp64 (blocks and losses; models in fp32).

Each equation of SPEC section 3 is implemented here again, independently, from the text of the SPEC (explicit
`einsum`s, a hand-written BatchNorm, an edge mask and a bilinear resize written from their definitions), and the
library's blocks -- built with their DEFAULT arguments -- get the same weights (copied into their state dicts).
Train mode (batch statistics) and eval mode (running statistics) are both checked.
"""
import itertools, math, warnings
import pytest, torch
import torch.nn as nn
import torch.nn.functional as F
from iaunet_fastai.core import ReIDInputError
from iaunet_fastai.layers import CIAU, SIAU, STIAU, IAUBlock, IAUBlock3D
from iaunet_fastai.models import IAUnet, VideoIAUnet
from iaunet_fastai.losses import PartMaskLoss, ReIDLoss

torch.set_num_threads(2)
DT = torch.float64
EPS = 1e-5                                   # BatchNorm eps (PyTorch's default, as in the authors' code)
TOL = dict(rtol=1e-10, atol=1e-10)

# ------------------------------------------------------------------ the SPEC's equations, written from the text
def bn(x, p, train, ch_dim=1):
    "BatchNorm: per channel (axis `ch_dim`), batch statistics (biased variance) in training, running ones in eval."
    dims = [d for d in range(x.ndim) if d != ch_dim]
    shape = [1] * x.ndim; shape[ch_dim] = -1
    if train: mu, var = x.mean(dims), x.var(dims, unbiased=False)
    else: mu, var = p['rm'], p['rv']
    return (x - mu.view(shape)) / torch.sqrt(var.view(shape) + EPS) * p['w'].view(shape) + p['b'].view(shape)

def ref_ciau(x, P, train):
    "z = x + BN(conv1×1(A·g)), A = softmax(g·gᵀ) over the last axis; nodes = channels (or channel·frame pairs)."
    B = x.shape[0]
    g = x.reshape(B, -1, x.shape[-2] * x.shape[-1])                       # [B, N, HW]
    A = torch.softmax(torch.einsum('bnl,bml->bnm', g, g), dim=-1)
    y = torch.einsum('bnm,bml->bnl', A, g).reshape(x.shape)               # [B, C, (T,) H, W]
    return x + bn(torch.einsum('oc,bc...->bo...', P['ciau_W'], y), P['ciau_bn'], train)

def ref_graph(p, u, allowed, P, train):
    "Reduction, edges e_ij = BN(conv([|p_i − p_j|, u])), masked softmax over j, h = ReLU(BN(conv([p, W·p])))."
    pr = torch.einsum('oc,bnc->bno', P['red_W'], p) + P['red_b']          # [B, N, C']
    ur = torch.einsum('oc,bc->bo', P['red_W'], u) + P['red_b']            # [B, C']
    B, N, Ci = pr.shape
    d = (pr[:, :, None, :] - pr[:, None, :, :]).abs()                      # [B, N, N, C'] (i, j)
    feat = torch.cat([d, ur[:, None, None, :].expand(B, N, N, Ci)], -1)   # [B, N, N, 2C']
    e = torch.einsum('f,bijf->bij', P['edge_W'], feat)                     # one output channel
    e = bn(e[:, None], P['edge_bn'], train)[:, 0]                          # BN over all B·N·N edges
    e = torch.where(allowed, e, torch.tensor(float('-inf'), dtype=e.dtype))
    W = torch.softmax(e, dim=-1)
    msg = torch.einsum('bij,bjc->bic', W, pr)
    h = torch.einsum('of,bnf->bno', P['g_W'], torch.cat([pr, msg], -1))   # [B, N, C']
    h = torch.relu(bn(h, P['g_bn'], train, ch_dim=2))                     # BN over all B·N nodes
    return h, ur

def ref_siau(z, P, train):
    B, C, H, Wd = z.shape
    a = torch.sigmoid(bn(torch.einsum('kc,bchw->bkhw', P['mask_W'], z), P['mask_bn'], train))
    p = torch.einsum('bkhw,bchw->bkc', a, z)                              # mask-weighted SUM
    u = z.mean((2, 3))
    K = a.shape[1]
    allowed = torch.tensor([[i != j for j in range(K)] for i in range(K)])
    h, ur = ref_graph(p, u, allowed, P, train)
    v = torch.cat([h.mean(1), ur], 1)                                      # [B, C]
    upd = bn(torch.einsum('oc,bc->bo', P['upd_W'], v), P['upd_bn'], train)
    return z + upd[:, :, None, None], a

def ref_iaublock(x, P, train): return ref_siau(ref_ciau(x, P, train), P, train)

def ref_edge_mask(K, T):
    "Allowed STIAU edges, node n = t·K + k: other part of the same frame, or same part of another frame."
    N = K * T
    m = torch.zeros(N, N, dtype=torch.bool)
    for t1, k1, t2, k2 in itertools.product(range(T), range(K), range(T), range(K)):
        m[t1*K + k1, t2*K + k2] = (t1 == t2 and k1 != k2) or (k1 == k2 and t1 != t2)
    return m

def ref_stiau(z, P, train):
    B, C, T, H, Wd = z.shape
    a = torch.sigmoid(bn(torch.einsum('kc,bcthw->bkthw', P['mask_W'], z), P['mask_bn'], train))
    K = a.shape[1]
    p = torch.einsum('bkthw,bcthw->btkc', a, z).reshape(B, T*K, C)        # per-frame sums, n = t·K + k
    u = z.mean((2, 3, 4))
    h, ur = ref_graph(p, u, ref_edge_mask(K, T), P, train)               # h [B, T·K, C']
    hf = h.reshape(B, T, K, -1).mean(2)                                   # mean over the K parts of each frame
    v = torch.cat([hf, ur[:, None].expand(B, T, ur.shape[1])], -1)        # [B, T, C]
    upd = bn(torch.einsum('oc,btc->bot', P['upd_W'], v), P['upd_bn'], train)   # BN3d: stats over B·T
    return z + upd[..., None, None], a

def ref_iaublock3d(x, P, train): return ref_stiau(ref_ciau(x, P, train), P, train)

def bilinear_align_corners(t, size):
    "Bilinear resize of `t [B, K, H, W]` to `size` with corner pixels aligned: src = dst·(in−1)/(out−1)."
    def weights(n_in, n_out):
        M = torch.zeros(n_out, n_in, dtype=t.dtype)
        for o in range(n_out):
            s = o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.
            i0 = min(int(math.floor(s)), n_in - 1); i1 = min(i0 + 1, n_in - 1); f = s - i0
            M[o, i0] += 1 - f; M[o, i1] += f
        return M
    Mh, Mw = weights(t.shape[-2], size[0]), weights(t.shape[-1], size[1])
    return torch.einsum('oh,bkhw,pw->bkop', Mh, t, Mw)

def ref_mask_loss(logits_list, m, K=4):
    "BCE of sigmoid(logits) against each part's 0/1 map resized to the logits, mean over parts/positions/images, then blocks."
    valid = [i for i in range(m.shape[0]) if not (m[i] == 255).all()]
    tgt = torch.stack([(m == k + 1) for k in range(K)], 1).to(DT)[valid]
    out = []
    for lg in logits_list:
        t = bilinear_align_corners(tgt, lg.shape[-2:])
        q = torch.sigmoid(lg[valid].to(DT))
        out.append(-(t * torch.log(q) + (1 - t) * torch.log(1 - q)).mean())
    return torch.stack(out).mean()

# ------------------------------------------------------------------ weights, shared with the library
def rand_bn(n, g):
    return dict(w=torch.rand(n, generator=g, dtype=DT) + 0.5, b=torch.randn(n, generator=g, dtype=DT) * 0.1,
                rm=torch.randn(n, generator=g, dtype=DT) * 0.1, rv=torch.rand(n, generator=g, dtype=DT) + 0.5)

def rand_params(C, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, sc=None: torch.randn(*s, generator=g, dtype=DT) * (sc if sc else 1 / math.sqrt(s[-1]))
    Ci = C // 2
    return dict(ciau_W=r(C, C), ciau_bn=rand_bn(C, g), mask_W=r(K, C), mask_bn=rand_bn(K, g),
                red_W=r(Ci, C), red_b=r(Ci, sc=0.1), edge_W=r(2 * Ci), edge_bn=rand_bn(1, g),
                g_W=r(Ci, 2 * Ci), g_bn=rand_bn(Ci, g), upd_W=r(C, 2 * Ci), upd_bn=rand_bn(C, g))

def _bn_sd(prefix, p):
    return {f'{prefix}.weight': p['w'], f'{prefix}.bias': p['b'], f'{prefix}.running_mean': p['rm'],
            f'{prefix}.running_var': p['rv'], f'{prefix}.num_batches_tracked': torch.tensor(0)}

def library_state(P, nd, ciau='ciau', spatial='siau'):
    "The library's state-dict names for the reference weights (`nd` = 2 image, 3 clip): 1×1 convs get their kernel dims."
    k = (1,) * nd
    sd = {f'{ciau}.update.0.weight': P['ciau_W'].view(*P['ciau_W'].shape, *k), **_bn_sd(f'{ciau}.update.1', P['ciau_bn']),
          f'{spatial}.mask.0.weight': P['mask_W'].view(*P['mask_W'].shape, *k), **_bn_sd(f'{spatial}.mask.1', P['mask_bn']),
          f'{spatial}.graph.reduce.weight': P['red_W'], f'{spatial}.graph.reduce.bias': P['red_b'],
          f'{spatial}.graph.edge.0.weight': P['edge_W'].view(1, -1, 1, 1), **_bn_sd(f'{spatial}.graph.edge.1', P['edge_bn']),
          f'{spatial}.graph.gconv.0.weight': P['g_W'][..., None], **_bn_sd(f'{spatial}.graph.gconv.1', P['g_bn']),
          f'{spatial}.update.0.weight': P['upd_W'].view(*P['upd_W'].shape, *k), **_bn_sd(f'{spatial}.update.1', P['upd_bn'])}
    return sd

def load_into(mod, sd, strict=True):
    own = mod.state_dict()
    sd = {k: v for k, v in sd.items() if k in own} if not strict else sd
    assert set(sd) == set(own), (set(own) ^ set(sd))
    mod.load_state_dict(sd)
    return mod

def _sub(sd, prefix): return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}

# ------------------------------------------------------------------ the checks
def _x(shape, seed=1, scale=0.5):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT) * scale

@pytest.mark.parametrize('train', [True, False])
def test_ciau_is_the_equation(train, ciau_path):
    C = 16; P = rand_params(C)
    sd = library_state(P, 2)
    for nd, x in [(2, _x((3, C, 8, 4))), (3, _x((3, C, 3, 4, 2)))]:
        blk = load_into(CIAU(C, nd=nd).to(DT), _sub(library_state(P, nd), 'ciau.')).train(train)
        with torch.no_grad(): torch.testing.assert_close(blk(x), ref_ciau(x, P, train), **TOL)

@pytest.mark.parametrize('train', [True, False])
def test_siau_default_is_the_equation(train):
    C = 16; P = rand_params(C, seed=2)
    blk = load_into(SIAU(C).to(DT), _sub(library_state(P, 2), 'siau.')).train(train)
    assert blk.part_norm == 'sum'
    z = _x((3, C, 8, 4), seed=3)
    with torch.no_grad(): out, lg = blk(z)
    ref_out, ref_a = ref_siau(z, P, train)
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(torch.sigmoid(lg), ref_a, **TOL)

@pytest.mark.parametrize('train', [True, False])
def test_iaublock_default_is_the_equation(train):
    C = 32; P = rand_params(C, seed=4)
    blk = load_into(IAUBlock(C).to(DT), library_state(P, 2)).train(train)
    x = _x((4, C, 8, 4), seed=5)
    with torch.no_grad(): out, lg = blk(x)
    ref_out, ref_a = ref_iaublock(x, P, train)
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(torch.sigmoid(lg), ref_a, **TOL)
    assert (out - x).abs().max() > 1e-2                    # the update is live: the check is not vacuous

@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('T', [1, 3])
def test_iaublock3d_default_is_the_equation(train, T):
    "STIAU: per-frame part sums, the spatial/temporal edge mask, and the update PER FRAME."
    C = 16; P = rand_params(C, seed=6)
    blk = load_into(IAUBlock3D(C, seq_len=T).to(DT), library_state(P, 3, spatial='stiau')).train(train)
    x = _x((3, C, T, 4, 2), seed=7)
    with torch.no_grad(): out, lg = blk(x)
    ref_out, ref_a = ref_iaublock3d(x, P, train)
    torch.testing.assert_close(out, ref_out, **TOL)
    B, K = x.shape[0], 4
    torch.testing.assert_close(torch.sigmoid(lg), ref_a.transpose(1, 2).reshape(B * T, K, 4, 2), **TOL)
    if T > 1:                                              # a per-frame update differs between frames
        d = out - x
        assert (d[:, :, 0] - d[:, :, 1]).abs().max() > 1e-3

def test_stiau_per_clip_option_is_not_the_default():
    "The old per-clip update (`per_frame=False`) is another function: the equation test must be able to tell."
    C, T = 16, 3; P = rand_params(C, seed=6)
    blk = load_into(IAUBlock3D(C, seq_len=T, per_frame=False).to(DT), library_state(P, 3, spatial='stiau')).eval()
    x = _x((3, C, T, 4, 2), seed=7)
    with torch.no_grad(): out, _ = blk(x)
    assert (out - ref_iaublock3d(x, P, False)[0]).abs().max() > 1e-3

def test_siau_area_option_is_not_the_default():
    C = 16; P = rand_params(C, seed=2)
    blk = load_into(SIAU(C, part_norm='area').to(DT), _sub(library_state(P, 2), 'siau.')).eval()
    z = _x((3, C, 8, 4), seed=3)
    with torch.no_grad(): assert (blk(z)[0] - ref_siau(z, P, False)[0]).abs().max() > 1e-3

@pytest.mark.parametrize('train', [True, False])
def test_blocks_identity_at_init(train, ciau_path):
    x, x5 = _x((3, 32, 8, 4)), _x((2, 32, 3, 4, 2))
    with torch.no_grad():
        for blk, inp in [(IAUBlock(32), x), (IAUBlock3D(32, seq_len=3), x5)]:
            blk = blk.to(DT).train(train)
            assert torch.equal(blk(inp)[0], inp), type(blk).__name__

def test_edge_mask_matches_the_spec_text():
    from iaunet_fastai.layers import stiau_edge_mask
    for K, T in [(4, 1), (4, 4), (3, 2)]: assert torch.equal(stiau_edge_mask(K, T), ref_edge_mask(K, T))

def test_mask_loss_is_the_equation():
    g = torch.Generator().manual_seed(8)
    m = torch.randint(0, 5, (3, 16, 8), generator=g); m[1] = 255            # image 1 has no mask
    lgs = [torch.randn(3, 4, 8, 4, generator=g, dtype=DT), torch.randn(3, 4, 4, 2, generator=g, dtype=DT)]
    torch.testing.assert_close(PartMaskLoss()(lgs, m).to(DT), ref_mask_loss(lgs, m), rtol=1e-6, atol=1e-7)
    # our bilinear is PyTorch's align_corners=True one (the reference is independent of F.interpolate)
    t = torch.rand(2, 4, 16, 8, generator=g, dtype=DT)
    torch.testing.assert_close(bilinear_align_corners(t, (5, 3)),
                               F.interpolate(t, (5, 3), mode='bilinear', align_corners=True), **TOL)

def test_total_loss_weights():
    "total = CE-LS(0.1) + batch-hard triplet(0.3, cosine) + 0.5 × mask."
    torch.manual_seed(0)
    logits, feat = torch.randn(8, 5, dtype=DT), torch.randn(8, 16, dtype=DT)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    lgs = [torch.randn(8, 4, 4, 2, dtype=DT)]
    m = torch.randint(0, 5, (8, 16, 8))
    lf = ReIDLoss()
    tot = lf((logits, feat, lgs), y, m)
    q = torch.full((8, 5), 0.1 / 5); q[torch.arange(8), y] += 0.9
    ce = -(q * logits.log_softmax(1)).sum(1).mean()
    f = F.normalize(feat, dim=1); d = 1 - f @ f.t(); same = y[:, None] == y[None]
    tri = torch.relu(torch.stack([d[i][same[i]].max() - d[i][~same[i]].min() for i in range(8)]) + 0.3).mean()
    torch.testing.assert_close(tot.to(DT), (ce + tri + 0.5 * ref_mask_loss(lgs, m)).to(DT), rtol=1e-6, atol=1e-7)

# ------------------------------------------------------------------ the model's defaults
def test_model_defaults_are_the_authors():
    m = IAUnet('resnet18', num_classes=5, pretrained=False)
    assert m.part_norm == 'sum' and m.neck_kind == 'bn' and m.last_stride == 1 and m.iau_stages == (2, 3)
    assert all(b.siau.part_norm == 'sum' for b in m.iau.values())
    assert m.bnneck.bias.requires_grad and m.classifier.bias is not None
    assert torch.equal(m.bnneck.weight.detach(), torch.ones(m.embed_dim)) and not m.bnneck.bias.detach().any()
    # the neck BN bias and the classifier bias train, and fastai's splitter sees them
    bb, new = m.param_groups()
    assert len(bb) + len(new) == len(list(m.parameters()))
    assert any(p is m.bnneck.bias for p in new) and any(p is m.classifier.bias for p in new)
    vm = VideoIAUnet('resnet18', num_classes=5, seq_len=2, pretrained=False)
    assert all(b.stiau.per_frame and b.stiau.part_norm == 'sum' for b in vm.iau.values())

def test_eval_embedding_is_post_bn_feature():
    torch.manual_seed(0)
    m = IAUnet('resnet18', num_classes=5, pretrained=False)
    x = torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        m.train(); m(x)                                    # move the running stats
        m.eval(); f, _ = m.features_map(x)
        torch.testing.assert_close(m(x), F.normalize(m.bnneck(f.mean((2, 3))), dim=1))

# ------------------------------------------------------------------ the optimizer
def test_torch_adam_is_pytorch_adam_with_l2_on_every_parameter():
    "learn.opt (the default opt_func) steps exactly like torch.optim.Adam(lr, weight_decay=5e-4) over ALL parameters."
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from iaunet_fastai.learner import torch_adam
    torch.manual_seed(0)
    net = lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4*6*2, 3))
    m, ref = net(), net(); ref.load_state_dict(m.state_dict())
    x, y = torch.randn(8, 3, 8, 4), torch.randint(0, 3, (8,))
    learn = Learner(DataLoaders([], []), m, loss_func=F.cross_entropy, opt_func=torch_adam, lr=3.5e-4, wd=5e-4,
                    splitter=lambda m: [list(m[:2].parameters()), list(m[2:].parameters())])
    learn.create_opt(); learn.opt.set_hypers(lr=3.5e-4, wd=learn.wd)      # what Learner.fit does
    topt = torch.optim.Adam(ref.parameters(), lr=3.5e-4, weight_decay=5e-4)   # the authors' line
    for _ in range(3):
        for model, opt in ((m, learn.opt), (ref, topt)):
            opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
    for (n, p), q in zip(m.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8, msg=n)
    assert any((p - q).abs().max() > 0 for p, q in zip(m.parameters(), net().parameters()))
    # wd is L2 on the gradient of every group, BN and bias included (wd_bn_bias does not apply to torch's Adam)
    assert [(g['weight_decay'], g['betas'], g['eps']) for g in learn.opt.opt.param_groups] == [(5e-4, (0.9, 0.999), 1e-8)] * 2
    # fastai's schedulers drive it: mom -> betas[0] (fit_one_cycle), lr per group (discriminative lrs)
    learn.opt.set_hypers(mom=0.85, lr=slice(1e-5, 1e-3))
    assert [g['betas'][0] for g in learn.opt.opt.param_groups] == [0.85, 0.85]
    assert [g['lr'] for g in learn.opt.opt.param_groups] == [1e-5, 1e-3]
