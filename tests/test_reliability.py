"""Nothing lost, nothing silently wrong (issue 13): interrupted and resumed runs, `--out`/`--overwrite`, part-mask
caches that notice changes and survive aborted or concurrent runs, and every bad input named up front.
Tiny synthetic world at 64x32, resnet18, num_workers=0."""
import json, os, shutil, signal, threading, time, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from iaunet_fastai.all import *
from iaunet_fastai import part_masks as pmod
from iaunet_fastai.commands import train_cli, eval_cli, extract_cli, _worker_error
from iaunet_fastai.core import check_out_dir
from iaunet_fastai.run_guards import check_query_gallery
from iaunet_fastai.inference import load_model_file
from iaunet_fastai.datasets import detect_dataset, dataset_df
from iaunet_fastai.inference import save_reid_model, FeatureExtractor, _model_config
from iaunet_fastai.data import load_reid_image, check_images
from iaunet_fastai.metrics import re_ranking, evaluate_retrieval
from iaunet_fastai.cli import main as cli_main

torch.set_num_threads(1)
SIZE = (64, 32)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return make_synthetic_reid(tmp_path_factory.mktemp('world')/'synth', preset='tiny', img_size=SIZE)


@pytest.fixture(scope='module')
def market(world): return world/'Market-1501'


def _kw(market, **kw):
    return dict(dict(dataset='market1501', root=str(market), arch='resnet18', pretrained=False, epochs=1, size='64,32', pk='4x4', workers=0,
                     seed=0), **kw)


def _files(root): return sorted(str(p.relative_to(root)) for p in Path(root).rglob('*'))


# ---------------------------------------------------------------- 1. no silent synthetic fallback, nothing written into a root
def test_train_needs_a_named_or_recognised_dataset_and_writes_nothing_into_the_root(market, tmp_path):
    mine = tmp_path/'my_data'; (mine/'photos').mkdir(parents=True); (mine/'photos'/'a.txt').write_text('x')
    before = _files(mine)
    assert cli_main(['train', '--root', str(mine), '--out', str(tmp_path/'o')]) == 1                 # not recognised
    assert cli_main(['train', '--dataset', 'synthetic', '--root', str(mine), '--out', str(tmp_path/'o')]) == 1
    assert cli_main(['eval', str(tmp_path/'m.pth'), '--root', str(mine)]) == 1
    assert _files(mine) == before and not (tmp_path/'o').exists()
    assert detect_dataset(market) == 'market1501'
    with pytest.raises(ReIDInputError, match='synthetic world'): detect_dataset(market.parent)
    with pytest.raises(ReIDInputError, match='--dataset'): dataset_df(None, None)


# ---------------------------------------------------------------- 2. --out first, --overwrite, checkpoints, interrupt + resume
def test_out_is_checked_before_any_work(market, tmp_path, capsys):
    (tmp_path/'file').write_text('x')
    t = time.perf_counter()
    assert cli_main(['train', '--dataset', 'market1501', '--root', str(market), '--out', str(tmp_path/'file')]) == 1
    assert cli_main(['train', '--dataset', 'market1501', '--root', str(market), '--out', str(tmp_path/'file'/'run')]) == 1
    assert time.perf_counter() - t < 10                         # no training happened
    err = capsys.readouterr().err
    assert 'not a folder' in err and 'not a writable folder' in err and 'Traceback' not in err


def test_existing_run_is_not_overwritten(run, market, tmp_path):
    before = (run/'model.pth').read_bytes()
    with pytest.raises(ReIDInputError, match='--overwrite'): train_cli(**_kw(market), out=str(run))
    assert (run/'model.pth').read_bytes() == before
    # eval --out into the training run refuses to replace its metrics.json / cmc.png
    m = (run/'metrics.json').read_text()
    assert cli_main(['eval', str(run/'model.pth'), '--dataset', 'market1501', '--root', str(market), '--out', str(run)]) == 1
    assert (run/'metrics.json').read_text() == m
    assert cli_main(['eval', str(run/'model.pth'), '--dataset', 'market1501', '--root', str(market), '--out', str(run),
                     '--overwrite']) == 0


