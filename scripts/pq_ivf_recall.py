"""Could the PQ selection score only a few coarse clusters of keys? (a CPU study, IVF-PQ style)

Keys of each head are assigned to a coarse k-means cluster; a query scores the cluster centres,
keeps its best `probes` clusters and takes its PQ top-k among their keys only. Prints the fraction
of keys scored and the recall of the exact top-k (by q . k) next to the full PQ selection's, on the
bench's clustered data (64 cluster centres per head plus noise), k = L / 16 as the issue's recall
criterion.
    PYTHONPATH=python python scripts/pq_ivf_recall.py [L]
"""
import sys

import torch

import attnx
from attnx.bench.cases.pq import clustered_qk
from attnx.reference import pq as ref


class Ctx:
    device, dtype = "cpu", torch.float32


L = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
H, D, M, C, K = 2, 64, 8, 256, L // 16
q, k = clustered_qk(1, L, H, D, Ctx, seed=0)
cb = attnx.pq.fit(k, M, C, iters=5)
codes = ref.pq_encode(k, cb.centroids)
decoded = torch.stack([torch.cat([cb.centroids[h, m][codes[0, :, h, m].long()] for m in range(M)], dim=-1)
                       for h in range(H)], 1)  # [L, H, D]


def recall(exact, sel):
    hit = sum((exact[i:i + 512].unsqueeze(-1) == sel[i:i + 512].unsqueeze(-2)).any(-1).sum().item()
              for i in range(0, L, 512))
    return hit / (L * K)


for h in range(H):
    qh, kh = q[0, :, h].float(), k[0, :, h].float()
    exact = (qh @ kh.T).topk(K, dim=-1).indices
    pq_scores = qh @ decoded[:, h].T
    print(f"L {L} head {h}: full PQ selection recall {recall(exact, pq_scores.topk(K, dim=-1).indices):.3f}")
    for nc in ((256,) if L > 8192 else (64, 256)):
        coarse = attnx.pq.fit(k[:, :, h:h + 1], 1, nc, iters=8, seed=1).centroids
        assign = ref.pq_encode(k[:, :, h:h + 1], coarse)[0, :, 0, 0].long()
        centre_scores = qh @ coarse[0, 0].T
        for probes in (nc // 16, nc // 8, nc // 4):
            probed = torch.zeros(L, nc, dtype=torch.bool)
            probed.scatter_(1, centre_scores.topk(probes, dim=-1).indices, True)
            mask = probed[:, assign]
            sel = pq_scores.masked_fill(~mask, float("-inf")).topk(K, dim=-1).indices
            print(f"  {nc} coarse clusters, {probes} probes: keys scored {mask.float().mean().item():.3f}, "
                  f"recall {recall(exact, sel):.3f}")
