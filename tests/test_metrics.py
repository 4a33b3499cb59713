"Parity tests for retrieval evaluation and re-ranking against straightforward references, plus bad input."
import numpy as np
import pytest
import torch
from pathlib import Path
from sklearn.metrics import average_precision_score

from iaunet_fastai.core import ReIDInputError
from iaunet_fastai.metrics import (evaluate_retrieval, re_ranking, aggregate_tracklets, evaluate_tracklets,
                                   pairwise_distance)


# ---------------------------------------------------------------------------------------------- references
def ref_eval(dist, q_pids, g_pids, q_camids, g_camids, max_rank=20):
    "Per-query stable-argsort reference (Market-1501 protocol). Returns cmc, per-query AP, INP (nan = skipped)."
    Q = len(dist); cmc = np.zeros(max_rank); ap = np.full(Q, np.nan); inp = np.full(Q, np.nan)
    for i in range(Q):
        order = np.argsort(dist[i], kind='stable')
        junk = ((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])) | (g_pids[order] == -1)
        m = (g_pids[order] == q_pids[i])[~junk]
        if not m.any(): continue
        hits = np.flatnonzero(m) + 1                         # 1-based positions of true matches
        cmc[hits[0] - 1:] += 1
        ap[i] = np.mean(np.arange(1, len(hits) + 1) / hits)
        inp[i] = len(hits) / hits[-1]
    nv = (~np.isnan(ap)).sum()
    return cmc / nv, ap, inp


def sk_ap(dist, q_pids, g_pids, q_camids, g_camids):
    "AP per query from scikit-learn on the junk-free gallery (scores = -distance)."
    out = np.full(len(dist), np.nan)
    for i in range(len(dist)):
        keep = ~(((g_pids == q_pids[i]) & (g_camids == q_camids[i])) | (g_pids == -1))
        y = g_pids[keep] == q_pids[i]
        if y.any(): out[i] = average_precision_score(y, -dist[i][keep])
    return out


def random_set(seed=0, Q=60, G=400, D=16, n_ids=25):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids + 1, D))
    g_pids = rng.integers(0, n_ids, G)                       # pid 0 = distractors
    g_pids[rng.random(G) < .05] = -1                         # junk
    q_pids = rng.integers(1, n_ids + 5, Q)                   # some pids absent from the gallery -> skipped
    q_camids, g_camids = rng.integers(0, 4, Q), rng.integers(0, 4, G)
    cen = lambda p: centres[np.clip(p, 0, n_ids)]
    qf = cen(q_pids) + 1.2 * rng.normal(size=(Q, D)); gf = cen(g_pids) + 1.2 * rng.normal(size=(G, D))
    return qf, gf, q_pids, g_pids, q_camids, g_camids


def np_dist(qf, gf, metric):
    if metric == 'cosine':
        a = qf / np.linalg.norm(qf, axis=1, keepdims=True); b = gf / np.linalg.norm(gf, axis=1, keepdims=True)
        return 1 - a @ b.T
    return np.sqrt(np.maximum((qf ** 2).sum(1)[:, None] + (gf ** 2).sum(1)[None] - 2 * qf @ gf.T, 0))


# ---------------------------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize('metric', ['cosine', 'euclidean'])
@pytest.mark.parametrize('seed', [0, 1])
def test_equals_reference_and_sklearn(metric, seed):
    qf, gf, qp, gp, qc, gc = random_set(seed)
    dist = np_dist(qf, gf, metric)
    assert len(np.unique(dist)) == dist.size                 # tie-free
    cmc, ap, inp = ref_eval(dist, qp, gp, qc, gc)
    assert np.isnan(ap).sum() > 0 and (~np.isnan(ap)).sum() > 20   # skipped queries exist, most are valid
    assert (gp == 0).any() and (gp == -1).any()
    for kw in [dict(dist=dist), dict(dist=torch.tensor(dist)), dict(qf=qf, gf=gf), dict(qf=torch.tensor(qf).float(), gf=torch.tensor(gf).float())]:
        r = evaluate_retrieval(q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, metric=metric, per_query=True,
                               chunk_size=7, **kw)
        np.testing.assert_allclose(r['cmc'], cmc, atol=1e-6)
        np.testing.assert_allclose(r['AP'], ap, atol=1e-6)
        np.testing.assert_allclose(r['INP'], inp, atol=1e-6)
        assert abs(r['mAP'] - np.nanmean(ap)) < 1e-6 and abs(r['mINP'] - np.nanmean(inp)) < 1e-6
        assert r['rank1'] == cmc[0] and r['rank5'] == cmc[4] and r['rank20'] == cmc[19]
        assert r['num_skipped_queries'] == np.isnan(ap).sum() and r['num_valid_queries'] == (~np.isnan(ap)).sum()
    np.testing.assert_allclose(r['AP'], sk_ap(dist, qp, gp, qc, gc), atol=1e-6)


