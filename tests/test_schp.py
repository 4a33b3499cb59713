"SCHP parser: exact checkpoint keys, SCHP's pre/post-processing step by step, the warp round trip, the stage end to end."
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import cv2
import torch
import torch.nn.functional as F
from PIL import Image

from iaunet_fastai.core import ReIDInputError
from iaunet_fastai.part_labels import LIP_GROUPING, lip_to_parts, resize_nearest, class_lut
from iaunet_fastai.part_masks import precompute_part_masks, load_part_masks
import iaunet_fastai.schp as schp
from iaunet_fastai.schp import (SCHPNet, ActivatedBatchNorm, load_schp, read_schp_checkpoint, schp_center_scale, schp_affine,
                                schp_warp_image, schp_normalize, warp_logits_back, schp_parse_images, schp_palette,
                                SCHP_DATASETS)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent/'data'
TINY = (1, 1, 1, 1)
# SCHP's sources, only to compare against (never copied here): a checkout, or the git dir of a fetched snapshot
SCHP_SRC = os.environ.get('SCHP_SRC', '/work/.mirror/GoGoDuck912+Self-Correction-Human-Parsing/repo')


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "One intra-op thread: these small convolutions gain nothing from more, and on a busy 2-core machine spinning threads cost 2x."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def expected_keys(n_classes=20):
    "SCHP's (key, shape) list written from its own class definitions (see tests/data/README.md), for `n_classes`."
    res = []
    for line in (DATA/'schp_resnet101_lip_keys.txt').read_text().split('\n'):
        if not line.strip(): continue
        k, s = line.split()
        shape = tuple(int(v) for v in s.split('x'))
        if k in ('decoder.conv4.weight', 'decoder.conv4.bias', 'fushion.3.weight', 'fushion.3.bias'): shape = (n_classes,) + shape[1:]
        res.append((k, shape))
    return res


def save_ckpt(path, model_or_sd, prefix='module.', extra=True):
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, torch.nn.Module) else model_or_sd
    torch.save({'epoch': 150, 'state_dict': {prefix + k: v for k, v in sd.items()}} if extra else
               {prefix + k: v for k, v in sd.items()}, path)
    return path


def randomize(model, seed=0):
    "Random norm statistics and affine values (some weights negative: the |weight| of InPlace-ABN matters); convolutions keep their random init."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.ndim != 1: continue
            r = torch.rand(v.shape, generator=g)
            if k.endswith('running_var'): v.copy_(r + 0.5)
            elif k.endswith('running_mean') or k.endswith('bias'): v.copy_((r - 0.5) * 0.2)
            else: v.copy_((0.8 + 0.4 * r) * torch.where(torch.rand(v.shape, generator=g) < 0.2, -1., 1.))
    return model


def calibrate(model, size=(65, 65), seed=0):
    "Set every ABN's running statistics to those of one random image (SCHP's BN re-estimation), so random nets give varied maps."
    def hook(m, inp):
        x = inp[0].detach()
        m.running_mean.copy_(x.mean((0, 2, 3))); m.running_var.copy_(x.var((0, 2, 3), unbiased=False) + 1e-3)
    hs = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, ActivatedBatchNorm)]
    img = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    with torch.no_grad(): model.eval()(schp_normalize(torch.from_numpy(img)[None]))
    for h in hs: h.remove()
    return model


@pytest.fixture(scope='module')
def resnet101():
    torch.manual_seed(0)
    return SCHPNet(20)


# ---------------------------------------------------------------- state dict
def test_resnet101_keys_and_shapes_are_schps(resnet101):
    got = [(k, tuple(v.shape)) for k, v in resnet101.state_dict().items()]
    assert got == expected_keys(20)   # same keys, same shapes, same order
    assert len(got) == 603 and not any('num_batches_tracked' in k for k, _ in got)


def test_activations_are_schps(resnet101):
    "Leaky-ReLU ABNs exactly where SCHP builds InPlaceABNSync with the default activation; 'none' everywhere else."
    exp = dict(l.split() for l in (DATA/'schp_resnet101_lip_abn_activations.txt').read_text().splitlines() if l.strip())
    got = {n: m.activation for n, m in resnet101.named_modules() if isinstance(m, ActivatedBatchNorm)}
    assert got == exp and sum(a == 'leaky_relu' for a in got.values()) == 13


