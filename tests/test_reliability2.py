"""Nothing lost, nothing silently wrong, second pass (issue 25): the lock on --out, the non-finite guard, full disks,
closed pipes, --resume's checks, validation before any write, and the pre-flight's new reports.
One test (or more) per numbered fault case of the issue; tiny synthetic world at 64x32, resnet18, 1 epoch, workers 0."""
import contextlib, fcntl, inspect, io, json, os, resource, shutil, signal, subprocess, sys, uuid, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from iaunet_fastai.all import *
from iaunet_fastai import commands as cmod
from iaunet_fastai import train_callbacks as tcb           # where `save_checkpoint` lives
from iaunet_fastai.commands import train_cli, eval_cli, extract_cli
from iaunet_fastai.core import check_out_dir
from iaunet_fastai.inference import save_reid_model
from iaunet_fastai.data import load_reid_image, check_images
from iaunet_fastai.datasets import combine_datasets, market1501_df
from iaunet_fastai.cli import main as cli_main

from test_reliability import SIZE, world, market, _kw   # the tiny world (64x32) and the 1-epoch resnet18 options


def _args(market, *extra):
    return ['train', '--dataset', 'market1501', '--root', str(market), '--arch', 'resnet18', '--no-pretrained', '--epochs', '1',
            '--size', '64,32', '--pk', '4x4', '--workers', '0', '--seed', '0', *extra]


def _copy(market, dst):
    shutil.copytree(market, dst); return dst


def _one_line_error(err, *words):
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert 'Traceback' not in err and lines, err
    assert all(w in lines[-1] for w in words), lines[-1]
    return lines[-1]


@pytest.fixture(scope='module')
def messy_run(market, tmp_path_factory):
    """One 1-epoch run started as a user on a shared machine would: umask 022, temp files of a killed earlier write in
    --out, and a stdout that closes at once (`iaunet train ... | head -0`)."""
    out = tmp_path_factory.mktemp('messy')/'r'; out.mkdir()
    stale = [out/'.checkpoint.pth.k1ll3d.pth', out/'.model.pth.x9y8z7.pth']
    for s in stale: s.write_bytes(b'half')
    r, w = os.pipe(); os.close(r)
    pipe = os.fdopen(w, 'w', buffering=1)
    old_mask, old_out = os.umask(0o022), sys.stdout
    sys.stdout = pipe
    try: rc = train_cli(**_kw(market), out=str(out))
    finally:
        sys.stdout = old_out; os.umask(old_mask)
        with contextlib.suppress(OSError): pipe.close()
    return dict(out=out, rc=rc, stale=stale)


@contextlib.contextmanager
def small_disk(tmp_path, kb):
    "A folder on a tmpfs of `kb` KiB (tests run as root); None where mounting is not allowed."
    d = tmp_path/f'disk{uuid.uuid4().hex[:6]}'; d.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={kb}k', 'tmpfs', str(d)], capture_output=True).returncode:
        yield None; return
    try: yield d
    finally: subprocess.run(['umount', '-l', str(d)], capture_output=True)


def _fill(d, leave_kb):
    "Fill the disk of folder `d` with 4 KiB files, then free `leave_kb` KiB of them."
    files = []
    with contextlib.suppress(OSError):
        while True:
            files.append(d/f'fill{len(files)}'); files[-1].write_bytes(b'\1' * 4096)
    for f in files[-1 - leave_kb // 4:]: f.unlink(missing_ok=True)


def _python_with_file_limit(argv, limit_bytes):
    "Run `python argv` in a subprocess whose files may not grow past `limit_bytes` (`ulimit -f`; SIGXFSZ ignored: EFBIG)."
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    env = dict(os.environ, PYTHONPATH=str(Path(cmod.__file__).parents[1]))
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                          preexec_fn=limit, env=env)