def test_chunk_size_and_ties_match_stable_reference():
    qf, gf, qp, gp, qc, gc = random_set(3, Q=40, G=200)
    dist = np.round(np_dist(qf, gf, 'cosine'), 2)           # many exact ties
    cmc, ap, inp = ref_eval(dist, qp, gp, qc, gc)
    for cs in (1, 13, None):
        r = evaluate_retrieval(dist=dist, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, chunk_size=cs, per_query=True)
        np.testing.assert_allclose(r['cmc'], cmc, atol=1e-6); np.testing.assert_allclose(r['AP'], ap, atol=1e-6)
        np.testing.assert_allclose(r['INP'], inp, atol=1e-6)


def test_bad_input():
    qf, gf, qp, gp, qc, gc = random_set(0, Q=5, G=30)
    bad = gf.copy(); bad[3, 2] = np.inf
    with pytest.raises(ReIDInputError, match='gf'): evaluate_retrieval(qf, bad, qp, gp, qc, gc)
    with pytest.raises(ReIDInputError, match='empty'): evaluate_retrieval(qf[:0], gf, qp[:0], gp, qc[:0], gc)
    with pytest.raises(ReIDInputError, match='g_camids'): evaluate_retrieval(qf, gf, qp, gp, qc, gc[:-1])
    with pytest.raises(ReIDInputError, match='metric'): evaluate_retrieval(qf, gf, qp, gp, qc, gc, metric='l1')
    with pytest.raises(ReIDInputError, match='true match'):
        evaluate_retrieval(qf, gf, qp + 1000, gp, qc, gc)


def test_cuhk03_sgs_seeded_and_sane():
    qf, gf, qp, gp, qc, gc = random_set(4)
    a = evaluate_retrieval(qf, gf, qp, gp, qc, gc, protocol='cuhk03_sgs', seed=1)
    b = evaluate_retrieval(qf, gf, qp, gp, qc, gc, protocol='cuhk03_sgs', seed=1)
    np.testing.assert_array_equal(a['cmc'], b['cmc'])
    assert np.all(np.diff(a['cmc']) >= 0) and a['cmc'][-1] <= 1
    # one valid gallery item per identity (the other items are pid -1 junk): SGS sampling is the identity,
    # so SGS must equal the Market protocol, for any seed
    rng = np.random.default_rng(0)
    gp1 = np.concatenate([np.arange(40), np.full(40, -1)]); gc1 = np.concatenate([np.ones(40, int), np.zeros(40, int)])
    gf1, qf1 = rng.normal(size=(80, 8)), rng.normal(size=(15, 8)); qp1 = np.arange(15); qc1 = np.zeros(15, int)
    m = evaluate_retrieval(qf1, gf1, qp1, gp1, qc1, gc1)
    for seed in (0, 7):
        s = evaluate_retrieval(qf1, gf1, qp1, gp1, qc1, gc1, protocol='cuhk03_sgs', seed=seed)
        np.testing.assert_allclose(s['cmc'], m['cmc'], atol=1e-12); assert abs(s['mAP'] - m['mAP']) < 1e-9


