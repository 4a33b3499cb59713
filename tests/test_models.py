"IAU blocks, IAUnet/VideoIAUnet on timm backbones, ReIDLoss: acceptance tests of issue 6 (SPEC section 3)."
import itertools, tempfile, warnings
from pathlib import Path
import pytest, torch, timm
import torch.nn as nn
from iaunet_fastai.core import ReIDInputError
from iaunet_fastai.layers import CIAU, SIAU, STIAU, IAUBlock, IAUBlock3D, stiau_edge_mask
from iaunet_fastai.models import IAUnet, VideoIAUnet, reset_zero_norms, timm_stages
from iaunet_fastai.losses import ReIDLoss

torch.set_num_threads(2)
PK = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])

def _masks(n, h, w, invalid=(1,)):
    g = torch.Generator().manual_seed(0)
    m = torch.randint(0, 5, (n, h, w), generator=g)
    for i in invalid: m[i] = 255
    return m

def _wake(model):
    "Make the zero-initialised update BatchNorms non-zero (as after some training)."
    for name, mod in model.named_modules():
        if name.endswith('update') and isinstance(mod, nn.Sequential): nn.init.normal_(mod[1].weight, std=0.5)
    return model

# ---------------------------------------------------------------- blocks
@pytest.mark.parametrize('train', [True, False])
def test_blocks_identity_at_init(train, ciau_path):
    torch.manual_seed(0)
    x, x5 = torch.randn(3, 32, 16, 8), torch.randn(2, 32, 3, 8, 4)
    with torch.no_grad():
        for blk, inp in [(CIAU(32), x), (IAUBlock(32), x), (SIAU(32), x), (CIAU(32, nd=3), x5),
                         (STIAU(32), x5), (IAUBlock3D(32, seq_len=3), x5)]:
            blk.train(train)
            out = blk(inp)
            out = out[0] if isinstance(out, tuple) else out
            assert torch.equal(out, inp), type(blk).__name__

def test_iaunet_with_fresh_blocks_equals_baseline():
    torch.manual_seed(0)
    m = IAUnet('resnet18', num_classes=5, pretrained=False).eval()
    b = IAUnet('resnet18', num_classes=5, pretrained=False, iau_stages=()).eval()
    b.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith('iau.')})
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad(): torch.testing.assert_close(m(x), b(x))

@pytest.mark.parametrize('K,T', [(4, 1), (4, 4), (2, 3), (1, 5), (3, 2)])
def test_stiau_edge_mask_is_exactly_the_spec(K, T):
    m = stiau_edge_mask(K, T)
    assert m.shape == (K*T, K*T) and m.dtype == torch.bool
    for (ti, ki), (tj, kj) in itertools.product(itertools.product(range(T), range(K)), repeat=2):
        spatial = ti == tj and ki != kj          # other part, same frame
        temporal = ki == kj and ti != tj         # same part, other frame
        assert bool(m[ti*K + ki, tj*K + kj]) == (spatial or temporal)
    assert not m.diagonal().any() and torch.equal(m, m.t())

def test_stiau_uses_only_allowed_edges():
    "The softmax weights of STIAU are zero exactly off the allowed edges and rows sum to one."
    torch.manual_seed(0)
    st = STIAU(16)
    K, T = 4, 3
    p, u = torch.randn(2, K*T, 8), torch.randn(2, 8)
    W = st.graph.edges(p, u, stiau_edge_mask(K, T))
    allowed = stiau_edge_mask(K, T).expand_as(W)
    assert (W[~allowed] == 0).all() and (W[allowed] > 0).all()
    torch.testing.assert_close(W.sum(-1), torch.ones(2, K*T))

# ---------------------------------------------------------------- shapes
def test_resnet50_shapes_at_256x128():
    torch.manual_seed(0)
    m = IAUnet('resnet50', num_classes=751, pretrained=False)
    assert m.embed_dim == 2048 and m.last_stride == 1
    assert {s: m.stages[s][1] for s in (2, 3, 4)} == {2: 512, 3: 1024, 4: 2048}
    x = torch.randn(2, 3, 256, 128)
    logits, feat, parts = m(x)
    assert logits.shape == (2, 751) and feat.shape == (2, 2048)
    assert [tuple(p.shape) for p in parts] == [(2, 4, 32, 16), (2, 4, 16, 8)]
    assert m._probe_sizes((256, 128))[4] == (16, 8)             # last stride 1: stage 4 keeps 16×8
    m.eval()
    with torch.no_grad(): e = m(x)
    assert e.shape == (2, 2048)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(2))
    assert m.bnneck.bias.requires_grad is True           # the authors' neck: trainable BN bias, classifier bias
    assert m.classifier.bias is not None
    bot = IAUnet('resnet50', num_classes=751, pretrained=False, neck='bnneck', iau_stages=())
    assert bot.bnneck.bias.requires_grad is False and bot.classifier.bias is None

