"""Collect the result sections written by `bench/bench_*.py` (in `bench/results/*.md`) into BENCHMARKS.md.

    .venv/bin/python bench/collect.py            # rebuild BENCHMARKS.md from bench/results/
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ['synthetic', 'data', 'part_masks', 'schp', 'schp-cuda', 'models', 'models-cuda', 'train-cpu', 'train-cuda', 'loop-cpu', 'workers-cpu', 'kernels', 'iau-blocks-cpu', 'iau-blocks-cuda', 'metrics', 'ablation', 'demo']

def main():
    res = ROOT/'bench'/'results'
    files = sorted(res.glob('*.md'), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.stem))
    head = ['# Benchmarks', '',
            'Every number below was measured by a script under `bench/`; each section names its command, machine and date.',
            'Re-run one with its command, then `.venv/bin/python bench/collect.py` to rebuild this file.', '']
    body = [p.read_text().strip() + '\n' for p in files]
    (ROOT/'BENCHMARKS.md').write_text('\n'.join(head) + '\n' + '\n'.join(body))
    print(f'BENCHMARKS.md: {len(files)} sections')

if __name__ == '__main__': main()