# ---------------------------------------------------------------------------------------------- video
def test_video_aggregation_and_mars_protocol_by_hand():
    # 4 tracklets x 2 clips; tracklets 0 (pid 1, cam 0) and 3 (pid 2, cam 1) are queries
    clips = np.array([[1, 0], [1, 0],        # t0 -> (1, 0)
                      [1, .5], [1, .5],      # t1 pid 1 cam 1 -> angle 26.6 deg from t0
                      [0, 1], [0, 1],        # t2 pid 2 cam 0 -> (0, 1)
                      [1, 1.2], [1, .8]],    # t3 pid 2 cam 1 -> mean (1, 1) -> 45 deg
                     dtype=np.float32)
    track = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    tf, ids = aggregate_tracklets(torch.tensor(clips), torch.tensor(track))
    torch.testing.assert_close(tf[3], torch.tensor([1., 1.]) / 2 ** .5)
    pids, cams, isq = np.array([1, 1, 2, 2]), np.array([0, 1, 0, 1]), np.array([1, 0, 0, 1], bool)
    # official (gallery = t0..t3):
    #  q=t0: t0 junk (itself). order by angle: t1 (26.6, pid1 -> match), t3 (45), t2 (90) -> rank 1, AP 1, INP 1
    #  q=t3: t3 junk. angles from 45 deg: t1 18.4 (n), t0 45 (n), t2 45 (p, tie with t0; t0 first by index)
    #        -> match at position 3: AP 1/3, INP 1/3
    r = evaluate_tracklets(clips, track, pids, cams, isq, max_rank=4, per_query=True)
    np.testing.assert_allclose(r['AP'], [1, 1 / 3], atol=1e-6)
    np.testing.assert_allclose(r['cmc'], [.5, .5, 1, 1]); assert abs(r['mAP'] - 2 / 3) < 1e-6
    assert abs(r['mINP'] - 2 / 3) < 1e-6
    # torchreid variant (gallery = t1, t2): q=t0 -> t1 first, AP 1; q=t3 -> t1 (18.4, n) then t2 (p): AP 1/2
    r = evaluate_tracklets(clips, track, pids, cams, isq, mars='torchreid', max_rank=4, per_query=True)
    np.testing.assert_allclose(r['AP'], [1, .5], atol=1e-6); np.testing.assert_allclose(r['cmc'], [.5, 1, 1, 1])


# ---------------------------------------------------------------------------------------------- re-ranking
def ref_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    "Dense reference: torchreid's re_ranking (Zhong et al.), verbatim in substance."
    original_dist = np.concatenate([np.concatenate([q_q_dist, q_g_dist], axis=1),
                                    np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0)
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1. * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist).astype(np.int32)
    query_num = q_g_dist.shape[0]; all_num = original_dist.shape[0]
    for i in range(all_num):
        forward = initial_rank[i, :k1 + 1]
        backward = initial_rank[forward, :k1 + 1]
        k_recip = forward[np.where(backward == i)[0]]
        expansion = k_recip
        for cand in k_recip:
            cf = initial_rank[cand, :int(np.around(k1 / 2.)) + 1]
            cb = initial_rank[cf, :int(np.around(k1 / 2.)) + 1]
            ck = cf[np.where(cb == cand)[0]]
            if len(np.intersect1d(ck, k_recip)) > 2. / 3 * len(ck): expansion = np.append(expansion, ck)
        expansion = np.unique(expansion)
        weight = np.exp(-original_dist[i, expansion])
        V[i, expansion] = 1. * weight / np.sum(weight)
    original_dist = original_dist[:query_num]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num): V_qe[i] = np.mean(V[initial_rank[i, :k2]], axis=0)
        V = V_qe
    invIndex = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
    jaccard = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros((1, all_num), dtype=np.float32)
        nz = np.where(V[i] != 0)[0]
        for j in nz: temp_min[0, invIndex[j]] += np.minimum(V[i, j], V[invIndex[j], j])
        jaccard[i] = 1 - temp_min / (2. - temp_min)
    final = jaccard * (1 - lambda_value) + original_dist * lambda_value
    return final[:query_num, query_num:]