def test_video_shapes_and_loss():
    torch.manual_seed(0)
    m = VideoIAUnet('resnet18', num_classes=4, seq_len=3, pretrained=False)
    x = torch.randn(8, 3, 3, 64, 32)
    logits, feat, parts = m(x)
    assert logits.shape == (8, 4) and feat.shape == (8, 512)
    assert [tuple(p.shape) for p in parts] == [(24, 4, 8, 4), (24, 4, 4, 2)]
    msk = torch.randint(0, 5, (8, 3, 64, 32)); msk[0] = 255
    lf = ReIDLoss()
    loss = lf((logits, feat, parts), PK, msk)
    loss.backward()
    assert torch.isfinite(loss) and lf.mask > 0
    m.eval()
    with torch.no_grad(): assert m(x).shape == (8, 512)

# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize('video', [False, True])
def test_gradients_reach_every_iau_parameter(video):
    torch.manual_seed(0)
    if video:
        m = VideoIAUnet('resnet18', num_classes=4, seq_len=2, pretrained=False)
        x, msk = torch.randn(8, 2, 3, 64, 32), torch.randint(0, 5, (8, 2, 64, 32))
    else:
        m = IAUnet('resnet18', num_classes=4, pretrained=False)
        x, msk = torch.randn(8, 3, 64, 32), _masks(8, 64, 32)
    lf, opt = ReIDLoss(), torch.optim.SGD(m.parameters(), lr=0.1)
    for step in range(2):                      # after one step the zero-init update BNs are non-zero
        opt.zero_grad()
        lf(m(x), PK, msk).backward()
        named = list(m.iau.named_parameters())
        assert named
        for n, p in named:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
        if step == 0:
            upd = [n for n, _ in named if n.endswith('update.1.weight')]
            assert upd and all(dict(named)[n].grad.abs().sum() > 0 for n in upd)
            opt.step()
    # the edge BN bias shifts all edges of a row equally; softmax cancels it (documented) -- all else must learn
    inert = [n for n, p in named if p.grad.abs().sum() == 0]
    assert all(n.endswith('graph.edge.1.bias') for n in inert), inert

# ---------------------------------------------------------------- mixed precision
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_blocks_finite_under_autocast_with_large_activations(dtype, ciau_path):
    torch.manual_seed(0)
    x, x5 = torch.randn(2, 64, 16, 8) * 1000, torch.randn(2, 64, 3, 8, 4) * 1000
    for blk, inp in [(_wake(IAUBlock(64)), x), (_wake(IAUBlock3D(64)), x5)]:
        try:
            with torch.autocast('cpu', dtype=dtype):
                out, lg = blk(inp)
        except RuntimeError as e:
            pytest.skip(f'{dtype} autocast unsupported on this CPU build: {e}')
        assert out.dtype in (dtype, torch.float32)
        assert torch.isfinite(out).all() and torch.isfinite(lg).all()
    # without the fp32 affinity the same input would overflow: g·gᵀ is ~1e8
    assert (x.flatten(2) @ x.flatten(2).transpose(1, 2)).abs().max() > torch.finfo(torch.float16).max

def test_model_bf16_autocast_train_step_finite():
    torch.manual_seed(0)
    m = _wake(IAUnet('resnet18', num_classes=4, pretrained=False))
    x = torch.randn(8, 3, 64, 32) * 50
    with torch.autocast('cpu', dtype=torch.bfloat16):
        pred = m(x)
        loss = ReIDLoss()(pred, PK, _masks(8, 64, 32))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in m.iau.parameters())