def test_random_resnet101_round_trips_strictly(tmp_path, resnet101):
    randomize(resnet101, 1)
    f = save_ckpt(tmp_path/'exp-schp-201908261155-lip.pth', resnet101)
    model, ds = load_schp(f, device='cpu')
    assert ds == 'lip' and model.layers == (3, 4, 23, 3)
    sd0, sd1 = resnet101.state_dict(), model.state_dict()
    assert list(sd0) == list(sd1) and all(torch.equal(sd0[k], sd1[k]) for k in sd0)


@pytest.mark.parametrize('n_classes,dataset', [(18, 'atr'), (7, 'pascal')])
def test_atr_and_pascal_checkpoints_load(tmp_path, n_classes, dataset):
    net = randomize(SCHPNet(n_classes, TINY))
    ks = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    exp = dict(expected_keys(n_classes))
    assert all(exp[k] == s for k, s in ks.items())   # a shallow net: a subset of SCHP's keys, same shapes
    model, ds = load_schp(save_ckpt(tmp_path/'c.pth', net, extra=False), device='cpu')
    assert ds == dataset and model.n_classes == n_classes
    lut = class_lut(SCHP_DATASETS[dataset]['grouping'], n_classes)
    assert lut[n_classes] == 255 and set(lut[:n_classes]) <= {0, 1, 2, 3, 4}


def test_bad_checkpoints_name_the_file(tmp_path):
    with pytest.raises(ReIDInputError, match=r"exp-schp-201908261155-lip\.pth.*drive\.google\.com"):
        load_schp(tmp_path/'missing.pth')
    with pytest.raises(ReIDInputError, match='exp-schp-201908301523-atr.pth'):
        load_schp(tmp_path/'missing.pth', dataset='atr')
    sd = SCHPNet(20, TINY).state_dict()
    sd.pop('fushion.1.running_var')
    with pytest.raises(ReIDInputError, match=r"(?s)b\.pth.*fushion\.1\.running_var"):
        load_schp(save_ckpt(tmp_path/'b.pth', sd))
    sd = SCHPNet(20, TINY).state_dict(); sd['edge.conv4.weight'] = torch.zeros(2, 256, 1, 1)
    with pytest.raises(ReIDInputError, match='edge.conv4.weight'): load_schp(save_ckpt(tmp_path/'s.pth', sd))
    torch.save({'state_dict': {'module.fc.weight': torch.zeros(3)}}, tmp_path/'o.pth')
    with pytest.raises(ReIDInputError, match='fushion'): load_schp(tmp_path/'o.pth')
    (tmp_path/'t.pth').write_text('not a checkpoint')
    with pytest.raises(ReIDInputError, match=r"t\.pth"): load_schp(tmp_path/'t.pth')


