"""Ablation: the plain baseline (backbone + BNNeck) vs IAUnet, same synthetic world, budget and training seeds.

    .venv/bin/python bench/bench_ablation.py [--epochs 16] [--arch resnet18] [--seeds 0 1 2] [--preset small]

`make demo`'s CPU recipe (from scratch, the authors' initialisation), one world (drawn with seed 0) shared by every
run; the models alternate within each seed so that the machine's load affects both alike. Writes
bench/results/ablation.md: per-seed rank-1, mAP, mINP and training images/s, then mean ± sample std (and min-max).
`bench/bench_peer.py` runs the same rows next to torchreid's engine."""
import argparse, datetime, json, os, platform, statistics, subprocess, sys, tempfile
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from iaunet_fastai.demo import run_demo, CPU_RECIPE

MODELS = {'baseline': (), 'IAUnet': (2, 3)}
KEYS = ('rank1', 'mAP', 'mINP')


def library_run(name, seed, tmp, epochs, arch, preset='small', every=None, P=None):
    "One `make demo` run of the library model `name` ('baseline'/'IAUnet') with training seed `seed` on the shared world."
    r = run_demo(tmp/f'{name}-{seed}', tmp/f'synth-{preset}', preset=preset, seed=seed, world_seed=0, arch=arch,
                 epochs=epochs, iau_stages=MODELS[name], every=every or epochs, P=P, quiet_bars=True)
    return dict(model=name, seed=seed, load=os.getloadavg(), images_per_s=r['train_images_per_s'],
                **{k: r['trained'][k] for k in KEYS}, untrained_mAP=r['untrained']['mAP'])


def mean_spread(vals) -> str:
    "`mean ± sample std (min-max)` of a list of numbers (just the number for one)."
    if len(vals) == 1: return f'{vals[0]:.3f}'
    return f'{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f} ({min(vals):.3f}-{max(vals):.3f})'


def summary_rows(runs, models) -> list:
    "Markdown rows: one per model, mean ± spread over its seeds."
    rows = ['| model | seeds | rank-1 | mAP | mINP | train images/s |', '|---|---|---|---|---|---|']
    for m in models:
        rs = [r for r in runs if r['model'] == m]
        if not rs: continue
        rows.append(f"| {m} | {len(rs)} | " + ' | '.join(mean_spread([r[k] for r in rs]) for k in KEYS)
                    + f" | {statistics.mean(r['images_per_s'] for r in rs):.1f} |")
    return rows


def per_seed_rows(runs) -> list:
    rows = ['| model | seed | rank-1 | mAP | mINP | train images/s | load avg (1/5/15 min) at the end |', '|---|---|---|---|---|---|---|']
    for r in runs:
        rows.append(f"| {r['model']} | {r['seed']} | " + ' | '.join(f'{r[k]:.3f}' for k in KEYS)
                    + f" | {r['images_per_s']:.1f} | {' / '.join(f'{x:.1f}' for x in r['load'])} |")
    return rows


def machine_line() -> str:
    commit = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()
    return (f"Machine: {os.cpu_count()}-core CPU, no GPU ({platform.processor() or platform.machine()}), torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads; commit {commit}; {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC; "
            f"other engineers' jobs shared the machine (load average at the start {' / '.join(f'{x:.1f}' for x in os.getloadavg())})")


def ablation_md(runs, a, command=None) -> str:
    b = {r['seed']: r for r in runs if r['model'] == 'baseline'}
    d = {k: [r[k] - b[r['seed']][k] for r in runs if r['model'] == 'IAUnet' and r['seed'] in b] for k in KEYS}
    lines = ['## Ablation: plain baseline vs IAUnet, several seeds (synthetic Market-1501 layout)', '',
             'Command: ' + (command or f'`.venv/bin/python bench/bench_ablation.py --epochs {a.epochs} --arch {a.arch} '
                            f"--seeds {' '.join(map(str, a.seeds))} --preset {a.preset}`") + '  ', machine_line() + '  ',
             f"Setting: `make demo`'s CPU recipe — {a.arch} from scratch with the authors' initialisation, 128×64, P×K 16×4, "
             f"fit_one_cycle {a.epochs} epochs, lr {CPU_RECIPE['lr']}, scored at the last epoch; one `{a.preset}` world "
             "(world seed 0), training seeds as listed; IAUnet = IAU blocks after stages 2 and 3 + part-mask loss.", '',
             *summary_rows(runs, MODELS), '', *per_seed_rows(runs), '']
    if d['mAP']:
        lines += [f"IAUnet − baseline, paired by seed: rank-1 {mean_spread(d['rank1'])}, mAP {mean_spread(d['mAP'])}. "
                  'Mean ± sample standard deviation (min-max) over the seeds; a small synthetic world, so this says nothing '
                  "about Market-1501 numbers.", '']
    return '\n'.join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--epochs', type=int, default=CPU_RECIPE['epochs'])
    p.add_argument('--arch', default=CPU_RECIPE['arch'])
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--preset', default='small', choices=['tiny', 'small', 'medium'])
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    runs = []
    for seed in a.seeds:
        for name in MODELS:
            runs.append(library_run(name, seed, tmp, a.epochs, a.arch, a.preset))
            print(json.dumps(runs[-1]), flush=True)
            (ROOT/'bench'/'results'/'ablation.md').write_text(ablation_md(runs, a))   # after every run
    print((ROOT/'bench'/'results'/'ablation.md').read_text())


if __name__ == '__main__': main()
