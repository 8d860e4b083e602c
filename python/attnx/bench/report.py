"""Reporting: ratios against attnx, fractions of the measured ceilings, the table, JSON and the plot."""
from __future__ import annotations

import json
import math
import os
from typing import Optional

LEGEND = ("attnx vs: peer time / attnx time in the same run (> 1: attnx is faster); kernel: what attnx ran "
          "(native kernel or the reference fallback); %ceil: TFLOP/s of the bf16 matmul ceiling, or for "
          "bandwidth rows (mla, unpad_pad) GB/s of the device-copy ceiling, when `ceilings` ran in the same run; "
          "rel err: ||out - ref|| / ||ref|| in float64 against attnx.reference on the check subset; "
          "*_bwd families: the backward alone is timed (the forward ran once, untimed), TFLOP/s count 2.5x "
          "the forward's FLOPs, rel err is the largest of dq's, dk's and dv's")


def finalize(rows: list, ceilings: dict) -> list:
    """Fill attnx_speedup (per case, against its attnx row) and frac_ceiling."""
    by_case = {}
    for r in rows:
        by_case.setdefault((r["family"], r["case"]), []).append(r)
    for group in by_case.values():
        base = next((r for r in group if r["kind"] == "attnx" and r.get("ms")), None)
        for r in group:
            if base is not None and r.get("ms") and r["kind"] != "ceiling":
                r["attnx_speedup"] = r["ms"] / base["ms"]
    for r in rows:
        if r["kind"] == "ceiling" or r.get("status") != "ok":
            continue
        if r.get("primary") == "bytes" and r.get("gbps") and ceilings.get("copy_gbps"):
            r["frac_ceiling"] = r["gbps"] / ceilings["copy_gbps"]
            if ceilings.get("read_gbps"):
                r["frac_read_ceiling"] = r["gbps"] / ceilings["read_gbps"]
        elif r.get("tflops") and ceilings.get("matmul_tflops"):
            r["frac_ceiling"] = r["tflops"] / ceilings["matmul_tflops"]
    return rows


def failures(rows: list) -> list:
    """attnx rows whose check failed (NaN, error above tolerance) or that raised."""
    return [r for r in rows if r["kind"] == "attnx" and (r.get("check") == "FAIL" or r.get("status") == "error")]


def peer_mismatches(rows: list) -> list:
    return [r for r in rows if r["kind"] == "peer" and r.get("check") == "FAIL"]


def _ms(x: Optional[float]) -> str:
    if x is None:
        return ""
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    if x >= 0.1:
        return f"{x:.3f}"
    return f"{x:.4f}"


def _num(x: Optional[float], small: int = 2) -> str:
    if x is None:
        return ""
    return f"{x:.0f}" if x >= 100 else (f"{x:.1f}" if x >= 10 else f"{x:.{small}f}")


def _err(r: dict) -> str:
    e = r.get("rel_err")
    if e is None:
        return ""
    if isinstance(e, float) and math.isnan(e):
        return "NaN"
    return f"{e:.1e}"


def _kernel(r: dict) -> str:
    if r["kind"] == "attnx":
        return r.get("kernel") or ""
    return r["kind"] if r["kind"] != "ceiling" else "torch"


def format_table(rows: list, *, note_width: int = 100) -> str:
    head = ["family", "case", "impl", "kernel", "ms", "TFLOP/s", "GB/s", "%ceil", "attnx vs", "rel err", "check",
            "note"]
    body = []
    last_case = None
    for r in rows:
        key = (r["family"], r["case"])
        first = key != last_case
        last_case = key
        note = r.get("note") or ""
        if first and r.get("case_note"):
            note = r["case_note"] + ("; " + note if note else "")
        if r.get("check") == "FAIL" and r["kind"] == "peer":
            note = "differs from the reference; " + note
        if len(note) > note_width:
            note = note[: note_width - 3] + "..."
        speed = "" if (r["kind"] != "peer" or r.get("attnx_speedup") is None) else f"{r['attnx_speedup']:.2f}x"
        frac = "" if r.get("frac_ceiling") is None else f"{100 * r['frac_ceiling']:.0f}%"
        body.append([r["family"] if first else "", r["case"] if first else "", r["impl"], _kernel(r), _ms(r.get("ms")),
                     _num(r.get("tflops")), _num(r.get("gbps"), 1), frac, speed, _err(r),
                     r.get("check") or (r.get("status") if r.get("status") not in ("ok", None) else ""), note])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    right = {4, 5, 6, 7, 8, 9}

    def line(cells):
        out = []
        for i, (c, w) in enumerate(zip(cells, widths)):
            if i == len(cells) - 1:
                out.append(c)
            else:
                out.append(c.rjust(w) if i in right else c.ljust(w))
        return "  ".join(out).rstrip()

    lines = [line(head), line(["-" * w for w in widths[:-1]] + ["-" * 4])]
    prev_family = None
    for r, b in zip(rows, body):
        if prev_family is not None and r["family"] != prev_family:
            lines.append("")
        prev_family = r["family"]
        lines.append(line(b))
    return "\n".join(lines)


def _clean(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return str(x)


def write_json(path: str, rows: list, meta: dict, ceilings: dict):
    data = {"meta": meta, "ceilings": ceilings, "rows": rows}
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(_clean(data), f, indent=1)
        f.write("\n")


def write_plot(path: str, rows: list, title: str) -> Optional[str]:
    """A PNG of grouped horizontal bars (ms, log scale), one group per case. Returns why not, or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        return f"matplotlib is not importable ({type(e).__name__}: {e})"
    groups = []
    for r in rows:
        if r.get("ms") is None:
            continue
        label = f"{r['family']}: {r['case']}"
        if not groups or groups[-1][0] != label:
            groups.append((label, []))
        groups[-1][1].append(r)
    if not groups:
        return "no timed rows to plot"
    impls = []
    for _, g in groups:
        for r in g:
            if r["impl"] not in impls:
                impls.append(r["impl"])
    colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(impls)}
    n_bars = sum(len(g) for _, g in groups)
    fig, ax = plt.subplots(figsize=(12, max(3.0, 0.28 * n_bars + 0.4 * len(groups))))
    y, ticks, labels, seen = 0.0, [], [], set()
    for label, g in groups:
        start = y
        for r in g:
            ax.barh(y, r["ms"], color=colors[r["impl"]], label=None if r["impl"] in seen else r["impl"])
            seen.add(r["impl"])
            ax.text(r["ms"], y, f" {_ms(r['ms'])} ms", va="center", fontsize=7)
            y += 1
        ticks.append((start + y - 1) / 2)
        labels.append(label)
        y += 0.8
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms per call (median; lower is better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