@pytest.mark.parametrize('video', [False, True])
def test_fused_ciau_training_step_as_exact_as_unfused(video):
    """`CIAU.fused` (one attention kernel) gives the loss and gradients of the fp64 computation as closely as the unfused
    products do (fp32, channels_last): within 2× of them or 1e-4 relative. Since the backbone starts from the authors'
    init (issue 22; no zero-init residual BN) both are ~10× closer than before: clips 2.5e-5 (products) / 8.2e-5 (fused)."""
    def run(fused, dtype):
        torch.manual_seed(0)
        m = (VideoIAUnet('resnet18', num_classes=4, seq_len=2, pretrained=False) if video
             else IAUnet('resnet18', num_classes=4, pretrained=False))
        m = _wake(m).to(dtype).to(memory_format=torch.channels_last)
        for c in m.modules():
            if isinstance(c, CIAU): c.fused = fused
        x = torch.randn(8, 2, 3, 64, 32) if video else torch.randn(8, 3, 64, 32)
        msk = torch.randint(0, 5, (8, 2, 64, 32)) if video else _masks(8, 64, 32)
        loss = ReIDLoss()(m(x.to(dtype)), PK, msk); loss.backward()
        return float(loss), torch.cat([p.grad.double().flatten() for p in m.parameters() if p.grad is not None])
    l64, g64 = run(False, torch.float64)
    err = {}
    for fused in (False, True):
        l, g = run(fused, torch.float32)
        assert abs(l - l64) < 1e-5 * abs(l64)
        err[fused] = ((g - g64).norm() / g64.norm()).item()
    assert err[True] <= max(2 * err[False], 1e-4), err

@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_ciau_low_precision_maps_finite_with_large_activations(dtype, ciau_path):
    "A bf16/fp16 map into CIAU (as from a previous layer under autocast), every precision: finite outputs and gradients."
    torch.manual_seed(0)
    for blk, shape in [(_wake(IAUBlock(64)), (2, 64, 16, 8)), (_wake(IAUBlock3D(64)), (2, 64, 3, 8, 4))]:
        for pr in ('tf32', 'bf16'):
            blk.ciau.matmul_precision = pr
            x = (torch.randn(*shape) * 30).to(dtype).requires_grad_()
            with torch.autocast('cpu', dtype=dtype): out, lg = blk(x)
            (out.float().square().mean() + lg.float().mean()).backward()
            assert torch.isfinite(out).all() and torch.isfinite(lg).all() and torch.isfinite(x.grad).all(), (pr, dtype)

# ---------------------------------------------------------------- timm families
@pytest.mark.parametrize('arch', ['resnet18', 'regnetx_002', 'efficientnet_b0', 'convnext_atto'])
def test_timm_families(arch):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)             # last stride 1 must work without a warning
        m = IAUnet(arch, num_classes=4, pretrained=False)
    assert m.last_stride == 1
    sizes = m._probe_sizes((128, 64))
    assert sizes[2] == (16, 8) and sizes[3] == sizes[4] == (8, 4)
    x = torch.randn(8, 3, 128, 64)
    logits, feat, parts = m(x)
    assert feat.shape == (8, m.embed_dim) and [tuple(p.shape[-2:]) for p in parts] == [(16, 8), (8, 4)]
    loss = ReIDLoss()((logits, feat, parts), PK, _masks(8, 128, 64))
    loss.backward()
    assert torch.isfinite(loss)
    bb, new = m.param_groups()
    assert len(bb) + len(new) == len(list(m.parameters()))              # the authors' neck: every parameter trains
    assert {id(p) for p in m.iau.parameters()} <= {id(p) for p in new}
    assert {id(m.bnneck.bias), id(m.classifier.bias)} <= {id(p) for p in new}

def test_bnneck_option_param_groups():
    m = IAUnet('resnet18', num_classes=4, pretrained=False, neck='bnneck')
    bb, new = m.param_groups()
    assert len(bb) + len(new) == len(list(m.parameters())) - 1          # all but BoT's frozen BN bias
    assert all(p is not m.bnneck.bias for p in bb + new)

@pytest.mark.parametrize('arch', ['vit_tiny_patch16_224', 'swin_tiny_patch4_window7_224', 'deit_tiny_patch16_224'])
def test_transformer_backbones_fail_clearly(arch):
    "Non-CNN (features_only-incapable or NHWC) timm backbones: the library's ReIDInputError, not timm's AssertionError."
    with pytest.raises(ReIDInputError, match='not a hierarchical CNN'):
        IAUnet(arch, num_classes=3, pretrained=False)

# ---------------------------------------------------------------- export
@pytest.mark.parametrize('video', [False, True])
def test_eval_model_exports_with_torch_export(video):
    torch.manual_seed(0)
    if video:
        m = _wake(VideoIAUnet('resnet18', num_classes=4, seq_len=2, pretrained=False)).eval()
        x = torch.randn(2, 2, 3, 64, 32)
    else:
        m = _wake(IAUnet('resnet18', num_classes=4, pretrained=False)).eval()
        x = torch.randn(2, 3, 64, 32)
    ep = torch.export.export(m, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), m(x), rtol=1e-4, atol=1e-5)