# ---------------------------------------------------------------- 1. a lock on --out
def test_1_second_train_into_a_locked_out_is_refused(run, market, tmp_path, capsys):
    out = tmp_path/'o'; out.mkdir()
    with open(out/'.lock', 'a+') as f:       # another `iaunet train` holds the run folder
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); f.write('4242 iaunet train\n'); f.flush()
        assert cli_main(_args(market, '--out', str(out))) == 1
        _one_line_error(capsys.readouterr().err, 'another', '4242', str(out))
        assert not (out/'config.json').exists() and not (out/'history.csv').exists()
    with open(run/'.lock', 'a+') as f:       # two --resume of one run
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = (run/'history.csv').read_text()
        assert cli_main(['train', '--resume', '--out', str(run)]) == 1
        _one_line_error(capsys.readouterr().err, 'another')
        assert (run/'history.csv').read_text() == before


# ---------------------------------------------------------------- 2. non-finite guard
def test_2_nan_loss_stops_at_that_batch_with_one_line(market, tmp_path, capsys):
    out = tmp_path/'nan'
    assert cli_main(_args(market, '--lr', '1e30', '--out', str(out))) == 1
    line = _one_line_error(capsys.readouterr().err, 'epoch 0', 'batch', '--lr')
    assert 'not finite' in line and 'Recorder' not in line
    assert not (out/'model.pth').exists() and not (out/'checkpoint.pth').exists()


def test_2_non_finite_weights_are_never_written_and_are_refused(run, market, tmp_path, capsys):
    m = torch.load(run/'model.pth', weights_only=True)
    k = next(k for k in m['model'] if k.endswith('running_var'))
    m['model'][k][:3] = float('inf')
    bad = tmp_path/'bad.pth'; torch.save(m, bad)           # written by something else than iaunet
    assert cli_main(['eval', str(bad), '--dataset', 'market1501', '--root', str(market)]) == 1
    _one_line_error(capsys.readouterr().err, str(bad), 'not finite')
    assert cli_main(['extract', str(bad), str(market/'query'), '--out', str(tmp_path/'f.npz')]) == 1
    _one_line_error(capsys.readouterr().err, str(bad))
    assert not (tmp_path/'f.npz').exists()
    model = load_model_file(run/'model.pth')
    dict(model.named_buffers())[k][:1] = float('nan')
    with pytest.raises(ReIDInputError, match='not finite'): save_reid_model(model, tmp_path/'m.pth')
    assert not (tmp_path/'m.pth').exists() and not list(tmp_path.glob('.m.pth*'))


