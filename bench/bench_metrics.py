"""Benchmark retrieval evaluation and re-ranking: `iaunet_fastai.metrics` vs a full-argsort reference.

    .venv/bin/python bench/bench_metrics.py            # all parts, writes bench/results/metrics.md
    .venv/bin/python bench/bench_metrics.py --skip-msmt --skip-rerank

Each part runs in its own subprocess so that its peak extra memory (ru_maxrss after the run minus the resident
size once its inputs exist) is its own. Inputs are seeded random features (deterministic).
"""
import argparse, json, os, platform, resource, subprocess, sys, time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT/'bench'/'results'/'metrics.md'


def rss_mb():
    "Current resident set size (MB)."
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def peak_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_set(Q, G, D, n_ids, n_distractors, seed=0, structure=True):
    "Market-like random set: identities with ~G/n_ids gallery images over 6 cameras, pid-0 distractors."
    rng = np.random.default_rng(seed)
    g_pids = np.concatenate([rng.integers(1, n_ids + 1, G - n_distractors), np.zeros(n_distractors, int)])
    q_pids = rng.integers(1, n_ids + 1, Q)
    g_cams, q_cams = rng.integers(0, 6, G), rng.integers(0, 6, Q)
    qf = np.empty((Q, D), np.float32); gf = np.empty((G, D), np.float32)
    for a in (qf, gf):                                     # chunked, float32 in place: no float64 temporaries
        for s in range(0, len(a), 4096): a[s:s + 4096] = rng.standard_normal((min(4096, len(a) - s), D), dtype=np.float32)
    if structure:                                          # identity centres -> meaningful (not ~0) mAP
        cen = rng.standard_normal((n_ids + 1, D), dtype=np.float32) * .2
        qf += cen[q_pids]; gf += cen[g_pids]
    return qf, gf, q_pids, g_pids, q_cams, g_cams


def eval_market1501_torchreid(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20):
    "torchreid's `eval_market1501` (full argsort + Q×G int matches + per-query loop), verbatim in substance."
    num_q, num_g = distmat.shape
    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_AP, all_INP, num_valid_q = [], [], [], 0.
    for q_idx in range(num_q):
        order = indices[q_idx]
        remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
        raw_cmc = matches[q_idx][np.invert(remove)]
        if not np.any(raw_cmc): continue
        cmc = raw_cmc.cumsum()
        max_pos_idx = np.max(np.where(raw_cmc == 1))
        all_INP.append(cmc[max_pos_idx] / (max_pos_idx + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank]); num_valid_q += 1.
        tmp_cmc = raw_cmc.cumsum()
        tmp_cmc = np.asarray([x / (i + 1.) for i, x in enumerate(tmp_cmc)]) * raw_cmc
        all_AP.append(tmp_cmc.sum() / raw_cmc.sum())
    return np.asarray(all_cmc).astype(np.float32).sum(0) / num_valid_q, np.mean(all_AP), np.mean(all_INP)


def eval_argsort_vectorised(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20):
    "Same full-argsort algorithm with the per-query AP vectorised (a faster, fairer reference)."
    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    cmcs, aps, inps = [], [], []
    for q in range(len(distmat)):
        order = indices[q]
        raw = matches[q][~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))]
        if not raw.any(): continue
        c = raw.cumsum(); hits = np.flatnonzero(raw)
        aps.append((c[hits] / (hits + 1.)).mean()); inps.append(len(hits) / (hits[-1] + 1.))
        cmcs.append(np.minimum(c[:max_rank], 1))
    return np.mean(cmcs, 0), np.mean(aps), np.mean(inps)