def test_eval_model_exports_with_onnx():
    "Runs with the `[onnx]` extra (onnx, onnxscript, onnxruntime), which `make test` installs."
    ort = pytest.importorskip('onnxruntime'); pytest.importorskip('onnx'); pytest.importorskip('onnxscript')
    torch.manual_seed(0)
    m = _wake(IAUnet('resnet18', num_classes=4, pretrained=False)).eval()
    x = torch.randn(2, 3, 64, 32)
    with tempfile.TemporaryDirectory() as d:
        f = str(Path(d)/'m.onnx')
        torch.onnx.export(m, (x,), f, input_names=['x'], output_names=['emb'])
        got = torch.from_numpy(ort.InferenceSession(f).run(None, {'x': x.numpy()})[0])
    with torch.no_grad(): ref = m(x)
    # onnxruntime fuses and reorders float32 ops (seen: 3e-4 off on 0.2-sized features): compare at the features'
    # own scale, and as retrieval sees them (cosine)
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=2e-3 * ref.abs().max().item())
    assert torch.nn.functional.cosine_similarity(got, ref).min() > 0.9999

# ---------------------------------------------------------------- weights and bad input
def test_pretrained_file_and_checkpoint_mismatches(tmp_path):
    ref = timm.create_model('resnet18', pretrained=False)
    torch.save(ref.state_dict(), tmp_path/'r18.pth')
    m = IAUnet('resnet18', num_classes=3, pretrained_file=tmp_path/'r18.pth')
    torch.testing.assert_close(m.backbone.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    # a pretrained tag (the paper recipe names `resnet50.tv_in1k`) loads a local file offline the same way
    mt = IAUnet('resnet18.tv_in1k', num_classes=3, pretrained_file=tmp_path/'r18.pth')
    torch.testing.assert_close(mt.backbone.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    assert mt.config['arch'] == 'resnet18.tv_in1k'
    torch.save(timm.create_model('resnet34', pretrained=False).state_dict(), tmp_path/'r34.pth')
    with pytest.raises(ReIDInputError, match="r34.pth.*resnet18"): IAUnet('resnet18', num_classes=3, pretrained_file=tmp_path/'r34.pth')
    with pytest.raises(ReIDInputError, match='nope.pth'): IAUnet('resnet18', num_classes=3, pretrained_file=tmp_path/'nope.pth')
    torch.save({'model': m.state_dict(), 'opt': {}}, tmp_path/'reid.pth')      # fastai's learn.save layout
    IAUnet('resnet18', num_classes=3, pretrained=False).load_checkpoint(tmp_path/'reid.pth')
    with pytest.raises(ReIDInputError, match='3 classes'):
        IAUnet('resnet18', num_classes=7, pretrained=False).load_checkpoint(tmp_path/'reid.pth')
    with pytest.raises(ReIDInputError, match='not a checkpoint of this model'):
        IAUnet('resnet18', num_classes=3, pretrained=False, iau_stages=(3,)).load_checkpoint(tmp_path/'reid.pth')

def test_bad_arguments():
    with pytest.raises(ReIDInputError, match='iau_stages'): IAUnet('resnet18', num_classes=3, pretrained=False, iau_stages=(7,))
    with pytest.raises(ReIDInputError, match='num_classes'): IAUnet('resnet18', num_classes=0, pretrained=False)
    with pytest.raises(ReIDInputError, match='no_such_net'): IAUnet('no_such_net', num_classes=3, pretrained=False)
    with pytest.raises(ReIDInputError, match='part_norm'): IAUBlock(16, part_norm='max')
    m = IAUnet('resnet18', num_classes=3, pretrained=False, iau_stages=())
    with pytest.raises(ReIDInputError, match=r'\[B, 3, H, W\]'): m(torch.randn(2, 3, 2, 64, 32))
    with pytest.raises(ReIDInputError, match='num_classes=3'): ReIDLoss()(m(torch.randn(4, 3, 64, 32)), torch.tensor([0, 1, 2, 3]))

# ---------------------------------------------------------------- model files keep every option (issue 11, row 7)
_OPTIONS = [(dict(), False), (dict(part_norm='area'), False), (dict(neck='bnneck'), False), (dict(last_stride=2), False),
            (dict(iau_stages=(3,)), False), (dict(iau_stages=()), False), (dict(parts=3), False),
            (dict(arch='regnetx_002'), False), (dict(drop_rate=0.1), False),
            (dict(), True), (dict(per_frame=False, seq_len=2, part_norm='area', neck='bnneck'), True)]

@pytest.mark.parametrize('opts,video', _OPTIONS,
                         ids=lambda o: (','.join(f'{k}={v}' for k, v in o.items()) or 'defaults') if isinstance(o, dict) else
                         ('video' if o else 'image'))
def test_model_file_round_trip_keeps_every_option(opts, video, tmp_path):
    "Every constructor option travels in the weights-only file and comes back identical (same config, same embeddings)."
    from iaunet_fastai.inference import save_reid_model, load_reid_model
    torch.manual_seed(0)
    kw = dict(opts); arch = kw.pop('arch', 'resnet18')
    if video: m = _wake(VideoIAUnet(arch, 4, **{'seq_len': 3, **kw}, pretrained=False))
    else: m = _wake(IAUnet(arch, 4, pretrained=False, **kw))
    m.eval()
    save_reid_model(m, tmp_path/'m.pth')
    back = load_reid_model(tmp_path/'m.pth')
    assert type(back) is type(m) and back.config == m.config
    x = torch.randn(2, 3, 3, 64, 32) if video else torch.randn(2, 3, 64, 32)
    with torch.no_grad(): assert torch.equal(back(x), m(x))
    load_reid_model(tmp_path/'m.pth', model=type(m)(**{k: v for k, v in m.config.items() if k not in ('cls', 'timm_kwargs')},
                                                    **m.config['timm_kwargs'], pretrained=False))
    if opts:                       # the same file does not load silently into a model with the defaults
        with pytest.raises(ReIDInputError, match='does not fit'):
            load_reid_model(tmp_path/'m.pth', model=type(m)(arch='resnet18', num_classes=4, pretrained=False))

@pytest.mark.parametrize('video', [False, True])
def test_old_model_file_rebuilds_what_it_was_trained_with(video, tmp_path):
    "A file from before issue 11 (no part_norm/neck/last_stride/per_frame in its config) computes its old function."
    from iaunet_fastai.inference import save_reid_model, load_reid_model
    torch.manual_seed(0)
    old_kw = dict(part_norm='area', neck='bnneck')
    m = (_wake(VideoIAUnet('resnet18', 4, seq_len=2, per_frame=False, pretrained=False, **old_kw)) if video
         else _wake(IAUnet('resnet18', 4, pretrained=False, **old_kw))).eval()
    save_reid_model(m, tmp_path/'m.pth')
    f = torch.load(tmp_path/'m.pth', weights_only=True)
    f['reid_config'] = {k: f['reid_config'][k] for k in ('cls', 'arch', 'num_classes', 'iau_stages', 'parts', 'seq_len')}
    torch.save(f, tmp_path/'old.pth')
    with pytest.warns(UserWarning, match="older iaunet_fastai.*part_norm='area'"):
        back = load_reid_model(tmp_path/'old.pth')
    assert back.config == m.config
    x = torch.randn(2, 2, 3, 64, 32) if video else torch.randn(2, 3, 64, 32)
    with torch.no_grad(): assert torch.equal(back(x), m(x))


# ---------------------------------------------------------------- initialisation from scratch (issue 22)
def zero_bns_outside_iau(model):
    "Names of all-zero BatchNorm weights of `model`, the IAU blocks' (zero-initialised update BNs) left out."
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not n.startswith('iau.') and m.weight is not None and bool((m.weight == 0).all())]

@pytest.mark.parametrize('arch', ['resnet18', 'regnetx_002', 'cs3darknet_s', 'gernet_s', 'tresnet_m'])
def test_scratch_backbones_have_no_zero_bn(arch):
    "timm zero-inits residual BNs in these families (by `zero_init_last`, hard-coded in TResNet); from scratch none is."
    assert len(reset_zero_norms(timm.create_model(arch, pretrained=False))) > 0   # timm's own default has them
    assert zero_bns_outside_iau(timm_stages(arch, pretrained=False)) == []

def test_scratch_iaunet_keeps_zero_update_bns_only():
    m = IAUnet('resnet18', 4, pretrained=False)
    assert zero_bns_outside_iau(m) == []
    assert all(bool((b.ciau.update[1].weight == 0).all() and (b.siau.update[1].weight == 0).all())
               for b in m.iau.values())                                         # the blocks still start as identity

def test_scratch_init_video_and_explicit_kwargs_win():
    v = VideoIAUnet('resnet18', 4, seq_len=2, pretrained=False)
    assert zero_bns_outside_iau(v) == []
    m = IAUnet('resnet18', 4, pretrained=False, zero_init_last=True)                   # the caller's choice wins
    assert len(zero_bns_outside_iau(m)) == 8 and m.config['timm_kwargs'] == dict(zero_init_last=True)
    assert IAUnet('resnet18', 4, pretrained=False).config['timm_kwargs'] == {}           # config: what the user gave
