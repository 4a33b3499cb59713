"End-to-end: the learner one-liner, model files, the CLI subcommands and bad checkpoints."
import json, subprocess, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch

from iaunet_fastai.all import *
from iaunet_fastai.inference import save_reid_model, load_reid_model
from iaunet_fastai.commands import final_metrics
from iaunet_fastai.cli import main as cli_main

BIN = Path(sys.executable).parent
SIZE = (64, 32)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp('world')
    return make_synthetic_reid(root/'synth', preset='tiny', img_size=(128, 64))


@pytest.fixture(scope='module')
def trained(world, tmp_path_factory):
    d = tmp_path_factory.mktemp('learn')
    df = market1501_df(world/'Market-1501')
    masks = precompute_part_masks(world/'Market-1501', d/'masks', parser='lip',
                                  label_dir=world/'parsing'/'Market-1501', size=SIZE)
    dls = reid_dls(df, size=SIZE, P=4, K=4, num_workers=0, seed=0, masks=d/'masks')
    learn = iaunet_learner(dls, 'resnet18', pretrained=False, path=d)
    learn.fit_one_cycle(1, 1e-3)
    return learn, df, d


def test_one_liner_trains_and_evaluates(trained):
    learn, df, _ = trained
    names = learn.recorder.metric_names
    assert {'rank1', 'rank5', 'mAP', 'mINP', 'train_ce', 'train_triplet', 'train_mask'} <= set(names)
    vals = dict(zip(names[1:-1], learn.recorder.values[-1]))
    assert all(np.isfinite(vals[k]) for k in ('train_loss', 'valid_loss', 'train_ce', 'train_triplet', 'train_mask'))
    assert vals['train_mask'] > 0                     # masks were given: the mask term is live
    res = final_metrics(learn)
    assert 0 <= res['rank1'] <= 1 and 0 <= res['mAP'] <= 1 and res['num_valid_queries'] > 0
    assert learn.validate()[3] == pytest.approx(res['mAP'])   # valid_loss, rank1, rank5, mAP, mINP (no train_* columns)


def test_export_round_trip_identical_embeddings(trained):
    learn, df, d = trained
    paths = list(df[df.split == 'query'].path[:6])
    e_learn = FeatureExtractor(learn)(paths)
    # weights-only model file
    save_reid_model(learn, d/'model.pth')
    assert torch.equal(FeatureExtractor(d/'model.pth')(paths), e_learn)
    # fastai export / load_learner (a pickle: trusted files only)
    learn.export('export.pkl')
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        e_pkl = FeatureExtractor(d/'export.pkl')(paths)
    assert torch.equal(e_pkl, e_learn)


def test_model_file_is_weights_only(trained, tmp_path):
    learn, _, d = trained
    save_reid_model(learn, tmp_path/'ok.pth')
    # a plain torch.load with weights_only=True reads it: no pickled code inside
    sd = torch.load(tmp_path/'ok.pth', weights_only=True)
    assert sd['reid_config']['arch'] == 'resnet18'

    flag = tmp_path/'pwned'
    class Evil:
        def __reduce__(self): return (exec, (f"open({str(flag)!r}, 'w').write('x')",))
    torch.save({'reid_config': {}, 'model': {}, 'x': Evil()}, tmp_path/'evil.pth')
    with pytest.raises(ReIDInputError, match='evil.pth'): load_reid_model(tmp_path/'evil.pth')
    assert not flag.exists()


def test_checkpoint_of_other_architecture_or_classes_fails_clearly(trained, tmp_path):
    learn, _, _ = trained
    save_reid_model(learn, tmp_path/'m.pth')
    with pytest.raises(ReIDInputError, match='arch'):
        load_reid_model(tmp_path/'m.pth', model=IAUnet('resnet34', learn.model.num_classes, pretrained=False))
    with pytest.raises(ReIDInputError, match='num_classes'):
        load_reid_model(tmp_path/'m.pth', model=IAUnet('resnet18', learn.model.num_classes + 1, pretrained=False))
    # a raw state dict of another class count through the model's own loader
    torch.save(learn.model.state_dict(), tmp_path/'raw.pth')
    with pytest.raises(ReIDInputError, match='classes'):
        IAUnet('resnet18', learn.model.num_classes + 2, pretrained=False).load_checkpoint(tmp_path/'raw.pth')
    # fastai's own Learner.load is weights-only too
    learn.save('w')
    assert (learn.path/'models'/'w.pth').exists()
    learn.load('w')