# ---------------------------------------------------------------- SCHP's inference, re-implemented independently
def reference_extractor(model, img_bgr, input_size=(473, 473)):
    "simple_extractor.py's steps for one image, from SPEC 4b: box → affine → warp → ToTensor/Normalize → net → upsample → unwarp → argmax."
    h, w = img_bgr.shape[:2]
    bw, bh = np.float32(w - 1), np.float32(h - 1)
    ar = input_size[1] / input_size[0]
    if bw > ar * bh: bh = bw / ar
    elif bw < ar * bh: bw = bh * ar
    cx, cy = (w - 1) * 0.5, (h - 1) * 0.5
    k = (input_size[1] - 1) / float(bw)                       # a pure scale: box width → input width - 1
    ox, oy = (input_size[1] - 1) * 0.5, (input_size[0] - 1) * 0.5
    fwd = np.array([[k, 0, ox - k * cx], [0, k, oy - k * cy]])
    inv = np.array([[1 / k, 0, cx - ox / k], [0, 1 / k, cy - oy / k]])
    np.testing.assert_allclose(schp_affine(*schp_center_scale(h, w, input_size), input_size), fwd, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(schp_affine(*schp_center_scale(h, w, input_size), input_size, inverse=True), inv, rtol=1e-5, atol=1e-4)
    fwd = schp_affine(*schp_center_scale(h, w, input_size), input_size)   # bit-identical matrices from here on
    inv = schp_affine(*schp_center_scale(h, w, input_size), input_size, inverse=True)
    x = cv2.warpAffine(img_bgr, fwd, (input_size[1], input_size[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                       borderValue=(0, 0, 0))
    t = torch.from_numpy(x.transpose(2, 0, 1).copy()).float().div(255)
    t = (t - torch.tensor([0.406, 0.456, 0.485])[:, None, None]) / torch.tensor([0.225, 0.224, 0.229])[:, None, None]
    with torch.no_grad():
        out = model(t[None])
        up = F.interpolate(out[0][-1][0][None], size=tuple(input_size), mode='bilinear', align_corners=True)[0]
    logits = up.permute(1, 2, 0).numpy()
    back = np.stack([cv2.warpAffine(logits[..., c], inv, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                    borderValue=0) for c in range(logits.shape[2])], 2)
    return np.argmax(back, 2).astype(np.uint8), x, back


def test_pipeline_reproduces_simple_extractor_step_by_step():
    torch.manual_seed(0)
    net = calibrate(randomize(SCHPNet(20, TINY), 3))
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(96, 48), (60, 100)]]
    size = (65, 65)   # the network is fully convolutional: a small input keeps the test fast, the steps are the same
    mine, seen = schp_parse_images(net, imgs, size, batch_size=2), set()
    for img, lab in zip(imgs, mine):
        ref, x, back = reference_extractor(net, img, size)
        warped, c, s = schp_warp_image(img, size)
        assert np.array_equal(warped, x)
        t = schp_normalize(torch.from_numpy(warped)[None])[0]
        tref = (torch.from_numpy(x.transpose(2, 0, 1).copy()).float() / 255 - torch.tensor([0.406, 0.456, 0.485])[:, None, None]) \
               / torch.tensor([0.225, 0.224, 0.229])[:, None, None]
        assert torch.allclose(t, tref, atol=1e-6)
        assert lab.shape == img.shape[:2] and lab.dtype == np.uint8
        assert (lab == ref).mean() > 0.999
        seen |= set(np.unique(ref).tolist())
    assert len(seen) > 1   # the stand-in network does not answer one class everywhere


def test_logit_unwarp_matches_cv2():
    rng = np.random.default_rng(1)
    lg = rng.normal(size=(473, 473, 4)).astype(np.float32)
    for h, w in [(256, 128), (128, 64), (77, 301), (2, 2)]:
        inv = schp_affine(*schp_center_scale(h, w), inverse=True)
        ref = np.stack([cv2.warpAffine(lg[..., c], inv, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                       borderValue=0) for c in range(4)], 2)
        got = warp_logits_back(torch.from_numpy(lg).permute(2, 0, 1).contiguous(), inv, (h, w)).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-5)


def person(h=128, w=64):
    "A crude LIP id map of a standing person with all four parts."
    m = np.zeros((64, 32), np.uint8)
    m[3:12, 11:21] = 2; m[6:12, 12:20] = 13; m[12:34, 8:24] = 5; m[14:30, 5:8] = 14; m[14:30, 24:27] = 15
    m[34:57, 9:16] = 16; m[34:57, 16:23] = 17; m[57:62, 8:16] = 18; m[57:62, 16:24] = 19
    return resize_nearest(m, (h, w))


class PerfectParser(torch.nn.Module):
    "Stand-in network: reads each pixel's SCHP palette colour back into one-hot LIP logits (a perfect parse), at 1/`stride`."
    def __init__(self, stride=1):
        super().__init__(); self.stride = stride
        self.pal = torch.tensor(schp_palette(20), dtype=torch.float32).view(20, 3).flip(1) / 255   # BGR
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, fusion_only=False):
        bgr = x * torch.tensor([0.225, 0.224, 0.229])[:, None, None] + torch.tensor([0.406, 0.456, 0.485])[:, None, None]
        d = ((bgr[:, None] - self.pal[None, :, :, None, None]) ** 2).sum(2)     # [N, 20, H, W]
        logits = -d * 100
        if self.stride > 1: logits = F.avg_pool2d(logits, self.stride, ceil_mode=True)
        return logits if fusion_only else [[logits, logits], [logits[:, :2]]]


