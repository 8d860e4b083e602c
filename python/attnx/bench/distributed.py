"""`python -m attnx bench --distributed`, launched by torchrun on a machine with several GPUs.

    NCCL_NVLS_ENABLE=0 torchrun --nproc-per-node 2 -m attnx bench --distributed

Rows (rank 0 prints them; every time is the slowest rank's median, CUDA events after a barrier):
- context parallel, causal, forward+backward, 128k tokens, H=16, D=128, bf16: the ring, the
  ring with its transfers skipped (the schedule's compute alone: ring - this = exposed
  communication), the head-parallel all-to-all, and single-GPU attnx on the whole sequence
  (rank 0 alone, in the same run); speedup = single-GPU time / distributed time.
- the same for packed sequences (8 x 16k, varlen): the ring and the all-to-all against
  single-GPU varlen_attention.
- MLA decode, cache split by sequence position (256k tokens per sequence): per-step time on
  the group, the merge alone (the all-gather of the partials plus the lse merge), and
  single-GPU attnx on the whole cache (rank 0 alone).
Each distributed row is first checked against single-GPU attnx on the same inputs
(relative error; a check failure makes the command return 1).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

for _k, _v in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ[_k] = _v

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


def _parser():
    p = argparse.ArgumentParser(prog="attnx bench --distributed", description=__doc__.split("\n")[0])
    p.add_argument("--distributed", action="store_true")
    p.add_argument("--seqlen", type=int, default=131072, help="context-parallel total tokens (default 128k)")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--mla-cache", type=int, default=262144, help="MLA tokens per sequence (default 256k)")
    p.add_argument("--runs", type=int, default=5, help="timed runs of the context-parallel rows")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--skip-single", action="store_true", help="no single-GPU baseline rows")
    return p


def _median_ms(fn, runs: int, warmup: int, inner: int, barrier: bool) -> float:
    """Median ms per call over ``runs`` (each ``inner`` calls between CUDA events)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        if barrier:
            dist.barrier()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def _time(fn, runs: int, warmup: int = 1, inner: int = 1) -> float:
    """Every rank runs ``fn`` together: the slowest rank's median."""
    t = torch.tensor([_median_ms(fn, runs, warmup, inner, True)], device="cuda")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _time_rank0(fn, runs: int, warmup: int = 1, inner: int = 1) -> float:
    """The single-GPU baseline: rank 0 alone while the others wait."""
    t = torch.zeros(1, device="cuda")
    if dist.get_rank() == 0:
        t.fill_(_median_ms(fn, runs, warmup, inner, False))
    dist.broadcast(t, 0)
    return float(t)


def _graphed(fn):
    """``fn`` captured as a CUDA graph (collectives included); returns the replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _local_ms(fn, runs: int = 7, inner: int = 50) -> float:
    return _median_ms(fn, runs, 3, inner, False)


def step(fn, q, k, v, dout):
    """One forward + backward of ``fn(q, k, v)``; returns (out, dq)."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v)
    out.backward(dout)
    return out, q.grad


