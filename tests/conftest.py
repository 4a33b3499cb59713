"""Shared fixtures."""
import pytest


@pytest.fixture(params=[False, True], ids=['ciau-products', 'ciau-fused'])
def ciau_path(request, monkeypatch):
    "Run a test with CIAU's products (the CUDA default) and with its fused attention kernel (the CPU default)."
    from iaunet_fastai.layers import CIAU
    monkeypatch.setattr(CIAU, 'fused', request.param)
    return request.param
