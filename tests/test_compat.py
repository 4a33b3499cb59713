"The private torch/fastai/argparse names the library relies on still exist in the installed versions."
import pytest
from iaunet_fastai.compat import PRIVATE_NAMES, check_private_names, resolve_private


def test_every_private_name_resolves():
    check_private_names()                       # raises, naming each missing one and the versions


@pytest.mark.parametrize('name', sorted(PRIVATE_NAMES))
def test_private_name(name):
    assert resolve_private(name) is not None, name


def test_missing_name_is_reported():
    with pytest.raises(RuntimeError, match='torch.nn._Gone'): check_private_names(['torch.nn._Gone'])


def test_library_uses_private_names_only_through_compat():
    "No module other than compat writes a private torch/fastai/argparse name listed in PRIVATE_NAMES."
    from pathlib import Path
    import iaunet_fastai
    lib = Path(iaunet_fastai.__file__).parent
    leaf = {n.rsplit('.', 1)[1] for n in PRIVATE_NAMES}
    for f in lib.glob('*.py'):
        if f.name in ('compat.py', '_modidx.py'): continue
        text = f.read_text()
        used = [n for n in leaf if f'.{n}' in text]
        assert not used, f'{f.name} uses {used} directly; go through iaunet_fastai.compat'
