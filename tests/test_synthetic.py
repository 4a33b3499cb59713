"End-to-end tests of the synthetic reID world: layouts, names, .mat files, label maps, determinism, CLI, bad input."
import hashlib, json, os, re, subprocess, sys, time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import scipy.io

import iaunet_fastai.synthetic as S
from iaunet_fastai.core import ReIDInputError
from iaunet_fastai.synthetic import make_synthetic_reid

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 32)
MARKET = re.compile(r'^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$')
MARS = re.compile(r'^(\d{4}|00-1)C(\d)T(\d{4})F(\d{3})\.jpg$')
DUKE = re.compile(r'^(\d{4})_C(\d)_F(\d{4})_X(\d{5})\.jpg$')


def digest(root: Path) -> str:
    "Hash of every file's relative path and bytes (the manifest included)."
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob('*') if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode()); h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return make_synthetic_reid(tmp_path_factory.mktemp('syn') / 'w', 'tiny', img_size=SIZE)


def test_top_level(world):
    assert sorted(p.name for p in world.iterdir()) == ['DukeMTMC-VideoReID', 'MARS', 'Market-1501', 'parsing',
                                                      'synthetic_manifest.json']
    assert sorted(p.name for p in (world / 'parsing').iterdir()) == ['DukeMTMC-VideoReID', 'MARS', 'Market-1501']
    man = json.loads((world / 'synthetic_manifest.json').read_text())
    assert set(man) == {'market1501', 'mars', 'dukev'} and all(v['n_images'] > 0 for v in man.values())
    assert not list(world.glob('.tmp-*'))


def test_market_layout(world):
    mk = world / 'Market-1501'
    assert sorted(p.name for p in mk.iterdir()) == ['bounding_box_test', 'bounding_box_train', 'query']
    rows = defaultdict(list)
    for folder in ('bounding_box_train', 'query', 'bounding_box_test'):
        for p in (mk / folder).iterdir():
            m = MARKET.match(p.name)
            assert m, p.name
            pid, cam = int(m[1]), int(m[2])
            assert 1 <= cam <= 6 and 1 <= int(m[3]) <= 6
            rows[folder].append((pid, cam))
    train = {p for p, _ in rows['bounding_box_train']}
    query, gallery = rows['query'], rows['bounding_box_test']
    assert train and query and -1 not in train and 0 not in train
    assert not train & {p for p, _ in query + gallery}, 'train and test identities must be disjoint'
    gpids = [p for p, _ in gallery]
    assert -1 in gpids and 0 in gpids, 'junk and distractors belong to the gallery'
    assert all(n.name.split('_')[-1] == '00.jpg' for n in (mk / 'query').iterdir())
    for pid, cam in query:  # a true match in another camera exists for every query
        assert any(p == pid and c != cam for p, c in gallery), (pid, cam)


def test_mars_layout_and_mat(world):
    root = world / 'MARS'
    assert sorted(p.name for p in root.iterdir()) == ['bbox_test', 'bbox_train', 'info']
    assert sorted(p.name for p in (root / 'info').iterdir()) == ['query_IDX.mat', 'test_name.txt', 'tracks_test_info.mat',
                                                                 'tracks_train_info.mat', 'train_name.txt']
    tracks = {}
    for split in ('train', 'test'):
        names = (root / 'info' / f'{split}_name.txt').read_text().split('\n')
        assert names[-1] == '' and all(names[:-1]); names = names[:-1]
        files = sorted(p.name for p in (root / f'bbox_{split}').rglob('*.jpg'))
        assert sorted(names) == files and len(set(names)) == len(names)
        info = scipy.io.loadmat(root / 'info' / f'tracks_{split}_info.mat')[f'track_{split}_info']
        assert info.ndim == 2 and info.shape[1] == 4 and (info == np.round(info)).all()
        info = info.astype(int)
        assert info[0, 0] == 1 and info[-1, 1] == len(names) and (info[1:, 0] == info[:-1, 1] + 1).all()
        assert (info[:, 1] >= info[:, 0]).all() and info[:, 3].min() >= 1
        for s, e, pid, cam in info:
            frames = names[s - 1:e]
            ms = [MARS.match(n) for n in frames]
            assert all(ms), frames
            assert {(-1 if m[1] == '00-1' else int(m[1]), int(m[2]), m[3]) for m in ms} == {(pid, cam, ms[0][3])}
            assert [int(m[4]) for m in ms] == list(range(1, len(frames) + 1))
            assert all((root / f'bbox_{split}' / n[:4] / n).is_file() for n in frames)
        tracks[split] = info
    assert not set(tracks['train'][:, 2]) & set(tracks['test'][:, 2])
    assert {-1, 0} <= set(tracks['test'][:, 2]) and (root / 'bbox_test' / '00-1').is_dir() and (root / 'bbox_test' / '0000').is_dir()
    q = scipy.io.loadmat(root / 'info' / 'query_IDX.mat')['query_IDX']
    assert q.shape[0] == 1
    q = q.ravel().astype(int)
    te = tracks['test']
    assert len(set(q)) == len(q) and q.min() >= 1 and q.max() <= len(te)
    nonq = np.setdiff1d(np.arange(len(te)), q - 1)
    for i in q:  # a match in another camera, also among the non-query tracklets (torchreid's gallery)
        _, _, pid, cam = te[i - 1]
        assert pid > 0 and ((te[nonq, 2] == pid) & (te[nonq, 3] != cam)).any()
    assert len(q) >= len(set(te[:, 2]) - {-1, 0})  # at least one query per test identity


