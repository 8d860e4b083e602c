"""Small cases of every native kernel, run under compute-sanitizer by scripts/gpu_check.sh."""
import torch

import attnx  # noqa: F401  (loads the native library)
from attnx import _native

torch.manual_seed(0)
ran = []


def cu(lengths):
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device="cuda")


for name in sorted(_native.instances()):
    tag, hd = name.split("_")[2], int(name.split("hdim")[1])
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[tag]
    for causal in (False, True):
        for b, lq, lk, hq, hk in [(1, 1, 1, 1, 1), (2, 77, 131, 4, 2), (1, 130, 64, 2, 2)]:
            q = torch.randn(b, lq, hq, hd, device="cuda", dtype=dtype)
            k = torch.randn(b, lk, hk, hd, device="cuda", dtype=dtype)
            v = torch.randn(b, lk, hk, hd, device="cuda", dtype=dtype)
            torch.ops.attnx.attention(q, k, v, causal, None)
        # packed: empty, 1-token, odd and multi-tile sequences; a window
        lens_q, lens_k = [0, 1, 77, 130], [3, 1, 0, 200]
        q = torch.randn(sum(lens_q), 4, hd, device="cuda", dtype=dtype)
        k = torch.randn(sum(lens_k), 2, hd, device="cuda", dtype=dtype)
        torch.ops.attnx.varlen_attention(q, k, k, cu(lens_q), cu(lens_k), 130, 200, causal, 50, -1, None)
    ran.append(name)
torch.cuda.synchronize()
print("sanitize cases ran:", ", ".join(ran))
