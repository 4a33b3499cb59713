"""Every dataset parser on small trees written in each dataset's real layout, plus the bad inputs of SPEC §7."""
import json, warnings
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from iaunet_fastai.core import ReIDInputError
from iaunet_fastai.datasets import *


def touch(p, size=(16, 32)):
    p = Path(p); p.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', size, (100, 50, 20)).save(p)
    return p


def check_canonical(df, video=False):
    cols = ['paths' if video else 'path', 'pid', 'camid', 'split']
    assert all(c in df.columns for c in cols), df.columns
    assert set(df.split) == {'train', 'query', 'gallery'}
    assert -1 not in set(df.pid)
    assert df.camid.min() >= 0 and df.pid.dtype.kind == 'i' and df.camid.dtype.kind == 'i'
    for ps in (df.paths if video else df.path.map(lambda p: [p])):
        assert len(ps) > 0 and all(Path(p).is_absolute() and Path(p).is_file() for p in ps)


# ---------------------------------------------------------------- Market-1501 / Duke / CUHK03
MARKET = ['bounding_box_train/0002_c1s1_000451_03.jpg', 'bounding_box_train/0002_c2s1_000301_01.jpg',
          'bounding_box_train/1501_c6s4_001902_01.jpg', 'query/0002_c3s1_000551_00.jpg',
          'query/1501_c5s4_001552_00.jpg', 'bounding_box_test/0002_c4s1_000001_01.jpg',
          'bounding_box_test/1501_c1s4_001602_02.jpg', 'bounding_box_test/0000_c1s1_000001_01.jpg',
          'bounding_box_test/-1_c1s1_000401_03.jpg', 'bounding_box_test/-1_c3s1_000401_04.jpg']


@pytest.fixture
def market(tmp_path):
    root = tmp_path/'Market-1501-v15.09.15'
    for f in MARKET: touch(root/f)
    (root/'bounding_box_test/Thumbs.db').write_bytes(b'\0')
    (root/'readme.txt').write_text('hi')
    return root


def test_market1501(market):
    df = market1501_df(market)
    check_canonical(df)
    assert len(df) == 8                                  # 2 junk dropped, Thumbs.db ignored
    g = df[df.split == 'gallery']
    assert sorted(g.pid) == [0, 2, 1501]                 # distractor 0 kept in the gallery
    row = df[df.path.str.endswith('1501_c6s4_001902_01.jpg')].iloc[0]
    assert (row.pid, row.camid, row.split) == (1501, 5, 'train')


def test_market_bad_inputs(market, tmp_path):
    with pytest.raises(ReIDInputError, match='no such|not found'):
        market1501_df(tmp_path/'missing')
    with pytest.raises(ReIDInputError, match="did you mean .*Market-1501-v15.09.15"):
        market1501_df(tmp_path)                          # the parent folder
    (market/'query').rename(market/'queries')
    with pytest.raises(ReIDInputError, match="no 'query'.*expected bounding_box_train, query, bounding_box_test"):
        market1501_df(market)
    (market/'queries').rename(market/'query')
    touch(market/'query/IMG_2034.jpg')
    with pytest.raises(ReIDInputError, match='IMG_2034.jpg'):
        market1501_df(market)
    with pytest.warns(UserWarning, match='skipped 1'):
        assert len(market1501_df(market, strict=False)) == 8
    (market/'query/IMG_2034.jpg').unlink()
    for f in (market/'query').iterdir(): f.unlink()
    with pytest.raises(ReIDInputError, match='empty query split'):
        market1501_df(market)


def test_dukemtmc(tmp_path):
    root = tmp_path/'DukeMTMC-reID'
    for f in ['bounding_box_train/0001_c2_f0046182.jpg', 'bounding_box_train/0001_c5_f0051341.jpg',
              'query/0005_c2_f0046985.jpg', 'bounding_box_test/0005_c8_f0049312.jpg', 'bounding_box_test/7140_c8_f0000001.jpg']:
        touch(root/f)
    df = dukemtmc_df(root)
    check_canonical(df)
    assert df.camid.tolist() == [1, 4, 1, 7, 7] and df.pid.tolist() == [1, 1, 5, 5, 7140]