@pytest.mark.parametrize('stride,agree', [(1, 0.995), (4, 0.93)])
def test_warp_round_trip_of_a_perfect_parser(stride, agree):
    "An image painted with SCHP's palette, parsed by a perfect stand-in, comes back as its own label map (up to interpolation)."
    pal = np.array(schp_palette(20), np.uint8).reshape(20, 3)
    for h, w in [(128, 64), (256, 128), (100, 180)]:
        lab = person(h, w)
        img = np.ascontiguousarray(pal[lab][..., ::-1])   # BGR, as cv2.imread gives
        got = schp_parse_images(PerfectParser(stride), [img], batch_size=1)[0]
        assert got.shape == lab.shape
        assert (got == lab).mean() > agree
        assert (lip_to_parts(got) == lip_to_parts(lab)).mean() > agree


# ---------------------------------------------------------------- parity with SCHP's own code, when its sources are here
@pytest.fixture(scope='module')
def schp_src(tmp_path_factory):
    src = Path(SCHP_SRC)
    dst = tmp_path_factory.mktemp('schp_src')
    files = ['utils/transforms.py', 'datasets/simple_extractor_dataset.py', 'networks/AugmentCE2P.py', 'modules/bn.py']
    if (src/'utils'/'transforms.py').is_file():
        for f in files: (dst/f).parent.mkdir(parents=True, exist_ok=True); (dst/f).write_bytes((src/f).read_bytes())
    elif (src/'HEAD').is_file():
        for f in files:
            r = subprocess.run(['git', '--git-dir', str(src), 'show', f'HEAD:{f}'], capture_output=True)
            if r.returncode: pytest.skip(f"SCHP sources incomplete at {src}")
            (dst/f).parent.mkdir(parents=True, exist_ok=True); (dst/f).write_bytes(r.stdout)
    else: pytest.skip(f"SCHP sources not found (set SCHP_SRC to a checkout of GoGoDuck912/Self-Correction-Human-Parsing)")
    for d in ('utils', 'datasets'): (dst/d/'__init__.py').write_text('')
    return dst


def _import_schp(src):
    "SCHP's transforms, dataset and network modules; its CUDA InPlace-ABN kernel replaced by the documented eval arithmetic."
    import types, importlib
    fn = types.ModuleType('modules.functions')
    fn.ACT_RELU, fn.ACT_LEAKY_RELU, fn.ACT_ELU, fn.ACT_NONE = 'relu', 'leaky_relu', 'elu', 'none'
    def inplace_abn_sync(x, weight, bias, mean, var, training, momentum, eps, activation, slope):
        assert not training
        y = (x - mean[:, None, None]) * (torch.rsqrt(var + eps) * (weight.abs() + eps))[:, None, None] + bias[:, None, None]
        return (F.leaky_relu(y, slope) if activation == 'leaky_relu' else y), mean, var
    fn.inplace_abn = fn.inplace_abn_sync = inplace_abn_sync
    fn.__all__ = ['inplace_abn', 'inplace_abn_sync', 'ACT_RELU', 'ACT_LEAKY_RELU', 'ACT_ELU', 'ACT_NONE']
    saved = {k: sys.modules.get(k) for k in ('modules', 'modules.functions', 'modules.bn', 'utils', 'utils.transforms',
                                             'datasets', 'datasets.simple_extractor_dataset', 'AugmentCE2P')}
    sys.path.insert(0, str(src))
    try:
        pkg = types.ModuleType('modules'); pkg.__path__ = [str(src/'modules')]
        sys.modules['modules'], sys.modules['modules.functions'] = pkg, fn
        bn = importlib.import_module('modules.bn'); pkg.InPlaceABNSync = bn.InPlaceABNSync
        for k in ('utils', 'utils.transforms', 'datasets', 'datasets.simple_extractor_dataset'): sys.modules.pop(k, None)
        tr = importlib.import_module('utils.transforms')
        ds = importlib.import_module('datasets.simple_extractor_dataset')
        sys.path.insert(0, str(src/'networks')); net = importlib.import_module('AugmentCE2P')
        return tr, ds, net
    finally:
        for p in (str(src), str(src/'networks')):
            if p in sys.path: sys.path.remove(p)
        for k, v in saved.items():
            if v is None: sys.modules.pop(k, None)
            else: sys.modules[k] = v


