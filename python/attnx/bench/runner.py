"""Running one case: build input sets, compute the expected output, check and time every impl.

Nothing here raises: a failure in a case or an impl becomes a row with status "error" (and a
peer that cannot run here one with status "n/a").
"""
from __future__ import annotations

import gc
import math
import time

import torch

from .common import TOLERANCE, Case, Ctx, Impl, NotAvailable, fmt_seconds, rel_err
from .timing import first_call, num_sets, time_impl


def _short(e: BaseException, limit: int = 200) -> str:
    msg = str(e).strip().splitlines()
    msg = msg[0] if msg else ""
    msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _cleanup(ctx: Ctx):
    if ctx.cuda:
        gc.collect()
        try:
            torch.cuda.synchronize(ctx.device)
        except Exception:
            pass
        torch.cuda.empty_cache()


def _dtype_name(dt) -> str:
    return str(dt).replace("torch.", "")


def _base_row(ctx: Ctx, case: Case) -> dict:
    return {
        "family": case.family, "case": case.name, "device": ctx.device.type,
        "dtype": _dtype_name(case.dtype or ctx.dtype), "params": dict(case.params), "case_note": case.note,
        "primary": "bytes" if case.params.get("primary") == "bytes" else "flops",
    }


def _row(base: dict, impl: str, kind: str, **kw) -> dict:
    row = {**base, "impl": impl, "kind": kind, "kernel": None, "status": None, "ms": None, "ms_min": None,
           "ms_max": None, "runs": None, "first_call_s": None, "flops": None, "bytes": None, "tflops": None,
           "gbps": None, "frac_ceiling": None, "attnx_speedup": None, "rel_err": None, "check": None, "note": ""}
    row.update(kw)
    return row


def _wanted(ctx: Ctx, impl: Impl) -> bool:
    """attnx's own rows always run; peers as --peer says (ceilings are not peers)."""
    return impl.kind != "peer" or ctx.peers is None or any(t in impl.name for t in ctx.peers)


def run_case(ctx: Ctx, case: Case) -> list:
    base = _base_row(ctx, case)
    ctx.log(f"{case.family} / {case.name}")
    rows = []
    try:
        impls = [i for i in case.impls() if _wanted(ctx, i)]
    except Exception as e:  # noqa: BLE001
        return [_row(base, "attnx", "attnx", status="error", note=f"error building the case: {_short(e)}")]
    sets = []
    try:
        n = num_sets(ctx, case.set_bytes, case.max_sets)
        for i in range(n):
            torch.manual_seed(1000 + i)
            try:
                sets.append(case.make_set(i))
                ctx.sync()
            except Exception as e:  # noqa: BLE001
                if not sets:
                    raise
                ctx.log(f"  only {len(sets)} of {n} input sets ({_short(e)})")
                _cleanup(ctx)
                break
    except Exception as e:  # noqa: BLE001
        sets.clear()
        _cleanup(ctx)
        kind = impls[0].kind if impls else "attnx"
        name = impls[0].name if impls else "attnx"
        return [_row(base, name, kind, status="error", note=f"error making inputs: {_short(e)}")]
    base["params"]["input_sets"] = len(sets)

    expected, exp_note = None, ""
    if case.expected is not None:
        if case.check_ref_seconds > ctx.max_ref_seconds:
            exp_note = f"unchecked: reference too slow (~{fmt_seconds(case.check_ref_seconds)} on the check subset)"
        else:
            try:
                t0 = time.perf_counter()
                expected = case.expected(sets[0])
                ctx.sync()
                ctx.log(f"  reference on the check subset: {time.perf_counter() - t0:.2f} s")
            except Exception as e:  # noqa: BLE001
                exp_note = f"unchecked: reference failed: {_short(e)}"
                _cleanup(ctx)

    for impl in impls:
        row = _run_impl(ctx, case, impl, sets, expected, exp_note, base)
        rows.append(row)
        ms = f"{row['ms']:.4g} ms" if row["ms"] is not None else row["status"]
        extra = f" rel_err {row['rel_err']:.2e}" if isinstance(row["rel_err"], float) else ""
        if row.get("first_call_s") and row["first_call_s"] > 1:
            extra += f" (first call {row['first_call_s']:.1f} s)"
        ctx.log(f"  {impl.name}: {ms}{extra}{' ' + row['note'] if row['note'] else ''}")
    del sets, expected
    _cleanup(ctx)
    return rows