def test_2_weights_that_become_non_finite_in_an_epoch_stop_training(market, tmp_path, monkeypatch, capsys):
    "--lr 1e6: the loss stays finite, but BN running_var overflows: no checkpoint or model file of it."
    from fastai.callback.core import Callback
    class Overflow(Callback):
        order = 1
        def after_step(self):
            bn = next(m for m in self.learn.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var[0] = float('inf')
    real = cmod.iaunet_learner
    def learner(*a, cbs=(), **kw): return real(*a, cbs=[*cbs, Overflow()] if isinstance(cbs, (list, tuple)) else [cbs, Overflow()], **kw)
    monkeypatch.setattr(cmod, 'iaunet_learner', learner)
    out = tmp_path/'inf'
    assert cli_main(_args(market, '--out', str(out))) == 1
    _one_line_error(capsys.readouterr().err, 'not finite', 'running_var', '--lr')
    assert not (out/'model.pth').exists() and not (out/'checkpoint.pth').exists()


# ---------------------------------------------------------------- 3. closed stdout; history and checkpoint agree
def test_3_closed_stdout_does_not_stop_training(messy_run):
    out = messy_run['out']
    assert messy_run['rc'] == 0 and (out/'model.pth').is_file()
    assert list(pd.read_csv(out/'history.csv').epoch) == [0]
    assert 'rank-1' in (out/'train.log').read_text()                # what the closed stdout did not show


def test_3_a_kill_between_history_and_checkpoint_never_duplicates_an_epoch(market, tmp_path, monkeypatch):
    real, calls = tcb.save_checkpoint, []
    def killed_at_epoch_1(learn, fname, epoch, partial=None):
        calls.append(epoch)
        if epoch == 1: raise KeyboardInterrupt        # the history row of epoch 1 is written, its checkpoint not
        return real(learn, fname, epoch, partial)
    monkeypatch.setattr(tcb, 'save_checkpoint', killed_at_epoch_1)
    out = tmp_path/'k'
    with pytest.raises(KeyboardInterrupt): train_cli(**_kw(market, epochs=2), out=str(out))
    assert list(pd.read_csv(out/'history.csv').epoch) == [0, 1]
    monkeypatch.setattr(tcb, 'save_checkpoint', real)
    assert train_cli(out=str(out), resume=True) == 0
    assert list(pd.read_csv(out/'history.csv').epoch) == [0, 1]


# ---------------------------------------------------------------- 4. combine_datasets keeps junk apart
def test_4_combine_datasets_keeps_junk_and_never_merges_people():
    a = pd.DataFrame(dict(path=['a0', 'a1', 'a2', 'a3'], pid=[0, 1, 5, -1], camid=[0, 1, 0, 1],
                          split=['train', 'train', 'query', 'gallery']))
    b = pd.DataFrame(dict(path=['b0', 'b1', 'b2', 'b3'], pid=[-1, 2, -1, 3], camid=[0, 1, 0, 1],
                          split=['gallery', 'train', 'gallery', 'query']))
    c = combine_datasets(dict(a=a, b=b))
    assert list(c[c.dataset_pid == -1].pid) == [-1, -1, -1]            # junk stays junk
    people = c[c.pid >= 0].groupby('pid').dataset.nunique()
    assert (people == 1).all()                                        # no id holds people of two datasets
    assert c[c.pid >= 0].groupby(['dataset', 'dataset_pid']).pid.nunique().eq(1).all()
    assert c[c.pid >= 0].drop_duplicates(['dataset', 'dataset_pid']).pid.is_unique


# ---------------------------------------------------------------- 5. full disks
def test_5_full_disk_at_a_checkpoint_keeps_the_previous_and_says_no_space(tmp_path):
    from iaunet_fastai.core import atomic_path
    with small_disk(tmp_path, 256) as d:
        if d is None: pytest.skip('no tmpfs here; see the ulimit -f test')
        (d/'checkpoint.pth').write_bytes(b'previous')
        with pytest.raises(ReIDInputError, match='no space left') as e:
            with atomic_path(d/'checkpoint.pth') as tmp: torch.save(dict(w=torch.zeros(200_000)), tmp)
        assert str(d/'checkpoint.pth') in str(e.value)
        assert (d/'checkpoint.pth').read_bytes() == b'previous' and sorted(p.name for p in d.iterdir()) == ['checkpoint.pth']


def test_5_train_extract_and_masks_on_a_full_disk_say_so_in_one_line(run, market, world, tmp_path, capsys):
    with small_disk(tmp_path, 64) as d:
        if d is None:      # no tmpfs here: a file size limit (`ulimit -f`) in a subprocess instead
            r = _python_with_file_limit(['-m', 'iaunet_fastai.cli', *_args(market, '--out', str(tmp_path/'u'))], 200_000)
            assert r.returncode == 1, r.stderr[-2000:]
            _one_line_error(r.stderr, 'checkpoint.pth', 'ulimit'); return
        assert cli_main(_args(market, '--out', str(d/'run'))) == 1
        _one_line_error(capsys.readouterr().err, 'no space left', 'checkpoint.pth')
        assert not [p for p in (d/'run').iterdir() if p.name.startswith('.') and p.name != '.lock']
        shutil.rmtree(d/'run')
        _fill(d, leave_kb=8)
        assert cli_main(['extract', str(run/'model.pth'), str(market/'query'), '--out', str(d/'f.npz')]) == 1
        _one_line_error(capsys.readouterr().err, 'no space left', 'f.npz')
        assert not (d/'f.npz').exists()
        assert cli_main(['masks', str(market/'bounding_box_train'), str(d/'m'), '--parser', 'prior', '--height', '64',
                         '--width', '32', '--no-progress']) == 1
        _one_line_error(capsys.readouterr().err, 'no space left')


def test_5_file_size_limit_at_a_checkpoint_is_one_line(tmp_path):
    "`ulimit -f`: torch's writer fails with EFBIG; the error names the file and the limit, the previous file stays."
    (tmp_path/'checkpoint.pth').write_bytes(b'previous')
    code = ("import sys, torch; from iaunet_fastai.core import save_atomic, ReIDInputError\n"
            "try: save_atomic(dict(w=torch.zeros(100_000)), sys.argv[1])\n"
            "except ReIDInputError as e: print(e); sys.exit(1)")
    r = _python_with_file_limit(['-c', code, str(tmp_path/'checkpoint.pth')], 100_000)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    _one_line_error(r.stdout, str(tmp_path/'checkpoint.pth'), 'ulimit', 'is kept')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint.pth']
    assert (tmp_path/'checkpoint.pth').read_bytes() == b'previous'


# ---------------------------------------------------------------- 6. --resume with changed options or data
def test_6_resume_with_changed_options_is_refused_or_recorded(run, tmp_path, capsys):
    out = tmp_path/'r'; shutil.copytree(run, out, ignore=shutil.ignore_patterns('.lock'))
    cfg = json.loads((out/'config.json').read_text())
    assert cli_main(['train', '--resume', '--out', str(out), '--epochs', '2', '--lr', '0.01']) == 1
    line = _one_line_error(capsys.readouterr().err, '--epochs', '--lr', '--allow-changes')
    assert '1 -> 2' in line
    assert json.loads((out/'config.json').read_text()) == cfg
    assert cli_main(['train', '--resume', '--out', str(out), '--epochs', '2', '--allow-changes']) == 0
    new = json.loads((out/'config.json').read_text())
    assert new['options']['epochs'] == 2 and new['changes'][-1]['options'] == {'epochs': [1, 2]}
    assert list(pd.read_csv(out/'history.csv').epoch) == [0, 1]


def test_6_resume_on_a_root_with_other_images_is_refused(market, tmp_path, capsys):
    root = _copy(market, tmp_path/'m')
    out = tmp_path/'r'
    assert train_cli(**_kw(root), out=str(out)) == 0
    img = sorted((root/'bounding_box_train').iterdir())[0]
    Image.new('RGB', (32, 64), (1, 2, 3)).save(img, quality=50)          # same name, another picture
    assert cli_main(['train', '--resume', '--out', str(out)]) == 1
    _one_line_error(capsys.readouterr().err, str(root), 'changed')


# ---------------------------------------------------------------- 7. identical files in query and gallery
def test_7_identical_query_and_gallery_files_are_reported(run, market, tmp_path, capsys):
    root = _copy(market, tmp_path/'m')
    q = sorted((root/'query').iterdir())[0]
    g = next(p for p in sorted((root/'bounding_box_test').iterdir()) if not p.name.startswith('-1'))   # not junk
    shutil.copyfile(g, q)
    assert eval_cli(str(run/'model.pth'), dataset='market1501', root=str(root)) == 0
    o = capsys.readouterr().out
    assert 'byte-identical' in o and q.name in o and g.name in o


# ---------------------------------------------------------------- 8. every value checked, config values too
@pytest.mark.parametrize('extra,word', [(['--workers', '-1'], '--workers'), (['--size', '0,0'], '--size'),
                                        (['--every', '0'], '--every'), (['--lr', 'nan'], '--lr'),
                                        (['--pk', '1x4'], '--pk'), (['--seq-len', '0'], '--seq-len')])
def test_8_bad_values_are_named_before_any_work(market, tmp_path, capsys, extra, word):
    out = tmp_path/'o'
    assert cli_main(_args(market, '--out', str(out), *extra)) == 1
    _one_line_error(capsys.readouterr().err, word)
    assert not out.exists()


def test_8_eval_and_extract_values_are_checked(run, market, tmp_path, capsys):
    assert cli_main(['extract', str(run/'model.pth'), str(market/'query'), '--out', str(tmp_path/'f.npz'), '--bs', '0']) == 1
    _one_line_error(capsys.readouterr().err, '--bs')
    assert cli_main(['eval', str(run/'model.pth'), '--dataset', 'market1501', '--root', str(market), '--rerank', '--k1', '0']) == 1
    _one_line_error(capsys.readouterr().err, '--k1')


@pytest.mark.parametrize('key,val', [('epochs', '1'), ('lr', 'fast'), ('baseline', 'yes'), ('workers', 1.5)])
def test_8_config_values_are_type_checked(market, tmp_path, capsys, key, val):
    cfg = tmp_path/'config.json'
    cfg.write_text(json.dumps(dict(options=dict(dataset='market1501', root=str(market), **{key: val}))))
    assert cli_main(['train', '--config', str(cfg), '--out', str(tmp_path/'o')]) == 1
    _one_line_error(capsys.readouterr().err, key, str(cfg))
    assert not (tmp_path/'o').exists()


# ---------------------------------------------------------------- 9. config.json only after validation and pre-flight
def test_9_config_json_only_after_the_preflight(market, tmp_path, capsys):
    root = _copy(market, tmp_path/'m')
    sorted((root/'query').iterdir())[0].write_bytes(b'')
    out = tmp_path/'o'
    assert cli_main(_args(root, '--out', str(out))) == 1
    _one_line_error(capsys.readouterr().err, 'empty file')
    assert not (out/'config.json').exists()
    check_out_dir(out)                                   # the corrected rerun needs no --overwrite


# ---------------------------------------------------------------- 10. temp files of an interrupted write
def test_10_temp_files_of_a_killed_write_are_removed_by_the_next_run(messy_run):
    assert not any(s.exists() for s in messy_run['stale'])


# ---------------------------------------------------------------- 11. contradictory options
def test_11_contradictory_options_are_refused(market, world, tmp_path, capsys):
    masks = tmp_path/'masks'
    precompute_part_masks(market/'bounding_box_train', masks, parser='prior', size=SIZE, progress=False, verbose=False)
    for extra, words in ((['--baseline', '--masks', str(masks)], ('--baseline', '--masks')),
                         (['--video', '--seq-len', '8'], ('--video', 'market1501')),
                         (['--seq-len', '8'], ('--seq-len', 'image'))):
        assert cli_main(_args(market, '--out', str(tmp_path/'o'), *extra)) == 1
        _one_line_error(capsys.readouterr().err, *words)
    assert not (tmp_path/'o').exists()


def test_11_workers_are_capped_to_the_cores_with_a_note(capsys):
    from iaunet_fastai.run_guards import resolve_workers
    n = len(os.sched_getaffinity(0))
    assert resolve_workers(64) == min(n, 64)
    assert 'capped' in capsys.readouterr().out
    assert resolve_workers(0) == 0 and resolve_workers(None) is None


def test_11_config_records_the_options_used(messy_run):
    o = json.loads((messy_run['out']/'config.json').read_text())['options']
    assert o['video'] is False and o['masks'] is None and o['workers'] == 0


# ---------------------------------------------------------------- 12. masks of another dataset
def test_12_masks_of_another_dataset_are_refused(market, world, tmp_path, capsys):
    other = tmp_path/'other'; other.mkdir()
    for i in range(3): Image.new('RGB', (32, 64), (i, 50, 90)).save(other/f'x{i}.jpg')
    masks = tmp_path/'masks'
    precompute_part_masks(other, masks, parser='prior', size=SIZE, progress=False, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert cli_main(_args(market, '--masks', str(masks), '--out', str(tmp_path/'o'))) == 1
    _one_line_error(capsys.readouterr().err, str(masks), 'none of the')
    assert not (tmp_path/'o'/'config.json').exists()


# ---------------------------------------------------------------- 13. camera 0 in a Market-style name
def test_13_camera_zero_is_named_as_the_problem(market, tmp_path, capsys):
    root = _copy(market, tmp_path/'m')
    src = sorted((root/'bounding_box_train').iterdir())[0]
    shutil.copyfile(src, root/'bounding_box_train'/'0002_c0s1_000451_00.jpg')
    assert cli_main(_args(root, '--out', str(tmp_path/'o'))) == 1
    line = _one_line_error(capsys.readouterr().err, 'camera', 'c0', '0002_c0s1_000451_00.jpg')
    assert 'strict=False' not in line


# ---------------------------------------------------------------- 14. EXIF orientation, degenerate crops
def _exif_rotated(path):
    im = Image.new('RGB', (40, 20), (200, 10, 10)); im.paste((10, 10, 200), (0, 0, 10, 20))
    ex = Image.Exif(); ex[0x0112] = 6                                  # "rotate 90 CW to display"
    im.save(path, exif=ex.tobytes())
    return path


def test_14_exif_orientation_is_applied_everywhere_images_are_read(tmp_path):
    from iaunet_fastai.part_parsers import _img_size
    p = _exif_rotated(tmp_path/'r.jpg')
    assert load_reid_image(p).size == (20, 40)                    # displayed upright: 20 wide, 40 high
    a = np.asarray(load_reid_image(p))
    assert a[:5].mean(axis=(0, 1))[2] > 150                        # the blue band is now at the top
    assert _img_size(p)[0] == (40, 20)


def test_14_tiny_crops_are_reported(tmp_path, capsys):
    ok, tiny = tmp_path/'ok.png', tmp_path/'tiny.png'
    Image.new('RGB', (32, 64)).save(ok); Image.new('RGB', (1, 1)).save(tiny)
    assert check_images([str(ok), str(tiny)], progress=False) == 2
    o = capsys.readouterr().out
    assert 'tiny.png' in o and '1x1' in o and 'ok.png' not in o


# ---------------------------------------------------------------- 15. hidden files, folders named *.jpg, dangling links
def test_15_extract_skips_hidden_files_and_folders_named_like_images(run, market, tmp_path, capsys):
    d = tmp_path/'imgs'; shutil.copytree(market/'query', d)
    (d/'._0001_c1s1_000151_00.jpg').write_bytes(b'\0\5\26\7 AppleDouble')
    (d/'x.jpg').mkdir()
    n = len([p for p in (market/'query').iterdir()])
    assert extract_cli(str(run/'model.pth'), str(d), out=str(tmp_path/'f.npz')) == 0
    assert len(np.load(tmp_path/'f.npz')['names']) == n
    assert 'skipped' in capsys.readouterr().out


def test_15_dangling_symlinks_in_a_split_are_counted_and_named(market, tmp_path):
    root = _copy(market, tmp_path/'m')
    (root/'bounding_box_test'/'0001_c2s1_000999_00.jpg').symlink_to(tmp_path/'gone.jpg')
    with pytest.warns(UserWarning, match=r"1 dangling symlink.*0001_c2s1_000999_00\.jpg"):
        market1501_df(root)


# ---------------------------------------------------------------- 16. output files follow the umask
def test_16_output_files_follow_the_umask(messy_run, tmp_path):
    out = messy_run['out']
    for f in ('model.pth', 'checkpoint.pth', 'metrics.json', 'cmc.png', 'config.json', 'history.csv'):
        assert (out/f).stat().st_mode & 0o777 == 0o644, f
    from iaunet_fastai.core import atomic_path
    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path/'x.npz') as t: t.write_bytes(b'x')
    finally: os.umask(old)
    assert (tmp_path/'x.npz').stat().st_mode & 0o777 == 0o640


# ---------------------------------------------------------------- issue 23: an option typed at its default value is typed
def test_option_typed_at_its_default_value_counts_as_typed(run, capsys):
    "`--resume --epochs 60` (60 is the default) on a 1-epoch run is a change, refused like any other, not silently dropped."
    cfg = json.loads((run/'config.json').read_text())['options']
    assert cfg['epochs'] == 1 and inspect.signature(train_cli).parameters['epochs'].default == 60
    assert cli_main(['train', '--out', str(run), '--resume', '--epochs', '60']) == 1
    _one_line_error(capsys.readouterr().err, 'options differ', '--epochs 1 -> 60')
