"""Several processes give the numbers of one: two CPU processes (gloo) train one tiny epoch and validate under
`learn.distrib_ctx()`; the gathered rank-1/mAP/mINP equal a 1-process `learn.validate()` of the same weights, sharded
extraction returns the 1-process embeddings in input order, and the P×K train indices split into whole batches.

Run as a script (`python -m torch.distributed.run --nproc_per_node 2 tests/test_distributed.py WORLD OUT`) it is the
worker of one process; pytest starts two of them."""
import os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch

SIZE, P, K = (64, 32), 2, 4
KEYS = ('rank1', 'rank5', 'mAP', 'mINP', 'num_valid_queries')


def _frame(world):
    "The tiny world's Market frame with one gallery row dropped if needed, so that DistributedDL must pad the eval set."
    from iaunet_fastai.datasets import market1501_df
    df = market1501_df(Path(world)/'Market-1501')
    if (df.split != 'train').sum() % 2 == 0: df = df.drop(df.index[df.split == 'gallery'][-1])
    return df.reset_index(drop=True)


def _learner(df, path):
    from iaunet_fastai.all import reid_dls, iaunet_learner
    dls = reid_dls(df, size=SIZE, P=P, K=K, num_workers=0, seed=0, device='cpu')
    return iaunet_learner(dls, 'resnet18', pretrained=False, path=path)


def _items(df):
    "Images (query then gallery, odd count) and a few tracklets of those images, to embed."
    paths = list(df[df.split == 'query'].path) + list(df[df.split == 'gallery'].path)
    tracks = [paths[0:2], paths[2:3], paths[3:6], paths[6:8], paths[8:9]]
    return paths, tracks


def _worker(world, out):
    "One process of the 2-process run: results go to OUT/rank<r>.pt."
    from iaunet_fastai.all import (seed_everything, FeatureExtractor, ReIDDistributedDL, RetrievalEvaluator,
                                   all_reduce_sum, all_reduce_mean, all_gather_cat)
    import torch.distributed as dist
    res = {}
    rank = int(os.environ['RANK'])
    seed_everything(0)
    df = _frame(world)
    learn = _learner(df, out)
    ev = next(cb for cb in learn.cbs if isinstance(cb, RetrievalEvaluator))
    # P×K train indices under 2 processes: rank 0 draws (seedless loader: broadcast), every process takes its slice
    res['pk_seeded'] = ReIDDistributedDL(learn.dls.train.new(seed=5)).get_idxs()
    seedless = ReIDDistributedDL(learn.dls.train.new(seed=None))
    res['pk_seedless'] = [seedless.get_idxs() for _ in range(2)]
    with learn.distrib_ctx():                                  # the library's path: gloo on the CPU
        learn.fit(1, 1e-3)
    names = learn.recorder.metric_names[1:-1]
    res['fit'] = dict(zip(names, learn.recorder.values[-1]))
    res['fit_results'] = {k: ev.results[k] for k in KEYS}
    with learn.distrib_ctx():
        learn.validate()
    res['val_results'] = {k: ev.results[k] for k in KEYS}
    if rank == 0: torch.save(learn.model.state_dict(), Path(out)/'weights.pth')
    paths, tracks = _items(df)
    fx = FeatureExtractor(learn.model, size=SIZE, bs=4, device='cpu')
    res['images'], res['tracklets'] = fx(paths), fx(tracks)
    res['collectives'] = (all_reduce_sum(torch.tensor([rank + 1.])), all_reduce_mean(float(rank)), all_reduce_sum(rank + 1),
                          all_gather_cat(torch.full((rank + 1, 2), rank)), all_gather_cat(torch.tensor([rank == 1])))
    res['distributed'] = (dist.is_initialized(), dist.get_world_size(), dist.get_backend())
    torch.save(res, Path(out)/f'rank{rank}.pt')


@pytest.fixture(scope='module')
def run2(tmp_path_factory):
    "Two gloo processes on the CPU (torchrun), and a 1-process learner with rank 0's final weights."
    from iaunet_fastai.all import make_synthetic_reid
    root = tmp_path_factory.mktemp('dist')
    world = make_synthetic_reid(root/'synth', preset='tiny', img_size=SIZE)
    out = root/'out'; out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(Path(__file__).parents[1]) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', __file__, str(world), str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    ranks = [torch.load(out/f'rank{i}.pt', weights_only=False) for i in range(2)]
    df = _frame(world)
    learn = _learner(df, root)
    learn.model.load_state_dict(torch.load(out/'weights.pth'))
    return ranks, learn, df


