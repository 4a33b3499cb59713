"""Open-set verification: equal to scikit-learn's ROC on random problems with many ties; the verifier round-trips
through a weights-only model file."""
import numpy as np, pytest, torch
from iaunet_fastai.core import ReIDInputError
from iaunet_fastai.verification import (verification_report, sklearn_verification, pair_arrays, fit_verifier, load_verifier,
                                        Verifier)
from iaunet_fastai.metrics import pairwise_distance

FPRS = (0., 1e-4, 1e-3, .02, .3, 1.)


def _assert_equal(res, ref):
    assert abs(res['auc'] - ref['auc']) < 1e-12 and abs(res['eer'] - ref['eer']) < 1e-12
    assert res['eer_threshold'] == ref['eer_threshold']
    for f in ref['tpr@fpr']:
        assert (res['tpr@fpr'][f], res['threshold@fpr'][f], res['fpr@fpr'][f]) == (ref['tpr@fpr'][f], ref['threshold@fpr'][f], ref['fpr@fpr'][f]), f


@pytest.mark.parametrize('seed', range(6))
def test_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    Q, G, ids = rng.integers(5, 60), rng.integers(20, 400), rng.integers(3, 15)
    qp, gp = rng.integers(-1, ids, Q), rng.integers(-1, ids, G)
    qp[0] = gp[0] = 2
    cams = seed % 2 == 0
    qc, gc = (rng.integers(0, 3, Q), rng.integers(0, 3, G)) if cams else (None, None)
    if cams: qc[0], gc[0] = 0, 1
    levels = int(rng.integers(3, 30))
    D = (rng.integers(0, levels, (Q, G)) / levels).astype(np.float32) - np.float32(.25)   # few values, some negative, -0.0
    D -= (qp[:, None] == gp[None]) * rng.integers(0, 3, (Q, G)).astype(np.float32) / levels
    ref = sklearn_verification(*pair_arrays(D, qp, gp, qc, gc), FPRS)
    for cs in (1, 7, None):
        _assert_equal(verification_report(q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, dist=torch.from_numpy(D), fprs=FPRS, chunk_size=cs), ref)


@pytest.mark.parametrize('metric', ['cosine', 'euclidean'])
def test_feature_path_equals_sklearn(metric):
    rng = np.random.default_rng(3)
    qf, gf = (torch.tensor(rng.integers(-2, 3, (n, 6)), dtype=torch.float32) for n in (40, 250))   # integer features: ties
    qp, gp, qc, gc = rng.integers(0, 15, 40), rng.integers(0, 15, 250), rng.integers(0, 3, 40), rng.integers(0, 3, 250)
    res = verification_report(qf, gf, qp, gp, qc, gc, fprs=FPRS, metric=metric)
    _assert_equal(res, sklearn_verification(*pair_arrays(pairwise_distance(qf, gf, metric), qp, gp, qc, gc), FPRS))
    assert res['n_pos'] + res['n_neg'] + res['n_junk'] == 40 * 250


def test_bad_input_is_named():
    with pytest.raises(ReIDInputError, match='positive'): verification_report(q_pids=[1], g_pids=[2, 3], dist=np.zeros((1, 2)))
    with pytest.raises(ReIDInputError, match='negative'): verification_report(q_pids=[1], g_pids=[1, 1], dist=np.zeros((1, 2)))
    with pytest.raises(ReIDInputError, match='fprs'): verification_report(q_pids=[1], g_pids=[1, 2], dist=np.zeros((1, 2)), fprs=(2,))
    with pytest.raises(ReIDInputError, match='NaN'): verification_report(q_pids=[1], g_pids=[1, 2], dist=np.array([[0, np.nan]]))


def test_verifier_round_trips_through_a_weights_only_model_file(tmp_path):
    from iaunet_fastai.models import IAUnet
    from iaunet_fastai.inference import save_reid_model, load_reid_model, FeatureExtractor
    g = torch.Generator().manual_seed(0)
    pids = torch.arange(30).repeat_interleave(5)
    feats = torch.nn.functional.normalize(torch.randn(30, 16, generator=g)[pids] + .8 * torch.randn(150, 16, generator=g), dim=1)
    m = IAUnet('resnet18', num_classes=3, pretrained=False)
    v = fit_verifier(feats, pids.numpy())
    m.verifier = v
    save_reid_model(m, tmp_path/'model.pth')
    sd = torch.load(tmp_path/'model.pth', weights_only=True)                      # plain numbers and tensors: no pickle
    assert sd['verifier']['kind'] == 'isotonic'
    for w in (load_reid_model(tmp_path/'model.pth').verifier, load_verifier(tmp_path/'model.pth')):
        d = np.linspace(-.1, 2.1, 101)
        np.testing.assert_array_equal(w.prob(d), v.prob(d))
        assert [w.threshold(f) for f in (1e-3, .01, .1)] == [v.threshold(f) for f in (1e-3, .01, .1)]
        assert w.threshold(p=.5) == v.threshold(p=.5)
    r = v.verify(feats[:10], feats[torch.arange(10) + 1])
    assert r['same'].dtype == torch.bool and ((r['prob'] >= 0) & (r['prob'] <= 1)).all()
    assert v.prob(0.) >= v.prob(1.) and v.threshold(1e-3) <= v.threshold(1e-1)
    with pytest.raises(ReIDInputError, match='no verifier'): load_verifier(_plain_model(tmp_path))


def _plain_model(tmp_path):
    from iaunet_fastai.models import IAUnet
    from iaunet_fastai.inference import save_reid_model
    return save_reid_model(IAUnet('resnet18', num_classes=3, pretrained=False), tmp_path/'plain.pth')


def test_feature_extractor_verifies_tracklets_and_images():
    "A video model's extractor takes one tracklet (a list of frames) or a list of tracklets per side; images likewise."
    from iaunet_fastai.models import IAUnet, VideoIAUnet
    from iaunet_fastai.inference import FeatureExtractor
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 32, 3), dtype=np.uint8) for _ in range(5)]
    pids = np.repeat(np.arange(6), 4)
    feats = torch.nn.functional.normalize(torch.randn(6, 8)[pids] + .5 * torch.randn(24, 8), dim=1)
    v = fit_verifier(feats, pids)
    for m, a, b in ((VideoIAUnet('resnet18', num_classes=3, seq_len=2, pretrained=False), frames[:3], [frames[:3], frames[2:]]),
                    (IAUnet('resnet18', num_classes=3, pretrained=False), frames[0], [frames[0], frames[1]])):
        m.verifier = v
        fx = FeatureExtractor(m.eval(), size=(64, 32), device='cpu', distributed=False)
        r = fx.verify(a, b[:1])
        assert r['same'].tolist() == [True] and r['distance'].abs().max() < 1e-5     # the same item: distance 0
        with pytest.raises(ReIDInputError, match='pairs'): fx.verify(a, b)           # 1 item vs 2
    m.verifier = None
    with pytest.raises(ReIDInputError, match='no verifier'): FeatureExtractor(m, device='cpu').verify(frames[0], frames[1])