def test_dukev_layout(world):
    root = world / 'DukeMTMC-VideoReID'
    assert sorted(p.name for p in root.iterdir()) == ['gallery', 'query', 'train']
    tracks = defaultdict(list)
    for split in ('train', 'query', 'gallery'):
        for pdir in (root / split).iterdir():
            assert re.fullmatch(r'\d{4}', pdir.name)
            for tdir in pdir.iterdir():
                assert re.fullmatch(r'\d{4}', tdir.name)
                ms = [DUKE.match(p.name) for p in sorted(tdir.iterdir())]
                assert ms and all(ms)
                assert {m[1] for m in ms} == {pdir.name} and len({m[2] for m in ms}) == 1
                assert [int(m[3]) for m in ms] == list(range(1, len(ms) + 1))
                tracks[split].append((int(pdir.name), tdir.name, int(ms[0][2])))
    train = {p for p, _, _ in tracks['train']}
    test = {p for p, _, _ in tracks['query'] + tracks['gallery']}
    assert train and not train & test
    for pid, tid, cam in tracks['query']:
        assert any(p == pid and c != cam for p, _, c in tracks['gallery'])
        assert all(not (p == pid and t == tid) for p, t, _ in tracks['gallery'])


def test_every_image_has_its_label_map(world):
    imgs = sorted(p for p in world.rglob('*.jpg'))
    pngs = sorted(p for p in (world / 'parsing').rglob('*.png'))
    assert len(imgs) == len(pngs) > 100
    fg = []
    for p in imgs:
        rel = p.relative_to(world)
        lab_path = (world / 'parsing' / rel).with_suffix('.png')
        lab = cv2.imread(str(lab_path), cv2.IMREAD_UNCHANGED)
        assert lab is not None and lab.dtype == np.uint8 and lab.ndim == 2, lab_path
        assert lab.shape == cv2.imread(str(p)).shape[:2] == SIZE
        assert lab.max() <= 19
        if not p.name.startswith(('-1', '0000', '00-1')): fg.append((lab > 0).mean())
    assert min(fg) > .05 and np.mean(fg) > .2  # a person is there (occluders may hide part of it)


