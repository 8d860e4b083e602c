"""Cases that run inside every rank of a small process group (tests/test_distributed.py).

Each case builds the full problem from a seed shared by all ranks, runs the distributed op on
this rank's shards, gathers and compares with the single-process reference. gloo/CPU cases
run the references per rank in float64; NCCL/GPU cases run the kernels in bf16.
"""
from __future__ import annotations

import json
import os
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

for _k, _v in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ[_k] = _v

import attnx  # noqa: E402
import attnx.distributed as D  # noqa: E402
from conftest import rel_err  # noqa: E402


class Env:
    def __init__(self, rank, world, device):
        self.rank, self.world, self.device = rank, world, device
        self.gpu = device.type == "cuda"
        self.dtype = torch.bfloat16 if self.gpu else torch.float64
        self.tol = 2e-2 if self.gpu else 1e-9
        self.head_dim = 128 if self.gpu else 16

    def randn(self, *shape, seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(*shape, generator=g, dtype=torch.float32).to(self.device, self.dtype)

    def ref_inputs(self, *xs):
        """The reference runs in float32 on the GPU (from the same bf16 values), float64 on CPU."""
        return [x.detach().to(torch.float32 if self.gpu else torch.float64).requires_grad_() for x in xs]

    def check(self, what, got, want, tol=None):
        e = rel_err(got, want)
        assert e <= (tol or self.tol), f"{what}: relative error {e:.3g} > {tol or self.tol:.3g} (rank {self.rank})"


def _loss(out, lse, g_out, g_lse):
    return (out.float() * g_out.float()).sum() + (lse.float() * g_lse.float()).sum()


def _dense(env, causal, fn=D.context_parallel_attention, heads=(4, 2), batch=2):
    w, hq, hk, d = env.world, heads[0], heads[1], env.head_dim
    per = 2 * w if causal else w
    length = per * (96 if env.gpu else 5)
    q, k, v = (env.randn(batch, length, h, d, seed=s) for s, h in ((1, hq), (2, hk), (3, hk)))
    g_out, g_lse = env.randn(batch, length, hq, d, seed=4), env.randn(batch, length, hq, seed=5)
    rq, rk, rv = env.ref_inputs(q, k, v)
    out, lse = attnx.reference.attention(rq, rk, rv, causal=causal, return_lse=True)
    _loss(out, lse, g_out, g_lse).backward()
    shard = lambda x: D.shard_sequence(x, causal=causal)  # noqa: E731
    lq, lk, lv = (shard(x).requires_grad_() for x in (q, k, v))
    o, l = fn(lq, lk, lv, causal=causal, return_lse=True)
    _loss(o, l, shard(g_out), shard(g_lse)).backward()
    gather = lambda x: D.gather_sequence(x, causal=causal)  # noqa: E731
    env.check("out", gather(o), out)
    env.check("lse", gather(l), lse, 1e-3 if env.gpu else None)
    for name, got, want in (("dq", lq.grad, rq.grad), ("dk", lk.grad, rk.grad), ("dv", lv.grad, rv.grad)):
        env.check(name, gather(got), want)


def _varlen(env, causal, fn=D.context_parallel_varlen_attention, heads=(4, 2)):
    w, (hq, hk), d = env.world, heads, env.head_dim
    per = 2 * w if causal else w
    unit = 64 if env.gpu else 2
    lengths = [per * unit * m for m in (3, 0, 1, 5)]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    total, mx = int(cu[-1]), max(lengths)
    q, k, v = (env.randn(total, h, d, seed=s) for s, h in ((11, hq), (12, hk), (13, hk)))
    g_out, g_lse = env.randn(total, hq, d, seed=14), env.randn(total, hq, seed=15)
    rq, rk, rv = env.ref_inputs(q, k, v)
    cu_d = cu.to(env.device)
    out, lse = attnx.reference.varlen_attention(rq, rk, rv, cu_d, cu_d, mx, mx, causal=causal, return_lse=True)
    _loss(out, lse, g_out, g_lse).backward()
    shard = lambda x: D.shard_varlen(x, cu_d, causal=causal)  # noqa: E731
    (lq, cu_l, mx_l), (lk, _, _), (lv, _, _) = (shard(x) for x in (q, k, v))
    lq, lk, lv = (x.requires_grad_() for x in (lq, lk, lv))
    o, l = fn(lq, lk, lv, cu_l, mx_l, causal=causal, return_lse=True)
    _loss(o, l, shard(g_out)[0], shard(g_lse)[0]).backward()
    gather = lambda x: D.gather_varlen(x, cu_d, causal=causal)  # noqa: E731
    env.check("out", gather(o), out)
    env.check("lse", gather(l), lse, 1e-3 if env.gpu else None)
    for name, got, want in (("dq", lq.grad, rq.grad), ("dk", lk.grad, rk.grad), ("dv", lv.grad, rv.grad)):
        env.check(name, gather(got), want)


def _mla_split(env, causal, s_q, lengths, cuts):
    """Full caches of ``lengths``; rank r holds tokens [cuts[r] * n, cuts[r+1] * n) of each (fractions)."""
    b, hq, dqk, dv, page = len(lengths), 8, 576, 512, 64
    q = env.randn(b, s_q, hq, dqk, seed=21)
    toks = [env.randn(n, 1, dqk, seed=30 + i) for i, n in enumerate(lengths)]

    def paged(seqs):
        pages = [max(1, -(-len(t) // page)) for t in seqs]
        cache = torch.zeros(sum(pages), page, 1, dqk, dtype=env.dtype, device=env.device)
        table = torch.zeros(len(seqs), max(pages), dtype=torch.int32, device=env.device)
        start = 0
        for i, t in enumerate(seqs):
            for p in range(pages[i]):
                chunk = t[p * page:(p + 1) * page]
                cache[start + p, :len(chunk)] = chunk
                table[i, p] = start + p
            start += pages[i]
        seqlens = torch.tensor([len(t) for t in seqs], dtype=torch.int32, device=env.device)
        return cache, table, seqlens

    want_out, want_lse = attnx.reference.mla_decode(q, *paged(toks), head_dim_v=dv, causal=causal)
    r = env.rank
    mine = [t[int(cuts[r] * len(t)):int(cuts[r + 1] * len(t))] if r + 1 < env.world else t[int(cuts[r] * len(t)):]
            for t in toks]
    cache, table, seqlens = paged(mine)
    meta = D.mla_decode_metadata(seqlens, hq, 1, s_q, head_dim_v=dv)
    out, lse = D.mla_decode(q, cache, table, seqlens, head_dim_v=dv, causal=causal, metadata=meta)
    env.check("out", out, want_out)
    env.check("lse", lse, want_lse, 1e-3 if env.gpu else None)
    out2, _ = D.mla_decode(q, cache, table, seqlens, head_dim_v=dv, causal=causal)  # no metadata: checks itself
    env.check("out (no metadata)", out2, want_out)


def _expect_value_error(fn, *needles):
    try:
        fn()
    except ValueError as e:
        msg = str(e)
        assert all(n in msg for n in needles), f"error lacks {needles}: {msg}"
        return
    raise AssertionError(f"no ValueError (wanted one naming {needles})")


def case_dense(env):
    _dense(env, False)


def case_dense_causal(env):
    _dense(env, True)


def case_dense_mqa_one_batch(env):
    _dense(env, True, heads=(3, 1), batch=1)


def case_varlen(env):
    _varlen(env, False)


def case_varlen_causal(env):
    _varlen(env, True)


def case_head_parallel_varlen(env):
    _varlen(env, False, fn=D.head_parallel_varlen_attention, heads=(2 * env.world, env.world))


def case_head_parallel_varlen_causal(env):
    _varlen(env, True, fn=D.head_parallel_varlen_attention, heads=(2 * env.world, env.world))


def case_head_parallel(env):
    _dense(env, False, fn=D.head_parallel_attention, heads=(2 * env.world, env.world))


def case_head_parallel_causal(env):
    _dense(env, True, fn=D.head_parallel_attention, heads=(2 * env.world, env.world))


def case_no_transfer_is_not_the_answer(env):
    """The timing mode that skips the transfers must differ from the real ring (the ring is live).
    Keys independent of the queries: with k = q each row would attend almost only to itself."""
    w, d = env.world, env.head_dim
    q, k, v = (D.shard_sequence(env.randn(1, 2 * w * 4, 2, d, seed=s), causal=True) for s in (41, 42, 43))
    real = D.gather_sequence(D.context_parallel_attention(q, k, v, causal=True), causal=True)
    fake = D.gather_sequence(D.context_parallel_attention(q, k, v, causal=True, _transfer=False), causal=True)
    assert rel_err(fake, real) > 1e-3, "the ring without transfers gave the ring's answer: the test cannot tell"


def case_mla_split(env):
    cuts = [i / env.world for i in range(env.world)]
    _mla_split(env, False, 1, [300, 1, 0, 129], cuts)


def case_mla_split_uneven_causal(env):
    cuts = [0.0] + [0.7 + 0.1 * i for i in range(env.world - 1)]  # the last rank holds the tail
    _mla_split(env, True, 2, [300, 40, 129], cuts)


def case_bad_lengths_disagree(env):
    w, d = env.world, env.head_dim
    n = 4 if env.rank == 0 else 6
    x = env.randn(1, n, 2, d, seed=51)
    _expect_value_error(lambda: D.context_parallel_attention(x, x, x), "disagree", "q's length", "rank 0: 4")


def case_bad_varlen_cu_disagree(env):
    cu = torch.tensor([0, 4, 8] if env.rank == 0 else [0, 2, 8], dtype=torch.int32, device=env.device)
    x = env.randn(8, 2, env.head_dim, seed=56)
    for fn in (D.context_parallel_varlen_attention, D.head_parallel_varlen_attention):
        _expect_value_error(lambda: fn(x, x, x, cu, 6), "disagree", "cu_seqlens")


def case_bad_dtype_disagree(env):
    x = env.randn(1, 4, 2, env.head_dim, seed=52)
    if env.rank == 1:
        x = x.to(torch.float16 if env.gpu else torch.float32)
    _expect_value_error(lambda: D.context_parallel_attention(x, x, x), "disagree", "dtype")


def case_bad_indivisible(env):
    x = env.randn(1, 2 * env.world * 3 + 1, 2, env.head_dim, seed=53)
    _expect_value_error(lambda: D.shard_sequence(x, causal=True), "argument 'x'", f"multiple of {2 * env.world}")


def case_bad_heads_for_head_parallel(env):
    x = env.randn(1, 2 * env.world, env.world + 1, env.head_dim, seed=54)
    _expect_value_error(lambda: D.head_parallel_attention(x, x, x), "multiples of the group size")


def case_bad_mla_causal_tail(env):
    cuts = [i / env.world for i in range(env.world)]
    _expect_value_error(lambda: _mla_split(env, True, 3, [10, 20], [0.0] + [1.0] * (env.world - 1)),
                        "last rank", "at least 2")
    del cuts


def case_group_of_one(env):
    groups = [dist.new_group([r]) for r in range(env.world)]  # every rank creates every group
    mine = groups[env.rank]
    q = env.randn(2, 8, 2, env.head_dim, seed=55)
    env.check("group of one", D.context_parallel_attention(q, q, q, mine, causal=True),
              attnx.attention(q, q, q, causal=True), 1e-6 if env.gpu else 1e-12)


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


def worker(rank, world, backend, init_file, names, result_dir):
    device = torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120), **({"device_id": device} if backend == "nccl" else {}))
    torch.set_num_threads(1)
    env = Env(rank, world, device)
    results = {}
    for name in names:
        try:
            CASES[name](env)
            results[name] = "ok"
        except Exception as e:  # noqa: BLE001
            results[name] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
    with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()