def test_run_folder_holds_config_history_and_checkpoint(run, market, tmp_path):
    cfg = json.loads((run/'config.json').read_text())['options']
    assert cfg['dataset'] == 'market1501' and cfg['arch'] == 'resnet18' and cfg['epochs'] == 1
    hist = pd.read_csv(run/'history.csv')
    assert list(hist.epoch) == [0] and 'mAP' in hist.columns
    ck = torch.load(run/'checkpoint.pth', weights_only=True)
    assert ck['epoch'] == 0 and {'model', 'opt', 'rng'} <= set(ck)
    assert json.loads((run/'metrics.json').read_text())['protocol'].startswith('market')
    # --config reruns the same options (here into another folder): same weights
    assert train_cli(config=str(run/'config.json'), out=str(tmp_path/'again')) == 0
    a = torch.load(run/'model.pth', weights_only=True)['model']
    b = torch.load(tmp_path/'again'/'model.pth', weights_only=True)['model']
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_then_resumed_equals_uninterrupted(market, tmp_path):
    kw = _kw(market, epochs=3)
    assert train_cli(**kw, out=str(tmp_path/'straight')) == 0
    out = tmp_path/'interrupted'
    def interrupt():   # SIGINT as soon as epoch 0's checkpoint exists (the run is then in epoch 1 of 3)
        while not (out/'checkpoint.pth').exists(): time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)
    th = threading.Thread(target=interrupt, daemon=True); th.start()
    rc = train_cli(**kw, out=str(out))
    th.join(5)
    assert rc == 130 and not (out/'model.pth').exists()
    stopped = torch.load(out/'checkpoint.pth', weights_only=True)['epoch']
    assert stopped < 2
    assert train_cli(out=str(out), resume=True) == 0        # options from <out>/config.json
    a = torch.load(tmp_path/'straight'/'model.pth', weights_only=True)['model']
    b = torch.load(out/'model.pth', weights_only=True)['model']
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = pd.read_csv(tmp_path/'straight'/'history.csv'), pd.read_csv(out/'history.csv')
    assert list(hb.epoch) == [0, 1, 2]
    np.testing.assert_allclose(ha.drop(columns='time').values, hb.drop(columns='time').values)
    ma, mb = (json.loads((d/'metrics.json').read_text()) for d in (tmp_path/'straight', out))
    assert ma['mAP'] == mb['mAP']


def test_resume_without_checkpoint_and_resume_with_overwrite_fail(tmp_path):
    with pytest.raises(ReIDInputError, match='no checkpoint'): train_cli(out=str(tmp_path/'none'), resume=True)
    with pytest.raises(ReIDInputError, match='pick one'): train_cli(out=str(tmp_path), resume=True, overwrite=True)


def test_query_without_match_fails_before_epoch_1(market, tmp_path):
    bad = tmp_path/'m'; shutil.copytree(market, bad)
    for p in (bad/'query').iterdir(): p.rename(p.with_name('9999' + p.name[4:]))   # identities not in the gallery
    t = time.perf_counter()
    with pytest.raises(ReIDInputError, match='none of the .* queries has a match'):
        train_cli(**_kw(bad, epochs=5, every=5), out=str(tmp_path/'o'))
    assert time.perf_counter() - t < 10 and not (tmp_path/'o'/'checkpoint.pth').exists()


# ---------------------------------------------------------------- 3. part-mask cache
def _label_world(world):
    return world/'Market-1501', world/'parsing'/'Market-1501'


def test_cache_notices_changed_label_files_and_redoes_just_those(world, tmp_path, monkeypatch, capsys):
    img, lab = _label_world(world)
    labs = tmp_path/'labels'; shutil.copytree(lab, labs)
    pm = precompute_part_masks(img, tmp_path/'c', label_dir=labs, size=SIZE, progress=False)
    name = pm.names[int(np.flatnonzero(pm.valid)[0])]
    f = next(labs.rglob(Path(name).stem + '.png'))
    a = np.asarray(Image.open(f)); a2 = np.where(a > 0, 2, 0).astype(np.uint8)        # everything 'hair' -> head
    Image.fromarray(a2).save(f); os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    calls = []
    orig = pmod._work_chunk
    monkeypatch.setattr(pmod, '_work_chunk', lambda parser, jobs, size, pool=None: calls.append(len(jobs)) or orig(parser, jobs, size, pool))
    pm2 = precompute_part_masks(img, tmp_path/'c', label_dir=labs, size=SIZE, progress=False)
    assert calls == [1] and 'up to date' not in capsys.readouterr().out
    assert set(np.unique(pm2.get(name))) <= {0, 1} and not np.array_equal(pm.get(name), pm2.get(name))
    other = pm.names[-1]
    np.testing.assert_array_equal(np.asarray(pm2.get(other) if pm2.get(other) is not None else 0),
                                  np.asarray(pm.get(other) if pm.get(other) is not None else 0))
    precompute_part_masks(img, tmp_path/'c', label_dir=labs, size=SIZE, progress=False)
    assert calls == [1] and 'up to date' in capsys.readouterr().out


