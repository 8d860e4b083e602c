"""Timing shared by the A/B scripts (fwd_ab.py, bwd_ab.py): the median of CUDA-event times of
`fn` after warm-up calls, in milliseconds."""
import torch


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