def test_cuhk03(tmp_path):
    root = tmp_path/'cuhk03-np'
    for sub in ('detected', 'labeled'):
        for f in ['bounding_box_train/0001_c1_1.png', 'bounding_box_train/0001_c2_6.png',
                  'query/0003_c1_2.png', 'bounding_box_test/0003_c2_8.png']: touch(root/sub/f)
    touch(root/'labeled/bounding_box_test/0009_c2_7.png')
    d, l = cuhk03_df(root), cuhk03_df(root, labeled=True)
    check_canonical(d); check_canonical(l)
    assert len(d) == 4 and len(l) == 5 and '/detected/' in d.path[0]
    with pytest.raises(ReIDInputError, match="'detected'"):
        cuhk03_df(root/'detected')                       # given the sub-folder instead of the release root


# ---------------------------------------------------------------- MSMT17
@pytest.fixture
def msmt(tmp_path):
    root = tmp_path/'MSMT17_V1'
    lists = dict(train=[('train', '0000/0000_000_01_0303morning_0015_0.jpg', 0), ('train', '0000/0000_001_05_0303morning_0036_1.jpg', 0),
                        ('train', '0001/0001_000_15_0303noon_0998_0.jpg', 1)],
                 val=[('train', '0002/0002_003_07_0303afternoon_0111_2.jpg', 2)],
                 query=[('test', '0000/0000_000_02_0303morning_0020_0.jpg', 0)],
                 gallery=[('test', '0000/0000_004_12_0304noon_0400_1.jpg', 0), ('test', '0003/0003_001_09_0304noon_0412_0.jpg', 3)])
    for name, rows in lists.items():
        for folder, rel, _ in rows: touch(root/folder/rel)
        (root/f'list_{name}.txt').write_text(''.join(f'{rel} {pid}\n' for _, rel, pid in rows))
    return root


def test_msmt17(msmt):
    df = msmt17_df(msmt)
    check_canonical(df)
    assert len(df) == 6                                  # val left out by default
    assert df[df.split == 'train'].camid.tolist() == [0, 4, 14]   # third '_' field, 1-based → 0-based
    assert df[df.split == 'gallery'].camid.tolist() == [11, 8]
    dv = msmt17_df(msmt, combine_val=True)
    assert len(dv) == 7 and (dv[dv.split == 'train'].pid == 2).sum() == 1


def test_msmt17_bad(msmt):
    with open(msmt/'list_query.txt', 'a') as f: f.write('0000/0000_009_03_0303morning_0099_0.jpg 0\n')
    with pytest.raises(ReIDInputError, match='0000_009_03_0303morning_0099_0.jpg'):
        msmt17_df(msmt)                                  # a listed file that does not exist
    (msmt/'list_query.txt').write_text('garbage\n')
    with pytest.raises(ReIDInputError, match="garbage"):
        msmt17_df(msmt)
    (msmt/'test').rename(msmt/'tst')
    with pytest.raises(ReIDInputError, match="no 'test'"):
        msmt17_df(msmt)


# ---------------------------------------------------------------- MARS
def write_mars(root, train, test, qidx, nframes=3, key_suffix=''):
    root = Path(root); (root/'info').mkdir(parents=True, exist_ok=True)
    for sub, tracks in (('train', train), ('test', test)):
        names, info = [], []
        for pid, cam, tr in tracks:
            pf = f'{pid:04d}' if pid >= 0 else '00-1'
            fr = [f'{pf}C{cam}T{tr:04d}F{f:03d}.jpg' for f in range(1, nframes+1)]
            for n in fr: touch(root/f'bbox_{sub}'/pf/n)
            info.append([len(names)+1, len(names)+len(fr), pid, cam]); names += fr
        (root/'info'/f'{sub}_name.txt').write_text('\n'.join(names)+'\n')
        savemat(root/'info'/f'tracks_{sub}_info.mat', {f'track_{sub}_info{key_suffix}': np.array(info, float)})
    savemat(root/'info'/'query_IDX.mat', {'query_IDX': np.array(qidx)[None]})
    return root


