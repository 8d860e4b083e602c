"""How block-sparse would PQ-selected lists be once queries and keys are grouped? (a CPU study)

Reorders queries and keys (by their first 1-3 PQ codes, or by a coarse k-means cluster of the
whole head vector) and counts the (Q tile, KV tile) pairs holding at least one selected
(query, key) pair, against all pairs: what a block-sparse FMHA with an element mask would visit.
    PYTHONPATH=python python scripts/pq_tile_density.py
"""
import torch

import attnx
from attnx.bench.cases.pq import clustered_qk
from attnx.reference import pq as ref


class Ctx:
    device, dtype = "cpu", torch.float32


L, H, D, M, C = 4096, 2, 64, 8, 256
K_TOP = L // 32
q, k = clustered_qk(1, L, H, D, Ctx, seed=0)
cb = attnx.pq.fit(k, M, C, iters=5)
kc, qc = ref.pq_encode(k, cb.centroids), ref.pq_encode(q, cb.centroids)
idx = ref.pq_topk(q, kc, cb.centroids, K_TOP, False)


def code_key(codes, hh, n):
    v = torch.zeros(codes.shape[1], dtype=torch.long)
    for mm in range(n):
        v = v * 256 + codes[0, :, hh, mm].long()
    return v


def touched(hh, q_order, k_order, bm, bn):
    lists = idx[0, :, hh].long().reshape(-1)
    qpos = torch.empty(L, dtype=torch.long)
    qpos[q_order] = torch.arange(L)
    kpos = torch.empty(L, dtype=torch.long)
    kpos[k_order] = torch.arange(L)
    rows = torch.arange(L).repeat_interleave(K_TOP)
    pairs = torch.unique(qpos[rows] // bm * (L // bn) + kpos[lists] // bn)
    return pairs.numel() / ((L // bm) * (L // bn))


for hh in range(H):
    for n in (1, 2, 3):
        qo, ko = torch.argsort(code_key(qc, hh, n)), torch.argsort(code_key(kc, hh, n))
        print(f"head {hh}, by the first {n} PQ code(s): 64x64 tiles {touched(hh, qo, ko, 64, 64):.3f}, "
              f"128x128 {touched(hh, qo, ko, 128, 128):.3f} of the tile pairs")
for nc in (32, 64, 128):
    coarse = attnx.pq.fit(k, 1, nc, iters=8)
    kcc, qcc = ref.pq_encode(k, coarse.centroids), ref.pq_encode(q, coarse.centroids)
    for hh in range(H):
        qo = torch.argsort(qcc[0, :, hh, 0].long(), stable=True)
        ko = torch.argsort(kcc[0, :, hh, 0].long(), stable=True)
        print(f"head {hh}, by a {nc}-cluster k-means of the head vector: 64x64 tiles "
              f"{touched(hh, qo, ko, 64, 64):.3f}, 128x128 {touched(hh, qo, ko, 128, 128):.3f} of the tile pairs")