@pytest.mark.parametrize('metric,k1,k2', [('cosine', 20, 6), ('euclidean', 7, 3), ('cosine', 5, 1)])
def test_re_ranking_matches_dense_reference(metric, k1, k2):
    qf, gf, qp, gp, qc, gc = random_set(5, Q=30, G=150)
    qf, gf = qf.astype(np.float32), gf.astype(np.float32)
    d = lambda a, b: pairwise_distance(torch.tensor(a), torch.tensor(b), metric).numpy().astype(np.float64)
    ref = ref_re_ranking(d(qf, gf), d(qf, qf), d(gf, gf), k1, k2, 0.3)
    out = re_ranking(qf, gf, k1=k1, k2=k2, lambda_=0.3, metric=metric, chunk_size=11)
    assert out.dtype == np.float32 and out.shape == (30, 150)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_re_ranking_bad_input():
    with pytest.raises(ReIDInputError, match='qf'): re_ranking(np.full((2, 4), np.nan), np.ones((30, 4)))
    with pytest.warns(UserWarning, match='using k1=4'): d = re_ranking(np.eye(2, 4), np.eye(3, 4)[::-1].copy(), k1=20)  # small set: k1 shrinks
    assert d.shape == (2, 3) and np.isfinite(d).all()
    with pytest.raises(ReIDInputError, match='k1'): re_ranking(np.ones((2, 4)), np.ones((3, 4)), k1=0)


def test_larger_uniform_block_with_padding_and_near_zero_positives():
    "Rows with different numbers of true matches in one chunk (padding), true matches near distance 0."
    rng = np.random.default_rng(11)
    Q, G = 120, 3000
    dist = rng.random((Q, G))
    gp, gc = rng.integers(0, 150, G), rng.integers(0, 6, G)
    qp, qc = rng.integers(0, 150, Q), rng.integers(0, 6, Q)
    for i in range(0, Q, 3):                                   # a true match very close, behind 5 negatives
        j = np.flatnonzero((gp == qp[i]) & (gc != qc[i]))
        n = np.flatnonzero(gp != qp[i])[:5]
        if len(j): dist[i, j[0]] = 4.5e-4; dist[i, n] = 4e-4 * rng.random(5)
    cmc, ap, inp = ref_eval(dist, qp, gp, qc, gc)
    r = evaluate_retrieval(dist=dist, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, per_query=True)
    np.testing.assert_allclose(r['cmc'], cmc, atol=1e-6); np.testing.assert_allclose(r['AP'], ap, atol=1e-6)
    np.testing.assert_allclose(r['INP'], inp, atol=1e-6)


# ---------------------------------------------------------------------------------------------- callback
def _video_learner(tmp_path, **kw):
    "A real fastai Learner on clips [B,T,3,H,W]; eval loader yields (x, pid, camid, is_query, tracklet)."
    import torch.nn as nn, torch.nn.functional as F
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from iaunet_fastai.callbacks import RetrievalEvaluator

    class ClipNet(nn.Module):
        def __init__(self, n):
            super().__init__(); self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(8, n)
        def forward(self, x):
            B, T = x.shape[:2]; f = self.body(x.flatten(0, 1)).view(B, T, -1).mean(1)
            return (self.head(f), f) if self.training else F.normalize(f, dim=1)

    def loss(pred, y, *rest):
        if isinstance(pred, tuple): return F.cross_entropy(pred[0], y)
        return (pred[:, 0] * 0).sum() + 1 - (pred @ pred.T).mean()

    g = torch.Generator().manual_seed(0); n = 5
    col = torch.rand(n, 1, 3, 1, 1, generator=g)
    clip = lambda p: col[p] + 1.2 * torch.randn(3, 3, 8, 4, generator=g)
    train = [(clip(p), p) for p in range(n) for _ in range(6)]
    # tracklets: 0..4 queries (cam 0), 5..19 gallery (cams 1/2); 2 clips per tracklet
    tr = [(p, 0, True) for p in range(n)] + [(p, 1 + (k % 2), False) for k in range(3) for p in range(n)]
    ev_items = [(clip(p), torch.tensor(p), torch.tensor(c), torch.tensor(q), torch.tensor(t))
                for t, (p, c, q) in enumerate(tr) for _ in range(2)]
    dls = DataLoaders(DataLoader(train, bs=10, shuffle=True, drop_last=True), DataLoader(ev_items, bs=7))
    dls.n_inp = 1
    ev = RetrievalEvaluator(**kw)
    learn = Learner(dls, ClipNet(n), loss_func=loss, metrics=ev.metrics, cbs=ev, path=tmp_path, lr=1e-2)
    return learn, ev, dls, tr