def test_mars(tmp_path):
    root = write_mars(tmp_path/'MARS', [(1, 1, 1), (1, 6, 2), (3, 2, 1)],
                      [(2, 1, 1), (2, 3, 2), (0, 2, 1), (-1, 1, 1), (4, 4, 1), (4, 5, 2)], [1, 5])
    df = mars_df(root)
    check_canonical(df, video=True)
    assert df.split.tolist() == ['train']*3 + ['query', 'gallery', 'gallery', 'query', 'gallery']
    assert df.camid.tolist() == [0, 5, 1, 0, 2, 1, 3, 4]
    assert df[df.split != 'train'].trackid.tolist() == [0, 1, 2, 4, 5]   # -1 tracklet (row 3) dropped
    assert [Path(p).name for p in df.paths[0]] == ['0001C1T0001F001.jpg', '0001C1T0001F002.jpg', '0001C1T0001F003.jpg']
    assert (df.n_frames == 3).all()
    off = mars_df(root, query_in_gallery=True)
    assert (off.split == 'gallery').sum() == 5 and (off.split == 'query').sum() == 2


def test_mars_bad(tmp_path):
    root = write_mars(tmp_path/'MARS', [(1, 1, 1)], [(2, 1, 1), (2, 2, 2)], [1], key_suffix='_x')
    with pytest.raises(ReIDInputError, match="no key 'track_train_info'"):
        mars_df(root)
    root = write_mars(tmp_path/'MARS2', [(1, 1, 1)], [(2, 1, 1), (2, 2, 2)], [1])
    with pytest.raises(ReIDInputError, match='did you mean'):
        mars_df(tmp_path)
    (root/'info/query_IDX.mat').unlink()
    with pytest.raises(ReIDInputError, match='query_IDX.mat'):
        mars_df(root)
    savemat(root/'info'/'query_IDX.mat', {'query_IDX': np.array([[1, 2]])})
    with pytest.raises(ReIDInputError, match='empty gallery'):
        mars_df(root)


# ---------------------------------------------------------------- DukeMTMC-VideoReID
def test_dukev(tmp_path):
    root = tmp_path/'DukeMTMC-VideoReID'
    for split, pid, tr, cam in [('train', 1, 1, 6), ('train', 1, 2, 2), ('train', 3, 1, 1),
                                ('query', 5, 1, 1), ('gallery', 5, 2, 3), ('gallery', 5, 3, 8)]:
        for f in (16, 4, 100):                            # written out of order: parser sorts by F number
            touch(root/split/f'{pid:04d}'/f'{tr:04d}'/f'{pid:04d}_C{cam}_F{f:04d}_X{f*7:05d}.jpg')
    df = dukev_df(root)
    check_canonical(df, video=True)
    assert df.camid.tolist() == [5, 1, 0, 0, 2, 7] and df.trackid.tolist()[:2] == ['0001', '0002']
    assert [Path(p).name.split('_')[2] for p in df.paths[0]] == ['F0004', 'F0016', 'F0100']
    touch(root/'train/0003/0001/frame.jpg')
    with pytest.raises(ReIDInputError, match='frame.jpg'):
        dukev_df(root)