def _rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _cp_rows(args, rows):
    import attnx
    from .. import distributed as D
    world, rank = dist.get_world_size(), dist.get_rank()
    L, H, Dh = args.seqlen, args.heads, 128
    flops = 4 * L * L * H * Dh / 2 * 3.5  # causal fwd (1) + bwd (2.5)
    g = torch.Generator(device="cuda").manual_seed(0)
    full = [torch.randn(1, L, H, Dh, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4)]
    q, k, v, dout = full
    local = [D.shard_sequence(x, causal=True) for x in full]
    del full
    shape = f"B1 L{L // 1024}k H{H} D{Dh} causal, {world} GPUs"

    ring = lambda a, b, c: D.context_parallel_attention(a, b, c, causal=True)  # noqa: E731
    no_tx = lambda a, b, c: D.context_parallel_attention(a, b, c, causal=True, _transfer=False)  # noqa: E731
    heads = lambda a, b, c: D.head_parallel_attention(a, b, c, causal=True)  # noqa: E731
    single_ms = None
    # Checks first: the distributed output and dq against single-GPU attnx (rank 0 computes it).
    out_r, dq_r = step(ring, *local)
    out_h, dq_h = step(heads, *local) if H % world == 0 else (None, None)
    pairs = (out_r, dq_r) + ((out_h, dq_h) if out_h is not None else ())
    gathered = [D.gather_sequence(x, causal=True) for x in pairs]
    errs = {}
    if rank == 0 and not args.skip_single:
        out_s, dq_s = step(lambda a, b, c: attnx.attention(a, b, c, causal=True), q, k, v, dout)
        errs["ring"] = max(_rel(gathered[0], out_s), _rel(gathered[1], dq_s))
        if out_h is not None:
            errs["heads"] = max(_rel(gathered[2], out_s), _rel(gathered[3], dq_s))
        del out_s, dq_s
    del gathered, out_r, dq_r, out_h, dq_h
    torch.cuda.empty_cache()
    if not args.skip_single:
        single_ms = _time_rank0(lambda: step(lambda a, b, c: attnx.attention(a, b, c, causal=True), q, k, v, dout),
                                args.runs)
    del q, k, v, dout
    torch.cuda.empty_cache()
    ring_ms = _time(lambda: step(ring, *local), args.runs)
    compute_ms = _time(lambda: step(no_tx, *local), args.runs)
    heads_ms = _time(lambda: step(heads, *local), args.runs) if H % world == 0 else None
    err_t = torch.tensor([errs.get("ring", 0.0), errs.get("heads", 0.0)], device="cuda")
    dist.broadcast(err_t, 0)

    def row(impl, ms, note="", err=None):
        r = {"family": "context_parallel", "case": shape, "impl": impl, "ms": ms, "tflops": flops / ms / 1e9,
             "speedup_vs_1gpu": (single_ms / ms) if single_ms and ms else None, "note": note}
        if err is not None:
            r["rel_err_vs_1gpu"] = err
            r["check"] = "ok" if err < 2e-2 else "FAIL"
        rows.append(r)
    if single_ms:
        rows.append({"family": "context_parallel", "case": f"B1 L{L // 1024}k H{H} D{Dh} causal, 1 GPU",
                     "impl": "attnx.attention (1 GPU)", "ms": single_ms, "tflops": flops / single_ms / 1e9,
                     "speedup_vs_1gpu": 1.0, "note": "rank 0 alone"})
    row("ring (context_parallel_attention)", ring_ms,
        f"exposed communication {ring_ms - compute_ms:.2f} ms (ring minus its compute alone)",
        float(err_t[0]) if not args.skip_single else None)
    row("ring, transfers skipped (compute alone)", compute_ms, "timing only: wrong results by design")
    if heads_ms is not None:
        row("all-to-all (head_parallel_attention)", heads_ms, "", float(err_t[1]) if not args.skip_single else None)


