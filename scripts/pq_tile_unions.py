"""How many keys does a tile of 128 queries read in the tiled sparse forward? (a CPU study)

The tiled kernels run each tile of 128 ordered queries over the union of their lists, so their
tensor work is proportional to the union's size. For PQ-selected lists over the bench's clustered
data, this prints the mean union per tile (in keys and as a fraction of Lk) for the query orders
attnx uses (the MinHash order of the lists, attnx.ops.sparse.similar_lists_order) and the
alternatives: position order, q sorted by its first one or two PQ codes under the keys' codebook.
    PYTHONPATH=python python scripts/pq_tile_unions.py [L]
"""
import sys

import torch

import attnx
from attnx.bench.cases.pq import clustered_qk
from attnx.ops.sparse import similar_lists_order
from attnx.reference import pq as ref


class Ctx:
    device, dtype = "cpu", torch.float32


L = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
H, D, M, C, TILE = 2, 64, 8, 256, 128
K_TOP = L // 32
q, k = clustered_qk(1, L, H, D, Ctx, seed=0)
cb = attnx.pq.fit(k, M, C, iters=5)
idx = ref.pq_topk(q, ref.pq_encode(k, cb.centroids), cb.centroids, K_TOP, False)


def mean_union(order):  # order [H, L]
    sizes = []
    for hh in range(H):
        lists = idx[0, :, hh].long()[order[hh].long()]
        for t in range(0, L, TILE):
            sizes.append(torch.unique(lists[t:t + TILE]).numel())
    return sum(sizes) / len(sizes)


qc = ref.pq_encode(q, cb.centroids)
orders = {
    "position": torch.arange(L).expand(H, L),
    "MinHash of the lists": similar_lists_order(idx, L)[0],
    "q's first two PQ codes": (qc[0, :, :, 0].long() * 256 + qc[0, :, :, 1].long()).t().argsort(dim=-1, stable=True),
    "q's first PQ code": (qc[0, :, :, 0].long().t()).argsort(dim=-1, stable=True),
}
print(f"L {L}, H {H}, D {D}, k {K_TOP}, tiles of {TILE} queries: mean keys in a tile's union")
for name, o in orders.items():
    u = mean_union(o)
    print(f"  {name:24s} {u:8.0f} keys ({u / L:.3f} of Lk; {TILE * K_TOP / u:.1f} listed pairs per union key)")