def test_feature_extractor_bad_input(trained):
    learn, _, _ = trained
    fx = FeatureExtractor(learn)
    with pytest.raises(ReIDInputError, match='no images'): fx([])
    with pytest.raises(ReIDInputError, match='cannot read image'): fx(['/no/such/image.jpg'])
    with pytest.raises(ReIDInputError): fx([np.zeros((10, 10), np.uint8)])


def test_learner_rejects_plain_dataloaders():
    with pytest.raises(ReIDInputError, match='reid_dls'): iaunet_learner(object(), 'resnet18', pretrained=False)


def _run(*args, cwd=None):
    return subprocess.run([str(BIN/'iaunet'), *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize('sub', ['synth', 'masks', 'train', 'eval', 'extract'])
def test_cli_help(sub):
    r = _run(sub, '--help')
    assert r.returncode == 0 and 'usage' in r.stdout.lower(), r.stderr


def test_cli_train_eval_extract_on_tiny_world(world, tmp_path):
    out = tmp_path/'run'
    r = _run('masks', world/'Market-1501', tmp_path/'masks', '--label-dir', world/'parsing'/'Market-1501',
             '--height', '64', '--width', '32')
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run('train', '--dataset', 'market1501', '--root', world/'Market-1501', '--arch', 'resnet18', '--no-pretrained',
             '--epochs', '1', '--size', '64,32', '--pk', '4x4', '--masks', tmp_path/'masks',
             '--workers', '0', '--out', out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'rank1' in r.stdout and 'mAP' in r.stdout            # the table
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith('rank-1 ') and '  mAP ' in last
    assert (out/'model.pth').exists() and json.loads((out/'metrics.json').read_text())['mAP'] >= 0
    r = _run('eval', out/'model.pth', '--dataset', 'market1501', '--root', world/'Market-1501', '--out', tmp_path/'ev')
    assert r.returncode == 0 and 'mAP' in r.stdout, r.stdout + r.stderr
    r = _run('extract', out/'model.pth', world/'Market-1501'/'query', '--out', tmp_path/'f.npz')
    assert r.returncode == 0, r.stdout + r.stderr
    f = np.load(tmp_path/'f.npz')
    assert f['features'].shape[0] == len(f['names']) > 0
    np.testing.assert_allclose(np.linalg.norm(f['features'], axis=1), 1, atol=1e-5)


def test_cli_bad_input_names_the_argument(tmp_path):
    r = _run('train', '--dataset', 'market1501', '--root', tmp_path/'nowhere', '--epochs', '1')
    assert r.returncode == 1 and 'nowhere' in r.stderr and 'Traceback' not in r.stderr
    r = _run('train', '--dataset', 'imagenet', '--root', tmp_path)
    assert r.returncode == 1 and '--dataset' in r.stderr
    r = _run('eval', tmp_path/'missing.pth')
    assert r.returncode == 1 and 'missing.pth' in r.stderr
    assert cli_main(['bogus']) == 2


def test_tracklet_protocol_default_is_the_layouts(world, capsys, monkeypatch):
    "One default for tracklets: on a MARS layout the table shows MARS's official protocol (queries stay in the gallery)."
    from iaunet_fastai.metrics import evaluate_tracklets
    vdf = mars_df(world/'MARS')
    vdls = reid_dls(vdf, size=SIZE, P=2, K=2, seq_len=4, num_workers=0, seed=0)
    learn = iaunet_learner(vdls, 'resnet18', pretrained=False)
    ev = next(c for c in learn.cbs if isinstance(c, RetrievalEvaluator))
    assert ev.gallery is None and vdls.eval_gallery == 'all'
    ev.before_fit(); ev.after_fit()
    assert 'MARS official protocol' in capsys.readouterr().out        # the line printed when fit starts names it
    import iaunet_fastai.callbacks as C
    used, split = [], C.query_gallery_split
    monkeypatch.setattr(C, 'query_gallery_split', lambda *a: used.append(a[-1]) or split(*a))
    learn.validate()
    assert used == ['all']                                            # the evaluator's gallery: queries kept
    f, (pid, cam, isq, item) = learn.get_preds(dl=vdls.valid)
    qg = pd.concat([vdls.query_df, vdls.gallery_df], ignore_index=True)
    info = dict(pids=qg.pid.values, camids=qg.camid.values,
                is_query=np.r_[np.ones(len(vdls.query_df), bool), np.zeros(len(vdls.gallery_df), bool)])
    assert abs(ev.results['mAP'] - evaluate_tracklets(f, item, mars='official', **info)['mAP']) < 1e-4
    # a frame whose gallery already holds the queries, or images, keep 'non_query'; an explicit choice wins
    assert reid_dls(mars_df(world/'MARS', query_in_gallery=True), size=SIZE, P=2, K=2, num_workers=0).eval_gallery == 'non_query'
    assert resolve_gallery(None, reid_dls(market1501_df(world/'Market-1501'), size=SIZE, P=2, K=2, num_workers=0)) == 'non_query'
    assert resolve_gallery('non_query', vdls) == 'non_query'


def test_every_skips_the_evaluation_pass(world, tmp_path):
    """`every=3` over `fit(3)`: no evaluation forward in epochs 0-1; their rows show NaN (nothing scored yet), valid_loss
    included; `SaveModelCallback`/`EarlyStoppingCallback` on mAP still run (the last epoch is scored and saved)."""
    from fastai.callback.core import Callback
    from fastai.callback.tracker import SaveModelCallback, EarlyStoppingCallback
    class CountEval(Callback):
        def before_fit(self): self.n = [0] * self.n_epoch
        def after_pred(self): self.n[self.epoch] += not self.training
    dls = reid_dls(market1501_df(world/'Market-1501'), size=SIZE, P=4, K=4, num_workers=0, seed=0)
    cnt = CountEval()
    learn = iaunet_learner(dls, 'resnet18', pretrained=False, every=3, path=tmp_path, cbs=cnt)
    learn.fit(3, 1e-3, cbs=[SaveModelCallback(monitor='mAP', fname='best'),
                            EarlyStoppingCallback(monitor='mAP', patience=3)])
    assert cnt.n[:2] == [0, 0] and cnt.n[2] == len(dls.valid) > 0
    names = learn.recorder.metric_names[1:-1]
    rows = [dict(zip(names, r)) for r in learn.recorder.values]
    assert all(np.isnan(r['valid_loss']) and np.isnan(r['mAP']) for r in rows[:2]), rows
    assert np.isfinite(rows[2]['valid_loss']) and np.isfinite(rows[2]['mAP'])
    assert np.isfinite(rows[0]['train_loss']) and np.isfinite(rows[0]['train_ce'])     # training columns untouched
    assert (tmp_path/'models'/'best.pth').exists()


def test_learner_from_scratch_has_authors_init(world):
    "`pretrained=False`: no zero-initialised BatchNorm outside the IAU blocks' update BNs (timm's zero_init_last off)."
    dls = reid_dls(market1501_df(world/'Market-1501'), size=SIZE, P=4, K=4, num_workers=0, seed=0)
    learn = iaunet_learner(dls, 'resnet18', pretrained=False)
    zero = [n for n, m in learn.model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            and bool((m.weight == 0).all())]
    assert zero and all(n.startswith('iau.') and n.endswith('update.1') for n in zero), zero
    learn = iaunet_learner(dls, 'resnet18', pretrained=False, model_kwargs=dict(zero_init_last=True))
    assert sum(n.startswith('backbone.') and bool((m.weight == 0).all()) for n, m in learn.model.named_modules()
               if isinstance(m, torch.nn.BatchNorm2d)) == 8                             # model_kwargs still win
