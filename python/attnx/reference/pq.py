"""Reference product quantization (PQ) for SPT's sparse-attention selection.

SPT ("SPT: Fine-Tuning Transformer-based Language Models Efficiently with Sparsification") keeps,
per query, only the keys with large attention weights. To find them without computing every
q . k exactly it product-quantizes the keys: the head dim D is split into M subspaces of
ds = D / M dims, each with its own codebook of C centroids (per head), a key is stored as M
one-byte codes, and q . k is approximated by

    score(i, j) = sum_m  q_i[m-th subspace] . centroids[h, m, codes[j, h, m]]

which a query evaluates through a lookup table LUT[i, h, m, c] = q_i,m . centroids[h, m, c]
(M gathers and adds per key instead of a D-long dot product). The keys with the largest scores
are the query's selection.

Layouts: keys/queries ``[B, L, H, D]`` (fp16/bf16/fp32/fp64), centroids float32
``[H, M, C, D // M]``, codes uint8 ``[B, L, H, M]`` (so C <= 256), top-k indices int32
``[B, Lq, H, k]``.

Plain tensor functions (``pq_fit``, ``pq_update``, ``pq_encode``, ``pq_topk``; wrapped as the
torch ops ``torch.ops.attnx.pq_*``) and friendly wrappers (``Codebook``, ``fit``, ``update``,
``encode``, ``topk``). Everything is computed in float32 (float64 when an input is float64) and
in chunks: no temporary ever holds more than about ``CHUNK_ELEMENTS`` elements for large sizes
(never samples x C x H x M distances, never an Lq x Lk x H score matrix at once).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

__all__ = ["pq_fit", "pq_update", "pq_encode", "pq_topk", "check_encode", "check_topk", "ascending_keys", "Codebook",
           "fit", "update", "encode", "topk", "quantization_error"]

# Bound on the elements of one temporary (distances or scores): 64M (256 MB in fp32).
CHUNK_ELEMENTS = 1 << 26
# k-means++ seeding runs on a random pool of at most max(INIT_POOL, 8 * C) samples.
INIT_POOL = 2048

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------
def _fail(arg: str, given, allowed: str):
    raise ValueError(f"attnx.pq: argument '{arg}': got {given}; allowed: {allowed}")


def _int(arg: str, value, lo=None, hi=None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(arg, repr(value), "an int")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"an int in [{lo}, {hi}]" if hi is not None else f"an int >= {lo}"
        _fail(arg, value, rng)
    return value


def _float_tensor(arg: str, x, ndim: int = 4, what: str = "[B, L, H, D]"):
    if not isinstance(x, torch.Tensor):
        _fail(arg, type(x).__name__, f"a torch.Tensor {what}")
    if x.dim() != ndim:
        _fail(arg, f"a tensor of rank {x.dim()} (shape {tuple(x.shape)})", f"rank {ndim}: {what}")
    if x.dtype not in _FLOAT_DTYPES:
        _fail(arg, f"dtype {x.dtype}", ", ".join(str(d) for d in _FLOAT_DTYPES))
    return x


def _centroids(arg: str, c):
    _float_tensor(arg, c, 4, "[H, M, C, D // M] (float32)")
    h, m, nc, ds = c.shape
    if h < 1 or m < 1 or ds < 1 or not 1 <= nc <= 256:
        _fail(arg, f"shape {tuple(c.shape)}", "[H, M, C, D // M] with H, M, D // M >= 1 and 1 <= C <= 256")
    return c


def _same_device(**named):
    items = list(named.items())
    d0 = items[0][1].device
    for name, t in items[1:]:
        if t.device != d0:
            _fail(name, f"device {t.device}", f"the device of '{items[0][0]}' ({d0})")


def _x_matches(arg: str, x, centroids, carg: str = "centroids"):
    _float_tensor(arg, x)
    h, m, _, ds = centroids.shape
    if x.shape[2] != h:
        _fail(arg, f"{x.shape[2]} heads (shape {tuple(x.shape)})", f"the {h} heads of '{carg}'")
    if x.shape[3] != m * ds:
        _fail(arg, f"head dim {x.shape[3]} (shape {tuple(x.shape)})",
              f"num_subspaces * subspace dim of '{carg}' = {m} * {ds} = {m * ds}")
    _same_device(**{arg: x, carg: centroids})


def _cdt(*ts) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _groups(x: torch.Tensor, rows: slice, m: int, cdt) -> torch.Tensor:
    """Sub-vectors of samples ``rows`` of x viewed as [N, H, D]: [H * M, n, ds] in cdt."""
    xs = x[rows]
    n, h, d = xs.shape
    return xs.to(cdt).reshape(n, h * m, d // m).transpose(0, 1)


def _sample_chunk(n_samples: int, groups: int, c: int) -> int:
    return max(1, min(n_samples, CHUNK_ELEMENTS // max(1, groups * c)))


def _nearest(xg: torch.Tensor, cent: torch.Tensor, cnorm: torch.Tensor) -> torch.Tensor:
    """argmin_c ||x - c||^2 for xg [G, n, ds], cent [G, C, ds] -> [G, n] (int64)."""
    # ||x||^2 is the same for every centroid: minimise ||c||^2 - 2 x.c
    dist = torch.baddbmm(cnorm.unsqueeze(1), xg, cent.transpose(1, 2), alpha=-2.0)
    return dist.argmin(dim=-1)


def _no_autocast(fn):
    """PQ runs in float32 (float64) whatever autocast region it is called from: under autocast the
    einsum/baddbmm calls would drop to bf16 and no longer match the float32 buffers they fill."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)
    return run