# ---------------------------------------------------------------- iLIDS-VID / PRID2011
def test_ilidsvid(tmp_path):
    root, n = tmp_path/'ilids-vid', 6
    for c in (1, 2):
        for i in (1, 2, 4, 7, 9, 12):
            for f in (5, 1, 3): touch(root/f'i-LIDS-VID/sequences/cam{c}/person{i:03d}/cam{c}_person{i:03d}_{f:05d}.png')
    (root/'train-test people splits').mkdir(parents=True)
    ls = np.stack([np.random.default_rng(s).permutation(n)+1 for s in range(10)]).astype(float)
    savemat(root/'train-test people splits/train_test_splits_ilidsvid.mat', {'ls_set': ls})
    persons = [1, 2, 4, 7, 9, 12]
    for split in (0, 3):
        df = ilidsvid_df(root, split=split)
        check_canonical(df, video=True)
        test_pids = sorted(persons[int(i)-1] for i in ls[split, :3])
        assert sorted(df[df.split == 'query'].pid) == test_pids == sorted(df[df.split == 'gallery'].pid)
        assert set(df[df.split == 'query'].camid) == {0} and set(df[df.split == 'gallery'].camid) == {1}
        assert (df.split == 'train').sum() == 6           # both cameras of the 3 train persons
        assert [Path(p).stem[-5:] for p in df.paths[0]] == ['00001', '00003', '00005']
    with pytest.raises(ReIDInputError, match='10 splits'):
        ilidsvid_df(root, split=10)
    with pytest.raises(ReIDInputError, match='train-test people splits'):
        ilidsvid_df(root/'i-LIDS-VID')


def test_prid2011(tmp_path):
    root = tmp_path/'prid2011'
    for cam, persons in (('a', range(1, 8)), ('b', range(1, 10))):
        for i in persons:
            for f in range(1, 4): touch(root/f'prid_2011/multi_shot/cam_{cam}/person_{i:04d}/{f:04d}.png')
    splits = [dict(train=[1, 2, 3], test=[4, 5, 6]), dict(train=['person_0004', 'person_0005'], test=['person_0001', 'person_0007'])]
    (root/'splits_prid2011.json').write_text(json.dumps(splits))
    df = prid2011_df(root)
    check_canonical(df, video=True)
    assert sorted(df[df.split == 'query'].pid) == [4, 5, 6] and set(df[df.split == 'query'].camid) == {0}
    assert (df.split == 'train').sum() == 6
    df1 = prid2011_df(root, split=1)
    assert sorted(df1[df1.split == 'gallery'].pid) == [1, 7]
    (root/'splits_prid2011.json').write_text(json.dumps([dict(train=[1], test=[8])]))
    with pytest.raises(ReIDInputError, match='person_0008'):
        prid2011_df(root)


# ---------------------------------------------------------------- own data
def test_folder_and_csv(tmp_path):
    root = tmp_path/'own'
    for f in ['train/7/a_c1.jpg', 'train/7/b_c2.jpg', 'train/8/c_c1.png', 'query/9/x_c1.jpg', 'gallery/9/y_c2.jpg',
              'gallery/-1/z_c2.jpg']: touch(root/f)
    (root/'train/7/notes.txt').write_text('x')
    df = folder_df(root, r'(?P<pid>-?\d+)/.*_c(?P<camid>\d+)')
    check_canonical(df)
    assert df.pid.tolist() == [7, 7, 8, 9, 9] and df.camid.tolist() == [0, 1, 0, 0, 1]
    only = folder_df(root, r'(?P<pid>\d+)/', splits=dict(train='train'))
    assert set(only.split) == {'train'} and set(only.camid) == {0}
    with pytest.raises(ReIDInputError, match="named group 'pid'"):
        folder_df(root, r'(\d+)')
    # CSV, relative paths
    rel = df.assign(path=[Path(p).relative_to(root.resolve()).as_posix() for p in df.path])
    rel.to_csv(root/'own.csv', index=False)
    c = csv_df(root/'own.csv')
    assert c.path.tolist() == df.path.tolist()
    rel.assign(path=['train/7/zzz.jpg'] + rel.path.tolist()[1:]).to_csv(root/'bad.csv', index=False)
    with pytest.raises(ReIDInputError, match='zzz.jpg'):
        csv_df(root/'bad.csv')
    rel.drop(columns='camid').to_csv(root/'nocam.csv', index=False)
    with pytest.raises(ReIDInputError, match='camid'):
        csv_df(root/'nocam.csv')
    # video CSV: ';'-separated frame lists
    (root/'v.csv').write_text('paths,pid,camid,split\n' + 'train/7/a_c1.jpg;train/7/b_c2.jpg,7,0,train\n')
    v = csv_df(root/'v.csv')
    assert v.paths[0] == df.path.tolist()[:2] and v.n_frames[0] == 2


