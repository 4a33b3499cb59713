"Part-mask stage: parity with the synthetic world's true maps, every bad input, resume, rerun, CLI."
import json, os, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
from PIL import Image

import iaunet_fastai.part_masks as pmod
import iaunet_fastai.part_parsers as pparsers
from iaunet_fastai.core import ReIDInputError
from iaunet_fastai.part_labels import LIP_GROUPING, lip_to_parts, resize_nearest
from iaunet_fastai.part_masks import load_part_masks, precompute_part_masks, PartMasks

ROOT = Path(__file__).resolve().parents[1]
_ORIG_WORK = pmod._work_chunk
H, W = 64, 32


def person(shift=0, h=H, w=W):
    "A crude LIP id map of a standing person (all four parts present), shifted sideways by `shift`."
    m = np.zeros((64, 32), np.uint8)
    m[3:12, 11:21] = 2; m[6:12, 12:20] = 13; m[12:34, 8:24] = 5; m[14:30, 5:8] = 14; m[14:30, 24:27] = 15
    m[34:57, 9:16] = 16; m[34:57, 16:23] = 17; m[57:62, 8:16] = 18; m[57:62, 16:24] = 19
    m = np.roll(m, shift, 1)
    return resize_nearest(m, (h, w))


def write_dataset(root, n=6, sub='bounding_box_train', labels=True):
    "n Market-style JPEG images under root/images/sub and their LIP PNGs under root/labels/sub."
    img_dir, lab_dir = root/'images', root/'labels'
    (img_dir/sub).mkdir(parents=True, exist_ok=True); (lab_dir/sub).mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f'{i+1:04d}_c{i%6+1}s1_{i:06d}_00'
        Image.fromarray(np.full((H, W, 3), 20 * i % 256, np.uint8)).save(img_dir/sub/f'{name}.jpg')
        if labels: Image.fromarray(person(i % 5)).save(lab_dir/sub/f'{name}.png')
        names.append(f'{sub}/{name}.jpg')
    return img_dir, lab_dir, names


def build(img_dir, out, lab_dir, **kw):
    kw.setdefault('size', (32, 16)); kw.setdefault('progress', False); kw.setdefault('verbose', False)
    return precompute_part_masks(img_dir, out, label_dir=lab_dir, **kw)


# ---------------------------------------------------------------- parity
def test_lip_reproduces_grouping_exactly(tmp_path):
    img_dir, lab_dir, names = write_dataset(tmp_path)
    pm = build(img_dir, tmp_path/'cache', lab_dir, size=(48, 24))
    assert pm.names == names and pm.valid.all() and pm.masks.shape == (6, 48, 24)
    for i, n in enumerate(names):
        np.testing.assert_array_equal(pm.get(n), resize_nearest(lip_to_parts(person(i % 5)), (48, 24)))
    assert pm.meta['parser'] == 'lip' and pm.meta['size'] == [48, 24] and pm.meta['counts']['valid'] == 6
    assert pm.meta['grouping'] == {k: list(v) for k, v in LIP_GROUPING.items()}


def test_lip_on_synthetic_world(tmp_path):
    synth = pytest.importorskip('iaunet_fastai.synthetic')
    root = Path(tmp_path)/'synth'
    synth.make_synthetic_reid(root, preset='tiny', datasets=('market1501',))
    mk, lab = root/'Market-1501'/'bounding_box_train', root/'parsing'/'Market-1501'
    assert len(list(mk.glob('*.jpg'))) > 0
    pm = precompute_part_masks(mk, tmp_path/'cache', label_dir=lab, progress=False, verbose=False)
    assert len(pm) > 0 and pm.valid.all(), pm.meta['counts']
    for n in pm.names:
        gt = np.asarray(Image.open(lab/'bounding_box_train'/Path(n).with_suffix('.png')))
        np.testing.assert_array_equal(pm.get(n), resize_nearest(lip_to_parts(gt), (256, 128)))
        np.testing.assert_array_equal(pm.get(mk/n), pm.get(n))


