"""`python -m attnx bench`: attnx's kernels beside PyTorch's, checked against attnx.reference.

Usage: ``python -m attnx bench [--family F ...] [--case TEXT ...] [--json PATH] [--plot PATH] [--quick] [--list]``

With a CUDA GPU every case first checks attnx's output against attnx.reference (relative error in
float64 on a subset of the problem: the last batch element, all heads or, where the reference is
slow, the last two), then times attnx and the peers with CUDA events (warm-up, median of many
runs, input sets rotating so that together they exceed L2). Without a GPU the references run on
small sizes on the CPU (timed with perf_counter). Returns 0, or 1 if an attnx check failed (NaN,
error above tolerance) or an attnx call raised. The backward families (dense_bwd, varlen_bwd) time
the backward alone: the forward runs once, untimed, and dq, dk, dv are checked against the
reference gradients.

Files: cases/ (one module per API family, one function per bench family: sizes, inputs, FLOP/byte
counts, which peers), peers.py (SDPA, varlen_attn, flex_attention with block masks, plain-PyTorch
MLA), timing.py, runner.py (check + time one case, never raising), report.py (table, JSON, plot).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys

import torch

from .cases import FAMILIES
from .common import TIMING, Ctx
from .report import LEGEND, failures, finalize, format_table, peer_mismatches, write_json, write_plot
from .runner import run_case

NO_GPU_NOTICE = "no CUDA GPU found: running the references on small sizes on the CPU"

__all__ = ["main", "FAMILIES", "NO_GPU_NOTICE"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnx bench", description="attnx kernels beside PyTorch's peers, "
                                "checked against attnx.reference")
    p.add_argument("--family", action="extend", nargs="+", default=None, metavar="F",
                   help=f"families to run (default: all): {', '.join(FAMILIES)}")
    p.add_argument("--json", metavar="PATH", help="write all rows and metadata as JSON (rewritten after every "
                   "case with meta.complete false, so a run stopped early keeps its finished cases)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    p.add_argument("--case", action="extend", nargs="+", default=None, metavar="TEXT",
                   help="run only the cases whose name contains one of these strings (see --list)")
    p.add_argument("--peer", action="extend", nargs="+", default=None, metavar="TEXT",
                   help="time only the peers whose name contains one of these strings (attnx always runs; "
                   "`--peer none`: no peers), e.g. to get attnx's and the dense row of a case whose other "
                   "peers take minutes")
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer runs")
    p.add_argument("--list", action="store_true", help="print the families and their cases, run nothing")
    p.add_argument("--max-ref-seconds", type=float, default=20.0, metavar="S",
                   help="skip timing attnx where it falls back to a reference estimated slower than this "
                   "per call, and skip checks whose reference would take longer (default 20)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.add_argument("--distributed", action="store_true", help="multi-GPU rows (context parallel, split MLA "
                   "decode); launch with torchrun, see attnx.bench.distributed")
    return p


def _make_ctx(args) -> Ctx:
    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.device("cuda", torch.cuda.current_device())
        mode = "quick" if args.quick else "full"
        dtype = torch.bfloat16
    else:
        device = torch.device("cpu")
        mode = "cpu-quick" if args.quick else "cpu"
        dtype = torch.float32
    ctx = Ctx(device=device, mode=mode, dtype=dtype, timing=TIMING[mode], max_ref_seconds=args.max_ref_seconds,
              progress=not args.no_progress, peers=None if args.peer is None else tuple(args.peer))
    if cuda:
        try:
            ctx.l2_bytes = int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)) or ctx.l2_bytes
        except Exception:  # noqa: BLE001
            pass
    try:
        import attnx
        ctx.info = attnx.info()
    except Exception as e:  # noqa: BLE001
        ctx.info = {"error": f"{type(e).__name__}: {e}"}
    return ctx


def _meta(ctx: Ctx, argv: list, families: list) -> dict:
    import attnx
    meta = {
        "command": "python -m attnx bench" + ("" if not argv else " " + " ".join(argv)),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "attnx_version": attnx.__version__,
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "device": ctx.device.type,
        "gpu": None,
        "mode": ctx.mode,
        "dtype": str(ctx.dtype).replace("torch.", ""),
        "families": families,
        "native_library": ctx.info.get("native_library"),
        "native_error": ctx.info.get("native_error"),
        "native_instances": ctx.info.get("native_instances"),
        "max_ref_seconds": ctx.max_ref_seconds,
        "peers": None if ctx.peers is None else list(ctx.peers),
    }
    if ctx.cuda:
        try:
            props = torch.cuda.get_device_properties(ctx.device)
            meta.update(gpu=torch.cuda.get_device_name(ctx.device),
                        capability=list(torch.cuda.get_device_capability(ctx.device)),
                        sm_count=props.multi_processor_count, gpu_memory_bytes=props.total_memory,
                        l2_bytes=ctx.l2_bytes)
        except Exception as e:  # noqa: BLE001
            meta["gpu_error"] = str(e)
    return meta


def _print_list(ctx: Ctx, families: list, wanted_cases=None):
    where = "GPU" if ctx.cuda else "CPU (references)"
    print(f"families and cases (mode {ctx.mode}, {where}):")
    for fam in families:
        fn, what = FAMILIES[fam]
        print(f"  {fam}: {what}")
        try:
            for case in fn(ctx):
                if not wanted_cases or any(t in case.name for t in wanted_cases):
                    print(f"    - {case.name}")
        except Exception as e:  # noqa: BLE001
            print(f"    (cases unavailable: {type(e).__name__}: {e})")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--distributed" in argv:  # under torchrun: attnx.bench.distributed
        from .distributed import main as distributed_main
        return distributed_main(argv)
    args = _parser().parse_args(argv)
    families = list(FAMILIES)
    if args.family:
        unknown = [f for f in args.family if f not in FAMILIES]
        if unknown:
            print(f"attnx bench: unknown family {', '.join(unknown)}; choose from {', '.join(FAMILIES)}",
                  file=sys.stderr)
            return 2
        wanted = set(args.family)
        families = [f for f in FAMILIES if f in wanted]  # ceilings first, so later rows can use them
    ctx = _make_ctx(args)
    if args.list:
        _print_list(ctx, families, args.case)
        return 0
    if not ctx.cuda:
        print(NO_GPU_NOTICE)

    rows = []

    def save_partial():
        # With --json, the rows so far after every case (meta "complete": false): a run stopped by a
        # time limit (the table is printed only at the end) still leaves the cases that finished.
        if args.json:
            try:
                write_json(args.json, finalize(rows, ctx.ceilings), {**_meta(ctx, argv, families), "complete": False},
                           ctx.ceilings)
            except Exception:  # noqa: BLE001  (the final write reports the error)
                pass

    for fam in families:
        fn, _ = FAMILIES[fam]
        try:
            cases = fn(ctx)
        except Exception as e:  # noqa: BLE001
            rows.append({"family": fam, "case": "(all)", "impl": "attnx", "kind": "attnx", "status": "error",
                         "device": ctx.device.type, "note": f"error building the cases: {type(e).__name__}: {e}"})
            continue
        for case in cases:
            if args.case and not any(t in case.name for t in args.case):
                continue
            try:
                rows.extend(run_case(ctx, case))
            except Exception as e:  # noqa: BLE001  (run_case catches per impl; this is a last resort)
                rows.append({"family": fam, "case": case.name, "impl": "attnx", "kind": "attnx", "status": "error",
                             "device": ctx.device.type, "note": f"error: {type(e).__name__}: {e}"})
            save_partial()
    finalize(rows, ctx.ceilings)

    print()
    where = (f"{ctx.device} ({torch.cuda.get_device_name(ctx.device)})" if ctx.cuda else "cpu")
    print(f"device {where}, dtype {str(ctx.dtype).replace('torch.', '')}, mode {ctx.mode}, torch {torch.__version__}")
    print(format_table(rows))
    print()
    print(LEGEND)
    if ctx.ceilings:
        print("ceilings: " + ", ".join(f"{k} {v:.1f}" for k, v in ctx.ceilings.items() if v is not None))
    failed = failures(rows)
    mism = peer_mismatches(rows)
    for r in mism:
        print(f"note: peer {r['impl']} differs from the reference on {r['family']} / {r['case']} "
              f"(rel err {r.get('rel_err')})")
    if failed:
        print(f"FAILED: {len(failed)} attnx row(s): " + "; ".join(
            f"{r['family']} / {r['case']}: {r.get('check') if r.get('check') == 'FAIL' else r.get('status')}"
            f" {r.get('note') or ''}".rstrip() for r in failed))
    else:
        print(f"all attnx checks passed ({sum(1 for r in rows if r['kind'] == 'attnx' and r.get('check') == 'ok')} "
              f"checked, {sum(1 for r in rows if r['kind'] == 'attnx' and r.get('check') != 'ok')} unchecked/skipped)")

    if args.json:
        try:
            write_json(args.json, rows, {**_meta(ctx, argv, families), "complete": True}, ctx.ceilings)
            print(f"wrote {args.json}")
        except Exception as e:  # noqa: BLE001
            print(f"could not write {args.json}: {type(e).__name__}: {e}")
    if args.plot:
        why = write_plot(args.plot, rows, f"attnx bench ({ctx.mode}, "
                         f"{torch.cuda.get_device_name(ctx.device) if ctx.cuda else 'cpu'})")
        print(f"wrote {args.plot}" if why is None else f"no plot: {why}")
    return 1 if failed else 0