def _check(ctx: Ctx, case: Case, impl: Impl, out, expected, row: dict):
    """rel err of the output against the expected one; for several outputs (a backward's dq, dk, dv)
    the largest of their rel errs (NaN if any is NaN), each one kept in row["rel_err_parts"]."""
    got = impl.output(out) if impl.output is not None else out
    if case.subset is not None:
        got = case.subset(got)
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            raise ValueError(f"{type(got).__name__} of {len(got) if isinstance(got, (tuple, list)) else 1} "
                             f"outputs; the reference has {len(expected)}")
        parts = [rel_err(g, e) for g, e in zip(got, expected)]
        row["rel_err_parts"] = parts
        err = float("nan") if any(math.isnan(p) for p in parts) else max(parts)
    else:
        err = rel_err(got, expected)
    row["rel_err"] = err
    tol = TOLERANCE.get(case.dtype or ctx.dtype, 2e-2)
    row["tolerance"] = tol
    row["check"] = "ok" if (math.isfinite(err) and err <= tol) else "FAIL"


def _run_impl(ctx: Ctx, case: Case, impl: Impl, sets, expected, exp_note: str, base: dict) -> dict:
    row = _row(base, impl.name, impl.kind, note=impl.note)
    prepared = None
    try:
        if impl.setup is not None:
            impl.setup(sets[0])
        kernel = impl.kernel(sets[0]) if callable(impl.kernel) else impl.kernel
        row["kernel"] = kernel
        if impl.kind == "attnx" and kernel == "reference" and impl.ref_seconds > ctx.max_ref_seconds:
            row["status"] = "skipped"
            row["note"] = (f"reference (skipped: too slow, ~{fmt_seconds(impl.ref_seconds)} per call; "
                           f"--max-ref-seconds {ctx.max_ref_seconds:g})")
            return row
        if impl.ref_seconds > 1 and kernel == "reference":
            ctx.log(f"  {impl.name}: running the reference, ~{fmt_seconds(impl.ref_seconds)} per call (estimate)")
        prepared = [impl.prepare(s) for s in sets] if impl.prepare is not None else list(sets)
        out, first_s = first_call(ctx, impl.run, prepared[0])
        row["first_call_s"] = first_s
        if impl.kind != "ceiling" and not impl.check:
            row["check"] = "n/a"
        elif impl.kind != "ceiling":
            if expected is not None:
                try:
                    _check(ctx, case, impl, out, expected, row)
                except Exception as e:  # noqa: BLE001
                    row["check"] = "FAIL"
                    row["note"] = (row["note"] + "; " if row["note"] else "") + f"check error: {_short(e)}"
            else:
                row["check"] = "unchecked"
                if exp_note:
                    row["note"] = (row["note"] + "; " if row["note"] else "") + exp_note
        del out
        row.update(time_impl(ctx, impl.run, prepared, first_s))
        flops = impl.flops if impl.flops is not None else case.flops
        nbytes = impl.nbytes if impl.nbytes is not None else case.nbytes
        sec = row["ms"] * 1e-3
        if flops:
            row["flops"] = float(flops)
            row["tflops"] = flops / sec / 1e12 if sec > 0 else None
        if nbytes:
            row["bytes"] = float(nbytes)
            row["gbps"] = nbytes / sec / 1e9 if sec > 0 else None
        if impl.kind == "ceiling" and case.ceiling:
            ctx.ceilings[case.ceiling] = row["tflops"] if case.ceiling.endswith("tflops") else row["gbps"]
        row["status"] = "ok"
    except NotAvailable as e:
        row["status"] = "n/a"
        row["note"] = f"n/a: {e}"
    except Exception as e:  # noqa: BLE001  (a peer or a case must never crash the run)
        row["status"] = "error"
        row["note"] = (row["note"] + "; " if row["note"] else "") + f"error: {_short(e)}"
    finally:
        prepared = None
        _cleanup(ctx)
    return row