def test_grouping_is_a_parameter(tmp_path):
    img_dir, lab_dir, names = write_dataset(tmp_path, n=2)
    g = {'head': (1, 2, 4, 13), 'upper': (3, 5, 6, 7, 10, 11), 'lower': (9, 12, 16, 17), 'shoes': (8, 18, 19)}  # arms: bg
    pm = build(img_dir, tmp_path/'cache', lab_dir, grouping=g, size=(H, W))
    np.testing.assert_array_equal(pm.get(names[0]), lip_to_parts(person(0), g))
    assert (pm.get(names[0])[14:30, 5:8] == 0).all()
    assert pm.meta['grouping']['upper'] == [3, 5, 6, 7, 10, 11]


# ---------------------------------------------------------------- bad input
def test_bad_label_files_are_invalid_counted_and_named(tmp_path, capsys):
    img_dir, lab_dir, names = write_dataset(tmp_path, n=8)
    d = lab_dir/'bounding_box_train'; stem = lambda i: Path(names[i]).stem
    (d/f'{stem(0)}.png').unlink(); Image.fromarray(person() * 12).convert('RGB').save(d/f'{stem(0)}.jpg')   # JPEG label
    Image.fromarray(np.where(person() > 0, 23, 0).astype(np.uint8)).save(d/f'{stem(1)}.png')              # id > 19
    (d/f'{stem(2)}.png').unlink()                                                                           # missing
    Image.fromarray(person()).convert('RGB').save(d/f'{stem(3)}.png')                                       # RGB "vis" map
    Image.fromarray(resize_nearest(person(), (32, 32))).save(d/f'{stem(4)}.png')                            # wrong aspect
    Image.fromarray(resize_nearest(person(), (128, 64))).save(d/f'{stem(5)}.png')                           # 2x size: fine
    Image.fromarray(np.zeros((H, W), np.uint8)).save(d/f'{stem(6)}.png')                                    # empty map
    (d/f'{stem(7)}.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')                                        # unreadable
    pm = precompute_part_masks(img_dir, tmp_path/'cache', label_dir=lab_dir, size=(H, W), progress=False)
    out = capsys.readouterr().out
    assert pm.valid.tolist() == [False, False, False, False, False, True, False, False]
    c = pm.meta['counts']
    assert c['total'] == 8 and c['valid'] == 1 and c['invalid'] == 7 and c['resized'] == 1
    assert c['invalid_by_reason'] == {'lossy label': 1, 'bad label id': 1, 'missing label': 1, 'bad label type': 1,
                                      'size mismatch': 1, 'empty mask': 1, 'unreadable label': 1}
    for i in (0, 1, 3, 4, 7): assert stem(i) in pm.reason(names[i])
    assert '.jpg' in pm.reason(names[0]) and 'id 23' in pm.reason(names[1]) and 'RGB' in pm.reason(names[3])
    for i in range(8):
        if i != 5: assert pm.get(names[i]) is None          # never a silent zero mask
    np.testing.assert_array_equal(pm.get(names[5]), lip_to_parts(person()))   # resized back exactly (2x nearest)
    assert '1/8 valid, 7 invalid' in out and 'lossy label' in out


def test_palette_and_16bit_labels(tmp_path):
    img_dir, lab_dir, names = write_dataset(tmp_path, n=2)
    d = lab_dir/'bounding_box_train'
    p = Image.fromarray(person(0), 'P'); p.putpalette([(7 * i) % 256 for i in range(768)]); p.save(d/f'{Path(names[0]).stem}.png')
    Image.fromarray(person(1).astype(np.uint16)).save(d/f'{Path(names[1]).stem}.png')
    pm = build(img_dir, tmp_path/'cache', lab_dir, size=(H, W))
    assert pm.valid.all()
    np.testing.assert_array_equal(pm.get(names[0]), lip_to_parts(person(0)))
    np.testing.assert_array_equal(pm.get(names[1]), lip_to_parts(person(1)))


