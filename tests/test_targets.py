"""Cross-domain runs and verification from the command line, on two synthetic Market-1501-layout worlds (tiny, 1 epoch)."""
import json
import pytest, torch
from iaunet_fastai.core import ReIDInputError
from iaunet_fastai.synthetic import make_synthetic_reid
from iaunet_fastai.cli import main

SIZE = (64, 32)


@pytest.fixture(scope='module')
def worlds(tmp_path_factory):
    "Two Market-1501 layouts of different worlds: one read as market1501, the other as dukemtmc (the same layout)."
    d = tmp_path_factory.mktemp('worlds')
    return [make_synthetic_reid(d/f'w{s}', preset='tiny', seed=s, datasets='market1501', img_size=SIZE)/'Market-1501'
            for s in (0, 1)]


def _train_args(a, b, out):
    return ['train', '--sources', f'market1501={a}', '--targets', f'market1501={a}', f'dukemtmc={b}', '--arch', 'resnet18', '--no-pretrained',
            '--epochs', '1', '--size', '64,32', '--pk', '4x4', '--workers', '0', '--no-check', '--out', str(out)]


def test_cross_domain_train_and_eval_report_every_target(worlds, tmp_path, capsys):
    torch.set_num_threads(1)
    a, b = worlds
    run = tmp_path/'run'
    assert main(_train_args(a, b, run)) == 0
    text = capsys.readouterr().out
    for col in ('market1501_rank1', 'market1501_mAP', 'dukemtmc_mINP'): assert col in text       # table columns per target
    m = json.loads((run/'metrics.json').read_text())
    assert set(m['targets']) == {'market1501', 'dukemtmc'} and all(0 <= r['mAP'] <= 1 for r in m['targets'].values())
    cfg = json.loads((run/'config.json').read_text())['options']
    assert cfg['targets'] == [f'market1501={a}', f'dukemtmc={b}']
    # the trained model, evaluated on both targets with verification
    ev = tmp_path/'ev'
    assert main(['eval', str(run/'model.pth'), '--targets', f'market1501={a}', f'dukemtmc={b}', '--verify', '--out', str(ev)]) == 0
    text = capsys.readouterr().out
    assert 'target market1501: rank-1' in text and 'target dukemtmc: rank-1' in text and 'TPR@FPR=0.001' in text
    m = json.loads((ev/'metrics.json').read_text())
    v = m['targets']['dukemtmc']['verification']
    assert 0 <= v['auc'] <= 1 and 0 <= v['eer'] <= 1 and set(v['tpr@fpr']) == {'0.0001', '0.001', '0.01'}
    assert (ev/'roc-market1501.png').stat().st_size > 0 and (ev/'roc-dukemtmc.png').stat().st_size > 0
    # one dataset, --verify: roc.png and the numbers in metrics.json
    assert main(['eval', str(run/'model.pth'), '--dataset', 'dukemtmc', '--root', str(b), '--verify', '--out', str(tmp_path/'one')]) == 0
    assert 'verification' in json.loads((tmp_path/'one'/'metrics.json').read_text()) and (tmp_path/'one'/'roc.png').exists()


def test_cross_domain_bad_arguments_are_named(worlds, tmp_path, capsys):
    a, b = worlds
    bad = [(['--sources', 'market1501', '--targets', f'dukemtmc={b}'], 'name=root'),
           (['--sources', f'nope={a}', '--targets', f'dukemtmc={b}'], 'unknown dataset'),
           (['--sources', f'market1501={a}'], '--targets'),
           (['--dataset', 'market1501', '--root', str(a), '--sources', f'market1501={a}', '--targets', f'dukemtmc={b}'], 'replace'),
           (['--sources', f'market1501={a}', '--targets', f'market1501={b}'], 'different roots')]
    for args, msg in bad:
        assert main(['train', *args, '--epochs', '1', '--out', str(tmp_path/'x')]) == 1, args
        assert msg in capsys.readouterr().err, (args, msg)
    assert not (tmp_path/'x'/'model.pth').exists()
