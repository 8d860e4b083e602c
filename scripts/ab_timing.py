"""What the A/B scripts (fwd_ab.py, bwd_ab.py) share: the median of CUDA-event times of `fn`
after warm-up calls, in milliseconds, and a GNA block-sparse plan as the op takes it."""
import math

import torch

from attnx.bench.cases import gna_plan


def block_sparse_plan(spatial, kernel, stride, tile, device):
    """(index [1, 1, T, n], count [1, 1, T], tokens, block, attended pairs) of the GNA plan."""
    index_np, count_np, _ = gna_plan(spatial, kernel, stride, tile)
    tokens, block = math.prod(spatial), math.prod(tile)
    nt = index_np.shape[0]
    index = torch.from_numpy(index_np).to(device).view(1, 1, nt, -1)
    count = torch.from_numpy(count_np).to(device).view(1, 1, nt)
    return index, count, tokens, block, int(count_np.sum()) * block * block


def median_ms(fn, iters, warm):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]