def test_callback_video_learner_fit_validate_savemodel(tmp_path):
    from fastai.callback.tracker import SaveModelCallback
    learn, ev, dls, tr = _video_learner(tmp_path)
    learn.fit(2, cbs=SaveModelCallback(monitor='mAP', fname='best'))
    assert list(learn.recorder.metric_names[3:7]) == ['rank1', 'rank5', 'mAP', 'mINP']
    assert len(learn.recorder.values) == 2 and all(np.isfinite(v).all() for v in learn.recorder.values)
    assert (tmp_path/'models'/'best.pth').exists()
    vals = learn.validate()
    model = learn.model.eval()
    with torch.no_grad(): clips = torch.cat([model(b[0]) for b in dls.valid])
    track = torch.cat([b[4] for b in dls.valid])
    pids = torch.tensor([p for p, c, q in tr]); cams = torch.tensor([c for p, c, q in tr]); isq = torch.tensor([q for p, c, q in tr])
    ref = evaluate_tracklets(clips, track, pids, cams, isq, mars='torchreid')
    np.testing.assert_allclose(vals[1:], [ref['rank1'], ref['rank5'], ref['mAP'], ref['mINP']], atol=1e-6)
    assert ev.results['num_valid_queries'] == 5


def test_callback_every_and_flip(tmp_path):
    learn, ev, dls, tr = _video_learner(tmp_path, every=3, flip_tta=True, metrics=('mAP',))
    learn.fit(4)
    maps = [v[2] for v in learn.recorder.values]
    assert np.isnan(maps[0]) and np.isnan(maps[1]) and np.isfinite(maps[2]) and np.isfinite(maps[3])
    assert 0 < ev.results['mAP'] <= 1


@pytest.mark.parametrize('name,metric,k1,k2', [('cos_20_6', 'cosine', 20, 6), ('euc_7_3', 'euclidean', 7, 3), ('cos_5_1', 'cosine', 5, 1)])
def test_re_ranking_equals_the_previous_implementation(name, metric, k1, k2):
    "tests/data/rerank_reference.npz: outputs of the dense-k-NN implementation (commit b2a12cc) on clustered features."
    ref = np.load(Path(__file__).parent/'data'/'rerank_reference.npz')
    for cs in (None, 3, 64):    # blocks smaller than k1, a few blocks, the default
        out = re_ranking(ref['qf'], ref['gf'], k1=k1, k2=k2, lambda_=0.3, metric=metric, chunk_size=cs, device='cpu')
        np.testing.assert_allclose(out, ref[name], atol=1e-6)


def test_re_ranking_knn_pass_is_exact():
    "The triangle pass (probe bound, column candidates) finds the same neighbours and row maxima as a full sort."
    import torch.nn.functional as F
    from iaunet_fastai.metrics import _knn
    X = F.normalize(torch.randn(700, 12, generator=torch.Generator().manual_seed(0)), dim=1)
    S = X @ X.T
    for cs in (5, 64, 700):
        nn, nnd, rowmax = _knn(X, 21, 'cosine', cs, n_probe=32)
        assert (nn.sort(1).values == S.topk(21, dim=1).indices.sort(1).values).all()
        np.testing.assert_allclose(rowmax, ((1 - S).pow(2)).max(1).values, rtol=1e-5)