def test_wrong_label_dir_and_empty_image_dir(tmp_path):
    img_dir, lab_dir, names = write_dataset(tmp_path, n=2)
    with pytest.raises(ReIDInputError, match='no/such/labels'): build(img_dir, tmp_path/'c', tmp_path/'no/such/labels')
    with pytest.raises(ReIDInputError, match='holds no PNG'): build(img_dir, tmp_path/'c', img_dir)   # the images themselves
    other = tmp_path/'other'; other.mkdir(); Image.fromarray(person()).save(other/'unrelated.png')
    with pytest.raises(ReIDInputError, match='matches any of the 2 images'): build(img_dir, tmp_path/'c', other)
    (tmp_path/'empty').mkdir()
    with pytest.raises(ReIDInputError, match='no image files found'): build(tmp_path/'empty', tmp_path/'c', lab_dir)
    with pytest.raises(ReIDInputError, match='image_dir not found'): build(tmp_path/'nope', tmp_path/'c', lab_dir)
    with pytest.raises(ReIDInputError, match='needs label_dir'): build(img_dir, tmp_path/'c', None)
    with pytest.raises(ReIDInputError, match='parser must be'): build(img_dir, tmp_path/'c', lab_dir, parser='jppnet')
    with pytest.raises(ReIDInputError, match='size must be'): build(img_dir, tmp_path/'c', lab_dir, size=(0, 5))
    with pytest.raises(ReIDInputError, match='id 20'): build(img_dir, tmp_path/'c', lab_dir, grouping={'head': (20,)})
    assert not (tmp_path/'c'/'meta.json').exists()
    with pytest.raises(ReIDInputError, match='part-mask cache not found'): load_part_masks(tmp_path/'c')


def test_duplicate_stems(tmp_path):
    img_dir, lab_dir, names = write_dataset(tmp_path, n=2, sub='query')
    write_dataset(tmp_path, n=2, sub='bounding_box_test')         # same stems in two folders, images and labels
    # labels laid out like the images: disambiguated by relative path
    flat = tmp_path/'flat'; (flat/'a').mkdir(parents=True); (flat/'b').mkdir()
    s0 = Path(names[0]).stem
    Image.fromarray(person(0)).save(flat/'a'/f'{s0}.png'); Image.fromarray(person(3)).save(flat/'b'/f'{s0}.png')
    pm = build(img_dir, tmp_path/'c1', lab_dir, size=(H, W))
    np.testing.assert_array_equal(pm.get('query/' + Path(names[0]).name), lip_to_parts(person(0)))
    assert pm.get(s0) is None and pm.index(s0) is None            # stem lookup refuses an ambiguous stem
    with pytest.raises(ReIDInputError) as e: build(img_dir/'query', tmp_path/'c2', flat)
    assert str(flat/'a'/f'{s0}.png') in str(e.value) and str(flat/'b'/f'{s0}.png') in str(e.value)
    # a label folder tail that matches the image folder wins over the other
    (flat/'query').mkdir(); os.replace(flat/'b'/f'{s0}.png', flat/'query'/f'{s0}.png')
    pm = build(img_dir/'query', tmp_path/'c3', flat, size=(H, W))
    np.testing.assert_array_equal(pm.get(names[0].split('/')[1]), lip_to_parts(person(3)))


def write_iaunet(root, names, shift=0):
    for n in names:
        d = root/Path(n).stem; d.mkdir(parents=True, exist_ok=True)
        parts = lip_to_parts(person(shift))
        for k, f in enumerate(('head', 'upper_clothes', 'lower_clothes', 'shoes')):
            Image.fromarray(((parts == k + 1) * 255).astype(np.uint8)).save(d/f'{f}.png')
        Image.fromarray(((parts > 0) * 255).astype(np.uint8)).save(d/'foreground.png')