# ----------------------------------------------------------------------------------------------
# k-means
# ----------------------------------------------------------------------------------------------
def _init_kmeanspp(x: torch.Tensor, m: int, c: int, seed: int, cdt) -> torch.Tensor:
    """Greedy k-means++ seeding per (head, subspace) on a random pool of samples (each step draws
    2 + ln(C) candidates with probability proportional to D^2 and keeps the one that lowers the
    potential most).

    x is [N, H, D]. All random draws come from one CPU torch.Generator(seed), so the result is
    deterministic and the same on every device (up to floating-point ties). With fewer distinct
    samples than C, the remaining centroids repeat samples (drawn uniformly)."""
    n = x.shape[0]
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    pool = min(n, max(INIT_POOL, 8 * c))
    if pool < n:
        idx = torch.randperm(n, generator=g)[:pool].to(x.device)
        xp = x.index_select(0, idx)
    else:
        xp = x
    xg = _groups(xp, slice(None), m, cdt).contiguous()  # [G, P, ds]
    groups, p, ds = xg.shape
    trials = 2 + int(math.log(c))  # greedy k-means++: best of a few D^2 draws per step
    u0 = torch.rand(groups, generator=g, dtype=torch.float64).to(x.device)
    u = torch.rand(groups, max(c - 1, 0), trials, generator=g, dtype=torch.float64).to(x.device)
    cent = xg.new_empty(groups, c, ds)
    gi = torch.arange(groups, device=x.device)
    xn = (xg * xg).sum(-1).unsqueeze(-1)  # [G, P, 1]

    def sqdist(cands):  # ||x - c||^2 for cands [G, T, ds] -> [G, P, T]
        d = torch.baddbmm(xn, xg, cands.transpose(1, 2), alpha=-2.0)
        return (d + (cands * cands).sum(-1).unsqueeze(1)).clamp_(min=0)

    first = (u0 * p).long().clamp_(max=p - 1)
    cent[:, 0] = xg[gi, first]
    mind = sqdist(cent[:, :1]).squeeze(-1)  # [G, P]: squared distance to the nearest chosen centroid
    for j in range(1, c):
        cum = torch.cumsum(mind.to(torch.float64), dim=1)
        total = cum[:, -1:]
        uj = u[:, j - 1]  # [G, T]
        pick = torch.searchsorted(cum, uj * total, right=True).clamp_(max=p - 1)
        uniform = (uj * p).long().clamp_(max=p - 1)
        pick = torch.where(total > 0, pick, uniform)  # all remaining points coincide with centroids
        cands = xg[gi.unsqueeze(1), pick]  # [G, T, ds]
        dc = torch.minimum(mind.unsqueeze(-1), sqdist(cands))  # [G, P, T]
        best = dc.sum(1).argmin(dim=1)  # the candidate that lowers the potential most
        cent[:, j] = cands[gi, best]
        mind = dc[gi, :, best]
    return cent


