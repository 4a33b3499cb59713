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
    s = settings()
    for req in (s['requirements'] + ' ' + s['dev_requirements']).split():
        r = Requirement(req)
        assert r.specifier.contains(version(r.name), prereleases=True), f'{r.name} {version(r.name)} not in {r.specifier}'


@pytest.mark.skipif(shutil.which('git') is None, reason='needs git')
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
