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
