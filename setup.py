"Classic nbdev setup.py, reading settings.ini (no pkg_resources: current setuptools lacks it)."
from configparser import ConfigParser
from pathlib import Path
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read(Path(__file__).parent/'settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

for k in 'version description keywords author author_email license lib_name min_python requirements'.split():
    assert k in cfg, f"settings.ini is missing `{k}`"

statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
py_versions = '3.10 3.11 3.12 3.13'.split()
min_python = cfg['min_python']
# an SPDX license expression (PEP 639); setuptools >= 77 reads it as such, and License classifiers must then go
spdx = int(setuptools.__version__.split('.')[0]) >= 77

requirements = cfg.get('requirements', '').split()
extras = {k: cfg.get(f'{k}_requirements', '').split() for k in ('dev', 'onnx', 'tensorboard', 'faiss')}
console_scripts = cfg.get('console_scripts', '').split()
readme = Path(__file__).parent/'README.md'

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=readme.read_text(encoding='utf-8') if readme.exists() else '',
    long_description_content_type='text/markdown',
    keywords=cfg['keywords'],
    author=cfg['author'], author_email=cfg['author_email'],
    **({'license_expression': cfg['license']} if spdx else {'license': cfg['license']}),
    url=cfg['git_url'],
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])], 'Intended Audience :: Science/Research',
                 'Natural Language :: ' + cfg['language']]
                + ['Programming Language :: Python :: ' + v for v in py_versions[py_versions.index(min_python):]],
    packages=setuptools.find_packages(include=[cfg['lib_path'], cfg['lib_path'] + '.*']),
    include_package_data=True,
    python_requires='>=' + min_python,
    install_requires=requirements,
    extras_require=extras,
    entry_points={'console_scripts': console_scripts, 'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False,
)
