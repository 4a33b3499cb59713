"""Side by side with the best peer: torchreid's `ImageTripletEngine` and this library's baseline and IAUnet on the
same synthetic Market-1501 world, same budget, several seeds, interleaved so that the machine's load hits all alike.

    PYTHONPATH=<torchreid>:$PYTHONPATH .venv/bin/python bench/bench_peer.py [--seeds 0 1 2] [--epochs 16]
    .venv/bin/python bench/bench_peer.py --video ...      # the tracklet side by side (bench/bench_peer_video.py)

torchreid (KaiyangZhou/deep-person-reid, built from source with its Cython ranking; see /work/peers/TORCHREID_READY
on the project machine) is optional: it is used when `import torchreid` works, otherwise only the library's rows run.
It is never a dependency of the package. Each seed runs torchreid, then the baseline, then IAUnet (`make demo`'s CPU
recipe: `bench_ablation.library_run`). torchreid is set up as a new user would: its `resnet18` from scratch,
`RandomIdentitySampler` 16×4, its default `random_flip`, Adam 3e-4, CE with label smoothing + triplet (margin 0.3),
evaluated with its defaults (Euclidean distance, raw features) by this library's `evaluate_retrieval` (for mINP) and,
as a check, by torchreid's own Cython `evaluate_rank`. Only `state_dict`s would be saved: under torch >= 2.6 its
`load_checkpoint` refuses the checkpoints its engine writes (nothing is saved here).
Writes bench/results/peer.md and, from the same library runs, bench/results/ablation.md (the multi-seed ablation)."""
import argparse, importlib.util, json, os, sys, tempfile, time
from pathlib import Path
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT/'bench'))
from iaunet_fastai.core import seed_everything
from iaunet_fastai.synthetic import make_synthetic_reid
from iaunet_fastai.metrics import evaluate_retrieval
from bench_ablation import MODELS, KEYS, library_run, summary_rows, per_seed_rows, machine_line, ablation_md, CPU_RECIPE
PEER = 'torchreid ImageTripletEngine'


def torchreid_available() -> bool:
    return importlib.util.find_spec('torchreid') is not None


def torchreid_world(tmp, preset) -> Path:
    "The library's synthetic world (world seed 0, as `library_run` uses) where torchreid's `Market1501` finds it."
    syn = make_synthetic_reid(tmp/f'synth-{preset}', preset=preset, seed=0, datasets=('market1501',))
    root = tmp/'torchreid-data'
    root.mkdir(exist_ok=True)
    if not (root/'market1501').exists(): (root/'market1501').symlink_to(syn/'Market-1501')
    return root


@torch.no_grad()
def _features(model, loader):
    model.eval()
    fs, pids, cams = [], [], []
    for d in loader:
        fs.append(model(d['img'])); pids.append(d['pid']); cams.append(d['camid'])
    return torch.cat(fs).numpy(), torch.cat(pids).numpy(), torch.cat(cams).numpy()


def torchreid_run(seed, root, epochs, size=(128, 64), P=16, K=4, lr=3e-4):
    "torchreid's `ImageTripletEngine` as its README trains it, from scratch; returns the same keys as `library_run`."
    import torchreid
    from torchreid.metrics.rank import evaluate_rank, IS_CYTHON_AVAI
    seed_everything(seed); torchreid.utils.set_random_seed(seed)
    dm = torchreid.data.ImageDataManager(root=str(root), sources='market1501', height=size[0], width=size[1],
                                         batch_size_train=P*K, batch_size_test=100, workers=0, num_instances=K,
                                         train_sampler='RandomIdentitySampler', transforms=['random_flip'], use_gpu=False)
    model = torchreid.models.build_model('resnet18', num_classes=dm.num_train_pids, loss='triplet', pretrained=False,
                                         use_gpu=False)
    opt = torchreid.optim.build_optimizer(model, optim='adam', lr=lr)
    sched = torchreid.optim.build_lr_scheduler(opt, lr_scheduler='single_step', stepsize=max(epochs, 1) * 2)   # constant lr
    engine = torchreid.engine.ImageTripletEngine(dm, model, optimizer=opt, margin=0.3, weight_t=1, weight_x=1,
                                                 scheduler=sched, use_gpu=False, label_smooth=True)
    engine.max_epoch, n_seen, t = epochs, 0, time.time()
    for engine.epoch in range(epochs):
        engine.train(print_freq=len(dm.train_loader))     # one line per epoch
        n_seen += len(dm.train_loader) * P * K
    t = time.time() - t
    qf, qp, qc = _features(model, dm.test_loader['market1501']['query'])
    gf, gp, gc = _features(model, dm.test_loader['market1501']['gallery'])
    res = evaluate_retrieval(qf, gf, qp, gp, qc, gc, metric='euclidean')          # torchreid's default protocol
    dist = torchreid.metrics.compute_distance_matrix(torch.from_numpy(qf), torch.from_numpy(gf), 'euclidean').numpy()
    cmc, mAP = evaluate_rank(dist, qp, gp, qc, gc, use_cython=True)
    return dict(model=PEER, seed=seed, load=os.getloadavg(), images_per_s=round(n_seen / t, 1),
                **{k: res[k] for k in KEYS}, torchreid_rank1=float(cmc[0]), torchreid_mAP=float(mAP),
                cython=bool(IS_CYTHON_AVAI), n_query=len(qp), n_gallery=len(gp))


