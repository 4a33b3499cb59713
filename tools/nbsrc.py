#!/usr/bin/env python
"""Author notebooks as plain-text "percent" scripts and convert them both ways.

    python tools/nbsrc.py py2nb src.py nbs/03_data.ipynb   # script -> notebook (outputs dropped)
    python tools/nbsrc.py nb2py nbs/03_data.ipynb src.py   # notebook -> script

Cells start with `# %%` (code) or `# %% [markdown]` (markdown; each line prefixed by `# `).
The scripts are scratch copies: the notebooks in `nbs/` stay the single source of the library.
"""
import hashlib, json, sys
from pathlib import Path

def _cell(kind, lines):
    while lines and not lines[-1].strip(): lines.pop()
    while lines and not lines[0].strip(): lines.pop(0)
    if kind == 'markdown':
        lines = [l[2:] if l.startswith('# ') else l[1:] if l.startswith('#') else l for l in lines]
        return dict(cell_type='markdown', metadata={}, source='\n'.join(lines))
    return dict(cell_type='code', execution_count=None, metadata={}, outputs=[], source='\n'.join(lines))

def py2nb(src, dst):
    cells, kind, buf = [], None, []
    for line in Path(src).read_text().splitlines():
        if line.startswith('# %%'):
            if kind is not None: cells.append(_cell(kind, buf))
            kind, buf = ('markdown' if '[markdown]' in line else 'code'), []
        elif kind is not None: buf.append(line)
    if kind is not None: cells.append(_cell(kind, buf))
    seen = set()
    for c in cells:   # deterministic cell ids (nbdev names exported cells by id): a hash of the source
        h = hashlib.sha1(c['source'].encode()).hexdigest()
        i = next(h[k:k+8] for k in range(0, 33) if h[k:k+8] not in seen)
        seen.add(i); c['id'] = i
    nb = dict(cells=cells, metadata=dict(kernelspec=dict(display_name='python3', language='python', name='python3')),
              nbformat=4, nbformat_minor=5)
    Path(dst).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')

def nb2py(src, dst):
    out = []
    for c in json.loads(Path(src).read_text())['cells']:
        s = c['source'] if isinstance(c['source'], str) else ''.join(c['source'])
        if c['cell_type'] == 'markdown': out += ['# %% [markdown]'] + [('# ' + l).rstrip() for l in s.splitlines()]
        else: out += ['# %%'] + s.splitlines()
        out.append('')
    Path(dst).write_text('\n'.join(out) + '\n')

if __name__ == '__main__':
    cmd, a, b = sys.argv[1:4]
    {'py2nb': py2nb, 'nb2py': nb2py}[cmd](a, b)