def test_iaunet_layout(tmp_path):
    img_dir, _, names = write_dataset(tmp_path, n=5, labels=False)
    seg = tmp_path/'seg_part4'/'Market1501_train_seg_part4'; write_iaunet(seg, names)
    d = lambda i: seg/Path(names[i]).stem
    (d(1)/'shoes.png').unlink()                                                              # missing part file
    Image.fromarray(np.arange(H * W, dtype=np.uint8).reshape(H, W)).save(d(2)/'head.png')     # not binary
    up = np.zeros((H, W), np.uint8); up[10:40] = 1; Image.fromarray(up).save(d(3)/'upper_clothes.png')  # 0/1, overlaps
    Image.fromarray(np.zeros((32, 16), np.uint8)).save(d(4)/'head.png')                      # size mismatch between parts
    pm = build(img_dir, tmp_path/'cache', seg, parser='iaunet', size=(H, W))
    assert pm.valid.tolist() == [True, False, False, True, False]
    np.testing.assert_array_equal(pm.get(names[0]), lip_to_parts(person(0)))
    assert 'missing part file' in pm.reason(names[1]) and str(d(1)/'shoes.png') in pm.reason(names[1])
    assert 'not binary' in pm.reason(names[2]) and 'head.png' in pm.reason(names[2])
    assert 'size mismatch' in pm.reason(names[4])
    m3, gt = pm.get(names[3]), lip_to_parts(person(0))
    # priority shoes > lower > upper > head: the 0/1 upper mask overrides head rows 10..11, lower rows stay lower
    assert (m3[10:12][gt[10:12] == 1] == 2).all() and (m3[34:40][gt[34:40] == 3] == 3).all()
    assert (m3[20:30][gt[20:30] == 0] == 2).all()
    with pytest.raises(ReIDInputError, match='authors'): build(img_dir, tmp_path/'c2', tmp_path/'images', parser='iaunet')


# ---------------------------------------------------------------- resume, rerun, atomicity
class SimulatedCrash(RuntimeError): pass


def counting(monkeypatch, fail_after=None):
    calls = []
    orig = _ORIG_WORK
    def f(parser, jobs, size, pool=None):
        if fail_after is not None and len(calls) >= fail_after: raise SimulatedCrash('simulated crash')
        calls.append(len(jobs)); return orig(parser, jobs, size, pool)
    monkeypatch.setattr(pmod, '_work_chunk', f)
    return calls


def test_interrupted_run_resumes_and_rerun_does_no_work(tmp_path, monkeypatch):
    img_dir, lab_dir, names = write_dataset(tmp_path, n=10)
    out = tmp_path/'cache'
    calls = counting(monkeypatch, fail_after=2)
    with pytest.raises(SimulatedCrash): build(img_dir, out, lab_dir, chunk=3)
    assert calls == [3, 3]
    assert not (out/'meta.json').exists() and not (out/'masks.npy').exists()
    assert not [p for p in out.rglob('*') if p.name.startswith('.chunk') or p.name.startswith('.masks')]  # no temp left
    with pytest.raises(ReIDInputError, match='incomplete'): load_part_masks(out)
    calls = counting(monkeypatch)
    pm = build(img_dir, out, lab_dir, chunk=3)
    assert calls == [3, 1]                                  # only chunks 2 and 3 were computed
    assert pm.meta['chunks_computed'] == 2 and pm.valid.all()
    for i, n in enumerate(names): np.testing.assert_array_equal(pm.get(n), resize_nearest(lip_to_parts(person(i % 5)), (32, 16)))
    assert not list(out.glob('.partial-*'))
    # a rerun on the finished cache does no work and is fast
    calls = counting(monkeypatch)
    t = time.perf_counter(); pm2 = build(img_dir, out, lab_dir, chunk=3); dt = time.perf_counter() - t
    assert calls == [] and pm2.meta['created'] == pm.meta['created'] and dt < 1.0
    # changing a parameter rebuilds; overwrite=True rebuilds
    pm3 = build(img_dir, out, lab_dir, chunk=3, size=(16, 8))
    assert calls == [3, 3, 3, 1] and pm3.masks.shape == (10, 16, 8)
    build(img_dir, out, lab_dir, chunk=3, size=(16, 8), overwrite=True)
    assert len(calls) == 8


