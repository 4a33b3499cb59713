"Install, version and notebook/library sync checks."
import configparser, os, shutil, subprocess, sys, warnings
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def settings():
    cfg = configparser.ConfigParser(delimiters=['='])
    cfg.read(ROOT/'settings.ini')
    return cfg['DEFAULT']


def test_version_matches_settings():
    import iaunet_fastai
    assert iaunet_fastai.__version__ == settings()['version']


def test_pyproject_holds_only_tool_nbdev():
    import tomllib
    d = tomllib.loads((ROOT/'pyproject.toml').read_text())
    assert list(d) == ['tool'] and list(d['tool']) == ['nbdev']
    nb = d['tool']['nbdev']
    assert nb['lib_path'] == 'iaunet_fastai' and nb['nbs_path'] == 'nbs'
    assert 'slow' in nb['tst_flags'].split() and nb['jupyter_hooks'] is False


def test_torch_and_torchvision_import_together():
    import torch, torchvision, torchvision.ops
    boxes = torch.tensor([[0., 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]


def test_all_imports_quietly():
    "`import iaunet_fastai.all` in a fresh interpreter prints no warnings (Python's default filters)."
    r = subprocess.run([sys.executable, '-c', 'import iaunet_fastai.all, fastai, timm, torchvision'],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert 'Warning' not in r.stderr and r.stdout == '', r.stderr


def test_console_script_help():
    exe = BIN/'iaunet'
    assert exe.exists(), 'the `iaunet` console script is not installed (pip install -e .)'
    r = subprocess.run([str(exe), '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and 'usage: iaunet' in r.stdout
    for sub in ['synth', 'masks', 'train', 'eval', 'extract']: assert sub in r.stdout


def test_requirements_are_installed_within_pins():
    from importlib.metadata import version
    from packaging.requirements import Requirement
    from importlib.metadata import PackageNotFoundError
    s = settings()
    reqs = [(req, True) for req in s['requirements'].split()]
    reqs += [(req, False) for k in ('dev', 'onnx', 'tensorboard') for req in s[f'{k}_requirements'].split()]
    for req, needed in reqs:   # every requirement must be installed; an extra's only within its bounds when it is
        r = Requirement(req)
        try: v = version(r.name)
        except PackageNotFoundError:
            if needed: raise
            continue
        assert r.specifier.contains(v, prereleases=True), f'{r.name} {v} not in {r.specifier}'


@pytest.mark.skipif(shutil.which('git') is None, reason='needs git')
@pytest.mark.skipif(not (BIN/'nbdev-export').exists(), reason='needs nbdev (the [dev] extra; `make test-min` tests the runtime lower bounds without it)')
def test_sync_check_catches_unexported_notebook(tmp_path):
    "Editing a notebook without `nbdev-export` makes the sync check (and so `make test`) fail, saying what to run."
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], capture_output=True, text=True,
                           cwd=ROOT, check=True).stdout.split()
    for f in files:
        if (ROOT/f).is_file():
            (tmp_path/f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(ROOT/f, tmp_path/f)
    git = lambda *a: subprocess.run(['git', *a], cwd=tmp_path, check=True, capture_output=True)
    git('init', '-q'); git('add', '-A')
    git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'snapshot')
    env = {**os.environ, 'PATH': f'{BIN}:{os.environ["PATH"]}'}
    env.pop('IN_TEST', None)
    ok = subprocess.run(['bash', 'tools/check_sync.sh', str(BIN)], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    import json
    nb = json.loads((tmp_path/'nbs/00_core.ipynb').read_text())
    cell = next(c for c in nb['cells'] if c['cell_type'] == 'code' and 'def best_device' in ''.join(c['source']))
    src = ''.join(cell['source']) + '\n\ndef _edited_but_not_exported(): return 1\n'
    cell['source'] = src
    (tmp_path/'nbs/00_core.ipynb').write_text(json.dumps(nb, indent=1) + '\n')
    git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qam', 'edit notebook only')
    bad = subprocess.run(['bash', 'tools/check_sync.sh', str(BIN)], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert bad.returncode != 0
    assert 'nbdev-export' in bad.stderr and 'iaunet_fastai/core.py' in bad.stderr


# ---------------------------------------------------------------- progress output: a log vs a terminal
_BARS = """
import iaunet_fastai.core as core
import fastai.callback.progress   # fastai's ProgressCallback: the Learner's bars
from fastai.test_utils import synth_learner
from iaunet_fastai.learner import ConsoleTable
core.LOG_EVERY = 0                # a plain line for every update, as a long run would print every 30 s
for _ in core.progress_bar(range(3), leave=True): pass
synth_learner(n_trn=32, cbs=ConsoleTable()).fit(2)
"""

def test_progress_in_a_log_is_plain_lines(tmp_path):
    "stdout to a file (`make demo > log`, CI): the library's and fastai's bars write plain lines, no `█` or `\\r`."
    log = tmp_path/'log.txt'
    with open(log, 'w') as f:
        r = subprocess.run([sys.executable, '-c', _BARS], stdout=f, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = log.read_text(encoding='utf-8')
    assert '█' not in out and '\r' not in out and '\x1b' not in out, out
    lines = out.splitlines()
    assert '100.00% [3/3' in lines[2], lines                       # the library's bar, one line per update
    assert any(l.startswith('Epoch 2/2 :') for l in lines), lines  # fastai's training bar, as plain lines
    assert lines[-1].startswith('1 '), lines                        # ... and the epoch table's last row


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='uses a pseudo-terminal')
def test_progress_in_a_terminal_is_a_live_bar():
    "The same code with stdout on a terminal draws the usual redrawing bar."
    import pty
    main, sub = pty.openpty()
    p = subprocess.Popen([sys.executable, '-c', _BARS], stdout=sub, stderr=subprocess.PIPE, cwd=ROOT)
    os.close(sub)
    chunks = []
    while True:
        try: b = os.read(main, 4096)
        except OSError: break   # EIO: the child closed the terminal
        if not b: break
        chunks.append(b)
    os.close(main)
    assert p.wait(timeout=120) == 0, p.stderr.read()
    out = b''.join(chunks).decode('utf-8', 'replace')
    assert '\r' in out and '█' in out and '|' in out, out


def test_tensorboard_extra_logs_a_fit(tmp_path):
    "`pip install .[tensorboard]`: fastai's TensorBoardCallback writes an event file."
    pytest.importorskip('tensorboard')
    from fastai.test_utils import synth_learner
    from fastai.callback.tensorboard import TensorBoardCallback
    synth_learner(n_trn=16, cbs=TensorBoardCallback(tmp_path/'tb', trace_model=False, log_preds=False)).fit(1)
    assert list((tmp_path/'tb').glob('events.out.tfevents.*'))


def test_package_metadata_has_spdx_license_and_extras():
    "The SPDX `License-Expression` (no deprecated License classifier) and the optional extras."
    from importlib.metadata import metadata
    md = metadata('iaunet_fastai')
    s = settings()
    if md.get('License-Expression') is not None: assert md['License-Expression'] == s['license'] == 'Apache-2.0'
    assert not [c for c in md.get_all('Classifier') or [] if c.startswith('License ::')]
    assert {'dev', 'onnx', 'tensorboard'} <= set(md.get_all('Provides-Extra') or [])
    # no upper caps without a known break (the user keeps their torch); the known breaks are named in settings.ini
    capped = {r.split('>=')[0] for r in s['requirements'].split() if '<' in r}
    assert capped <= {'opencv-python-headless'}, capped