def test_cache_is_keyed_by_its_image_root(world, tmp_path):
    img, lab = _label_world(world)
    pm = precompute_part_masks(img, tmp_path/'c', label_dir=lab, size=SIZE, progress=False, verbose=False)
    other = tmp_path/'detected'; shutil.copytree(img, other)     # same relative names, other pictures
    n = pm.names[int(np.flatnonzero(pm.valid)[0])]
    assert pm.get(img/n) is not None
    with pytest.warns(UserWarning, match='another folder'): assert pm.get(other/n) is None


def test_cache_lock_refuses_other_inputs_and_waits_for_identical(world, tmp_path, capsys):
    import fcntl
    img, lab = _label_world(world)
    out = tmp_path/'c'
    pm = precompute_part_masks(img, out, label_dir=lab, size=SIZE, progress=False, verbose=False)
    f = open(out/'.lock', 'a+'); fcntl.flock(f, fcntl.LOCK_EX)      # another writer with other inputs
    f.seek(0); f.truncate(); f.write('4242 someotherkey\n'); f.flush()
    with pytest.raises(ReIDInputError, match='pid 4242'):
        precompute_part_masks(img, out, label_dir=lab, size=(32, 16), progress=False)
    f.seek(0); f.truncate(); f.write(f"4242 {pm.meta['key']}\n"); f.flush()   # an identical run: wait for it
    threading.Timer(0.5, f.close).start()
    pm2 = precompute_part_masks(img, out, label_dir=lab, size=SIZE, progress=False)
    s = capsys.readouterr().out
    assert 'waiting' in s and 'up to date' in s and pm2.meta['key'] == pm.meta['key']


def test_killed_worker_and_unwritable_out_are_clear(world, tmp_path, monkeypatch):
    from concurrent.futures.process import BrokenProcessPool
    img, lab = _label_world(world)
    (tmp_path/'file').write_text('x')
    with pytest.raises(ReIDInputError, match='not a writable folder'):
        precompute_part_masks(img, tmp_path/'file'/'c', label_dir=lab, size=SIZE, progress=False)
    def broken(parser, jobs, size, pool=None): raise BrokenProcessPool('A process in the process pool was terminated abruptly')
    monkeypatch.setattr(pmod, '_work_chunk', broken)
    with pytest.raises(ReIDInputError, match='worker process died'):
        precompute_part_masks(img, tmp_path/'c', label_dir=lab, size=SIZE, progress=False)


def test_symlinked_split_folders(world, tmp_path):
    img, lab = _label_world(world)
    root = tmp_path/'linked'; root.mkdir()
    real = tmp_path/'elsewhere'; shutil.copytree(img/'bounding_box_train', real)
    (root/'bounding_box_train').symlink_to(real, target_is_directory=True)
    for s in ('query', 'bounding_box_test'): (root/s).symlink_to(img/s, target_is_directory=True)
    df = market1501_df(root)
    pm = precompute_part_masks(root, tmp_path/'c', label_dir=lab, size=SIZE, progress=False, verbose=False)
    assert len(pm) == len(list(img.rglob('*.jpg')))
    train = df[df.split == 'train'].path
    assert sum(pm.get(p) is not None for p in train) == sum(pm.valid[pm.index(p)] for p in train) > 0


# ---------------------------------------------------------------- 4-8. silently wrong
def test_16bit_png_is_scaled_not_clipped(tmp_path):
    a = np.linspace(0, 65535, 64 * 32).reshape(64, 32).astype(np.uint16)
    Image.fromarray(a).save(tmp_path/'g16.png')
    x = np.asarray(load_reid_image(tmp_path/'g16.png'))[..., 0].astype(int)
    np.testing.assert_allclose(x, a / 257., atol=1)
    assert (x == 255).mean() < 0.01