def test_crash_during_rebuild_keeps_the_finished_cache(tmp_path, monkeypatch):
    "A rebuild with other parameters that stops half-way leaves the previous finished cache valid (never a mix)."
    img_dir, lab_dir, names = write_dataset(tmp_path, n=4)
    out = tmp_path/'cache'; first = build(img_dir, out, lab_dir)
    counting(monkeypatch, fail_after=0)
    with pytest.raises(SimulatedCrash): build(img_dir, out, lab_dir, size=(16, 8))
    pm = load_part_masks(out)
    assert pm.size == (32, 16) and pm.meta['key'] == first.meta['key']
    np.testing.assert_array_equal(np.asarray(pm.masks), np.asarray(first.masks))


def test_workers_give_the_same_cache(tmp_path):
    img_dir, lab_dir, names = write_dataset(tmp_path, n=7)
    a = build(img_dir, tmp_path/'a', lab_dir, chunk=4)
    b = build(img_dir, tmp_path/'b', lab_dir, chunk=4, n_workers=2)
    np.testing.assert_array_equal(np.asarray(a.masks), np.asarray(b.masks))
    assert a.names == b.names and (a.valid == b.valid).all()


# ---------------------------------------------------------------- read back
def test_part_masks_lookup(tmp_path):
    img_dir, lab_dir, names = write_dataset(tmp_path, n=3)
    pm = build(img_dir, tmp_path/'cache', lab_dir)
    assert isinstance(pm, PartMasks) and len(pm) == 3 and isinstance(pm.masks, np.memmap) and pm.masks.dtype == np.uint8
    m = pm.masks[1]
    for key in (names[1], img_dir/names[1], str(img_dir/names[1]), Path(names[1]).stem,
                Path('/moved/elsewhere/images')/names[1], 'images/' + names[1]):
        np.testing.assert_array_equal(pm.get(key), m)
    assert pm.get('nope.jpg') is None and 'unknown' in pm.reason('nope.jpg')
    assert pm.get('/data/other/bounding_box_train/nope.jpg') is None
    assert pm.onehot(names[1]).shape == (4, 32, 16)
    assert set(np.unique(np.asarray(pm.masks))) <= {0, 1, 2, 3, 4}
    pm2 = load_part_masks(tmp_path/'cache', mmap=False)
    assert not isinstance(pm2.masks, np.memmap) and pm2.names == pm.names
    (tmp_path/'cache'/'masks.npy').write_bytes(b'garbage')
    with pytest.raises(ReIDInputError, match='unreadable'): load_part_masks(tmp_path/'cache')


def test_unforeseen_per_file_error_is_recorded_not_raised(tmp_path, monkeypatch):
    img_dir, lab_dir, names = write_dataset(tmp_path, n=3)
    orig = pparsers.read_lip_png
    def flaky(path):
        if Path(path).stem == Path(names[1]).stem: raise MemoryError('simulated decoder failure')
        return orig(path)
    monkeypatch.setattr(pparsers, 'read_lip_png', flaky)
    pm = build(img_dir, tmp_path/'cache', lab_dir)
    assert pm.valid.tolist() == [True, False, True] and pm.meta['counts']['invalid_by_reason'] == {'error': 1}
    assert 'MemoryError' in pm.reason(names[1]) and Path(names[1]).stem in pm.reason(names[1])