def part_market(args):
    import torch
    from iaunet_fastai.metrics import evaluate_retrieval, pairwise_distance
    qf, gf, qp, gp, qc, gc = make_set(3368, 15913, 2048, 751, 2793)
    base = rss_mb()
    t = time.perf_counter(); dist = pairwise_distance(torch.from_numpy(qf), torch.from_numpy(gf)).numpy(); t_dist = time.perf_counter() - t
    res = dict(t_dist=t_dist)
    best = lambda f, n: min((lambda t0: (f(), time.perf_counter() - t0))(time.perf_counter())[1] for _ in range(n))
    ours = evaluate_retrieval(dist=dist, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
    res['t_ours_metric'] = best(lambda: evaluate_retrieval(dist=dist, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc), 3)
    full = evaluate_retrieval(qf, gf, qp, gp, qc, gc)
    res['t_ours_total'] = best(lambda: evaluate_retrieval(qf, gf, qp, gp, qc, gc), 1)
    res['ours_peak_extra_mb'] = peak_mb() - base
    cmc_v, map_v, minp_v = eval_argsort_vectorised(dist, qp, gp, qc, gc)
    tv, to = [], []
    for _ in range(3):                                     # interleaved, best of 3 each: robust to load bursts
        t = time.perf_counter(); eval_argsort_vectorised(dist, qp, gp, qc, gc); tv.append(time.perf_counter() - t)
        t = time.perf_counter(); evaluate_retrieval(dist=dist, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc); to.append(time.perf_counter() - t)
    res['t_ref_vec'], res['t_ours_metric'] = min(tv), min(min(to), res['t_ours_metric'])
    t = time.perf_counter(); cmc_r, map_r, minp_r = eval_market1501_torchreid(dist, qp, gp, qc, gc); res['t_ref_torchreid'] = time.perf_counter() - t
    res.update(mAP=ours['mAP'], mINP=ours['mINP'], rank1=ours['rank1'],
               max_abs_diff=float(max(abs(ours['mAP'] - map_r), abs(ours['mINP'] - minp_r), np.abs(ours['cmc'] - cmc_r).max(),
                                      abs(ours['mAP'] - map_v), np.abs(ours['cmc'] - cmc_v).max())),
               diff_features_vs_dist=abs(full['mAP'] - ours['mAP']))
    return res


def part_msmt(args):
    import torch
    from iaunet_fastai.metrics import evaluate_retrieval
    qf, gf, qp, gp, qc, gc = make_set(11659, 82161, 2048, 3060, 0, seed=1, structure=False)   # features random
    base = rss_mb(); t = time.perf_counter()
    r = evaluate_retrieval(qf, gf, qp, gp, qc, gc)
    return dict(t_total=time.perf_counter() - t, t_dist=r['time_dist'], t_rank=r['time_rank'],
                peak_extra_mb=peak_mb() - base, inputs_mb=(qf.nbytes + gf.nbytes) / 2**20, mAP=r['mAP'],
                valid=r['num_valid_queries'])


def part_rerank(args):
    from iaunet_fastai.metrics import re_ranking, evaluate_retrieval
    qf, gf, qp, gp, qc, gc = make_set(3368, 15913, 2048, 751, 2793)
    base = rss_mb(); t = time.perf_counter()
    d = re_ranking(qf, gf, k1=20, k2=6, lambda_=0.3)
    res = dict(t=time.perf_counter() - t, peak_extra_mb=peak_mb() - base, out_mb=d.nbytes / 2**20)
    r0, r1 = evaluate_retrieval(qf, gf, qp, gp, qc, gc), evaluate_retrieval(dist=d, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
    res.update(mAP_before=r0['mAP'], mAP_after=r1['mAP'], rank1_before=r0['rank1'], rank1_after=r1['rank1'])
    return res


def run_part(name):
    "Run one part in a fresh subprocess, return its JSON result."
    p = subprocess.run([sys.executable, __file__, '--part', name], capture_output=True, text=True, cwd=ROOT)
    if p.returncode: raise RuntimeError(f"part {name} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--part', choices=['market', 'msmt', 'rerank'])
    ap.add_argument('--skip-msmt', action='store_true'); ap.add_argument('--skip-rerank', action='store_true')
    args = ap.parse_args()
    if args.part:
        import torch
        print(json.dumps(dict(market=part_market, msmt=part_msmt, rerank=part_rerank)[args.part](args))); return
    import torch
    load0 = os.getloadavg()
    m = run_part('market'); print('market', m, flush=True)
    s = None if args.skip_msmt else run_part('msmt'); print('msmt', s, flush=True)
    rr = None if args.skip_rerank else run_part('rerank'); print('rerank', rr, flush=True)
    load1 = os.getloadavg()
    cmd = ' '.join(['.venv/bin/python bench/bench_metrics.py'] + sys.argv[1:])
    L = ['## Retrieval evaluation and re-ranking (`metrics`)', '',
         f'Command: `{cmd}`  ', f"Machine: 2-core CPU, no GPU ({platform.processor() or platform.machine()}), "
         f"torch {torch.__version__} with {torch.get_num_threads()} threads; date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.  ",
         f'Load average before/after: {load0[0]:.1f} / {load1[0]:.1f} (the machine was shared with other jobs: '
         'absolute times are pessimistic, ratios measured in the same process are more reliable).', '',
         '### Market-1501 size: 3,368 queries × 15,913 gallery, dim 2048, cosine', '',
         '| implementation | time (s) | speed-up vs torchreid |', '|---|---:|---:|',
         f"| distance matrix (torch matmul, shared by all rows below) | {m['t_dist']:.2f} | |",
         f"| torchreid `eval_market1501` (full argsort, Q×G int matches, python AP loop) | {m['t_ref_torchreid']:.2f} | 1× |",
         f"| full argsort, vectorised per-query AP | {m['t_ref_vec']:.2f} | {m['t_ref_torchreid'] / m['t_ref_vec']:.1f}× |",
         f"| **`evaluate_retrieval(dist=...)`** (metric part) | **{m['t_ours_metric']:.2f}** | **{m['t_ref_torchreid'] / m['t_ours_metric']:.0f}×** "
         f"({m['t_ref_vec'] / m['t_ours_metric']:.0f}× vs vectorised) |",
         f"| `evaluate_retrieval(qf, gf, ...)` (distances in chunks + metric) | {m['t_ours_total']:.2f} | |", '',
         'Ours and the vectorised reference: best of 3 interleaved runs; `evaluate_retrieval(qf, gf)` and torchreid: one run each.', '',
         f"Results identical: max |difference| of CMC / mAP / mINP vs both references = {m['max_abs_diff']:.1e} "
         f"(mAP {100 * m['mAP']:.2f}%, mINP {100 * m['mINP']:.2f}%, rank-1 {100 * m['rank1']:.2f}%); features path vs "
         f"dist path mAP difference {m['diff_features_vs_dist']:.1e}. Peak extra memory of our runs: {m['ours_peak_extra_mb']:.0f} MB "
         '(includes the 204 MB float32 distance matrix made for the reference comparison).', '']
    if s: L += ['### MSMT17 size: 11,659 queries × 82,161 gallery, dim 2048, random features, cosine', '',
                '| | value |', '|---|---:|',
                f"| total time | {s['t_total']:.1f} s |", f"| of which distance blocks (matmul, 3.9 TFLOP) | {s['t_dist']:.1f} s |",
                f"| of which ranking / metrics | {s['t_rank']:.1f} s |",
                f"| peak extra memory (ru_maxrss − RSS with inputs loaded, subprocess) | {s['peak_extra_mb']:.0f} MB |",
                f"| input features (not counted above) | {s['inputs_mb']:.0f} MB |", '',
                f"(mAP {100 * s['mAP']:.3f}% on random features, {s['valid']} valid queries.) The full-argsort reference "
                'is not run here: its argsort indices alone would be 11,659 × 82,161 int64 = 7.7 GB. '
                'The memory target (< 2 GB extra) is met; the 15 s time target is not met on this 2-core CPU: the '
                'cosine distances alone are a 3.9 TFLOP matrix product, and the ranking part is a few passes over '
                '958 M distances (about 18× the Market work), both slowed further by the shared machine.', '']
    if rr: L += ['### k-reciprocal re-ranking at Market size (k1 = 20, k2 = 6, λ = 0.3)', '',
                 '| | value |', '|---|---:|', f"| time | {rr['t']:.1f} s |",
                 f"| peak extra memory (subprocess) | {rr['peak_extra_mb']:.0f} MB |",
                 f"| of which the returned Q×G float32 distance | {rr['out_mb']:.0f} MB |",
                 f"| mAP / rank-1 before → after | {100 * rr['mAP_before']:.1f}% / {100 * rr['rank1_before']:.1f}% → "
                 f"{100 * rr['mAP_after']:.1f}% / {100 * rr['rank1_after']:.1f}% |", '',
                 'A dense implementation (torchreid `re_ranking`) holds N×N float32 distances, an N×N argsort (int64, then '
                 'int32), V and V_qe (N = 19,281: ~1.5 GB each, ~7 GB peak); ours keeps k-NN lists, sparse V and chunked '
                 'Jaccard distances.', '']
    L += ['Interpretation: the evaluation never sorts a row nor builds a Q×G index/match array; it counts, for each '
          'true match, the gallery items closer than it (binned histogram + exact refinement) in query chunks, so '
          'time is a few vectorised passes over the distances and memory is bounded by the chunk.']
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text('\n'.join(L) + '\n'); print(f'wrote {OUT}')


if __name__ == '__main__': main()