def test_mars_protocol_is_the_same_in_train_and_eval(world, tmp_path, capsys):
    from iaunet_fastai.callbacks import mars_gallery
    assert mars_gallery('mars', False, 'official')[0] == 'all' and mars_gallery('synthetic', True, 'official')[0] == 'all'
    assert mars_gallery('mars', False, 'torchreid')[0] == 'non_query'
    with pytest.raises(ReIDInputError, match='--mars-protocol'): mars_gallery('mars', False, 'other')
    m = VideoIAUnet('resnet18', 4, seq_len=4, pretrained=False)
    m.reid_config = dict(_model_config(m), img_size=list(SIZE))
    save_reid_model(m, tmp_path/'v.pth')
    res = {}
    for proto in ('official', 'torchreid'):
        assert eval_cli(str(tmp_path/'v.pth'), dataset='mars', root=str(world/'MARS'), mars_protocol=proto,
                        out=str(tmp_path/proto)) == 0
        res[proto] = json.loads((tmp_path/proto/'metrics.json').read_text())
    assert res['official']['protocol'].startswith('mars-official') and res['torchreid']['protocol'].startswith('mars-torchreid')
    assert 'mars-official' in capsys.readouterr().out


def test_re_ranking_with_an_all_zero_row_and_a_small_gallery():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(3, 8)), rng.normal(size=(5, 8)); q[0] = 0
    d = re_ranking(q, g, k1=4, k2=2)
    assert np.isfinite(d).all()
    with pytest.warns(UserWarning, match='k1=7'): d = re_ranking(q, g, k1=20, k2=6)
    assert d.shape == (3, 5) and np.isfinite(d).all()


def test_feature_extractor_ranges(tmp_path):
    m = IAUnet('resnet18', 4, pretrained=False).eval()
    fx = FeatureExtractor(m, size=SIZE, device='cpu')
    u8 = np.random.default_rng(0).integers(0, 256, (64, 32, 3)).astype(np.uint8)
    e8 = fx([u8]); ef = fx([u8 / 255.]); et = fx([torch.from_numpy(u8).permute(2, 0, 1)])
    torch.testing.assert_close(e8, ef, atol=1e-4, rtol=1e-4); torch.testing.assert_close(e8, et)
    torch.testing.assert_close(fx([torch.from_numpy(u8 / 255.).permute(2, 0, 1).float()]), e8, atol=1e-4, rtol=1e-4)
    with pytest.raises(ReIDInputError, match=r'\[0, 1\]'): fx([u8.astype(np.float32)])             # float in 0..255
    with pytest.raises(ReIDInputError, match=r'\[0, 1\]'): fx([torch.from_numpy(u8).permute(2, 0, 1).float()])
    with pytest.raises(ReIDInputError, match='normalised'): fx([u8 / 255. - 0.5])
    with pytest.raises(ReIDInputError, match='0..255'): fx([u8.astype(np.int32) * 300])


def test_float_nan_and_string_pids(market, tmp_path):
    df = market1501_df(market)
    with pytest.raises(ReIDInputError, match='not whole numbers'): reid_dls(df.assign(pid=df.pid + 0.5), size=SIZE, P=4, K=4, num_workers=0)
    with pytest.raises(ReIDInputError, match='missing'): reid_dls(df.assign(pid=df.pid.where(df.index > 0)), size=SIZE, P=4, K=4, num_workers=0)
    with pytest.raises(ReIDInputError, match='cat.codes'): reid_dls(df.assign(pid='p' + df.pid.astype(str)), size=SIZE, P=4, K=4, num_workers=0)
    with pytest.raises(ReIDInputError, match='must hold numbers'):
        evaluate_retrieval(np.eye(2), np.eye(2), ['a', 'b'], ['a', 'b'], [0, 0], [1, 1])
    with pytest.raises(ReIDInputError, match='not whole'):
        evaluate_retrieval(np.eye(2), np.eye(2), [1.2, 1.7], [1, 1], [0, 0], [1, 1])
    (tmp_path/'bad.csv').write_text('path,pid\n"unterminated,1\n')
    with pytest.raises(ReIDInputError, match='bad.csv'): csv_df(tmp_path/'bad.csv')


def test_mars_query_idx_out_of_range_is_reported(world, tmp_path):
    from scipy.io import savemat, loadmat
    mars = tmp_path/'MARS'; shutil.copytree(world/'MARS', mars)
    q = loadmat(str(mars/'info'/'query_IDX.mat'))['query_IDX'].ravel()
    savemat(str(mars/'info'/'query_IDX.mat'), {'query_IDX': np.r_[q, 10**6][None]})
    with pytest.warns(UserWarning, match=f'1 of {len(q) + 1} entries'): mars_df(mars)


