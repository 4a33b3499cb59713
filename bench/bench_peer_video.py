"""Video side-by-side: torchreid's `VideoTripletEngine` next to this library's video baseline and `VideoIAUnet`, on the
same synthetic MARS folder, same seeds, interleaved per seed so machine load affects every configuration alike.

    .venv/bin/python bench/bench_peer_video.py [--preset small] [--seeds 0,1,2] [--epochs 16] [--size 128x64]
    .venv/bin/python bench/bench_peer.py --video ...          # the same, from the image side-by-side's entry point

torchreid is optional: found when importable (see /work/peers/TORCHREID_READY for the PYTHONPATH of a source build);
without it the library's rows run alone. Every model is scored two ways, each under both MARS protocols:
* `4f`: 4 evenly spaced frames of each tracklet (how torchreid's `VideoDataManager` tests, sample_method='evenly');
* `all`: every frame (how this library scores: the mean of consecutive clips covering the tracklet).
Protocols: `official` (MARS: queries stay in the gallery; this library's default on a MARS layout) and `torchreid`
(queries removed from the gallery, what torchreid's `Mars` class builds).

`--val` holds out a validation split carved from the TRAIN identities (the test split is never looked at): use it for
ablations (`--configs`, `--lib-*` options) and only report the test split for the chosen settings.

Writes bench/results/peer-video-<preset>[-val].md and .json (per-run rows, means, load average, commit)."""
import argparse, datetime, json, os, platform, random, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from iaunet_fastai.all import (make_synthetic_reid, mars_df, reid_dls, iaunet_learner, FeatureExtractor,
                               evaluate_retrieval)

PROTOCOLS = {'official': 'all', 'torchreid': 'non_query'}       # MARS protocol -> gallery
LIB = {'baseline': dict(iau_stages=()), 'VideoIAUnet': dict()}  # library configurations (model arguments)


def seed_all(seed):
    random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)