# ---------------------------------------------------------------- the synthetic world
def _torchreid_mars(root):
    "torchreid's own `Mars` dataset class on `root` (its layout: `<root>/mars/...`), or skip when torchreid is absent."
    mars = pytest.importorskip('torchreid.data.datasets.video.mars')
    return mars.Mars(root=str(root), transform=lambda x: x)   # a video dataset refuses to exist without a transform


def test_synthetic_mars_reads_as_real_mars(tmp_path):
    "The synthetic MARS .mat files hold int32 like the real ones: MARS loaders index with them directly."
    from scipy.io import loadmat
    synth = pytest.importorskip('iaunet_fastai.synthetic')
    root = Path(synth.make_synthetic_reid(tmp_path/'synth', preset='tiny', datasets='mars', img_size=(64, 32), workers=0))
    info = root/'MARS'/'info'
    test = loadmat(str(info/'tracks_test_info.mat'))['track_test_info']
    qidx = loadmat(str(info/'query_IDX.mat'))['query_IDX'].squeeze()
    assert test.dtype == np.int32 and qidx.dtype == np.int32
    assert loadmat(str(info/'tracks_train_info.mat'))['track_train_info'].dtype == np.int32
    query = test[qidx - 1, :]                                        # as torchreid's Mars: query_IDX -= 1; track_test[query_IDX, :]
    df = mars_df(root/'MARS')
    assert sorted(df[df.split == 'query'].trackid) == sorted(qidx - 1)
    assert (query[:, 2] == df[df.split == 'query'].sort_values('trackid').pid.to_numpy()).all()
    for sub in ('train', 'test'):                                    # float-typed copies (older worlds) read the same
        f = info/f'tracks_{sub}_info.mat'
        savemat(f, {f'track_{sub}_info': loadmat(str(f))[f'track_{sub}_info'].astype(float)})
    savemat(info/'query_IDX.mat', {'query_IDX': qidx[None].astype(float)})
    assert mars_df(root/'MARS').equals(df)


def test_torchreid_reads_synthetic_mars(tmp_path):
    "torchreid's `Mars` class parses the synthetic world unmodified (only a `mars` link to the folder, its expected name)."
    synth = pytest.importorskip('iaunet_fastai.synthetic')
    pytest.importorskip('torchreid')
    root = Path(synth.make_synthetic_reid(tmp_path/'synth', preset='tiny', datasets='mars', img_size=(64, 32), workers=0))
    (tmp_path/'peer').mkdir(); (tmp_path/'peer'/'mars').symlink_to(root/'MARS', target_is_directory=True)
    ds = _torchreid_mars(tmp_path/'peer')
    df = mars_df(root/'MARS')
    for split, rows in (('train', ds.train), ('query', ds.query), ('gallery', ds.gallery)):
        mine = df[df.split == split]
        assert len(rows) == len(mine), split
        assert sorted(len(r[0]) for r in rows) == sorted(mine.n_frames), split


def test_synthetic_world(tmp_path):
    synth = pytest.importorskip('iaunet_fastai.synthetic')
    root = Path(synth.make_synthetic_reid(tmp_path/'synth', preset='tiny'))
    m = market1501_df(root/'Market-1501')
    check_canonical(m)
    assert (m[m.split == 'gallery'].pid == 0).any()                  # distractors kept in the gallery
    n_junk = sum(1 for p in (root/'Market-1501/bounding_box_test').iterdir() if p.name.startswith('-1_'))
    n_imgs = sum(1 for d in ('bounding_box_train', 'query', 'bounding_box_test') for p in (root/'Market-1501'/d).iterdir()
                 if p.suffix == '.jpg')
    assert n_junk > 0 and len(m) == n_imgs - n_junk                    # junk dropped, nothing else lost
    v = mars_df(root/'MARS')
    check_canonical(v, video=True)
    assert (v.n_frames == v.paths.map(len)).all()
    d = dukev_df(root/'DukeMTMC-VideoReID')
    check_canonical(d, video=True)