def _cp_varlen_rows(args, rows):
    """Packed sequences: 8 x L/8 tokens, causal, ring against single-GPU varlen_attention."""
    import attnx
    from .. import distributed as D
    world, rank = dist.get_world_size(), dist.get_rank()
    n_seq, H, Dh = 8, args.heads, 128
    L = args.seqlen // n_seq * n_seq
    lengths = [L // n_seq] * n_seq
    flops = sum(4 * n * n * H * Dh / 2 * 3.5 for n in lengths)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(2)
    full = [torch.randn(L, H, Dh, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4)]
    local = [D.shard_varlen(x, cu, causal=True) for x in full]
    cu_l, mx_l = local[0][1], local[0][2]
    shape = f"{n_seq} x {L // n_seq // 1024}k packed, H{H} D{Dh} causal"
    ring = lambda a, b, c: D.context_parallel_varlen_attention(a, b, c, cu_l, mx_l, causal=True)  # noqa: E731
    single = lambda a, b, c: attnx.varlen_attention(a, b, c, cu, cu, L // n_seq, L // n_seq, causal=True)  # noqa: E731
    heads = lambda a, b, c: D.head_parallel_varlen_attention(a, b, c, cu_l, mx_l, causal=True)  # noqa: E731
    impls = [("ring (context_parallel_varlen_attention)", ring)]
    if H % world == 0:
        impls.append(("all-to-all (head_parallel_varlen_attention)", heads))
    got = []
    for _, fn in impls:
        out_d, dq_d = step(fn, *(x[0] for x in local))
        got.append([D.gather_varlen(x, cu, causal=True) for x in (out_d, dq_d)])
    err = torch.zeros(len(impls), device="cuda")
    if rank == 0 and not args.skip_single:
        out_s, dq_s = step(single, *full)
        for i, (o, dq) in enumerate(got):
            err[i] = max(_rel(o, out_s), _rel(dq, dq_s))
        del out_s, dq_s
    dist.broadcast(err, 0)
    del got
    single_ms = None if args.skip_single else _time_rank0(lambda: step(single, *full), args.runs)
    del full
    torch.cuda.empty_cache()
    if single_ms:
        rows.append({"family": "context_parallel", "case": shape + ", 1 GPU", "impl": "attnx.varlen_attention (1 GPU)",
                     "ms": single_ms, "tflops": flops / single_ms / 1e9, "speedup_vs_1gpu": 1.0})
    for i, (name, fn) in enumerate(impls):
        ms = _time(lambda: step(fn, *(x[0] for x in local)), args.runs)
        rows.append({"family": "context_parallel", "case": f"{shape}, {world} GPUs", "impl": name, "ms": ms,
                     "tflops": flops / ms / 1e9, "speedup_vs_1gpu": single_ms / ms if single_ms else None,
                     **({} if args.skip_single else {"rel_err_vs_1gpu": float(err[i]),
                                                     "check": "ok" if float(err[i]) < 2e-2 else "FAIL"})})


def _mla_rows(args, rows):
    import attnx
    from .. import distributed as D
    from ..distributed.mla import merge_partials
    world, rank = dist.get_world_size(), dist.get_rank()
    n, page = args.mla_cache, 64
    for b, hq in ((1, 128), (8, 16)):
        g = torch.Generator(device="cuda").manual_seed(1)
        q = torch.randn(b, 1, hq, 576, device="cuda", dtype=torch.bfloat16, generator=g)
        mine = n // world  # rank r holds tokens [r * n / W, (r + 1) * n / W) of every sequence
        pages = -(-mine // page)
        cache = torch.randn(b * pages, page, 1, 576, device="cuda", dtype=torch.bfloat16, generator=g)
        table = torch.arange(b * pages, device="cuda", dtype=torch.int32).view(b, pages)
        seqlens = torch.full((b,), mine, device="cuda", dtype=torch.int32)
        meta = D.mla_decode_metadata(seqlens, hq, 1, 1)
        call = lambda: D.mla_decode(q, cache, table, seqlens, metadata=meta)  # noqa: E731
        out_d, lse_d = call()
        packed = torch.cat([out_d.float(), lse_d.float().unsqueeze(-1)], -1)
        gathered = torch.empty((world * packed.shape[0], *packed.shape[1:]), device="cuda")

        def merge_only():
            dist.all_gather_into_tensor(gathered, packed)
            return merge_partials(gathered.view(world, *packed.shape), 512)
        step_ms = _time(call, 7, warmup=3, inner=50)
        merge_ms = _time(merge_only, 7, warmup=3, inner=50)
        local_ms = _time(lambda: attnx.mla_decode(q, cache, table, seqlens, metadata=meta.local), 7, warmup=3,
                         inner=50)
        graph_ms, graph_merge_ms, graph_note = None, None, ""
        try:  # decode steps run as CUDA graphs in serving engines: no Python between the kernels
            graph_ms = _time(_graphed(call), 7, warmup=3, inner=50)
            graph_merge_ms = _time(_graphed(merge_only), 7, warmup=3, inner=50)
        except Exception as e:  # noqa: BLE001
            graph_note = f"; CUDA graph capture failed: {type(e).__name__}: {str(e)[:120]}"
        # Single GPU: the whole cache, gathered onto rank 0 (the shards are rank-major per sequence).
        parts = [torch.empty_like(cache) for _ in range(world)]
        dist.all_gather(parts, cache)
        single_ms, err = None, None
        if rank == 0 and not args.skip_single:
            full = torch.stack([p.view(b, pages, page, 1, 576) for p in parts], 1).reshape(b * world * pages, page, 1,
                                                                                            576)
            ftable = torch.arange(b * world * pages, device="cuda", dtype=torch.int32).view(b, world * pages)
            fseq = torch.full((b,), mine * world, device="cuda", dtype=torch.int32)
            fmeta = attnx.mla_decode_metadata(fseq, hq, 1, 1)
            out_s, _ = attnx.mla_decode(q, full, ftable, fseq, metadata=fmeta)
            err = _rel(out_d, out_s)
            single_call = lambda: attnx.mla_decode(q, full, ftable, fseq, metadata=fmeta)  # noqa: E731
        del parts
        t = torch.zeros(3, device="cuda")
        if rank == 0 and not args.skip_single:
            t[0] = _local_ms(single_call)
            t[1] = err
            t[2] = _local_ms(_graphed(single_call))
            del full
        dist.broadcast(t, 0)
        single_ms, err, single_graph_ms = (float(t[0]), float(t[1]), float(t[2])) if not args.skip_single \
            else (None, None, None)
        case = f"B{b} Hq{hq} cache {n // 1024}k"
        cache_bytes = b * n * 576 * 2
        check = {"rel_err_vs_1gpu": err, "check": "ok" if err < 1e-2 else "FAIL"} if err is not None else {}
        if single_ms:
            rows.append({"family": "mla_split", "case": case + ", 1 GPU", "impl": "attnx.mla_decode (1 GPU)",
                         "ms": single_ms, "GBps": cache_bytes / single_ms / 1e6, "speedup_vs_1gpu": 1.0})
        rows.append({"family": "mla_split", "case": f"{case}, {world} GPUs", "impl": "distributed.mla_decode",
                     "ms": step_ms, "GBps": cache_bytes / step_ms / 1e6,
                     "speedup_vs_1gpu": single_ms / step_ms if single_ms else None,
                     "note": f"eager; merge (all-gather + lse merge) {merge_ms * 1000:.1f} us, local decode alone "
                             f"{local_ms * 1000:.1f} us{graph_note}", **check})
        if single_graph_ms:
            rows.append({"family": "mla_split", "case": case + ", 1 GPU", "impl": "attnx.mla_decode (1 GPU), graph",
                         "ms": single_graph_ms, "GBps": cache_bytes / single_graph_ms / 1e6, "speedup_vs_1gpu": 1.0})
        if graph_ms:
            rows.append({"family": "mla_split", "case": f"{case}, {world} GPUs", "impl": "distributed.mla_decode, graph",
                         "ms": graph_ms, "GBps": cache_bytes / graph_ms / 1e6,
                         "speedup_vs_1gpu": single_graph_ms / graph_ms if single_graph_ms else None,
                         "note": f"CUDA graph replay; merge alone {graph_merge_ms * 1000:.1f} us"})
        del cache, q
        torch.cuda.empty_cache()


def _table(rows) -> str:
    head = "| family | case | impl | ms | rate | vs 1 GPU | check | note |"
    lines = [head, "| --- | --- | --- | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        rate = f"{r['tflops']:.0f} TFLOP/s" if "tflops" in r else (f"{r['GBps']:.0f} GB/s" if "GBps" in r else "")
        sp = f"{r['speedup_vs_1gpu']:.2f}x" if r.get("speedup_vs_1gpu") else ""
        chk = f"{r['check']} ({r['rel_err_vs_1gpu']:.1e})" if "check" in r else ""
        lines.append(f"| {r['family']} | {r['case']} | {r['impl']} | {r['ms']:.3f} | {rate} | {sp} | {chk} | "
                     f"{r.get('note', '')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if "RANK" not in os.environ:
        print("attnx bench --distributed: launch it with torchrun, e.g. "
              "torchrun --nproc-per-node 2 -m attnx bench --distributed", file=sys.stderr)
        return 2
    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    rows = []
    try:
        _cp_rows(args, rows)
        _cp_varlen_rows(args, rows)
        _mla_rows(args, rows)
    finally:
        world = dist.get_world_size()
        if dist.get_rank() == 0:
            print(f"attnx bench --distributed: {world} x {torch.cuda.get_device_name()}, torch {torch.__version__}, "
                  f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")
            print(_table(rows))
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"world": world, "rows": rows}, f, indent=1)
        dist.destroy_process_group()
    return 1 if any(r.get("check") == "FAIL" for r in rows) else 0