def _lloyd(x: torch.Tensor, cent: torch.Tensor, iters: int) -> torch.Tensor:
    """``iters`` Lloyd iterations on x [N, H, D] from cent [G = H * M, C, ds] (compute dtype).
    Empty clusters keep their previous centroid."""
    n = x.shape[0]
    groups, c, ds = cent.shape
    m = groups // x.shape[1]
    step = _sample_chunk(n, groups, c)
    for _ in range(iters):
        sums = torch.zeros_like(cent)
        counts = torch.zeros(groups, c, dtype=cent.dtype, device=cent.device)
        cnorm = (cent * cent).sum(-1)
        for s in range(0, n, step):
            xg = _groups(x, slice(s, min(n, s + step)), m, cent.dtype)
            a = _nearest(xg, cent, cnorm)  # [G, n]
            sums.scatter_add_(1, a.unsqueeze(-1).expand(-1, -1, ds), xg)
            counts.scatter_add_(1, a, torch.ones_like(a, dtype=cent.dtype))
        nonempty = counts > 0
        new = sums / counts.clamp(min=1).unsqueeze(-1)
        cent = torch.where(nonempty.unsqueeze(-1), new, cent)
    return cent


@_no_autocast
def pq_fit(x: torch.Tensor, num_subspaces: int, num_centroids: int, iters: int, seed: int) -> torch.Tensor:
    """Fit PQ codebooks to keys x [B, L, H, D]: float32 centroids [H, M, C, D // M].

    For every head h and subspace m (M = num_subspaces, C = num_centroids), k-means over the
    B * L sub-vectors x[b, l, h, m * ds:(m + 1) * ds] (ds = D // M): greedy k-means++ seeding on a random
    pool of at most max(2048, 8 * C) samples (torch.Generator(seed) on the CPU: deterministic),
    then ``iters`` Lloyd iterations over all samples (squared L2; a cluster that becomes empty
    keeps its previous centroid). With fewer distinct samples than C some centroids repeat.
    All (h, m) pairs are processed together as a batch; distances are computed in chunks of
    samples. Requires D % M == 0, 1 <= C <= 256, iters >= 0, B * L >= 1.
    """
    _float_tensor("x", x)
    m = _int("num_subspaces", num_subspaces, 1)
    c = _int("num_centroids", num_centroids, 1, 256)
    iters = _int("iters", iters, 0)
    _int("seed", seed)
    b, l, h, d = x.shape
    if d % m != 0:
        _fail("num_subspaces", m, f"a divisor of the head dim D = {d} of 'x'")
    if b * l == 0 or h == 0 or d == 0:
        _fail("x", f"shape {tuple(x.shape)}", "at least one sample (B * L >= 1), H >= 1 and D >= 1")
    cdt = _cdt(x)
    xf = x.detach().reshape(b * l, h, d)
    cent = _init_kmeanspp(xf, m, c, seed, cdt)
    cent = _lloyd(xf, cent, iters)
    return cent.reshape(h, m, c, d // m).to(torch.float32).contiguous()


@_no_autocast
def pq_update(centroids: torch.Tensor, x: torch.Tensor, iters: int) -> torch.Tensor:
    """Refresh codebooks on new keys x [B, L, H, D]: ``iters`` Lloyd iterations starting from
    ``centroids`` [H, M, C, D // M] (the incremental update fine-tuning runs every few steps).
    Returns new float32 centroids; empty clusters keep their centroid; iters = 0 returns a copy."""
    _centroids("centroids", centroids)
    _x_matches("x", x, centroids)
    iters = _int("iters", iters, 0)
    h, m, c, ds = centroids.shape
    b, l = x.shape[:2]
    cdt = _cdt(x, centroids)
    cent = centroids.detach().to(cdt).reshape(h * m, c, ds)
    if b * l > 0:
        cent = _lloyd(x.detach().reshape(b * l, h, m * ds), cent, iters)
    return cent.reshape(h, m, c, ds).to(torch.float32).clone()


@_no_autocast
def pq_encode(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """PQ codes of x [B, L, H, D]: uint8 [B, L, H, M], codes[b, l, h, m] = argmin_c of
    ||x[b, l, h, m-th subspace] - centroids[h, m, c]||^2 (computed in float32, float64 when x
    is float64; chunked over samples)."""
    check_encode(x, centroids)
    h, m, c, ds = centroids.shape
    b, l = x.shape[:2]
    n = b * l
    cdt = _cdt(x)
    cent = centroids.detach().to(cdt).reshape(h * m, c, ds)
    cnorm = (cent * cent).sum(-1)
    xf = x.detach().reshape(n, h, m * ds)
    codes = torch.empty(n, h * m, dtype=torch.uint8, device=x.device)
    step = _sample_chunk(n, h * m, c)
    for s in range(0, n, step):
        sl = slice(s, min(n, s + step))
        codes[sl] = _nearest(_groups(xf, sl, m, cdt), cent, cnorm).t().to(torch.uint8)
    return codes.reshape(b, l, h, m)


def check_encode(x: torch.Tensor, centroids: torch.Tensor):
    """The argument checks of pq_encode."""
    _centroids("centroids", centroids)
    _x_matches("x", x, centroids)


def check_topk(q: torch.Tensor, codes: torch.Tensor, centroids: torch.Tensor, k: int, check_values: bool = True):
    """The argument checks of pq_topk (``check_values``: codes < C, one read of the codes and a sync)."""
    _centroids("centroids", centroids)
    _x_matches("q", q, centroids)
    if not isinstance(codes, torch.Tensor):
        _fail("codes", type(codes).__name__, "a uint8 torch.Tensor [B, Lk, H, M]")
    if codes.dim() != 4:
        _fail("codes", f"a tensor of rank {codes.dim()} (shape {tuple(codes.shape)})", "rank 4: [B, Lk, H, M]")
    if codes.dtype != torch.uint8:
        _fail("codes", f"dtype {codes.dtype}", "torch.uint8")
    h, m, c, ds = centroids.shape
    b = q.shape[0]
    lk = codes.shape[1]
    if codes.shape[0] != b or codes.shape[2] != h or codes.shape[3] != m:
        _fail("codes", f"shape {tuple(codes.shape)}", f"[B, Lk, H, M] = [{b}, Lk, {h}, {m}] (B of 'q', H and M of 'centroids')")
    _same_device(q=q, codes=codes)
    _int("k", k, 1)
    if k > lk:
        _fail("k", k, f"an int in [1, Lk] = [1, {lk}] (Lk: the number of keys in 'codes')")
    if check_values and codes.numel() > 0 and int(codes.max()) >= c:
        _fail("codes", f"a code {int(codes.max())}", f"codes < num_centroids = {c} of 'centroids'")


@_no_autocast
def pq_topk(q: torch.Tensor, codes: torch.Tensor, centroids: torch.Tensor, k: int, causal: bool,
            sorted: bool = True) -> torch.Tensor:
    """Approximate top-k keys per query by the PQ inner product: int32 [B, Lq, H, k].

    score(i, j) = sum_{m = 0..M-1} LUT[i, h, m, codes[b, j, h, m]] with LUT[i, h, m, c] =
    q[b, i, h, m-th subspace] . centroids[h, m, c] (summed in m order, float32 or float64 for
    float64 q). Row (b, i, h) lists the indices of the k highest-scoring allowed keys in
    descending score order (torch.topk; the order among equal scores is unspecified). With
    ``causal`` key j is allowed only if j <= i + Lk - Lq (bottom-right aligned); slots beyond the
    number of allowed keys are -1. ``sorted=False`` lists the same keys in ascending index order
    (-1 still at the end). Queries are processed in chunks so that no score block exceeds about
    CHUNK_ELEMENTS elements. Requires 1 <= k <= Lk.
    """
    check_topk(q, codes, centroids, k)
    h, m, c, ds = centroids.shape
    b, lq = q.shape[:2]
    lk = codes.shape[1]
    out = torch.full((b, lq, h, k), -1, dtype=torch.int32, device=q.device)
    if b * lq * h == 0:
        return out
    cdt = _cdt(q)
    cent = centroids.detach().to(cdt)  # [H, M, C, ds]
    idx = codes.long().permute(0, 2, 3, 1)  # [B, H, M, Lk]
    qc_rows = max(1, CHUNK_ELEMENTS // max(1, h * lk))
    for bi in range(b):
        cb = idx[bi]  # [H, M, Lk]
        for s in range(0, lq, qc_rows):
            e = min(lq, s + qc_rows)
            i = torch.arange(s, e, device=q.device)
            # keys that some query of this chunk may see: j < w
            w = min(lk, max(0, e - 1 + lk - lq + 1)) if causal else lk
            if w == 0:
                continue  # no query of the chunk sees a key: all slots stay -1
            kk = min(k, w)
            qs = q[bi, s:e].detach().to(cdt).reshape(e - s, h, m, ds)
            lut = torch.einsum("ihmd,hmcd->hmic", qs, cent).contiguous()  # [H, M, n, C]
            scores = torch.empty(h, e - s, w, dtype=cdt, device=q.device)
            buf = torch.empty(e - s, w, dtype=cdt, device=q.device)
            for hh in range(h):
                # scores[h, i, j] = sum_m LUT[h, m, i, codes[j, h, m]], summed in m order
                torch.index_select(lut[hh, 0], 1, cb[hh, 0, :w], out=scores[hh])
                for mm in range(1, m):
                    torch.index_select(lut[hh, mm], 1, cb[hh, mm, :w], out=buf)
                    scores[hh] += buf
            if causal:
                limit = i + lk - lq  # last allowed key of each query
                masked = torch.arange(w, device=q.device).unsqueeze(0) > limit.unsqueeze(1)  # [n, w]
                scores.masked_fill_(masked.unsqueeze(0), float("-inf"))
                n_allowed = (limit + 1).clamp(min=0, max=lk)
            else:
                n_allowed = torch.full_like(i, lk)
            top = torch.topk(scores, kk, dim=-1, largest=True, sorted=True).indices  # [H, n, kk]
            keep = torch.arange(kk, device=q.device).unsqueeze(0) < n_allowed.unsqueeze(1)  # [n, kk]
            top = torch.where(keep.unsqueeze(0), top, torch.full_like(top, -1))
            out[bi, s:e, :, :kk] = top.transpose(0, 1).to(torch.int32)
    return out if sorted else ascending_keys(out)


def ascending_keys(idx: torch.Tensor) -> torch.Tensor:
    """The key indices of each row of idx in ascending order, the -1 slots still at the end."""
    big = torch.iinfo(idx.dtype).max
    srt = torch.where(idx < 0, torch.full_like(idx, big), idx).sort(dim=-1).values
    return torch.where(srt == big, torch.full_like(srt, -1), srt)


# ----------------------------------------------------------------------------------------------
# friendly API
# ----------------------------------------------------------------------------------------------
@dataclass
class Codebook:
    """PQ codebooks: ``centroids`` float32 [H, M, C, D // M] (per head and subspace)."""

    centroids: torch.Tensor

    def __post_init__(self):
        _centroids("centroids", self.centroids)

    @property
    def num_heads(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def num_subspaces(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def num_centroids(self) -> int:
        return int(self.centroids.shape[2])

    @property
    def head_dim(self) -> int:
        return int(self.centroids.shape[1] * self.centroids.shape[3])

    def to(self, *args, **kwargs) -> "Codebook":
        return Codebook(self.centroids.to(*args, **kwargs))


def _codebook(arg: str, cb) -> torch.Tensor:
    if isinstance(cb, Codebook):
        return cb.centroids
    if isinstance(cb, torch.Tensor):
        return _centroids(arg, cb)
    _fail(arg, type(cb).__name__, "an attnx.pq.Codebook (or a centroids tensor [H, M, C, D // M])")


def fit(x: torch.Tensor, num_subspaces: int, num_centroids: int = 256, iters: int = 10, *, seed: int = 0) -> Codebook:
    """Fit a Codebook to keys x [B, L, H, D] (see ``pq_fit``)."""
    return Codebook(pq_fit(x, num_subspaces, num_centroids, iters, seed))


def update(codebook: Codebook, x: torch.Tensor, *, iters: int = 1) -> Codebook:
    """``iters`` Lloyd iterations on keys x from the current codebook (see ``pq_update``)."""
    return Codebook(pq_update(_codebook("codebook", codebook), x, iters))


def encode(x: torch.Tensor, codebook: Codebook) -> torch.Tensor:
    """uint8 codes [B, L, H, M] of x [B, L, H, D] (see ``pq_encode``)."""
    return pq_encode(x, _codebook("codebook", codebook))


def topk(q: torch.Tensor, k_codes: torch.Tensor, codebook: Codebook, k: int, *, causal: bool = False,
         sorted: bool = True) -> torch.Tensor:
    """int32 [B, Lq, H, k]: each query's k keys with the largest PQ inner product (see ``pq_topk``)."""
    return pq_topk(q, k_codes, _codebook("codebook", codebook), k, causal, sorted)


def quantization_error(x: torch.Tensor, codebook: Codebook) -> float:
    """Mean squared error per element between x and its PQ reconstruction (float64 result)."""
    cent = _codebook("codebook", codebook)
    codes = pq_encode(x, cent)
    h, m, c, ds = cent.shape
    b, l = x.shape[:2]
    dev = codes.device
    rec = cent.to(torch.float64)[torch.arange(h, device=dev).view(1, 1, h, 1), torch.arange(m, device=dev).view(1, 1, 1, m), codes.long()]
    rec = rec.reshape(b, l, h, m * ds)
    return float(((x.to(torch.float64) - rec) ** 2).mean()) if x.numel() else 0.0
