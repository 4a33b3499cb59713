"""The fastai data side: batch contract, P×K sampling, shared flips for masks and clips, seeds, workers, bad input."""
import warnings
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from iaunet_fastai.core import ReIDInputError
from iaunet_fastai.data import *
from iaunet_fastai.datasets import market1501_df

SIZE = (32, 16)


def jpeg(p, pid, cam, frame=0, size=(16, 32)):
    "An asymmetric picture: left half red (255, ., .), right half dark; colour encodes pid/cam/frame."
    p = Path(p); p.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[:] = (10, (37*pid) % 200, (50*cam + 20*frame) % 200)
    a[:, :size[0]//2, 0] = 255
    Image.fromarray(a).save(p, quality=95)
    return p


def image_df(root, n_ids=8, per_id=4, single=()):
    rows = []
    for pid in range(1, n_ids+1):
        n = 1 if pid in single else per_id
        for k in range(n): rows.append((jpeg(root/f'train/{pid:04d}_{k}.jpg', pid, k % 3), pid, k % 3, 'train'))
        rows.append((jpeg(root/f'query/{pid:04d}.jpg', pid, 0), pid, 0, 'query'))
        rows.append((jpeg(root/f'gallery/{pid:04d}.jpg', pid, 1), pid, 1, 'gallery'))
    return pd.DataFrame([dict(path=str(p), pid=i, camid=c, split=s) for p, i, c, s in rows])


def video_df(root, n_ids=6, lens=(7, 5), short=()):
    rows = []
    for split in ('train', 'query', 'gallery'):
        for pid in range(1, n_ids+1):
            for t, n in enumerate(lens if split == 'train' else lens[:1]):
                if split == 'train' and pid in short: n = 2
                cam = t if split != 'gallery' else 1
                ps = [str(jpeg(root/f'{split}/{pid:04d}/{t}/{f:03d}.jpg', pid, cam, f)) for f in range(n)]
                rows.append(dict(paths=ps, pid=pid, camid=cam, split=split, trackid=t, n_frames=n))
    return pd.DataFrame(rows)


class HalfMasks:
    "Part maps: label 1 on the left half (where the image is red), 2 on the right; None for pid 8."
    def get(self, p):
        if Path(p).name.startswith('0008'): return None
        m = np.full((16, 8), 2, np.uint8); m[:, :4] = 1
        return m


def no_erase(dl):
    aug = [f for f in dl.after_batch.fs if isinstance(f, ReIDAugment)][0]
    aug.erase_p = 0.
    return aug


@pytest.fixture(scope='module')
def imgs(tmp_path_factory): return image_df(tmp_path_factory.mktemp('img'))


@pytest.fixture(scope='module')
def vids(tmp_path_factory): return video_df(tmp_path_factory.mktemp('vid'))


def test_image_batches_contract(imgs):
    with pytest.warns(UserWarning, match='4 of 32 train images have no valid part mask'):
        dls = reid_dls(imgs, size=SIZE, P=4, K=2, masks=HalfMasks(), num_workers=0, seed=1)
    assert isinstance(dls, ReIDDataLoaders) and dls.n_classes == 8 and dls.seq_len is None
    assert dls.img_size == SIZE and dls.vocab == list(range(1, 9)) and dls.pid2label[1] == 0
    assert 'label' not in imgs.columns and imgs.pid.min() == 1           # the frame is not relabelled
    batches = list(dls.train)
    assert len(batches) == len(dls.train) == 8 * (4 // 2) // 4          # the true number of batches
    for x, y, m in batches:
        assert x.shape == (8, 3, *SIZE) and x.dtype == torch.float32 and y.dtype == torch.long
        assert m.shape == (8, *SIZE) and m.dtype == torch.long
        ids = y.view(4, 2)
        assert (ids == ids[:, :1]).all() and len(set(ids[:, 0].tolist())) == 4       # P distinct × K same
        assert set(m.unique().tolist()) <= {0, 1, 2, 3, 4, 255}
        no_mask = y == dls.pid2label[8]
        assert (m[no_mask] == 255).all() and (m[~no_mask] != 255).all()
    assert abs(batches[0][0].mean().item()) < 3                          # normalised


def test_masks_flip_with_images(imgs):
    dls = reid_dls(imgs, size=SIZE, P=4, K=2, masks=HalfMasks(), num_workers=0, seed=3)
    no_erase(dls.train)
    flipped = []
    for _ in range(4):
        for x, y, m in dls.train:
            for xi, mi in zip(x, m):
                if (mi == 255).all(): continue
                red = xi[0] > 1.0                                          # the red half (normalised R of 255 ≈ 2.2)
                assert (red == (mi == 1)).float().mean() > 0.97              # mask label 1 sits on the red half
                flipped.append(bool(red[:, -1].all()))                     # red half moved to the right: flipped
    assert 0.2 < np.mean(flipped) < 0.8                                    # both cases happen (p = 0.5)
    # evaluation batches are never flipped nor erased
    x, pid, camid, isq, item = dls.valid.one_batch()
    assert (x[:, 0, :, :SIZE[1]//2 - 1] > 1.0).all()


def test_random_erasing_after_normalisation(imgs):
    dls = reid_dls(imgs, size=SIZE, P=4, K=2, masks=HalfMasks(), num_workers=0, seed=0)
    aug = [f for f in dls.train.after_batch.fs if isinstance(f, ReIDAugment)][0]
    aug.flip_p, aug.erase_p, aug.value = 0., 1., -7.
    x, y, m = dls.train.one_batch()
    er = (x == -7).all(1)                                                   # all 3 channels erased together
    frac = er.float().mean((1, 2))
    assert (frac > 0.015).all() and (frac < 0.45).all()                     # area 0.02-0.4 (rounding)
    assert ((m == 1) | (m == 2) | (m == 255)).all()                         # masks untouched by erasing


def test_pk_seed_new_and_workers(imgs):
    a = reid_dls(imgs, size=SIZE, P=4, K=2, num_workers=0, seed=7)
    b = reid_dls(imgs, size=SIZE, P=4, K=2, num_workers=2, seed=7)
    ea, eb = [list(a.train) for _ in range(2)], [list(b.train) for _ in range(2)]
    for ba, bb in zip(sum(ea, []), sum(eb, [])):
        assert torch.equal(ba[1], bb[1]) and torch.equal(ba[0], bb[0])    # same seed, 0 vs 2 workers: same batches
    assert not all(torch.equal(x[1], y[1]) for x, y in zip(ea[0], ea[1]))  # epochs differ
    n = a.train.new()
    assert isinstance(n, PKDataLoader) and (n.P, n.K, n.seed, len(n)) == (4, 2, 7, len(a.train))
    nb = list(n)
    assert len(nb) == len(a.train) and all(torch.equal(p[1], q[1]) for p, q in zip(nb, ea[0]))
    c = reid_dls(imgs, size=SIZE, P=4, K=2, num_workers=0, seed=8)
    assert not all(torch.equal(x[1], y[1]) for x, y in zip(ea[0], list(c.train)))


def test_small_identities_repeat_and_warn(tmp_path):
    df = image_df(tmp_path, n_ids=6, per_id=3, single=(2, 5))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        dls = reid_dls(df, size=SIZE, P=3, K=4, num_workers=0, seed=0)
    msgs = [str(x.message) for x in w if 'fewer than K=4' in str(x.message)]
    assert len(msgs) == 1 and msgs[0].startswith('6 of 6')
    for x, y in dls.train:
        ids = y.view(3, 4)
        assert (ids == ids[:, :1]).all()
    with pytest.raises(ReIDInputError, match='P=16 identities'):
        reid_dls(df, size=SIZE, P=16, K=4, num_workers=0)


def test_bad_inputs(tmp_path, imgs):
    bad = imgs.copy()
    p = Path(bad.path[0]); t = tmp_path/'broken_0001.jpg'
    t.write_bytes(p.read_bytes()[:300])                                     # truncated JPEG
    bad.loc[0, 'path'] = str(t)
    dls = reid_dls(bad, size=SIZE, P=8, K=4, num_workers=0, seed=0)
    with pytest.raises(ReIDInputError, match='broken_0001.jpg'):
        for _ in dls.train: pass
    with pytest.raises(ReIDInputError, match='empty query split'):
        reid_dls(imgs[imgs.split != 'query'], size=SIZE, P=4, K=2, num_workers=0)
    with pytest.raises(ReIDInputError, match='empty gallery split'):
        reid_dls(imgs[imgs.split != 'gallery'], size=SIZE, P=4, K=2, num_workers=0)
    with pytest.raises(ReIDInputError, match='empty train split'):
        reid_dls(imgs[imgs.split != 'train'], size=SIZE, P=4, K=2, num_workers=0)
    tr = reid_dls(imgs[imgs.split == 'train'], size=SIZE, P=4, K=2, num_workers=0, train_only=True)
    assert tr.valid is None and tr.query is None and len(tr.train) == 4
    with pytest.raises(ReIDInputError, match='camid'):
        reid_dls(imgs.drop(columns='camid'), size=SIZE)
    class WrongMasks:
        def get(self, p): return np.full((4, 4), 9, np.uint8)
    dls = reid_dls(imgs, size=SIZE, P=4, K=2, masks=WrongMasks(), num_workers=0)
    with pytest.raises(ReIDInputError, match=r"part mask for '.*\.jpg'"):
        dls.train.one_batch()


def test_tracklet_batches_and_shared_flip(vids):
    dls = reid_dls(vids, size=SIZE, P=3, K=2, seq_len=4, sample_stride=1, masks=HalfMasks(), num_workers=0, seed=0)
    assert dls.seq_len == 4
    no_erase(dls.train)
    flips = []
    for _ in range(3):
        for x, y, m in dls.train:
            assert x.shape == (6, 4, 3, *SIZE) and m.shape == (6, 4, *SIZE) and y.shape == (6,)
            for clip, mc in zip(x, m):
                red_right = [bool((f[0, :, -1] > 1.0).all()) for f in clip]
                assert len(set(red_right)) == 1                            # every frame of a clip: one flip
                for f, mf in zip(clip, mc):
                    if (mf == 255).all(): continue
                    assert ((f[0] > 1.0) == (mf == 1)).float().mean() > 0.97
                flips.append(red_right[0])
    assert 0.2 < np.mean(flips) < 0.8
    # one erasing box per clip
    aug = [f for f in dls.train.after_batch.fs if isinstance(f, ReIDAugment)][0]
    aug.erase_p, aug.value = 1., -7.
    x, y, m = dls.train.one_batch()
    er = (x == -7).all(2)                                                 # [B, T, H, W]
    assert er.any() and (er == er[:, :1]).all()


def test_tracklet_window_and_eval_clips(vids):
    dls = reid_dls(vids, size=SIZE, P=3, K=2, seq_len=4, sample_stride=2, num_workers=0, seed=0)
    for _ in range(5):
        for r, fr in dls.train.get_idxs()[:12]:
            n = len(dls.train.dataset.srcs[r])
            assert len(fr) == 4 and all(0 <= f < n for f in fr)
            if n >= 7: assert list(np.diff(fr)) == [2, 2, 2]                 # window with stride 2
            else: assert list(fr) == sorted(fr)                            # fallback: sorted random frames
    ev = dls.valid
    specs = ev.dataset.specs
    qg = pd.concat([dls.query_df, dls.gallery_df], ignore_index=True)
    for r, ps in enumerate(qg.paths):                                       # consecutive clips covering all frames
        fr = [f for rr, c in specs if rr == r for f in c]
        assert sorted(set(fr)) == list(range(len(ps))) and len(fr) % 4 == 0
    items, isq, pids = [], [], []
    for x, pid, camid, q, item in ev:
        assert x.shape[1:] == (4, 3, *SIZE)
        items += item.tolist(); isq += q.tolist(); pids += pid.tolist()
    assert items == sorted(items) and set(items) == set(range(len(qg)))
    assert isq == sorted(isq, reverse=True) and sum(isq) == sum(len(eval_clips(n, 4)) for n in dls.query_df.n_frames)
    assert pids == [qg.pid[i] for i in items]


def test_short_tracklets_warn(tmp_path):
    df = video_df(tmp_path, n_ids=4, short=(1, 2))
    with pytest.warns(UserWarning, match='4 of 8 train tracklets are shorter'):
        dls = reid_dls(df, size=SIZE, P=2, K=2, seq_len=4, num_workers=0, seed=0)
    x, y = dls.train.one_batch()
    assert x.shape == (4, 4, 3, *SIZE)


def test_show_batch(imgs, vids):
    import matplotlib; matplotlib.use('Agg')
    dls = reid_dls(imgs, size=SIZE, P=4, K=2, masks=HalfMasks(), num_workers=0, seed=0)
    assert len(dls.train.show_batch(max_n=4).axes) >= 4
    assert len(dls.valid.show_batch(max_n=4).axes) >= 4
    v = reid_dls(vids, size=SIZE, P=3, K=2, num_workers=0, seed=0)
    assert len(v.train.show_batch(max_n=2).axes) == 2 * 4


def test_with_real_part_mask_cache(imgs, tmp_path):
    pmod = pytest.importorskip('iaunet_fastai.part_masks')
    if not hasattr(pmod, 'PartMasks'): pytest.skip('part_masks.PartMasks not available')
    tr = imgs[imgs.split == 'train']
    names = [Path(p).name for p in tr.path]
    masks = np.stack([HalfMasks().get('x') for _ in names])
    try: pm = pmod.PartMasks(masks, names, np.ones(len(names), bool), {})
    except TypeError: pytest.skip('PartMasks signature differs')
    dls = reid_dls(imgs, size=SIZE, P=4, K=2, masks=pm, num_workers=0, seed=0)
    x, y, m = dls.train.one_batch()
    assert set(m.unique().tolist()) == {1, 2}


def test_synthetic_world_end_to_end(tmp_path):
    "Synthetic Market-1501 + its LIP label PNGs → real part-mask cache → reid_dls; synthetic MARS → clips."
    synth = pytest.importorskip('iaunet_fastai.synthetic')
    from iaunet_fastai.datasets import mars_df
    from iaunet_fastai.part_masks import precompute_part_masks
    root = Path(synth.make_synthetic_reid(tmp_path/'synth', preset='tiny'))
    precompute_part_masks(root/'Market-1501', tmp_path/'pm', parser='lip', label_dir=root/'parsing/Market-1501',
                          size=(64, 32), progress=False, verbose=False)
    df = market1501_df(root/'Market-1501')
    dls = reid_dls(df, size=SIZE, P=4, K=2, masks=tmp_path/'pm', num_workers=0, seed=0)   # masks given as a path
    x, y, m = dls.train.one_batch()
    assert x.shape == (8, 3, *SIZE) and set(m.unique().tolist()) <= {0, 1, 2, 3, 4} and (m > 0).any()
    v = reid_dls(mars_df(root/'MARS'), size=SIZE, P=2, K=2, num_workers=0, seed=0)
    assert v.train.one_batch()[0].shape == (4, 4, 3, *SIZE)
    n_clips = sum(len(eval_clips(n, 4)) for n in pd.concat([v.query_df, v.gallery_df]).n_frames)
    assert sum(b[0].shape[0] for b in v.valid) == n_clips


def test_truncated_image_with_workers(tmp_path, imgs):
    bad = imgs.copy()
    assert bad.split[1] == 'train'
    t = tmp_path/'cut_0003.jpg'; t.write_bytes(Path(bad.path[1]).read_bytes()[:250])
    bad.loc[1, 'path'] = str(t)
    dls = reid_dls(bad, size=SIZE, P=8, K=4, num_workers=2, seed=0)
    with pytest.raises(Exception, match='cut_0003.jpg'):                 # re-raised from the worker, file named
        for _ in dls.train: pass
    assert not dls.train.workers_alive                                     # a failed epoch stops the persistent workers
    with pytest.raises(ReIDInputError, match='cut_0003.jpg'):
        reid_dls(bad, size=SIZE, P=8, K=4, num_workers=0, seed=0).train.one_batch()


def ce_or_zero(pred, y, *rest):
    "Cross-entropy on train batches `(x, y)`; evaluation batches `(x, pid, camid, is_query, item)` give 0."
    if rest: return pred.sum() * 0.
    return torch.nn.functional.cross_entropy(pred, y)


def test_export_keeps_metadata(tmp_path, imgs):
    from fastai.learner import Learner, load_learner
    dls = reid_dls(imgs, size=SIZE, P=4, K=2, num_workers=0, seed=0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, dls.n_classes))
    learn = Learner(dls, net, loss_func=ce_or_zero)
    learn.fit(1, 1e-3)                                                      # fastai trains on the P×K loader
    learn.export(tmp_path/'learn.pkl')
    back = load_learner(tmp_path/'learn.pkl')
    assert (back.dls.n_classes, back.dls.vocab, back.dls.img_size, back.dls.seq_len) == (8, list(range(1, 9)), SIZE, None)


def _epochs(df, persistent, **kw):
    "Batches of: an epoch abandoned after one batch, then two epochs of train and valid; the main RNG after; worker pids."
    from fastai.vision.augment import RandomResizedCrop
    torch.manual_seed(0)
    dls = reid_dls(df, size=SIZE, P=4, K=2, num_workers=2, seed=3, persistent_workers=persistent, **kw)
    it = iter(dls.train); out = [next(it)]; del it
    pids = []
    for _ in range(2):
        out += list(dls.train) + list(dls.valid)
        pids.append(dls.train.worker_pids if persistent else None)
    return out, torch.rand(3), pids, dls


@pytest.mark.parametrize('kind', ['images', 'clips'])
def test_persistent_workers_give_the_batches_of_new_workers(kind, imgs, vids):
    from fastai.vision.augment import RandomResizedCrop
    df, kw = (imgs, dict(item_tfms=[RandomResizedCrop(SIZE, min_scale=0.3)])) if kind == 'images' else (vids, dict(seq_len=3))
    new, r_new, _, d_new = _epochs(df, False, **kw)
    kept, r_kept, pids, d_kept = _epochs(df, True, **kw)
    assert len(new) == len(kept) > 10
    for a, b in zip(new, kept): assert all(torch.equal(x, y) for x, y in zip(a, b))   # random crops included
    assert torch.equal(r_new, r_kept)                                       # the main process's random state too
    assert pids[0] == pids[1] and len(pids[0]) == 2                         # the same two processes, every epoch
    assert d_kept.train.workers_alive and d_kept.valid.workers_alive and not d_new.train.workers_alive
    assert not d_kept.query.fake_l.persistent_workers                       # query/gallery are iterated once
    assert not d_kept.train.new().fake_l.persistent_workers                # copies (`get_preds`) are used once
    d_kept.valid.bs = 3                                                     # what the workers copied changed: new ones
    old = d_kept.valid.worker_pids
    vb = list(d_kept.valid)
    assert [len(b[0]) for b in vb][0] == 3 and sum(len(b[0]) for b in vb) == len(d_kept.valid.dataset)
    assert d_kept.valid.worker_pids != old
    pids = d_kept.train.worker_pids
    d_kept.train.shutdown_workers(); assert not d_kept.train.workers_alive
    import multiprocessing as mp                                            # the processes are gone, not just forgotten
    assert pids and not set(pids) & {p.pid for p in mp.active_children()}
    assert len(list(d_kept.train)) == len(d_kept.train)                     # and start again when needed


_FORKSERVER = """
import multiprocessing as mp, sys, pickle, torch
from iaunet_fastai.data import reid_dls
if __name__ == '__main__':
    mp.set_start_method('forkserver', force=True)
    df = pickle.load(open(sys.argv[1], 'rb'))
    res = []
    for pw in (False, True):
        torch.manual_seed(0)
        dls = reid_dls(df, size=(32, 16), P=4, K=2, num_workers=2, seed=3, persistent_workers=pw)
        out = [b for _ in range(2) for b in list(dls.train) + list(dls.valid)]
        res.append((out, torch.rand(2)))
    same = all(torch.equal(x, y) for a, b in zip(res[0][0], res[1][0]) for x, y in zip(a, b)) and torch.equal(res[0][1], res[1][1])
    print('SAME' if same and len(res[0][0]) == len(res[1][0]) > 4 and dls.train.workers_alive else 'DIFFERENT')
"""


def test_persistent_workers_under_forkserver(tmp_path, imgs):
    "Python 3.14's default start method: the workers get the feed by pickling (shared memory), not by fork."
    import pickle, subprocess, sys
    if 'forkserver' not in __import__('multiprocessing').get_all_start_methods(): pytest.skip('no forkserver here')
    (tmp_path/'s.py').write_text(_FORKSERVER); pickle.dump(imgs, open(tmp_path/'df.pkl', 'wb'))
    r = subprocess.run([sys.executable, str(tmp_path/'s.py'), str(tmp_path/'df.pkl')], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith('SAME'), r.stdout + r.stderr[-2000:]


def _alive_children():
    import multiprocessing as mp
    return len(mp.active_children())


def test_persistent_workers_replaced_when_dead_and_concurrent_passes(imgs):
    "Workers that exited between epochs (a Ctrl-C reaches them too) are replaced; two passes at once each get their batches."
    import os, signal, time
    new, _, _, _ = _epochs(imgs, False)
    dls = reid_dls(imgs, size=SIZE, P=4, K=2, num_workers=2, seed=3)
    first = list(dls.valid)
    for pid in dls.valid.worker_pids: os.kill(pid, signal.SIGINT)
    time.sleep(0.5)
    again = list(dls.valid)                                                 # no "worker exited unexpectedly"
    assert len(again) == len(first) and all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    assert dls.valid.workers_alive
    outer = iter(dls.valid); b0 = next(outer)
    inner = list(dls.valid)                                                 # while `outer` is half-way
    rest = [b0] + list(outer)
    for x in (inner, rest): assert all(torch.equal(a[0], b[0]) for a, b in zip(first, x)) and len(x) == len(first)
    outer = iter(dls.valid); b0 = next(outer)                               # a second pass that fails half-way
    inner = iter(dls.valid); next(inner)
    with pytest.raises(RuntimeError, match='simulated'): inner.throw(RuntimeError('simulated failure'))
    assert len(list(dls.valid)) == len(first)                               # a third pass, while `outer` is held
    rest = [b0] + list(outer)                                               # `outer` still gets all its batches
    assert len(rest) == len(first) and all(torch.equal(a[0], b[0]) for a, b in zip(first, rest))
    import pickle
    assert '_in_use' not in pickle.loads(pickle.dumps(dls.valid)).__dict__
    n = _alive_children()
    for _ in range(3): list(dls.valid.new())                               # one-pass copies leave no workers behind
    time.sleep(0.5)
    assert _alive_children() <= n


def test_distributed_wrapper_keeps_workers_and_batches(imgs):
    "`ReIDDistributedDL` (what multi-GPU training wraps loaders in) keeps the workers of a persistent loader, same batches."
    from iaunet_fastai.distributed import ReIDDistributedDL
    out = {}
    for pw in (False, True):
        dls = reid_dls(imgs, size=SIZE, P=4, K=2, num_workers=2, seed=3, persistent_workers=pw)
        list(dls.train); assert dls.train.workers_alive == pw                # an epoch before the wrapping, in both
        ddl = ReIDDistributedDL(dls.train, rank=1, world_size=2)           # process 1 of 2 (no process group needed)
        assert not dls.train.workers_alive                                  # the wrapper takes over: no idle second set
        out[pw] = [list(ddl) for _ in range(2)]
        if pw:
            pids = ddl.worker_pids
            list(ddl)
            assert ddl.worker_pids == pids
            ddl.shutdown_workers()
    assert len(out[True][0]) == len(ddl) > 0
    for ea, eb in zip(out[False], out[True]):
        assert len(ea) == len(eb) and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ea, eb))