# ---------------------------------------------------------------- 9-13. cryptic → clear
def test_preflight_finds_a_bad_gallery_image_before_training(market, tmp_path, capsys):
    bad = tmp_path/'m'; shutil.copytree(market, bad)
    g = sorted((bad/'bounding_box_test').glob('0*.jpg'))[0]
    g.write_bytes(g.read_bytes()[:300])                                # truncated
    t = time.perf_counter()
    assert cli_main(['train', '--dataset', 'market1501', '--root', str(bad), '--out', str(tmp_path/'o'), '--arch', 'resnet18',
                     '--no-pretrained', '--size', '64,32', '--pk', '4x4', '--workers', '0']) == 1
    err = capsys.readouterr().err
    assert g.name in err and 'Traceback' not in err and len(err.strip().splitlines()) == 1
    assert time.perf_counter() - t < 15 and not (tmp_path/'o'/'checkpoint.pth').exists()
    with pytest.raises(ReIDInputError, match=g.name): check_images([[str(p) for p in bad.rglob('*.jpg')]])


def test_worker_error_becomes_one_line():
    msg = ("Caught ReIDInputError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
           '  File "x.py", line 1, in f\n    raise\niaunet_fastai.core.ReIDInputError: cannot read image \'/d/a.jpg\': OSError: truncated\n')
    e = _worker_error(ReIDInputError(msg))
    assert str(e) == "data loading failed: cannot read image '/d/a.jpg': OSError: truncated"
    assert _worker_error(ValueError('other')) is None


def test_eval_rerank_small_gallery_with_k_options(run, market, capsys):
    assert cli_main(['eval', str(run/'model.pth'), '--dataset', 'market1501', '--root', str(market), '--rerank',
                     '--k1', '50', '--k2', '3']) == 0
    assert 'mAP' in capsys.readouterr().out


def test_model_files_the_cli_cannot_use_are_explained(run, market, tmp_path, capsys):
    (tmp_path/'empty.pth').write_bytes(b'')
    torch.save({'w': torch.zeros(3)}, tmp_path/'sd.pth')
    for f, msg in (('empty.pth', 'empty (0 bytes)'), ('sd.pth', 'save_reid_model'), ('missing.pth', 'not found')):
        assert cli_main(['eval', str(tmp_path/f), '--dataset', 'market1501', '--root', str(market)]) == 1
        err = capsys.readouterr().err
        assert msg in err and 'untrusted' not in err, err
    with pytest.raises(ReIDInputError, match='training checkpoint'): load_model_file(run/'checkpoint.pth')
    # a learn.export .pkl is accepted by eval, as by extract
    dls = reid_dls(market1501_df(market), size=SIZE, P=4, K=4, num_workers=0, seed=0)
    learn = iaunet_learner(dls, 'resnet18', pretrained=False, path=tmp_path)
    learn.export(tmp_path/'exp.pkl')
    assert cli_main(['eval', str(tmp_path/'exp.pkl'), '--dataset', 'market1501', '--root', str(market)]) == 0


def test_extract_checks_out_first_and_does_tracklets(run, world, tmp_path, capsys):
    (tmp_path/'file').write_text('x')
    assert cli_main(['extract', str(run/'model.pth'), str(world/'Market-1501'/'query'), '--out', str(tmp_path/'file'/'f.npz')]) == 1
    assert 'not a writable folder' in capsys.readouterr().err
    assert cli_main(['extract', str(run/'model.pth'), str(world/'Market-1501'/'query'), '--out', str(tmp_path/'file')]) == 1
    assert '--overwrite' in capsys.readouterr().err
    # tracklets: a list file of tracklets (frames joined by ';'), and a video dataset root
    fr = sorted(str(p) for p in (world/'MARS'/'bbox_test').rglob('*.jpg'))[:6]
    (tmp_path/'t.txt').write_text(';'.join(fr[:3]) + '\n' + ';'.join(fr[3:]) + '\n')
    assert cli_main(['extract', str(run/'model.pth'), str(tmp_path/'t.txt'), '--out', str(tmp_path/'t.npz')]) == 0
    z = np.load(tmp_path/'t.npz'); assert z['features'].shape[0] == 2 and ';' in str(z['names'][0])
    assert cli_main(['extract', str(run/'model.pth'), str(world/'MARS'), '--dataset', 'mars', '--out', str(tmp_path/'m.npz')]) == 0
    z = np.load(tmp_path/'m.npz'); assert len(z['features']) == len(z['pids']) == len(mars_df(world/'MARS'))