def evenly(paths, n=4):
    "`n` evenly spaced frames (torchreid's 'evenly' sample_method: indices arange(0, L, L // n)[:n], repeated when short)."
    L = len(paths)
    if L >= n: idx = np.arange(0, L, L // n)[:n]
    else: idx = np.r_[np.arange(L), np.full(n - L, L - 1)]
    return [paths[i] for i in idx]


def score(qf, gf, q, g, metric):
    "{protocol: {rank1, mAP, mINP}} of tracklet features under both MARS protocols."
    out = {}
    for name, gallery in PROTOCOLS.items():
        G, gp, gc = gf, g.pid.to_numpy(), g.camid.to_numpy()
        if gallery == 'all': G, gp, gc = torch.cat([gf, qf]), np.r_[gp, q.pid], np.r_[gc, q.camid]
        r = evaluate_retrieval(qf, G, q.pid.to_numpy(), gp, q.camid.to_numpy(), gc, metric=metric)
        out[name] = {k: float(r[k]) for k in ('rank1', 'mAP', 'mINP')}
    return out


def world_frame(a):
    "The canonical MARS frame of the benchmark's world; with `--val`, a validation split from the train identities."
    root = Path(a.data)
    world = make_synthetic_reid(root, preset=a.preset, seed=a.world_seed, datasets='mars', img_size=a.size)
    df = mars_df(world/'MARS')
    if not a.val: return world, df
    return world, val_split(df, a.world_seed)


def val_split(df, seed, frac=0.4):
    """Train identities only: `frac` of them become the evaluation set (per identity: one query tracklet per camera except
    the first camera's, the rest gallery, as the world's test split); the others stay train. The test split is dropped."""
    tr = df[df.split == 'train'].copy()
    ids = np.array(sorted(tr.pid.unique()))
    rng = np.random.default_rng(seed)
    held = set(rng.choice(ids, int(round(frac * len(ids))), replace=False).tolist())
    rows = []
    for pid, grp in tr.groupby('pid', sort=True):
        if pid not in held: rows += [dict(r, split='train') for r in grp.to_dict('records')]; continue
        first_cam, seen = grp.camid.iloc[0], set()
        for r in grp.to_dict('records'):
            isq = r['camid'] != first_cam and r['camid'] not in seen
            seen.add(r['camid']) if isq else None
            rows.append(dict(r, split='query' if isq else 'gallery'))
    out = pd.DataFrame(rows)
    out.attrs.update(df.attrs)
    return out


# ------------------------------------------------------------------ this library
def run_library(name, df, a, seed, tmp):
    seed_all(seed)
    tr = df[df.split == 'train']
    dls = reid_dls(tr, size=a.size, P=a.P, K=a.K, seq_len=a.seq_len, sample_stride=a.lib_stride, seed=seed,
                   num_workers=a.workers, train_only=True)
    learn = iaunet_learner(dls, a.arch, pretrained=False, path=tmp, **LIB[name])   # from scratch: the authors' init
    n_frames = len(dls.train) * a.P * a.K * a.seq_len * a.epochs
    t0 = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        if a.schedule == 'one_cycle': learn.fit_one_cycle(a.epochs, a.lr)
        else: learn.fit_paper(a.epochs, a.lr)
    train_s = time.perf_counter() - t0
    fx = FeatureExtractor(learn)
    q, g = df[df.split == 'query'], df[df.split == 'gallery']
    res = {}
    for how, pick in (('all', lambda ps: ps), ('4f', evenly)):
        qf, gf = fx([pick(p) for p in q.paths]), fx([pick(p) for p in g.paths])
        res[how] = score(qf, gf, q, g, 'cosine')
    return dict(scores=res, train_s=train_s, train_frames_per_s=n_frames / train_s)


# ------------------------------------------------------------------ torchreid
def torchreid_available():
    try:
        import torchreid  # noqa: F401
        return True
    except Exception: return False


def run_torchreid(df, world, a, seed, tmp):
    import torchreid
    seed_all(seed)
    peer = tmp/'peer'
    peer.mkdir(exist_ok=True)
    if not (peer/'mars').exists(): (peer/'mars').symlink_to(world/'MARS', target_is_directory=True)
    dm = torchreid.data.VideoDataManager(root=str(peer), sources='mars', height=a.size[0], width=a.size[1],
                                         batch_size_train=a.P * a.K, batch_size_test=a.P * a.K, workers=a.workers,
                                         num_instances=a.K, train_sampler='RandomIdentitySampler', seq_len=a.seq_len,
                                         sample_method='random', use_gpu=False)
    model = torchreid.models.build_model(name=a.arch, num_classes=dm.num_train_pids, loss='triplet', pretrained=False,
                                         use_gpu=False)
    opt = torchreid.optim.build_optimizer(model, optim='adam', lr=a.peer_lr)
    engine = torchreid.engine.VideoTripletEngine(dm, model, opt, margin=0.3, weight_t=1, weight_x=1, use_gpu=False,
                                                 label_smooth=True, pooling_method='avg')
    engine.max_epoch, n_batches = a.epochs, len(dm.train_loader)
    t0 = time.perf_counter()
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        for engine.epoch in range(a.epochs): engine.train(print_freq=10**6)
    train_s = time.perf_counter() - t0
    n_frames = n_batches * a.P * a.K * a.seq_len * a.epochs
    res = {}
    q, g = df[df.split == 'query'], df[df.split == 'gallery']
    for how, pick in (('all', lambda ps: ps), ('4f', evenly)):
        qf = peer_features(model, dm.transform_te, [pick(p) for p in q.paths])
        gf = peer_features(model, dm.transform_te, [pick(p) for p in g.paths])
        res[how] = score(qf, gf, q, g, 'euclidean')        # torchreid's test: euclidean, features not normalised
    return dict(scores=res, train_s=train_s, train_frames_per_s=n_frames / train_s)


@torch.no_grad()
def peer_features(model, tfm, tracklets, bs=256):
    "torchreid's video test features: the mean of its model's per-frame features over the given frames."
    from PIL import Image
    model.eval()
    frames = [p for t in tracklets for p in t]
    feats = []
    for i in range(0, len(frames), bs):
        x = torch.stack([tfm(Image.open(p).convert('RGB')) for p in frames[i:i + bs]])
        feats.append(model(x))
    f = torch.cat(feats)
    owner = torch.repeat_interleave(torch.arange(len(tracklets)), torch.tensor([len(t) for t in tracklets]))
    out = torch.zeros(len(tracklets), f.shape[1]).index_add_(0, owner, f)
    return out / torch.bincount(owner, minlength=len(tracklets))[:, None]


# ------------------------------------------------------------------ report
def summarise(runs):
    "Mean and spread per (config, scoring, protocol, metric)."
    out = {}
    for cfg in dict.fromkeys(r['config'] for r in runs):
        rs = [r for r in runs if r['config'] == cfg]
        out[cfg] = {how: {p: {m: (float(np.mean([r['scores'][how][p][m] for r in rs])),
                                  float(np.std([r['scores'][how][p][m] for r in rs])))
                              for m in ('rank1', 'mAP', 'mINP')} for p in PROTOCOLS} for how in ('4f', 'all')}
        out[cfg]['train_frames_per_s'] = float(np.mean([r['train_frames_per_s'] for r in rs]))
        out[cfg]['n'] = len(rs)
    return out


def report(a, runs, meta):
    s = summarise(runs)
    split = 'validation split from the train identities (test split unused)' if a.val else 'test split'
    lines = [f"### Video side-by-side, synthetic MARS `{a.preset}` ({split})", '',
             f"Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}; load average at start / end {meta['load_start']} / {meta['load_end']} "
             f"(other engineers' jobs shared the 2 cores); commit {meta['commit']}; {meta['date']}  ",
             f"World: {meta['world']}. Setting: {a.arch} from scratch, {a.size[0]}×{a.size[1]}, clips of {a.seq_len} frames, "
             f"P×K {a.P}×{a.K}, {a.epochs} epochs; torchreid: Adam {a.peer_lr}, CE (label smoothing) + triplet 0.3, "
             f"random clip frames, temporal average, euclidean test distance; library: `iaunet_learner` defaults, "
             f"{a.schedule} lr {a.lr}, authors' init, cosine distance. Seeds {a.seeds}, interleaved per seed.", '',
             '| configuration | frames scored | rank-1 (official) | mAP (official) | mINP (official) | rank-1 (torchreid) '
             '| mAP (torchreid) | train frames/s | seeds |', '|---|---|---:|---:|---:|---:|---:|---:|---:|']
    for cfg, r in s.items():
        for how in ('4f', 'all'):
            o, t = r[how]['official'], r[how]['torchreid']
            f = lambda v: f"{v[0]:.3f} ± {v[1]:.3f}"
            lines.append(f"| {cfg} | {'4 evenly spaced' if how == '4f' else 'every frame'} | {f(o['rank1'])} | {f(o['mAP'])} | "
                         f"{f(o['mINP'])} | {f(t['rank1'])} | {f(t['mAP'])} | {r['train_frames_per_s']:.1f} | {r['n']} |")
    lines += ['', 'Per run (rank-1 / mAP, official protocol, every frame):', '']
    for r in runs:
        o = r['scores']['all']['official']
        lines.append(f"* seed {r['seed']} {r['config']}: {o['rank1']:.3f} / {o['mAP']:.3f} "
                     f"({r['train_frames_per_s']:.1f} train frames/s, load {r['load']})")
    return '\n'.join(lines) + '\n'


def git_commit():
    try: return subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()
    except Exception: return '?'


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--preset', default='small')
    p.add_argument('--seeds', default='0,1,2')
    p.add_argument('--epochs', type=int, default=16)
    p.add_argument('--size', default='128x64')
    p.add_argument('--arch', default='resnet18')
    p.add_argument('--seq-len', dest='seq_len', type=int, default=4)
    p.add_argument('--pk', default='16x4')
    p.add_argument('--lr', type=float, default=3e-3, help='library: peak lr (one_cycle) or constant lr (paper)')
    p.add_argument('--schedule', default='one_cycle', choices=['one_cycle', 'paper'])
    p.add_argument('--lib-stride', dest='lib_stride', type=int, default=1, help='library: frame stride of train clips')
    p.add_argument('--peer-lr', dest='peer_lr', type=float, default=3e-4)
    p.add_argument('--configs', default='torchreid,baseline,VideoIAUnet')
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--world-seed', dest='world_seed', type=int, default=0)
    p.add_argument('--data', default=None, help='folder of the synthetic world (default: a temporary folder)')
    p.add_argument('--val', action='store_true', help='score a validation split carved from the train identities')
    p.add_argument('--tag', default='', help='suffix of the result files')
    a = p.parse_args(argv)
    a.size = tuple(int(v) for v in a.size.lower().split('x'))
    a.P, a.K = (int(v) for v in a.pk.lower().split('x'))
    a.seeds = [int(s) for s in str(a.seeds).split(',')]
    a.configs = [c for c in a.configs.split(',') if c]
    return a


def from_bench_peer(a, rest):
    "The options of `bench/bench_peer.py --video ...` (its --seeds, --epochs, --arch, --preset, --no-peer; the rest as is)."
    argv = ['--preset', a.preset, '--seeds', ','.join(map(str, a.seeds)), '--epochs', str(a.epochs), '--arch', a.arch]
    return parse(argv + (['--configs', 'baseline,VideoIAUnet'] if a.no_peer else []) + list(rest or []))


def main(a=None, rest=None):
    a = from_bench_peer(a, rest) if isinstance(a, argparse.Namespace) and not hasattr(a, 'configs') else \
        a if isinstance(a, argparse.Namespace) else parse(a)
    tmp = Path(tempfile.mkdtemp(prefix='peer-video-'))
    a.data = a.data or str(tmp/'synth')
    world, df = world_frame(a)
    configs = [c for c in a.configs if c != 'torchreid' or torchreid_available()]
    if 'torchreid' in a.configs and 'torchreid' not in configs: print('torchreid not importable: library rows only')
    meta = dict(command='python bench/bench_peer_video.py ' + ' '.join(sys.argv[1:]),
                machine=f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__} "
                        f"({torch.get_num_threads()} threads)", commit=git_commit(), date=str(datetime.datetime.utcnow())[:16] + ' UTC',
                load_start=', '.join(f'{v:.1f}' for v in os.getloadavg()),
                world=f"{(df.split == 'train').sum()} train tracklets of {df[df.split == 'train'].pid.nunique()} identities, "
                      f"{(df.split == 'query').sum()} query and {(df.split == 'gallery').sum()} gallery tracklets")
    print(meta['world'], flush=True)
    stem = ROOT/'bench'/'results'/f"peer-video-{a.preset}{'-val' if a.val else ''}{a.tag}"
    runs = []
    for seed in a.seeds:
        for cfg in configs:
            t0 = time.time()
            r = run_torchreid(df, world, a, seed, tmp) if cfg == 'torchreid' else run_library(cfg, df, a, seed, tmp/cfg)
            r.update(config=cfg, seed=seed, wall_s=time.time() - t0, load=f'{os.getloadavg()[0]:.1f}')
            runs.append(r)
            o = r['scores']['all']['official']
            print(f"seed {seed} {cfg}: rank-1 {o['rank1']:.3f} mAP {o['mAP']:.3f} ({r['wall_s']:.0f} s, "
                  f"{r['train_frames_per_s']:.1f} frames/s, load {r['load']})", flush=True)
            meta['load_end'] = ', '.join(f'{v:.1f}' for v in os.getloadavg())
            stem.with_suffix('.json').write_text(json.dumps(dict(args=vars(a), meta=meta, runs=runs), indent=1, default=str))
            stem.with_suffix('.md').write_text(report(a, runs, meta))
    print(stem.with_suffix('.md').read_text())
    return runs


if __name__ == '__main__': main()