# ---------------------------------------------------------------- offline prior
def test_prior_parser(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path/'imgs').mkdir()
    for i in range(3):   # a textured background and a person-coloured body following the LIP map
        bg = rng.integers(60, 200, (1, 1, 3)) + rng.integers(-10, 10, (H, W, 3))
        cols = np.array([[0, 0, 0], [200, 20, 20], [20, 20, 200], [20, 160, 20], [240, 240, 0]])
        parts = lip_to_parts(person(i)); img = np.where(parts[..., None] > 0, cols[parts], bg)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(tmp_path/'imgs'/f'{i:04d}_c1s1_000000_00.png')
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(tmp_path/'imgs'/'9999_c1s1_000000_00.png')  # nothing there
    pm = precompute_part_masks(tmp_path/'imgs', tmp_path/'cache', parser='prior', size=(H, W), progress=False, verbose=False)
    assert pm.valid.tolist() == [True, True, True, False] and 'no foreground' in pm.reason('9999_c1s1_000000_00')
    for i in range(3):
        gt, pr = lip_to_parts(person(i)), pm.get(f'{i:04d}_c1s1_000000_00.png')
        fg_iou = ((gt > 0) & (pr > 0)).sum() / ((gt > 0) | (pr > 0)).sum()
        assert fg_iou > 0.7, fg_iou
        assert set(np.unique(pr)) == {0, 1, 2, 3, 4}
    with pytest.raises(ReIDInputError, match='do not pass label_dir'):
        precompute_part_masks(tmp_path/'imgs', tmp_path/'c2', parser='prior', label_dir=tmp_path)


# ---------------------------------------------------------------- command line
def test_cli_and_data_prep_script(tmp_path):
    img_dir, lab_dir, names = write_dataset(tmp_path, n=3)
    from iaunet_fastai.cli import main
    assert main(['masks', str(img_dir), str(tmp_path/'c1'), '--label-dir', str(lab_dir), '--height', '32', '--width', '16',
                 '--no-progress']) == 0
    assert load_part_masks(tmp_path/'c1').masks.shape == (3, 32, 16)
    r = subprocess.run([sys.executable, str(ROOT/'data_prep'/'part_masks.py'), str(img_dir), str(tmp_path/'c2'), '--label-dir',
                        str(lab_dir), '--height', '32', '--width', '16', '--no-progress'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert '3/3 valid' in r.stdout
    r = subprocess.run([sys.executable, str(ROOT/'data_prep'/'part_masks.py'), str(img_dir), str(tmp_path/'c2'), '--label-dir',
                        str(lab_dir), '--height', '32', '--width', '16'], capture_output=True, text=True)
    assert r.returncode == 0 and 'up to date' in r.stdout
    np.testing.assert_array_equal(np.asarray(load_part_masks(tmp_path/'c2').masks), np.asarray(load_part_masks(tmp_path/'c1').masks))
    r = subprocess.run([sys.executable, str(ROOT/'data_prep'/'part_masks.py'), str(img_dir), str(tmp_path/'c3'), '--label-dir',
                        str(tmp_path/'missing')], capture_output=True, text=True)
    assert r.returncode == 1 and 'label_dir not found' in r.stderr and 'Traceback' not in r.stderr


# ---------------------------------------------------------------- module layout: no import cycle
def _loaded_after(code):
    r = subprocess.run([sys.executable, '-c', code + '; import sys; print(sorted(m for m in sys.modules if m.startswith("iaunet_fastai")))'],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return set(eval(r.stdout.strip().splitlines()[-1]))


def test_part_modules_import_alone_and_never_each_other():
    "part_labels is pure; part_masks never loads schp (nor schp part_masks); the registry loads schp on first use."
    import ast
    assert _loaded_after('import iaunet_fastai.part_labels') <= {'iaunet_fastai', 'iaunet_fastai.core', 'iaunet_fastai.part_labels'}
    assert 'iaunet_fastai.schp' not in _loaded_after('import iaunet_fastai.part_masks')
    assert 'iaunet_fastai.part_masks' not in _loaded_after('import iaunet_fastai.schp')
    assert 'iaunet_fastai.schp' in _loaded_after('from iaunet_fastai.part_parsers import parser_class; parser_class("schp")')
    for a, b in (('part_masks', 'schp'), ('schp', 'part_masks'), ('part_parsers', 'part_masks'), ('part_labels', 'part_parsers')):
        tree = ast.parse((ROOT/'iaunet_fastai'/f'{a}.py').read_text())
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
               {x.name for n in ast.walk(tree) if isinstance(n, ast.Import) for x in n.names}
        assert not any(m and m.split('.')[-1] == b for m in mods), f"{a} imports {b}"
