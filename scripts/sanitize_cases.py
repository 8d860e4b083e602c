"""Small cases of every native kernel, run under compute-sanitizer by scripts/gpu_check.sh."""
import torch

import attnx  # noqa: F401  (loads the native library)
from attnx import _native

torch.manual_seed(0)
ran = []
for name in sorted(_native.instances()):
    fam, tag, hd = name.split("_")[0:2], name.split("_")[2], int(name.split("hdim")[1])
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[tag]
    for causal in (False, True):
        for b, lq, lk, hq, hk in [(1, 1, 1, 1, 1), (2, 77, 131, 4, 2), (1, 130, 64, 2, 2)]:
            q = torch.randn(b, lq, hq, hd, device="cuda", dtype=dtype)
            k = torch.randn(b, lk, hk, hd, device="cuda", dtype=dtype)
            v = torch.randn(b, lk, hk, hd, device="cuda", dtype=dtype)
            torch.ops.attnx.attention(q, k, v, causal, None)
    ran.append(name)
torch.cuda.synchronize()
print("sanitize cases ran:", ", ".join(ran))
