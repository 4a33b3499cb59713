"""fastai-native, second pass (issue 24): what an experienced fastai user tries in the first week works on reID loaders
(images and tracklets) or is refused with a `ReIDInputError` at the call (learner creation or fit start), never after
an epoch. One test (or more) per row of the issue's table; tiny synthetic world, resnet18 at 64×32, num_workers=0."""
import inspect, json, subprocess, sys, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from iaunet_fastai.all import *
from fastai.data.block import DataBlock, CategoryBlock
from fastai.data.transforms import ColReader, RandomSplitter
from fastai.vision.augment import aug_transforms
from fastai.metrics import accuracy, error_rate
from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropy
from fastai.callback.mixup import MixUp, CutMix
from fastai.torch_core import set_seed

from test_fastai_native import world, trained, _dls, _items, SIZE   # the shared tiny world and trained learners

KINDS = ['img', 'vid']


def _fresh(world, kind, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return iaunet_learner(_dls(world, kind), 'resnet18', pretrained=False, **kw)


def _quiet_fit(learn, n=1, **kw):
    with warnings.catch_warnings(), learn.no_bar(), learn.no_logging():
        warnings.simplefilter('ignore')
        learn.fit(n, 1e-3, **kw)


# row 1: learn.tta()
def test_row01_tta_is_flip_averaged_embedding(trained):
    kind, learn, df, _ = trained
    items = _items(df, 3)
    p, _ = learn.tta(dl=learn.dls.test_dl(items))
    assert p.shape == (3, learn.model.embed_dim)
    torch.testing.assert_close(p, FeatureExtractor(learn, device='cpu', flip_tta=True)(items), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(p, learn.get_preds(dl=learn.dls.test_dl(items))[0], atol=1e-4)
    pv, tv = learn.tta()
    assert len(pv) == len(learn.dls.valid.dataset) and torch.isfinite(pv).all()
    with pytest.raises(ReIDInputError, match='flip'): learn.tta(item_tfms=[lambda x: x])


# row 2: Interpretation.plot_top_losses
def test_row02_plot_top_losses_shows_query_images_with_loss(trained):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from fastai.interpret import Interpretation
    kind, learn, _, _ = trained
    interp = Interpretation.from_learner(learn)
    losses, idx = interp.top_losses(3)
    fig = interp.plot_top_losses(3)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert len(titles) == 3
    assert all(f'{l:.2f}' in t for l, t in zip(losses.tolist(), titles))
    assert all(('query' in t or 'gallery' in t) and 'pid' in t for t in titles)
    plt.close('all')


# row 3: progressive resizing
@pytest.mark.parametrize('kind', KINDS)
def test_row03_recorded_input_size_follows_learn_dls(world, kind, tmp_path):
    learn = _fresh(world, kind, path=tmp_path)
    big = (96, 48)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if kind == 'img': learn.dls = reid_dls(world['img'], size=big, P=4, K=4, num_workers=0, seed=0)
        else: learn.dls = reid_dls(world['vid'], size=big, P=2, K=2, seq_len=4, num_workers=0, seed=0)
    f = save_reid_model(learn, tmp_path/'m.pth')
    assert tuple(torch.load(f, weights_only=True)['reid_config']['img_size']) == big
    assert FeatureExtractor(learn, device='cpu').size == big
    item = _items(world[kind], 1)[0]
    torch.testing.assert_close(FeatureExtractor(f, device='cpu')([item])[0], learn.predict(item)[2], atol=1e-4, rtol=1e-4)
    learn.export('e.pkl')
    assert FeatureExtractor(tmp_path/'e.pkl', device='cpu').size == big
    _quiet_fit(learn)                                     # a fit at the new size records it on the model itself
    assert tuple(learn.model.reid_config['img_size']) == big
    assert tuple(torch.load(save_reid_model(learn.model, tmp_path/'m2.pth'), weights_only=True)['reid_config']['img_size']) == big


# row 4: validate()
@pytest.mark.parametrize('kind', KINDS)
def test_row04_validate_has_no_stale_train_columns_and_refuses_test_dl(world, kind):
    learn = _fresh(world, kind)
    res = learn.validate()
    assert len(res) == 1 + 4 and all(np.isfinite(v) for v in res)        # valid_loss, rank1, rank5, mAP, mINP
    _quiet_fit(learn)
    res = learn.validate()
    assert len(res) == 1 + 4 and all(v is not None and np.isfinite(v) for v in res)
    assert 'train_ce' in learn.recorder.metric_names                   # the training table still has the columns
    with pytest.raises(ReIDInputError, match='test_dl'): learn.validate(dl=learn.dls.test_dl(_items(world[kind], 3)))


# row 5: metrics=accuracy on reid_dls; a user metric next to the retrieval columns
def _mean_pid_norm(emb, pid, camid, is_query, item): return emb.norm(dim=1).mean()

@pytest.mark.parametrize('kind', KINDS)
def test_row05_classification_metric_refused_user_metric_added(world, kind):
    for m in (accuracy, [error_rate]):
        with pytest.raises(ReIDInputError, match='rank1'): _fresh(world, kind, metrics=m)
    with pytest.raises(ReIDInputError, match='pid, camid'): _fresh(world, kind, metrics=lambda a, b: a.mean())
    learn = _fresh(world, kind, metrics=_mean_pid_norm)
    res = learn.validate()
    names = [m.name for m in learn.metrics]
    assert {'rank1', 'mAP', '_mean_pid_norm'} <= set(names)
    assert res[1 + names.index('_mean_pid_norm') - 3] == pytest.approx(1, abs=1e-4)   # after the 3 train_* columns


# row 6: DataBlock (ImageReIDBlock, CategoryBlock) + accuracy
def test_row06_datablock_accuracy_refused_at_creation(world):
    df = world['img']
    db = DataBlock(blocks=(ImageReIDBlock(SIZE), CategoryBlock), get_x=ColReader('path'), get_y=ColReader('pid'),
                   splitter=RandomSplitter(0.25, seed=0))
    cdls = db.dataloaders(df[df.split == 'train'], bs=8, num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with pytest.raises(ReIDInputError, match='embeddings'):
            iaunet_learner(cdls, 'resnet18', pretrained=False, metrics=accuracy)


# row 7: fastai classification losses train on the logits
@pytest.mark.parametrize('kind', KINDS)
def test_row07_fastai_classification_loss_trains_on_logits(world, kind):
    for lf in ((CrossEntropyLossFlat(),) if kind == 'img' else (LabelSmoothingCrossEntropy(),)):   # one fit each
        learn = _fresh(world, kind, loss_func=lf)
        _quiet_fit(learn)
        names, vals = learn.recorder.metric_names, learn.recorder.values[-1]
        row = dict(zip(names[1:-1], vals))
        assert np.isfinite(row['train_loss']) and np.isfinite(row['valid_loss'])
        assert row['train_ce'] == pytest.approx(row['train_loss'], rel=0.5) and row['train_triplet'] == 0
        assert 0 <= row['rank1'] <= 1
        xb, *yb = learn.dls.one_batch()
        learn.model.train()
        logits = learn.model(xb)[0]
        plain = lambda t: t.as_subclass(torch.Tensor)
        torch.testing.assert_close(learn.loss_func(learn.model(xb), *yb), lf(plain(logits), plain(yb[0])), atol=1e-3, rtol=1e-3)


# row 8: loss_func(model(xb), *yb) on one_batch
@pytest.mark.parametrize('kind', KINDS)
def test_row08_loss_on_one_batch(world, kind):
    learn = _fresh(world, kind)
    xb, *yb = learn.dls.one_batch()
    learn.model.train()
    l = learn.loss_func(learn.model(xb), *yb)
    assert l.ndim == 0 and torch.isfinite(l)
    l.backward()


# row 9: MixUp / CutMix refused at fit start
@pytest.mark.parametrize('kind', KINDS)
def test_row09_mixup_cutmix_refused_at_fit(world, kind):
    learn = _fresh(world, kind)
    for cb in (MixUp(), CutMix()):
        with pytest.raises(ReIDInputError, match='identity'): learn.fit(1, cbs=cb)
        learn.add_cb(cb)
        with pytest.raises(ReIDInputError, match='random erasing'): learn.fit_one_cycle(1)
        learn.remove_cb(cb)
    assert not getattr(learn.recorder, "losses", None)                        # no batch was trained


# row 10: set_seed makes reid_dls runs reproducible
@pytest.mark.parametrize('kind', KINDS)
def test_row10_set_seed_reproducible_without_dls_seed(world, kind):
    def run():
        set_seed(42, reproducible=True)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            kw = dict(size=SIZE, num_workers=0, train_only=True)          # training is what the seed must repeat
            if kind == 'img': dls = reid_dls(world['img'], P=4, K=4, masks=world['masks'], **kw)
            else: dls = reid_dls(world['vid'], P=2, K=2, seq_len=4, **kw)
            learn = iaunet_learner(dls, 'resnet18', pretrained=False)
        _quiet_fit(learn)
        return torch.stack(list(learn.recorder.losses))
    a, b = run(), run()
    torch.testing.assert_close(a, b)


# row 11: FeatureExtractor, predict and test_dl accept the same inputs
def test_row11_same_inputs_everywhere(trained):
    kind, learn, df, _ = trained
    fe = FeatureExtractor(learn, device='cpu')
    items = _items(df, 2)
    torch.testing.assert_close(fe(df.iloc[:2]), fe(items))                    # a frame: its path(s) column
    first = items[0] if kind == 'img' else items[0][0]
    arr = np.asarray(Image.open(first).convert('RGB'))
    for ok in (arr.astype(np.float32) / 255, torch.from_numpy(arr).permute(2, 0, 1).float() / 255, arr.astype(np.int64)):
        it = ok if kind == 'img' else [ok] * 4
        e_fe, e_pred = fe([it])[0], learn.predict(it)[2]
        torch.testing.assert_close(e_pred, e_fe, atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(learn.get_preds(dl=learn.dls.test_dl([it]))[0][0], e_pred, atol=1e-5, rtol=1e-5)
    for bad, msg in ((arr.astype(np.float32), r'\[0, 1\]'), (arr[..., :2], r'\[H, W, 3\]')):
        it = bad if kind == 'img' else [bad] * 4
        with pytest.raises(ReIDInputError, match=msg): fe([it])
        with pytest.raises(ReIDInputError, match=msg): learn.predict(it)


# rows 12, 13: folder_df with named identities, camera numbering, evaluable splits
def _own_photos(root, name_of, cam_of):
    for split, pids in (('train', range(6)), ('query', range(6, 9)), ('gallery', range(6, 9))):
        for p in pids:
            for j in range(4 if split == 'train' else 2):
                f = root/split/name_of(p)/f'{j:03d}{cam_of(split, j)}.jpg'
                f.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((64, 32, 3), 10*p + j, np.uint8)).save(f)
    return root

def test_row12_folder_df_named_identities(tmp_path):
    root = _own_photos(tmp_path, lambda p: f'person{100 + p}', lambda s, j: f'_c{1 + (s == "gallery")}')
    df = folder_df(root, pattern=r'^(?P<pid>[^/]+)/.*_c(?P<camid>\d+)')
    assert df.pid.dtype.kind == 'i' and df.pid.min() >= 1 and df.pid.nunique() == 9
    assert set(df.pid_name) == {f'person{100 + p}' for p in range(9)}
    q, g = df[df.split == 'query'], df[df.split == 'gallery']
    assert dict(zip(q.pid_name, q.pid)) == dict(zip(g.pid_name, g.pid))       # one number per name across splits
    assert set(q.camid) == {0} and set(g.camid) == {1}
    # numbers stay numbers
    d2 = folder_df(_own_photos(tmp_path/'n', lambda p: f'{100 + p}', lambda s, j: f'_c{1 + (s == "gallery")}'),
                   pattern=r'^(?P<pid>\d+)/.*_c(?P<camid>\d+)')
    assert set(d2.pid) == {100 + p for p in range(9)} and 'pid_name' not in d2.columns


def test_row13_camera_numbering_and_unevaluable_split(tmp_path, world):
    root = _own_photos(tmp_path/'zero', lambda p: f'{p + 1:04d}', lambda s, j: f'_c{int(s == "gallery")}')
    df = folder_df(root, pattern=r'^(?P<pid>\d+)/.*_c(?P<camid>\d+)')           # cam0, cam1: 0-based as the files say
    assert set(df[df.split == 'query'].camid) == {0} and set(df[df.split == 'gallery'].camid) == {1}
    df1 = folder_df(root, pattern=r'^(?P<pid>\d+)/.*_c(?P<camid>\d+)', camid_base=0)
    assert df1.camid.tolist() == df.camid.tolist()
    with pytest.raises(ReIDInputError, match='camid_base'): folder_df(root, pattern=r'^(?P<pid>\d+)/.*_c(?P<camid>\d+)', camid_base=1)
    nocam = folder_df(root, pattern=r'^(?P<pid>\d+)/')
    dls = reid_dls(nocam, size=SIZE, P=2, K=2, num_workers=0, seed=0)
    with pytest.raises(ReIDInputError, match='camera'): iaunet_learner(dls, 'resnet18', pretrained=False)
    # tracklets whose query and gallery share every camera: refused up front too
    v = world['vid'].copy(); v['camid'] = 0
    vdls = reid_dls(v, size=SIZE, P=2, K=2, seq_len=4, num_workers=0, seed=0)
    with pytest.raises(ReIDInputError, match='camera'): iaunet_learner(vdls, 'resnet18', pretrained=False)


# row 14: the star import exposes fastai.vision.all
def test_row14_star_import_exposes_fastai_vision_all():
    ns = {}
    exec('from iaunet_fastai.all import *', ns)
    for name in ('Learner', 'SaveModelCallback', 'DataBlock', 'Path', 'np', 'torch', 'vision_learner', 'aug_transforms',
                 'CSVLogger', 'set_seed', 'accuracy', 'iaunet_learner', 'reid_dls', 'ReIDInputError', 'load_learner'):
        assert name in ns, name
    fv = {}
    exec('from fastai.vision.all import *', fv)
    assert not set(fv) - set(ns) - {'__builtins__'}


# row 15: --version, one default for ImageNet weights
def test_row15_version_flag_and_one_pretrained_default(capsys):
    import iaunet_fastai
    from iaunet_fastai.cli import main
    from iaunet_fastai.commands import train_cli
    assert main(['--version']) == 0
    assert iaunet_fastai.__version__ in capsys.readouterr().out
    api = inspect.signature(iaunet_learner).parameters['pretrained'].default
    cli = inspect.signature(train_cli).parameters['pretrained'].default
    assert api is cli is True
    from iaunet_fastai.cli import run_subcommand
    seen = {}
    def fake(pretrained:bool=True): seen['p'] = pretrained
    run_subcommand(fake, ['--no-pretrained']); assert seen['p'] is False
    run_subcommand(fake, []); assert seen['p'] is True


# row 16: get_preds(with_input=True) on tracklets
def test_row16_get_preds_with_input_one_row_per_item(trained):
    kind, learn, df, _ = trained
    items = _items(df, 3)
    inp, preds, _ = learn.get_preds(dl=learn.dls.test_dl(items), with_input=True)
    assert len(inp) == len(preds) == 3
    if kind == 'vid': assert inp.shape[1:] == (4, 3, *SIZE)


# row 17: tutorials on a real download
def _nb_source(name):
    nb = json.loads((Path(__file__).parents[1]/'nbs'/name).read_text())
    return '\n'.join(''.join(c['source']) for c in nb['cells'])

def test_row17_tutorials_show_real_download_path():
    src = _nb_source('13_tutorial_image.ipynb')
    assert "iaunet_learner(dls, 'resnet50')" not in src and "'resnet50.tv_in1k'" in src
    assert 'iaunet masks' in src and "parser='schp'" in src and "parser='prior'" in src
    assert 'only the first cell changes' not in src


# row 18: aug_transforms on a tracklet loader's after_batch by hand
def test_row18_tracklet_batch_aug_refused_at_fit(world):
    learn = _fresh(world, 'vid')
    for t in aug_transforms(): learn.dls.train.after_batch.add(t)
    with pytest.raises(ReIDInputError, match='item_tfms'): learn.fit(1)
    assert not getattr(learn.recorder, "losses", None)
