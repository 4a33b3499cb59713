"""ReIDGallery: exact search vs brute force, resumable builds (a real kill), foreign models refused, CLI, FAISS."""
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from iaunet_fastai.core import ReIDInputError
from iaunet_fastai.gallery import ReIDGallery, Embeddings, embed, topk_search, model_fingerprint
from iaunet_fastai.inference import save_reid_model
from iaunet_fastai.models import IAUnet

SIZE = (64, 32)
ROOT = Path(__file__).resolve().parents[1]


def brute_topk(q, g, k, allowed=None):
    "Full distance matrix, lexsort on (distance, gallery index)."
    d = 1 - F.normalize(torch.as_tensor(q), dim=1).numpy() @ np.asarray(g).T
    cols = np.arange(len(g)) if allowed is None else allowed
    d = d[:, cols]
    o = np.stack([np.lexsort((cols, row))[:k] for row in d])
    return np.take_along_axis(d, o, 1), cols[o]


@pytest.mark.parametrize('ties', [False, True])
def test_search_equals_brute_force(ties):
    rng = np.random.default_rng(1)
    if ties:   # unit vectors with entries ±0.5: every product is exact, so equal distances are equal in any summation order
        basis = np.zeros((5, 16), np.float32)
        for j in range(5): basis[j, rng.choice(16, 4, replace=False)] = .5 * rng.choice([-1, 1], 4)
        g, q = basis[rng.integers(0, 5, 700)], basis[rng.integers(0, 5, 9)]
    else:
        g = F.normalize(torch.randn(700, 24, generator=torch.Generator().manual_seed(1)), dim=1).numpy()
        q = rng.standard_normal((9, 24)).astype(np.float32)
    shards = [g[:250], g[250:251], g[251:]]
    allowed = np.flatnonzero(rng.random(700) < .3)
    for cs in (5, 100, 4096):
        for al in (None, allowed):
            d, i = topk_search(q, shards, k=30, allowed=al, chunk=cs)
            bd, bi = brute_topk(q, g, 30, al)
            np.testing.assert_array_equal(i.numpy(), bi)
            np.testing.assert_allclose(d.numpy(), bd, atol=1e-6)
    d, i = topk_search(q, shards, k=5, allowed=allowed[:3])       # fewer allowed items than k
    assert i.shape == (9, 3) and set(i[0].tolist()) == set(allowed[:3].tolist())


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    "24 random crops with Market-style names (8 identities x 3 cameras) and two model files (different weights)."
    root = tmp_path_factory.mktemp('gal')
    rng = np.random.default_rng(0)
    (root/'imgs').mkdir()
    for pid in range(1, 9):
        base = rng.integers(0, 255, (SIZE[0], SIZE[1], 3))
        for cam in (1, 2, 3):
            a = np.clip(base + rng.integers(-30, 30, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root/'imgs'/f'{pid:04d}_c{cam}s1_000001_00.jpg')
    for seed, name in ((0, 'model'), (1, 'other')):
        torch.manual_seed(seed)
        m = IAUnet('resnet18', 4, pretrained=False).eval(); m.reid_config = dict(img_size=list(SIZE))
        save_reid_model(m, root/f'{name}.pth')
    return root


@pytest.fixture(scope='module')
def models(files):
    "The two models of `files`, loaded once (loading a model file is the slow part of these tests)."
    from iaunet_fastai.inference import load_reid_model
    return load_reid_model(files/'model.pth'), load_reid_model(files/'other.pth')


def test_build_add_load_search_where(files, models, tmp_path):
    imgs = sorted(str(p) for p in (files/'imgs').glob('*.jpg'))
    gal = ReIDGallery.build(files/'model.pth', imgs[:15], tmp_path/'g', chunk=4, progress=False)
    gal = gal.add(imgs[15:], progress=False)
    gal = ReIDGallery.load(tmp_path/'g')
    assert len(gal) == 24 and len(gal.shards) == 2 and gal.meta.pid.tolist() == [int(Path(p).name[:4]) for p in imgs]
    e = embed(models[0], imgs)
    np.testing.assert_allclose(np.concatenate(gal.shards), e.features, atol=1e-5)
    res = gal.search(imgs[:2], k=4)
    assert res.groupby('query').size().tolist() == [4, 4] and res['rank'].tolist()[:4] == [1, 2, 3, 4]
    assert res.gallery_idx.iloc[0] == 0 and res.distance.iloc[0] < 1e-5       # a gallery item finds itself first
    assert (res.distance.diff()[res['rank'] > 1] >= 0).all()
    r2 = gal.search(e, k=4, where='camid != 0')
    assert (r2.camid != 0).all() and len(r2) == 4 * 24
    r3 = gal.search(e.features[:1], k=3, where={'pid': [2, 3]})
    assert set(r3.pid) <= {2, 3}
    with pytest.raises(ReIDInputError, match='already holds a gallery'): ReIDGallery.build(files/'model.pth', imgs, tmp_path/'g')
    with pytest.raises(ReIDInputError, match='column'): gal.search(e, where={'nope': 1})
    with pytest.raises(ReIDInputError, match='not found'): gal.add([str(files/'missing.jpg')])


def test_foreign_model_is_refused(files, models, tmp_path):
    imgs = sorted(str(p) for p in (files/'imgs').glob('*.jpg'))
    mine, theirs = models
    gal = ReIDGallery.build(mine, imgs[:6], tmp_path/'g', progress=False)
    other = embed(theirs, imgs[:2])
    assert other.fingerprint != gal.fingerprint
    with pytest.raises(ReIDInputError, match='another model'): gal.search(other)
    with pytest.raises(ReIDInputError, match='another model'): gal.search(imgs[:2], model=theirs)
    with pytest.raises(ReIDInputError, match='another model'): gal.add(imgs[6:8], model=theirs)
    with pytest.raises(ReIDInputError, match='dim'): gal.search(np.ones((2, 7), np.float32))
    assert len(gal.search(embed(mine, imgs[:1]), k=2)) == 2                   # the same model's embeddings are accepted


KILL_SCRIPT = textwrap.dedent('''
    import sys, time
    from iaunet_fastai.inference import FeatureExtractor
    from iaunet_fastai.gallery import ReIDGallery
    call = FeatureExtractor.__call__
    def slow(self, items): time.sleep(0.4); return call(self, items)    # time for the test to kill us mid-build
    FeatureExtractor.__call__ = slow
    ReIDGallery.build(sys.argv[1], sys.argv[2], sys.argv[3], chunk=3, progress=False)
''')


def test_killed_build_resumes(files, models, tmp_path):
    "A build killed with SIGKILL mid-way continues from its progress record and ends equal to an uninterrupted one."
    out = tmp_path/'g'
    env = {**os.environ, 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    p = subprocess.Popen([sys.executable, '-c', KILL_SCRIPT, str(files/'model.pth'), str(files/'imgs'), str(out)], env=env)
    rec, t0 = out/'shard-00000.progress.json', time.time()
    try:
        while time.time() - t0 < 240:
            if rec.is_file() and json.loads(rec.read_text())['done'] >= 6: break
            assert p.poll() is None, 'the build ended before it could be killed'
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
    finally: p.wait()
    done = json.loads(rec.read_text())['done']
    assert 6 <= done < 24
    with pytest.raises(ReIDInputError, match='interrupted'):                # other items cannot finish it
        ReIDGallery.build(files/'model.pth', sorted(str(f) for f in (files/'imgs').glob('*.jpg'))[:5], out)
    calls = []
    from iaunet_fastai.inference import FeatureExtractor
    orig = FeatureExtractor.__call__
    def counting(self, items): calls.append(len(items)); return orig(self, items)
    FeatureExtractor.__call__ = counting
    try: gal = ReIDGallery.build(files/'model.pth', files/'imgs', out, chunk=3, progress=False)
    finally: FeatureExtractor.__call__ = orig
    assert sum(calls) == 24 - done and gal.pending is None and not rec.exists()
    ref = embed(models[0], gal.meta['item'])
    np.testing.assert_allclose(np.asarray(gal.shards[0]), ref.features, atol=1e-5)


def test_cli_index_and_search(files, tmp_path, capsys):
    from iaunet_fastai.cli import main
    g = tmp_path/'g'
    imgs = sorted((files/'imgs').glob('*.jpg'))
    lst = tmp_path/'more.txt'; lst.write_text('\n'.join(str(p) for p in imgs[20:]))
    assert main(['index', 'build', str(files/'model.pth'), str(files/'imgs'), '--out', str(g)]) == 0
    assert main(['index', 'add', str(g), str(lst)]) == 0
    assert len(ReIDGallery.load(g)) == 28
    assert main(['search', str(g), str(imgs[0]), str(imgs[5]), '-k', '3', '--csv', str(tmp_path/'r.csv')]) == 0
    r = pd.read_csv(tmp_path/'r.csv')
    assert len(r) == 6 and r['rank'].tolist() == [1, 2, 3] * 2
    assert main(['index', 'build', str(files/'model.pth'), str(files/'imgs')]) == 1            # no --out
    assert main(['search', str(g), str(tmp_path/'nope.jpg')]) == 1
    assert main(['search', str(g), str(imgs[0]), '--model', str(files/'other.pth')]) == 1
    assert 'another model' in capsys.readouterr().err


def test_faiss_backend(tmp_path):
    pytest.importorskip('faiss')
    rng = np.random.default_rng(0)
    g = F.normalize(torch.as_tensor(rng.standard_normal((3000, 32), dtype=np.float32)), dim=1).numpy()
    (tmp_path/'g').mkdir()
    np.save(tmp_path/'g'/'shard-00000.npy', g)
    pd.DataFrame(dict(item=[f'{i}.jpg' for i in range(3000)], pid=rng.integers(0, 50, 3000), camid=rng.integers(0, 3, 3000))
                 ).to_json(tmp_path/'g'/'shard-00000.jsonl', orient='records', lines=True)
    info = dict(format=1, fingerprint='x', dim=32, metric='cosine', size=[64, 32], flip_tta=False, model=None,
                shards=[dict(name='shard-00000', n=3000, items='', complete=True)])
    (tmp_path/'g'/'gallery.json').write_text(json.dumps(info))
    gal = ReIDGallery.load(tmp_path/'g')
    assert gal.build_faiss('flat', n_eval=200, verbose=False) == 1.0
    q = g[:20] + .01
    ex, fa = gal.search(q, k=5), gal.search(q, k=5, backend='faiss')
    np.testing.assert_array_equal(ex.gallery_idx, fa.gallery_idx)
    fw = gal.search(q, k=5, backend='faiss', where='camid == 1')
    assert (fw.camid == 1).all() and len(fw) == 100
    assert 0.3 < gal.build_faiss('ivf', nprobe=8, n_eval=200, verbose=False) <= 1.0
