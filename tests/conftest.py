"""Shared fixtures."""
import pytest


@pytest.fixture(params=[False, True], ids=['ciau-products', 'ciau-fused'])
def ciau_path(request, monkeypatch):
    "Run a test with CIAU's products (the CUDA default) and with its fused attention kernel (the CPU default)."
    from iaunet_fastai.layers import CIAU
    monkeypatch.setattr(CIAU, 'fused', request.param)
    return request.param


def pytest_pycollect_makeitem(collector, name, obj):
    """Collect only the test functions a test file defines: `from iaunet_fastai.all import *` also brings fastai's star
    names, among them fastcore's `test_eq`, `test_fail`, ... (helpers, not tests)."""
    import inspect
    mod = getattr(collector, 'module', None)
    if inspect.isfunction(obj) and mod is not None and getattr(obj, '__module__', None) != mod.__name__ \
            and collector.funcnamefilter(name):
        return []


@pytest.fixture(scope='module')
def run(market, tmp_path_factory):
    """One finished 1-epoch `iaunet train` run (model.pth, metrics.json, config.json, history.csv, checkpoint.pth) on the
    tiny world of the requesting module's `market` fixture (tests/test_reliability*.py), with its options `_kw`."""
    from iaunet_fastai.commands import train_cli
    from test_reliability import _kw
    out = tmp_path_factory.mktemp('run')/'r'
    assert train_cli(**_kw(market), out=str(out)) == 0
    return out