def peer_md(runs, a, have_peer) -> str:
    peer = [r for r in runs if r['model'].startswith('torchreid')]
    check = (f"torchreid's own Cython `evaluate_rank` on the same distances agrees: largest |Δ| rank-1 "
             f"{max(abs(r['rank1'] - r['torchreid_rank1']) for r in peer):.1e}, mAP "
             f"{max(abs(r['mAP'] - r['torchreid_mAP']) for r in peer):.1e} (Cython: {all(r['cython'] for r in peer)}); "
             f"{peer[0]['n_query']} queries, {peer[0]['n_gallery']} gallery images." if peer else
             'torchreid has no finished run yet.' if have_peer else 'torchreid was not importable: only the library rows ran.')
    models = ([PEER] if have_peer else []) + list(MODELS)
    return '\n'.join([
        '## Side by side with torchreid (synthetic Market-1501, from scratch, CPU)', '',
        f"Command: `PYTHONPATH=/work/peers/pydeps:/work/peers/deep-person-reid .venv/bin/python bench/bench_peer.py --seeds "
        f"{' '.join(map(str, a.seeds))}" + (f" --peer-seeds {' '.join(map(str, a.peer_seeds))}" if a.peer_seeds else '')
        + f" --epochs {a.epochs}` (torchreid f8cd150 built from source, see /work/peers/TORCHREID_READY)  ",
        machine_line() + '  ',
        f"Setting: one `{a.preset}` world (world seed 0; torchreid's own `Market1501` class parses the same folder), resnet18 "
        f"from scratch at 128×64, P×K {a.P}×4, {a.epochs} epochs, CE with label smoothing + batch-hard triplet 0.3 on both "
        f"sides. torchreid: its resnet18 and defaults (Adam 3e-4 constant, `random_flip`, Euclidean on raw features). "
        f"Library: `make demo`'s recipe (torch Adam, `fit_one_cycle` lr {CPU_RECIPE['lr']}, its augmentation, cosine on the "
        "post-BN feature), scored at the last epoch; the authors' initialisation (no zero-init residual BN). "
        "Per seed: torchreid, baseline, IAUnet, one after the other; images/s counts training only for torchreid and "
        "training plus the one final evaluation pass for the library (`run_demo`'s fit time).", '',
        *summary_rows(runs, models), '', *per_seed_rows(runs), '', check, ''])


def write_results(runs, a, have_peer):
    "bench/results/peer.md, peer-runs.json and (unless --no-ablation) ablation.md from the runs so far."
    out = ROOT/'bench'/'results'
    (out/'peer.md').write_text(peer_md(runs, a, have_peer))
    (out/'peer-runs.json').write_text(json.dumps(runs, indent=1))
    if a.no_ablation: return
    cmd = (f"`bench/bench_peer.py --seeds {' '.join(map(str, a.seeds))} --epochs {a.epochs}` (its library rows: the "
           "same runs as `bench/bench_ablation.py` with these seeds, interleaved with torchreid's)")
    (out/'ablation.md').write_text(ablation_md([r for r in runs if r['model'] in MODELS], a, cmd))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    p.add_argument('--peer-seeds', type=int, nargs='+', help="torchreid's seeds (default: --seeds)")
    p.add_argument('--epochs', type=int, default=CPU_RECIPE['epochs'])
    p.add_argument('--arch', default=CPU_RECIPE['arch'])
    p.add_argument('--preset', default='small', choices=['tiny', 'small', 'medium'])
    p.add_argument('--P', type=int, default=CPU_RECIPE['P'], help='identities per batch (K = 4); the tiny world has 4')
    p.add_argument('--no-peer', action='store_true', help='run the library rows only')
    p.add_argument('--no-ablation', action='store_true', help='do not rewrite bench/results/ablation.md')
    p.add_argument('--video', action='store_true', help='the tracklet side by side (bench/bench_peer_video.py)')
    p.add_argument('--resume', action='store_true',
                   help='keep the runs already in bench/results/peer-runs.json and run only the missing (model, seed) pairs')
    a, rest = p.parse_known_args(argv)
    if a.video:                                     # issue 31 adds bench/bench_peer_video.py with main(args, rest)
        if importlib.util.find_spec('bench_peer_video') is None: sys.exit('bench/bench_peer_video.py is not there yet')
        import bench_peer_video
        return bench_peer_video.main(a, rest)
    if rest: p.error(f'unrecognized arguments: {rest}')
    have_peer = not a.no_peer and torchreid_available()
    tmp = Path(tempfile.mkdtemp())
    peer_seeds = a.seeds if a.peer_seeds is None else a.peer_seeds
    saved = ROOT/'bench'/'results'/'peer-runs.json'
    runs = json.loads(saved.read_text()) if a.resume and saved.exists() else []
    done = {(r['model'], r['seed']) for r in runs}
    for seed in a.seeds:
        jobs = [(PEER, lambda: torchreid_run(seed, torchreid_world(tmp, a.preset), a.epochs, P=a.P))] if have_peer and seed in peer_seeds else []
        jobs += [(name, lambda name=name: library_run(name, seed, tmp, a.epochs, a.arch, a.preset, P=a.P)) for name in MODELS]
        for name, job in jobs:
            if (name, seed) in done: continue
            runs.append(job()); print(json.dumps(runs[-1]), flush=True)
            write_results(runs, a, have_peer)             # after every run: a stopped benchmark leaves what it measured
    print((ROOT/'bench'/'results'/'peer.md').read_text())
    return 0


if __name__ == '__main__': sys.exit(main())
