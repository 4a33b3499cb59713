"The library's layout rules (issue 23): no import cycle between its modules, an example or test under every export cell."
import ast, importlib.util, sys
from pathlib import Path
import iaunet_fastai

LIB = Path(iaunet_fastai.__file__).parent
ROOT = LIB.parent


def module_imports(f):
    "The library modules `f` imports at module level (`from .x import`, `from iaunet_fastai.x import`, `import iaunet_fastai.x`)."
    out = set()
    for node in ast.parse(f.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module: out.add(node.module.split('.')[0])
            elif node.level == 1: out.update(a.name for a in node.names)
            elif (node.module or '').startswith('iaunet_fastai.'): out.add(node.module.split('.')[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split('.')[1] for a in node.names if a.name.startswith('iaunet_fastai.'))
    return out - {f.stem}


def find_cycle(graph):
    "One import cycle of `graph` (module -> imported modules) as a list, or None."
    state, stack = {}, []
    def visit(m):
        state[m] = 'open'; stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 'open': return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)): return c
        state[m] = 'done'; stack.pop()
    for m in sorted(graph):
        if m not in state and (c := visit(m)): return c


def test_find_cycle_finds_one():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_library_has_no_import_cycle():
    graph = {f.stem: module_imports(f) for f in LIB.glob('*.py') if f.stem not in ('all', '_modidx', '__init__')}
    assert graph['loaders'] and not find_cycle(graph), find_cycle(graph)


def test_every_export_cell_has_an_example():
    spec = importlib.util.spec_from_file_location('check_nb_examples', ROOT/'tools'/'check_nb_examples.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    nbs = [n for n in sorted((ROOT/'nbs').glob('[0-9]*.ipynb')) if any('default_exp' in s for _, s in mod.cells(n))]
    assert len(nbs) > 30
    bad = {n.name: [i for i, _ in mod.offenders(n)] for n in nbs if mod.offenders(n)}
    assert not bad, f'export cells (by cell index) with no example or test under them: {bad}'