def test_bad_image_in_a_loader_worker_is_one_line(market, tmp_path, capsys):
    "With the pre-flight check off, a file that breaks inside a DataLoader worker process is still one line naming it."
    bad = tmp_path/'m'; shutil.copytree(market, bad)
    for f in (bad/'bounding_box_train').glob('*.jpg'): f.write_bytes(b'not a jpeg at all')   # whichever is drawn first
    assert cli_main(['train', '--dataset', 'market1501', '--root', str(bad), '--out', str(tmp_path/'o'), '--arch', 'resnet18',
                     '--no-pretrained', '--size', '64,32', '--pk', '4x4', '--workers', '1', '--epochs', '1', '--no-check']) == 1
    err = capsys.readouterr().err
    assert 'bounding_box_train' in err and '.jpg' in err and 'Traceback' not in err and len(err.strip().splitlines()) == 1, err


def test_train_channels_last_and_compiled_blocks(market, tmp_path):
    "`iaunet train --channels-last --compile iau` trains, records both in config.json, and bad values fail up front."
    out = tmp_path/'cl'
    assert train_cli(**_kw(market), channels_last=True, compile='iau', out=str(out)) == 0
    cfg = json.loads((out/'config.json').read_text())['options']
    assert cfg['channels_last'] is True and cfg['compile'] == 'iau'
    assert json.loads((out/'metrics.json').read_text())['mAP'] >= 0
    assert cli_main(['train', '--dataset', 'market1501', '--root', str(market), '--out', str(tmp_path/'x'), '--compile', 'all']) == 1
    with pytest.raises(ReIDInputError, match='--baseline has none'):
        train_cli(**_kw(market), baseline=True, compile='iau', out=str(tmp_path/'y'))
    assert not (tmp_path/'x').exists() and not (tmp_path/'y').exists()       # refused before anything was written


def test_interrupted_inside_an_epoch_resumes_from_that_batch(market, tmp_path, monkeypatch):
    """SIGINT at batch 3 of epoch 1: the checkpoint holds that batch; --resume gives the uninterrupted run's weights and
    table, and torch's generator at each later batch is the uninterrupted run's (dropout would draw the same masks)."""
    from iaunet_fastai import train_callbacks as commands    # where `TrainCheckpoint` lives
    kw = _kw(market, epochs=2, pk='2x2')                      # 4 batches per epoch of the tiny world
    rng, run = {}, ['straight']
    orig_bb, orig_ab = commands.TrainCheckpoint.before_batch, commands.TrainCheckpoint.after_batch
    def record(self):
        orig_bb(self)
        if self.training: rng.setdefault(run[0], {})[(self.epoch, self._skipped + self.iter)] = torch.get_rng_state().clone()
    monkeypatch.setattr(commands.TrainCheckpoint, 'before_batch', record)
    assert train_cli(**kw, out=str(tmp_path/'straight')) == 0
    def kick(self):
        if self.training and self.epoch == 1 and self.iter == 2 and not getattr(self, '_kicked', False):
            self._kicked = True; os.kill(os.getpid(), signal.SIGINT)
        return orig_ab(self)
    monkeypatch.setattr(commands.TrainCheckpoint, 'after_batch', kick)
    out, run[0] = tmp_path/'interrupted', 'interrupted'
    assert train_cli(**kw, out=str(out)) == 130
    monkeypatch.setattr(commands.TrainCheckpoint, 'after_batch', orig_ab)
    ck = torch.load(out/'checkpoint.pth', weights_only=True)
    assert ck['epoch'] == 0 and ck['partial']['epoch'] == 1 and ck['partial']['batches'] == 3
    assert list(pd.read_csv(out/'history.csv').epoch) == [0]
    run[0] = 'resumed'
    assert train_cli(out=str(out), resume=True) == 0
    assert set(rng['resumed']) == {(1, 3)} and torch.equal(rng['resumed'][(1, 3)], rng['straight'][(1, 3)])
    a = torch.load(tmp_path/'straight'/'model.pth', weights_only=True)['model']
    b = torch.load(out/'model.pth', weights_only=True)['model']
    assert all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = pd.read_csv(tmp_path/'straight'/'history.csv'), pd.read_csv(out/'history.csv')
    assert list(hb.epoch) == [0, 1]
    np.testing.assert_allclose(ha.drop(columns='time').values, hb.drop(columns='time').values)