def test_parity_with_schps_own_code(schp_src, tmp_path):
    "SCHP's SimpleFolderDataset, network (stubbed kernel) and transform_logits vs ours on the same images and weights."
    import torchvision.transforms as T
    tr, dsm, netm = _import_schp(schp_src)
    theirs = netm.ResNet(netm.Bottleneck, list(TINY), 20).eval()
    mine = calibrate(randomize(SCHPNet(20, TINY), 5))
    theirs.load_state_dict(mine.state_dict(), strict=True)   # their module tree takes our state dict as is
    (tmp_path/'imgs').mkdir()
    rng = np.random.default_rng(2)
    for i, (h, w) in enumerate([(96, 48), (50, 90)]):
        cv2.imwrite(str(tmp_path/'imgs'/f'{i}.png'), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    size = [65, 65]
    ds = dsm.SimpleFolderDataset(str(tmp_path/'imgs'), input_size=size,
                                 transform=T.Compose([T.ToTensor(), T.Normalize(mean=[0.406, 0.456, 0.485], std=[0.225, 0.224, 0.229])]))
    for k in range(len(ds)):
        x, meta = ds[k]
        img = cv2.imread(str(tmp_path/'imgs'/meta['name']), cv2.IMREAD_COLOR)
        warped, c, s = schp_warp_image(img, size)
        assert np.array_equal(c, meta['center']) and np.array_equal(s, meta['scale'])
        assert torch.equal(schp_normalize(torch.from_numpy(warped)[None])[0], x)
        with torch.no_grad():
            out_t, out_m = theirs(x[None]), mine(x[None])
        for a, b in zip(sum(out_t, []), sum(out_m, [])): assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
        up = F.interpolate(out_t[0][-1][0][None], size=size, mode='bilinear', align_corners=True)[0].permute(1, 2, 0).numpy()
        ref = np.argmax(tr.transform_logits(up, c, s, meta['width'], meta['height'], input_size=size), axis=2)
        assert np.array_equal(tr.get_affine_transform(c, s, 0, np.asarray(size), inv=1), schp_affine(c, s, size, inverse=True))
        got = schp_parse_images(mine, [img], size)[0]
        assert (got == ref).mean() > 0.999


# ---------------------------------------------------------------- the stage end to end
def write_images(root, sizes=((64, 32), (48, 40), (30, 60))):
    root.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(root/f'{i}.png'), np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8))
    return root


@pytest.fixture(scope='module')
def stand_in(tmp_path_factory):
    "A shallow random SCHP checkpoint under SCHP's key names."
    torch.manual_seed(0)
    net = calibrate(randomize(SCHPNet(20, TINY), 7))
    return save_ckpt(tmp_path_factory.mktemp('w')/'stand_in.pth', net)


def test_stage_fills_the_cache(tmp_path, stand_in):
    imgs = write_images(tmp_path/'imgs')
    kw = dict(parser='schp', weights=stand_in, size=(32, 16), progress=False, verbose=False,
              schp_kwargs=dict(input_size=(65, 65), label_png_dir=tmp_path/'labels', batch_size=2))
    pm = precompute_part_masks(imgs, tmp_path/'cache', **kw)
    assert pm.masks.shape == (3, 32, 16) and pm.meta['parser'] == 'schp'
    assert pm.meta['schp']['dataset'] == 'lip' and pm.meta['schp']['input_size'] == [65, 65]
    model, _ = load_schp(stand_in, device='cpu')
    labs = schp_parse_images(model, [cv2.imread(str(imgs/f'{i}.png')) for i in range(3)], (65, 65))
    for i, lab in enumerate(labs):
        with Image.open(tmp_path/'labels'/f'{i}.png') as im:
            assert im.mode == 'P' and np.array_equal(np.asarray(im), lab)
            assert im.getpalette()[:60] == schp_palette(20)
        parts = lip_to_parts(lab)
        if (parts > 0).any(): assert pm.valid[i] and np.array_equal(pm.masks[i], resize_nearest(parts, (32, 16)))
        else: assert not pm.valid[i] and 'empty mask' in pm.reason(f'{i}.png')
    assert pm.valid.any()
    # a second run is a no-op; changing the weights file rebuilds
    pm2 = precompute_part_masks(imgs, tmp_path/'cache', **kw)
    assert pm2.meta['key'] == pm.meta['key'] and pm2.meta['created'] == pm.meta['created']
    # the raw PNGs are LIP label maps the 'lip' parser reads back to the same cache
    pm3 = precompute_part_masks(imgs, tmp_path/'cache_lip', parser='lip', label_dir=tmp_path/'labels', size=(32, 16),
                                progress=False, verbose=False)
    assert np.array_equal(pm3.masks[pm3.valid], pm.masks[pm.valid])