def exact_re_ranking(qf, gf, k1=20, k2=6, lambda_value=0.3, metric='cosine'):
    "Straightforward float64 k-reciprocal re-ranking (Zhong et al. 2017): dense, one item at a time, neighbours by a stable sort."
    X = np.concatenate([qf, gf]).astype(np.float64); N, Q = len(X), len(qf)
    if metric == 'cosine':
        Xn = X / np.maximum(np.sqrt((X * X).sum(1, keepdims=True)), 1e-12)
        dist = (1 - (Xn[:, None, :] * Xn[None]).sum(-1)) ** 2
    else: dist = ((X[:, None, :] - X[None]) ** 2).sum(-1)
    rank = np.argsort(dist, axis=1, kind='stable')
    dist = dist / np.maximum(dist.max(1, keepdims=True), 1e-12)
    def recip(i, k):
        f = rank[i, :k + 1]
        return f[(rank[f, :k + 1] == i).any(1)]
    V = np.zeros((N, N))
    for i in range(N):
        R = recip(i, k1); exp = [R]
        for c in R:
            Rc = recip(c, int(np.around(k1 / 2.)))
            if len(np.intersect1d(Rc, R)) > 2. / 3 * len(Rc): exp.append(Rc)
        e = np.unique(np.concatenate(exp))
        w = np.exp(-dist[i, e]); V[i, e] = w / w.sum()
    if k2 != 1: V = np.stack([V[rank[i, :k2]].mean(0) for i in range(N)])
    jac = np.array([[1 - (m := np.minimum(V[i], V[j]).sum()) / (2 - m) for j in range(Q, N)] for i in range(Q)])
    return (1 - lambda_value) * jac + lambda_value * dist[:Q, Q:]


def near_tied_set(seed=0, n_shells=6, shell=30, n_base=120, D=16):
    """float32 features with deliberate near-ties: shells of `shell` points at the same angle from an anchor (equal in
    exact arithmetic; the float32 rounding of the coordinates leaves ~1e-8 differences, below the fp32 product's
    resolution, so an anchor's k1-th neighbour falls among near-tied points), exact duplicates, and clustered items."""
    rng = np.random.default_rng(seed)
    pts = []
    for a in range(n_shells):
        anchor = np.zeros(D); anchor[a] = 1.
        u = rng.standard_normal((shell, D)); u -= (u @ anchor)[:, None] * anchor; u /= np.linalg.norm(u, axis=1, keepdims=True)
        pts += [anchor[None] * 3., np.cos(.4) * anchor + np.sin(.4) * u]
    cen = rng.standard_normal((12, D))
    base = cen[rng.integers(0, 12, n_base)] + .6 * rng.standard_normal((n_base, D))
    pts += [base, base[rng.choice(n_base, 15, replace=False)]]       # 15 exact duplicates
    X = np.concatenate(pts).astype(np.float32)
    return X[rng.permutation(len(X))]


@pytest.mark.parametrize('metric', ['cosine', 'euclidean'])
def test_re_ranking_equals_an_exact_float64_reference_with_near_ties(metric):
    "Neighbour order is the float64 one with ties broken by index: near-tied k-NN distances do not swap (issue 27)."
    X = near_tied_set()
    qf, gf = X[:50], X[50:]
    ref = exact_re_ranking(qf, gf, 20, 6, 0.3, metric)
    for cs in (None, 7):
        out = re_ranking(qf, gf, k1=20, k2=6, lambda_=0.3, metric=metric, chunk_size=cs)
        np.testing.assert_allclose(out, ref, atol=1e-6)


def test_feature_path_with_product_blocks_not_a_multiple_of_the_chunk(monkeypatch):
    "A matrix-product block holds whole chunks (before the redesign a chunk straddling a block's end crashed)."
    import iaunet_fastai.metrics as M
    qf, gf, qp, gp, qc, gc = random_set(3, Q=50, G=20)
    ref = evaluate_retrieval(dist=np_dist(qf, gf, 'cosine'), q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, per_query=True)
    monkeypatch.setattr(M, 'PRODUCT_BLOCK_CELLS', 7 * 20)       # 7 rows per product, chunks of 3
    out = evaluate_retrieval(qf, gf, qp, gp, qc, gc, chunk_size=3, per_query=True)
    np.testing.assert_allclose(out['AP'], ref['AP'], atol=1e-6); np.testing.assert_allclose(out['cmc'], ref['cmc'])
