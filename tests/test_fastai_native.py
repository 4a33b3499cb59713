"""A first-class fastai citizen: what a fastai user types first (predict, get_preds, test_dl, show_results, summary,
export/load_learner, dls.c, bs/P/K changes, item/batch transforms, DataBlock dls, train-only fits), on images AND
tracklets of the tiny synthetic world (resnet18 at 64×32, num_workers=0)."""
import math, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from iaunet_fastai.all import *
from fastai.data.block import DataBlock, CategoryBlock
from fastai.data.transforms import ColReader, RandomSplitter
from fastai.vision.augment import aug_transforms, FlipItem, RandomResizedCrop
from fasttransform import Transform
from fastai.torch_core import TensorImage

SIZE = (64, 32)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp('world')
    syn = make_synthetic_reid(root/'synth', preset='tiny', img_size=SIZE, datasets=('market1501', 'mars'), workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        masks = precompute_part_masks(syn/'Market-1501', root/'masks', parser='lip',
                                      label_dir=syn/'parsing'/'Market-1501', size=SIZE)
    return dict(root=root, img=market1501_df(syn/'Market-1501'), vid=mars_df(syn/'MARS'), masks=masks)


def _dls(world, kind, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if kind == 'img': return reid_dls(world['img'], size=SIZE, P=4, K=4, num_workers=0, seed=0, masks=world['masks'], **kw)
        return reid_dls(world['vid'], size=SIZE, P=2, K=2, seq_len=4, num_workers=0, seed=0, **kw)


@pytest.fixture(scope='module', params=['img', 'vid'])
def trained(request, world, tmp_path_factory):
    kind = request.param
    d = tmp_path_factory.mktemp(f'learn_{kind}')
    dls = _dls(world, kind)
    learn = iaunet_learner(dls, 'resnet18', pretrained=False, path=d)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn.fit(1, 1e-3)
    return kind, learn, world[kind], d


def _items(df, n):
    return list(df['paths' if 'paths' in df.columns else 'path'][:n])


def test_summary_runs(trained):
    kind, learn, _, _ = trained
    s = learn.summary()
    assert ('VideoIAUnet' if kind == 'vid' else 'IAUnet') in s and 'Total params' in s


def test_get_preds_any_split_and_with_loss(trained):
    kind, learn, _, _ = trained
    for ds_idx in (0, 1):
        preds, targs = learn.get_preds(ds_idx=ds_idx)
        assert preds.ndim == 2 and preds.shape[1] == learn.model.embed_dim
        torch.testing.assert_close(preds.norm(dim=1), torch.ones(len(preds)))
    _, _, losses = learn.get_preds(with_loss=True)
    assert losses.shape == (len(learn.dls.valid.dataset),) and torch.isfinite(losses).all()
    _, _, l0 = learn.get_preds(ds_idx=0, with_loss=True)
    assert l0.ndim == 1 and len(l0) == learn.dls.train.n and torch.isfinite(l0).all()


def test_predict_returns_normalised_embedding_and_ranked_gallery(trained):
    kind, learn, df, _ = trained
    item = _items(df, 1)[0]
    ranked, order, emb = learn.predict(item)
    assert ranked is None and order is None
    assert emb.shape == (learn.model.embed_dim,)
    assert emb.norm().item() == pytest.approx(1, abs=1e-5)
    torch.testing.assert_close(emb, FeatureExtractor(learn, device='cpu')([item])[0], atol=1e-4, rtol=1e-4)
    # PIL images (tracklets: lists of PIL frames) give the same embedding
    pil = [Image.open(p) for p in item] if kind == 'vid' else Image.open(item)
    torch.testing.assert_close(learn.predict(pil)[2], emb, atol=1e-4, rtol=1e-4)
    if kind == 'img':
        torch.testing.assert_close(learn.predict(np.asarray(Image.open(item).convert('RGB')))[2], emb, atol=1e-4, rtol=1e-4)
    # a gallery the user passes: the query itself ranks first at distance ~0
    gal = df[df.split == 'gallery'].reset_index(drop=True)
    q = _items(gal, 3)[2]
    ranked, order, e = learn.predict(q, gallery=gal, k=4)
    assert len(ranked) == 4 and ranked['rank'].tolist() == [1, 2, 3, 4] and ranked.dist.is_monotonic_increasing
    assert int(order[0]) == 2 and ranked.dist.iloc[0] == pytest.approx(0, abs=1e-4)
    assert sorted(order.tolist()) == list(range(len(gal)))
    # a stored gallery (dls.gallery_df by default)
    learn.set_gallery()
    ranked, _, _ = learn.predict(item, k=3)
    assert list(ranked.columns[:4]) == list(learn.dls.gallery_df.columns[:4]) and len(ranked) == 3
    learn.gallery_feats = None


def test_test_dl_loads_items(trained):
    kind, learn, df, _ = trained
    items = _items(df, 3)
    dl = learn.dls.test_dl(items)
    x = dl.one_batch()[0]
    assert x.dtype == torch.float32 and tuple(x.shape[-3:]) == (3, *SIZE)
    if kind == 'vid':
        assert x.ndim == 5 and x.shape[1] == 4 and list(dl.owner[:1]) == [0]
        assert len(dl.dataset) == sum(len(eval_clips(len(t), 4)) for t in items)
    else: assert x.shape[0] == 3
    preds, _ = learn.get_preds(dl=dl)
    assert preds.shape == (3, learn.model.embed_dim)                     # one embedding per image / tracklet
    torch.testing.assert_close(preds, FeatureExtractor(learn, device='cpu')(items), atol=1e-4, rtol=1e-4)
    with pytest.raises(ReIDInputError, match='cannot load a test item'): learn.dls.test_dl([3.5]).one_batch()
    with pytest.raises(ReIDInputError, match='no items'): learn.dls.test_dl([])


def test_export_load_learner_predict_and_get_preds(trained):
    kind, learn, df, d = trained
    items = _items(df, 3)
    learn.export('export.pkl')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        l2 = load_learner(d/'export.pkl')
    e = l2.predict(items[0])[2]
    torch.testing.assert_close(e, learn.predict(items[0])[2], atol=1e-5, rtol=1e-5)
    p, _ = l2.get_preds(dl=l2.dls.test_dl(items))
    torch.testing.assert_close(p, learn.get_preds(dl=learn.dls.test_dl(items))[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ReIDInputError, match='pass set_gallery'): l2.set_gallery()


def test_show_results_green_red_borders(trained):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba
    kind, learn, _, _ = trained
    fig = learn.show_results(max_n=2, k=3, seed=0)
    axs = np.array(fig.axes).reshape(2, 4)
    cols = {tuple(ax.spines['top'].get_edgecolor()) for ax in axs[:, 1:].flat if ax.images}
    assert cols and cols <= {to_rgba('green'), to_rgba('red')}
    assert all(tuple(ax.spines['top'].get_edgecolor()) == to_rgba('tab:blue') for ax in axs[:, 0])
    plt.close(fig)


def test_show_part_maps(trained):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    kind, learn, df, _ = trained
    items = _items(df[df.split == 'train'], 2)
    x, maps = part_maps(learn, items)
    assert len(maps) == len(learn.model.iau_stages)
    assert all(((m >= 0) & (m <= 1)).all() for m in maps)
    fig = show_part_maps(learn, items)
    K = maps[0].shape[-3]
    assert len(fig.axes) == 2*(2 + K*len(maps))
    if kind == 'img': assert fig.axes[1].images, "the precomputed target mask is shown"
    plt.close(fig)


def test_dls_c_and_bs_changes(world):
    for kind in ('img', 'vid'):
        dls = _dls(world, kind)
        tr = world[kind][world[kind].split == 'train']
        assert dls.c == tr.pid.nunique() == dls.n_classes
        K = dls.K
        b = dls.train.new(bs=2*K).one_batch()
        assert len(b[0]) == 2*K and len(b[1].unique()) == 2          # honoured as P = bs // K
        assert len(dls.train.new(P=2, K=1).one_batch()[0]) == 2
        with pytest.raises(ReIDInputError, match='not a multiple of K'): dls.train.new(bs=2*K + 1)


def test_train_only_fits_without_validation(world):
    for kind in ('img', 'vid'):
        dls = _dls(world, kind, train_only=True)
        assert dls.valid is None and len(dls[1]) == 0
        learn = iaunet_learner(dls, 'resnet18', pretrained=False)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            learn.fit(1)
        names = learn.recorder.metric_names
        assert not {'rank1', 'mAP'} & set(names) and 'train_ce' in names
        assert np.isfinite(learn.recorder.losses[-1].item())


class _CountTrain(Transform):
    split_idx, order = 0, 50
    def __init__(self): self.n = 0
    def encodes(self, x: TensorImage): self.n += 1; return x


def test_train_only_transform_runs_on_train_loader(world):
    for kind in ('img', 'vid'):
        t = _CountTrain()
        if kind == 'img': dls = _dls(world, kind, batch_tfms=[t])
        else:
            dls = _dls(world, kind)
            dls.train.after_batch.add(t); dls.valid.after_batch.add(t)
        dls.train.one_batch(); assert t.n >= 1
        n = t.n; dls.valid.one_batch(); assert t.n == n               # not on the evaluation loader


def test_item_tfms_masks_follow_and_clips_consistent(world):
    plain = _dls(world, 'img')
    flip = _dls(world, 'img', item_tfms=[FlipItem(p=1.)])
    x0, _, m0 = plain.train.dataset[0]; x1, _, m1 = flip.train.dataset[0]
    assert torch.equal(x1, x0.flip(-1)) and torch.equal(m1, m0.flip(-1)) and (m0 != 255).any()
    # a random crop is drawn once per clip: a clip of one repeated frame stays identical frame to frame
    vdf = world['vid'].copy()
    vdf['paths'] = vdf.paths.map(lambda ps: [ps[0]]*len(ps))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        v = reid_dls(vdf, size=SIZE, P=2, K=2, seq_len=4, num_workers=0, seed=0,
                     item_tfms=[RandomResizedCrop(SIZE, min_scale=0.3)])
    xb = v.train.one_batch()[0]
    assert xb.shape[1:] == (4, 3, *SIZE)
    assert all(torch.equal(xb[i, 0], xb[i, t]) for i in range(len(xb)) for t in range(4))


def test_aug_transforms_images_and_tracklet_refusal(world):
    dls = _dls(world, 'img', batch_tfms=aug_transforms(max_rotate=30, p_affine=1.))
    x, y, m = dls.train.one_batch()
    assert x.shape[1:] == (3, *SIZE) and m.shape[1:] == SIZE and set(m.unique().tolist()) <= {0, 1, 2, 3, 4, 255}
    with pytest.raises(ReIDInputError, match='item_tfms'): _dls(world, 'vid', batch_tfms=aug_transforms())


def test_datablock_dls_into_iaunet_learner(world):
    df = world['img']
    db = DataBlock(blocks=(ImageReIDBlock(SIZE), CategoryBlock), get_x=ColReader('path'), get_y=ColReader('pid'),
                   splitter=RandomSplitter(0.25, seed=0))
    cdls = db.dataloaders(df[df.split == 'train'], bs=8, num_workers=0)
    with pytest.warns(UserWarning, match='no P×K'):
        learn = iaunet_learner(cdls, 'resnet18', pretrained=False, splitter=reid_splitter)
    assert learn.model.num_classes == cdls.c
    learn.fit(1)
    assert 'rank1' not in learn.recorder.metric_names
    assert learn.predict(df.path[0])[2].shape == (learn.model.embed_dim,)
    with pytest.raises(ReIDInputError, match='reid_dls'): iaunet_learner(object(), 'resnet18', pretrained=False)


def test_splitter_pass_through(world):
    dls = _dls(world, 'img')
    split = lambda m: [list(m.parameters())]
    learn = iaunet_learner(dls, 'resnet18', pretrained=False, splitter=split)
    assert learn.splitter is split


def test_show_ranked_tracklets(world):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    v = world['vid']
    q, g = v[v.split == 'query'], v[v.split == 'gallery']
    fig = show_ranked(list(q.paths), list(g.paths), torch.rand(len(q), len(g)), q.pid.values, g.pid.values,
                      q.camid.values, g.camid.values, k=2)
    assert fig.axes[0].images[0].get_array().shape[:2] == SIZE
    plt.close(fig)


def test_combine_datasets_and_evaluate_targets(world):
    df = world['img']
    cm = combine_datasets({'a': df, 'b': df})
    assert cm.pid.nunique() == 2*df.pid.nunique() and set(cm.dataset) == {'a', 'b'}
    dls = reid_dls(cm, size=SIZE, P=4, K=4, num_workers=0, seed=0)
    assert dls.c == 2*df[df.split == 'train'].pid.nunique()
    learn = iaunet_learner(dls, 'resnet18', pretrained=False)
    res = evaluate_targets(learn)
    assert set(res) == {'a', 'b'}
    # the two targets hold the same pictures: the same numbers, each from its own gallery only
    assert res['a']['mAP'] == pytest.approx(res['b']['mAP'], abs=1e-5) and 0 <= res['a']['rank1'] <= 1
    with pytest.raises(ReIDInputError, match='combine_datasets'): evaluate_targets(iaunet_learner(_dls(world, 'img'), 'resnet18', pretrained=False))


def test_interpretation_top_losses_and_clear_classification_refusal(trained):
    from fastai.interpret import Interpretation, ClassificationInterpretation
    kind, learn, _, _ = trained
    losses, idx = Interpretation.from_learner(learn).top_losses(3)
    assert len(losses) == 3 and (losses[:-1] >= losses[1:]).all()
    with pytest.raises(AttributeError, match='Interpretation.from_learner'): ClassificationInterpretation.from_learner(learn)


@pytest.mark.parametrize('kind', ['img', 'vid'])
def test_to_channelslast_trains_images_and_clips(world, kind):
    "fastai's `learn.to_channelslast()` (the README's GPU advice) on both learners: the video model has 5-D weights too."
    dls = _dls(world, kind)
    learn = iaunet_learner(dls, 'resnet18', pretrained=False).to_channelslast(use_amp=False)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    w = learn.model.backbone.conv1.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    assert all(math.isfinite(v) for v in learn.recorder.values[-1][:2])


def test_event_dispatch_cache_never_skips_a_new_callback():
    "A callback freed after a fit cannot lend its `id` to a new one while the dispatch cache holds it (review finding)."
    import torch.nn as nn
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.callback.core import Callback
    from iaunet_fastai.reid_learner import ReIDLearner
    ds = list(zip(torch.randn(16, 3), torch.randn(16, 1)))
    learn = ReIDLearner(DataLoaders(DataLoader(ds, bs=4), DataLoader(ds, bs=4)), nn.Linear(3, 1), loss_func=nn.MSELoss())
    class Quiet(Callback):                                  # no per-batch event
        def before_fit(self): pass
    class Counter(Callback):
        def __init__(self): self.n = 0
        def after_batch(self): self.n += 1
    for _ in range(10):
        q = Quiet(); learn.add_cb(q)
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
        learn.remove_cb(q); del q
        c = Counter(); learn.add_cb(c)
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
        learn.remove_cb(c)
        assert c.n == 8                                      # 4 training + 4 validation batches
