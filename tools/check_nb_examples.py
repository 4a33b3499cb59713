#!/usr/bin/env python
"""Every export cell of a library notebook is followed by an example or a test (a code cell without `#| export`
before the next export cell). Lists the offenders and the export cells longer than --long lines; exit 1 if any
export cell has no example. Usage: tools/check_nb_examples.py [notebooks...] [--long 40]"""
import json, sys, argparse
from pathlib import Path

def cells(nb):
    return [(c['cell_type'], ''.join(c['source'])) for c in json.load(open(nb))['cells']]

def is_export(src): return src.lstrip().startswith(('#| export', '#|export'))
def is_imports(src):
    "An export cell of imports only (and `warnings.filterwarnings`/`__all__` lines, comments): it needs no example."
    body = [l.strip() for l in src.splitlines()[1:] if l.strip() and not l.strip().startswith('#')]
    return all(l.startswith(('import ', 'from ', 'warnings.', ')', "'", '"')) or l.endswith(',') for l in body)
def is_example(kind, src):
    return kind == 'code' and src.strip() and not is_export(src) and not src.lstrip().startswith(('#| default_exp', '#| hide\nfrom'))

def offenders(nb):
    "Export cells of `nb` (index, first line) with no example/test cell before the next export cell."
    cs, bad = cells(nb), []
    for i, (k, s) in enumerate(cs):
        if k != 'code' or not is_export(s) or is_imports(s): continue
        nxt = next((j for j in range(i + 1, len(cs)) if cs[j][0] == 'code' and is_export(cs[j][1])), len(cs))
        if not any(is_example(*cs[j]) for j in range(i + 1, nxt)): bad.append((i, s.splitlines()[1:2]))
    return bad

def main(argv=None):
    p = argparse.ArgumentParser(); p.add_argument('nbs', nargs='*'); p.add_argument('--long', type=int, default=40)
    a = p.parse_args(argv)
    nbs = [Path(n) for n in a.nbs] or sorted(n for n in Path('nbs').glob('[0-9]*.ipynb')
                                             if any('default_exp' in s for _, s in cells(n)))
    n_bad = 0
    for nb in nbs:
        bad = offenders(nb); n_bad += len(bad)
        long = [(i, len(s.splitlines())) for i, (k, s) in enumerate(cells(nb)) if k == 'code' and is_export(s) and len(s.splitlines()) > a.long]
        if bad or long: print(f"{nb}: {len(bad)} export cells without an example {[i for i, _ in bad]}; longer than {a.long} lines: {long}")
    print(f"{n_bad} export cells without an example or test")
    return 1 if n_bad else 0

if __name__ == '__main__': sys.exit(main())