def test_stage_bad_input(tmp_path, stand_in):
    imgs = write_images(tmp_path/'imgs')
    with pytest.raises(ReIDInputError, match='exp-schp-201908261155-lip.pth'):
        precompute_part_masks(imgs, tmp_path/'c', parser='schp', progress=False)
    with pytest.raises(ReIDInputError, match='do not pass label_dir'):
        precompute_part_masks(imgs, tmp_path/'c', parser='schp', weights=stand_in, label_dir=imgs, progress=False)
    with pytest.raises(ReIDInputError, match='precision'):
        precompute_part_masks(imgs, tmp_path/'c', parser='schp', weights=stand_in, schp_kwargs=dict(precision='fp8'), progress=False)
    net = SCHPNet(18, TINY)
    atr = save_ckpt(tmp_path/'atr.pth', net)
    with pytest.raises(ReIDInputError, match='ATR checkpoint'):
        precompute_part_masks(imgs, tmp_path/'c', parser='schp', weights=atr, grouping={'head': (1,)}, progress=False)
    with pytest.raises(ReIDInputError, match='not the 20 of lip'):
        precompute_part_masks(imgs, tmp_path/'c', parser='schp', weights=atr, schp_kwargs=dict(dataset='lip'), progress=False)
    (imgs/'broken.png').write_bytes(b'not a png')
    pm = precompute_part_masks(imgs, tmp_path/'c2', parser='schp', weights=stand_in, size=(16, 8), progress=False, verbose=False,
                               schp_kwargs=dict(input_size=(33, 33)))
    assert not pm.valid[pm.index('broken.png')] and 'broken.png' in pm.reason('broken.png')


def test_cli_masks_schp(tmp_path, stand_in):
    "`iaunet masks IMAGES OUT --parser schp --weights F` on the synthetic world fills the cache (at SCHP's 473x473 input)."
    synth = pytest.importorskip('iaunet_fastai.synthetic')
    root = tmp_path/'synth'
    synth.make_synthetic_reid(root, preset='tiny', datasets=('market1501',), img_size=(64, 32), workers=0)
    img_dir = root/'Market-1501'/'bounding_box_train'
    name = sorted(p.name for p in img_dir.glob('*.jpg'))[0]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, '-m', 'iaunet_fastai.cli', 'masks', str(img_dir), str(tmp_path/'cache'), '--parser', 'schp',
                        '--weights', str(stand_in), '--image-glob', name, '--height', '32', '--width', '16',
                        '--device', 'cpu', '--save-labels', str(tmp_path/'labels'), '--no-progress'],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    pm = load_part_masks(tmp_path/'cache')
    assert pm.names == [name] and pm.meta['parser'] == 'schp' and pm.masks.shape[1:] == (32, 16)
    assert pm.meta['schp']['input_size'] == [473, 473]
    assert len(list((tmp_path/'labels').glob('*.png'))) == len(pm)
    r = subprocess.run([sys.executable, '-m', 'iaunet_fastai.cli', 'masks', str(img_dir), str(tmp_path/'c2'), '--parser', 'schp',
                        '--weights', str(tmp_path/'nope.pth')], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 1 and 'nope.pth' in r.stderr and 'exp-schp-201908261155-lip.pth' in r.stderr


def test_bf16_runs_on_cpu():
    net = randomize(SCHPNet(20, TINY), 9).eval()
    img = np.random.default_rng(0).integers(0, 256, (40, 20, 3), dtype=np.uint8)
    a = schp_parse_images(net, [img], (49, 49), precision='bf16')[0]
    b = schp_parse_images(net, [img], (49, 49))[0]
    assert a.shape == b.shape == (40, 20) and a.dtype == np.uint8
    with pytest.raises(ReIDInputError, match='precision'): schp_parse_images(net, [img], (49, 49), precision='half')