def test_label_maps_agree_with_pixels(world):
    """Written label maps equal a key-colour render of the same job (label 0 <=> not drawn body), and the JPEG agrees:
    label-0 pixels match the same job rendered without the person, labelled pixels do not."""
    man = json.loads((world / 'synthetic_manifest.json').read_text())
    stats = []
    for ds, root in (('market1501', 'Market-1501'), ('mars', 'MARS'), ('dukev', 'DukeMTMC-VideoReID')):
        rec = man[ds]
        p = S._resolve('tiny', ds, {})
        assert json.loads(json.dumps(p)) == rec['params']
        jobs, _, cams = S._plan(ds, p, rec['seed'])
        assert len(jobs) == rec['n_images']
        for job in jobs[::3]:
            img, lbl = S._render(job, cams[job['cam']], *SIZE, seed=rec['seed'], plain_bg=True)
            written = cv2.imread(str((world / 'parsing' / root / job['out']).with_suffix('.png')), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(written, lbl, err_msg=job['out'])
            key = (img == np.array(S._KEY_BGR, np.uint8)).all(-1)
            assert not key[lbl > 0].any(), job['out']   # every labelled pixel was drawn by the body
            assert (lbl[key] == 0).all(), job['out']    # the background is labelled background
            # in the written JPEG, label-0 pixels are the scene and labelled pixels are not: compare with the same
            # job rendered without the person (same light, noise, blur)
            if (lbl > 0).sum() < 50: continue
            real = cv2.imread(str(world / root / job['out'])).astype(np.int16)
            empty, _ = S._render(job, cams[job['cam']], *SIZE, seed=rec['seed'], person=False)
            q = S._jpeg_quality(job, cams[job['cam']], rec['seed'])
            empty = cv2.imdecode(cv2.imencode('.jpg', empty, [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_COLOR).astype(np.int16)
            diff = np.abs(real - empty).mean(-1)
            far = cv2.erode((lbl == 0).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0  # away from blur and JPEG blocks
            body = cv2.erode((lbl > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            if far.sum() < 50 or body.sum() < 50: continue
            stats.append((np.median(diff[far]), np.median(diff[body])))
    far, body = np.array(stats).T
    print(np.percentile(far, [50, 90, 100]), np.percentile(body, [0, 10, 50]))
    assert len(stats) > 30 and np.median(far) < 6 and np.percentile(far, 90) < 10
    assert np.median(body) > 30 and (body > far).mean() > .95


def test_determinism_and_workers(tmp_path):
    kw = dict(preset='tiny', datasets=('market1501',), img_size=SIZE, n_train_ids=12, n_test_ids=12, imgs_per_cam=(4, 6))
    a = make_synthetic_reid(tmp_path / 'a', workers=0, **kw)
    b = make_synthetic_reid(tmp_path / 'b', workers=2, **kw)
    assert json.loads((a / 'synthetic_manifest.json').read_text())['market1501']['n_images'] >= 200  # pool path used
    assert digest(a) == digest(b)
    c = make_synthetic_reid(tmp_path / 'c', seed=1, workers=0, **kw)
    assert digest(a) != digest(c)


def test_full_tiny_determinism(world, tmp_path):
    t0 = time.time()
    again = make_synthetic_reid(tmp_path / 'again', 'tiny', img_size=SIZE)
    assert time.time() - t0 < 10
    assert digest(again) == digest(world)


def test_rerun_overwrite_and_interruption(tmp_path, monkeypatch):
    out = make_synthetic_reid(tmp_path / 'w', 'tiny', datasets='market1501', img_size=SIZE)
    before = digest(out)
    t0 = time.time(); make_synthetic_reid(out, 'tiny', datasets='market1501', img_size=SIZE)
    assert time.time() - t0 < .5 and digest(out) == before
    with pytest.raises(ReIDInputError, match='overwrite'):
        make_synthetic_reid(out, 'tiny', seed=3, datasets='market1501', img_size=SIZE)
    assert digest(out) == before  # nothing lost
    make_synthetic_reid(out, 'tiny', seed=3, datasets='market1501', img_size=SIZE, overwrite=True)
    assert json.loads((out / 'synthetic_manifest.json').read_text())['market1501']['seed'] == 3
    # an interrupted run leaves no layout that looks complete, and the next run finishes it
    calls = {'n': 0}
    orig = S._write_job
    def flaky(job):
        calls['n'] += 1
        if calls['n'] > 20: raise KeyboardInterrupt
        return orig(job)
    monkeypatch.setattr(S, '_write_job', flaky)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_reid(tmp_path / 'x', 'tiny', datasets=('market1501', 'mars'), img_size=SIZE, workers=0)
    assert not (tmp_path / 'x' / 'Market-1501').exists() and not (tmp_path / 'x' / 'synthetic_manifest.json').exists()
    monkeypatch.setattr(S, '_write_job', orig)
    done = make_synthetic_reid(tmp_path / 'x', 'tiny', datasets=('market1501', 'mars'), img_size=SIZE)
    assert not list(done.glob('.tmp-*'))
    assert digest(done / 'MARS') == digest(make_synthetic_reid(tmp_path / 'y', 'tiny', datasets='mars', img_size=SIZE) / 'MARS')


@pytest.mark.parametrize('kw,name', [
    (dict(preset='huge'), 'preset'),
    (dict(n_train_ids=-1), 'n_train_ids'),
    (dict(n_test_ids=0), 'n_test_ids'),
    (dict(n_cams=1), 'n_cams'),
    (dict(n_junk=-5), 'n_junk'),
    (dict(imgs_per_cam=(3, 1)), 'imgs_per_cam'),
    (dict(tracklet_len=(0, 4)), 'tracklet_len'),
    (dict(tracklets_per_id='many'), 'tracklets_per_id'),
    (dict(seed=-1), 'seed'),
    (dict(img_size=(16, 8)), 'img_size'),
    (dict(datasets=('market', 'mars')), 'datasets'),
])
def test_bad_arguments(tmp_path, kw, name):
    with pytest.raises(ReIDInputError, match=name):
        make_synthetic_reid(tmp_path / 'w', **{'preset': 'tiny', **kw})
    assert not (tmp_path / 'w').exists() or not any((tmp_path / 'w').iterdir())


def test_path_is_a_file(tmp_path):
    f = tmp_path / 'file.txt'; f.write_text('x')
    with pytest.raises(ReIDInputError, match='file.txt'): make_synthetic_reid(f, 'tiny')


def test_cli(tmp_path):
    exe = ROOT / '.venv' / 'bin' / 'iaunet'
    cmd = [str(exe)] if exe.exists() else [sys.executable, '-m', 'iaunet_fastai.cli']
    r = subprocess.run(cmd + ['synth', '--path', str(tmp_path / 'cli'), '--preset', 'tiny', '--height', '64', '--width', '32',
                              '--datasets', 'market1501,dukev', '--tracklet-len', '3,5'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / 'cli' / 'Market-1501' / 'query').is_dir() and (tmp_path / 'cli' / 'DukeMTMC-VideoReID' / 'gallery').is_dir()
    assert 'Market-1501' in r.stdout
    r = subprocess.run(cmd + ['synth', '--path', str(tmp_path / 'bad'), '--preset', 'nope'], capture_output=True, text=True)
    assert r.returncode == 1 and 'preset' in r.stderr
    r = subprocess.run(cmd + ['synth', '--path', str(tmp_path / 'bad'), '--n-test-ids', '-3'], capture_output=True, text=True)
    assert r.returncode == 1 and 'n_test_ids' in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / 'data_prep' / 'make_synthetic.py'), '--path', str(tmp_path / 'dp'),
                        '--preset', 'tiny', '--height', '64', '--width', '32', '--datasets', 'mars'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / 'dp' / 'MARS' / 'info' / 'query_IDX.mat').is_file()


def test_small_preset_sizes(tmp_path):
    "The `small` Market layout the demo trains on: 50+ train and 50+ test identities, 1-2k images."
    root = make_synthetic_reid(tmp_path / 's', 'small', datasets='market1501', img_size=SIZE)
    mk = root / 'Market-1501'
    train = {p.name[:4] for p in (mk / 'bounding_box_train').iterdir()}
    test = {p.name.split('_')[0] for p in (mk / 'query').iterdir()}
    n = sum(1 for _ in mk.rglob('*.jpg'))
    assert len(train) >= 50 and len(test) >= 50 and 1000 <= n <= 2000


def _train_items(ds, preset):
    "The train items (image paths, or tracklets as frame lists) and pids the `preset` plans for layout `ds` (nothing rendered)."
    from iaunet_fastai.synthetic import _plan, _resolve
    jobs, _, _ = _plan(ds, _resolve(preset, ds, {}), 0)
    outs = [j['out'] for j in jobs if j['out'].split('/')[0] in ('bounding_box_train', 'bbox_train', 'train')]
    if ds == 'market1501': return [[o] for o in outs], [int(o.split('/')[1][:4]) for o in outs]
    key = (lambda o: o.split('F')[0]) if ds == 'mars' else (lambda o: o.rsplit('/', 1)[0])   # tracklet: name stem / folder
    tracks = {}
    for o in outs: tracks.setdefault(key(o), []).append(o)
    return list(tracks.values()), [int(o.split('/')[1]) for o in tracks]


@pytest.mark.parametrize('preset', ['small', 'medium'])
def test_presets_sized_for_default_pk(preset):
    "The default P×K sampler (P=16, K=4) draws every preset's train identities without repetition: `reid_dls` does not warn."
    import warnings
    from iaunet_fastai.data import reid_dls
    for ds in ('market1501', 'mars', 'dukev'):
        items, pids = _train_items(ds, preset)
        col = 'path' if ds == 'market1501' else 'paths'
        df = pd.DataFrame({col: [i[0] if ds == 'market1501' else i for i in items], 'pid': pids, 'camid': 0, 'split': 'train'})
        assert df.groupby('pid').size().min() >= 4, ds
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            reid_dls(df, size=(64, 32), num_workers=0, train_only=True)