def test_two_processes_ran_distributed(run2):
    ranks, _, _ = run2
    for r in ranks:
        assert r['distributed'] == (True, 2, 'gloo')
        s, mean, isum, cat, flags = r['collectives']             # what LossTerms and the evaluator rely on
        assert torch.equal(s, torch.tensor([3.])) and mean == 0.5 and isum == 3 and type(isum) is int
        assert torch.equal(cat, torch.tensor([[0, 0], [1, 1], [1, 1]])) and torch.equal(flags, torch.tensor([False, True]))


def test_gathered_metrics_equal_one_process(run2):
    from iaunet_fastai.all import RetrievalEvaluator
    ranks, learn, df = run2
    learn.validate()
    one = next(cb for cb in learn.cbs if isinstance(cb, RetrievalEvaluator)).results
    n_query = int((df.split == 'query').sum())
    assert (df.split != 'train').sum() % 2 == 1               # DistributedDL padded the eval set: one duplicate dropped
    assert one['num_valid_queries'] + one['num_skipped_queries'] == n_query
    for r in ranks:
        for res in (r['val_results'], r['fit_results']):         # after the fit and in a later validate()
            for k in KEYS: assert res[k] == pytest.approx(one[k], abs=1e-6), (k, res[k], one[k])
    # the progress table (what SaveModelCallback/EarlyStoppingCallback read) agrees across the processes
    for k in ('rank1', 'rank5', 'mAP', 'mINP', 'valid_loss'):
        assert ranks[0]['fit'][k] == ranks[1]['fit'][k]
        if k != 'valid_loss': assert ranks[0]['fit'][k] == pytest.approx(one[k], abs=1e-6)


def test_distributed_extraction_is_one_process_in_order(run2):
    from iaunet_fastai.all import FeatureExtractor
    ranks, learn, df = run2
    paths, tracks = _items(df)
    fx = FeatureExtractor(learn.model, size=SIZE, bs=4, device='cpu')
    imgs, trk = fx(paths), fx(tracks)
    assert len(paths) % 2 == 1                                 # uneven shares
    for r in ranks:
        assert r['images'].shape == imgs.shape and r['tracklets'].shape == trk.shape
        torch.testing.assert_close(r['images'], imgs, rtol=0, atol=1e-6)
        torch.testing.assert_close(r['tracklets'], trk, rtol=0, atol=1e-6)


def _check_pk_batches(idxs, labels):
    assert len(idxs) % (P*K) == 0 and len(idxs) > 0
    for b in np.asarray(idxs).reshape(-1, P*K):
        _, counts = np.unique(labels[b], return_counts=True)
        assert sorted(counts) == [K]*P                        # P identities × K items: a whole P×K batch


def test_pk_sampler_under_two_processes(run2):
    ranks, learn, _ = run2
    labels = learn.dls.train.labels
    a, b = ranks[0]['pk_seeded'], ranks[1]['pk_seeded']
    one = list(learn.dls.train.new(seed=5).get_idxs())       # the epoch of a single process
    n = len(a) + len(b)
    assert len(a) == len(b) and n == len(one) - len(one) % (2*P*K)
    assert a + b == one[:n]                                  # the epoch of one process, split between the two
    assert not set(a) & set(b)                               # distinct items at every step
    for r in ranks: _check_pk_batches(r['pk_seeded'], labels)
    # without a seed each process's sampler differs; rank 0's draw is broadcast, so the slices still form one epoch
    for e in range(2):
        a, b = ranks[0]['pk_seedless'][e], ranks[1]['pk_seedless'][e]
        assert len(a) == len(b)
        _check_pk_batches(a + b, labels)
        assert not set(a) & set(b)


def test_importing_the_library_leaves_fastais_learner_as_fastai_defines_it():
    "`import iaunet_fastai.all` adds methods to fastai's `Learner` but replaces none: `to_distributed`/`distrib_ctx` stay fastai's."
    code = """
import fastai.distributed, fastai.vision.all, fastai.callback.all
from fastai.learner import Learner
before = dict(vars(Learner))
import iaunet_fastai.all
from iaunet_fastai.all import ReIDLearner, ReIDDistributedTrainer
assert Learner.to_distributed is before['to_distributed'] and Learner.distrib_ctx is before['distrib_ctx']
replaced = [k for k, v in before.items() if vars(Learner)[k] is not v]
assert not replaced, replaced
assert ReIDLearner.to_distributed is not Learner.to_distributed
print('ok')
"""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    r = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith('ok'), r.stderr[-2000:]


if __name__ == '__main__':
    _worker(*sys.argv[1:3])
