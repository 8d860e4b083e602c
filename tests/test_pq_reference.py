"""attnx.reference.pq: product quantization for SPT's top-k selection, against brute force.

The expected values are computed here in float64 with plain loops / broadcasting from the
definitions (nearest centroid by squared L2; PQ score = sum over subspaces of q_m . centroid),
never with the code under test.
"""
from __future__ import annotations

import pytest
import torch

from attnx.reference import pq


def clustered(b, l, h, d, m, c, noise, seed, dtype=torch.float32):
    """Sub-vectors drawn from c well-separated centres per (head, subspace) plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    ds = d // m
    centres = torch.randn(h, m, c, ds, generator=g, dtype=torch.float64) * 1.5
    labels = torch.randint(0, c, (b, l, h, m), generator=g)
    x = centres[torch.arange(h).view(1, 1, h, 1), torch.arange(m).view(1, 1, 1, m), labels]
    x = x.reshape(b, l, h, d) + noise * torch.randn(b, l, h, d, generator=g, dtype=torch.float64)
    return x.to(dtype), centres


def reconstruct(codes, centroids):
    """Decoded keys [B, L, H, D] (float64) from codes [B, L, H, M] and centroids [H, M, C, ds]."""
    b, l, h, m = codes.shape
    out = torch.empty(b, l, h, m, centroids.shape[-1], dtype=torch.float64)
    for hh in range(h):
        for mm in range(m):
            out[:, :, hh, mm] = centroids[hh, mm].double()[codes[:, :, hh, mm].long()]
    return out.reshape(b, l, h, -1)


def brute_nearest(x, centroids):
    """Per (b, l, h, m): squared distances to every centroid, float64 [B, L, H, M, C]."""
    b, l, h, d = x.shape
    hh, m, c, ds = centroids.shape
    xs = x.double().reshape(b, l, h, m, 1, ds)
    cs = centroids.double().reshape(1, 1, h, m, c, ds)
    return ((xs - cs) ** 2).sum(-1)


def mse(x, codes, centroids):
    return float(((x.double() - reconstruct(codes, centroids)) ** 2).mean())


# ----------------------------------------------------------------------------------------------
# fit / update / encode
# ----------------------------------------------------------------------------------------------
def test_fit_recovers_clusters():
    noise = 0.02
    x, centres = clustered(2, 256, 2, 16, 4, 8, noise, seed=1)
    cb = pq.fit(x, num_subspaces=4, num_centroids=8, iters=15, seed=0)
    assert isinstance(cb, pq.Codebook)
    assert cb.centroids.shape == (2, 4, 8, 4) and cb.centroids.dtype == torch.float32
    assert (cb.num_heads, cb.num_subspaces, cb.num_centroids, cb.head_dim) == (2, 4, 8, 16)
    err = mse(x, pq.encode(x, cb), cb.centroids)
    assert err < 2 * noise ** 2, f"quantization error {err:.3g} vs noise variance {noise ** 2:.3g}"
    # every true centre has a fitted centroid next to it
    dist = ((centres.unsqueeze(3) - cb.centroids.double().unsqueeze(2)) ** 2).sum(-1)  # [H, M, C_true, C]
    assert dist.min(-1).values.max().sqrt() < 0.1
    assert abs(pq.quantization_error(x, cb) - err) < 1e-9


def test_fit_is_deterministic_and_takes_low_precision():
    x, _ = clustered(1, 96, 2, 8, 2, 4, 0.1, seed=2)
    a = pq.pq_fit(x, 2, 6, 3, 7)
    b = pq.pq_fit(x, 2, 6, 3, 7)
    assert torch.equal(a, b)
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        c = pq.pq_fit(x.to(dt), 2, 6, 3, 7)
        assert c.dtype == torch.float32 and c.shape == (2, 2, 6, 4)
        assert torch.isfinite(c).all()


def test_fit_with_fewer_samples_than_centroids():
    x = torch.randn(1, 5, 1, 4, dtype=torch.float64)
    cb = pq.fit(x, 2, num_centroids=8, iters=3)
    assert cb.centroids.shape == (1, 2, 8, 2)
    # every sample became (at least) one centroid, the rest repeat samples: exact reconstruction
    assert mse(x, pq.encode(x, cb), cb.centroids) < 1e-12
    for mm in range(2):
        samples = x[0, :, 0, 2 * mm:2 * mm + 2].float()
        for row in cb.centroids[0, mm]:
            assert ((samples - row) ** 2).sum(-1).min() < 1e-10


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_encode_is_the_nearest_centroid(dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 20, 3, 12, generator=g).to(dtype)
    cent = torch.randn(3, 4, 16, 3, generator=g)
    codes = pq.pq_encode(x, cent)
    assert codes.dtype == torch.uint8 and codes.shape == (2, 20, 3, 4)
    dist = brute_nearest(x, cent)
    got = dist.gather(-1, codes.long().unsqueeze(-1)).squeeze(-1)
    best = dist.min(-1).values
    if dtype == torch.float64:
        assert torch.equal(codes.long(), dist.argmin(-1))
    else:  # fp32 arithmetic may only swap near-ties
        assert (got - best).max() <= 1e-5 * (1 + best.max())
        assert (codes.long() == dist.argmin(-1)).float().mean() > 0.99


def test_update_keeps_or_lowers_the_error():
    x, _ = clustered(2, 128, 2, 16, 4, 16, 0.3, seed=4)
    cb0 = pq.fit(x, 4, 16, iters=0, seed=1)
    errs = [pq.quantization_error(x, cb0)]
    cb = cb0
    for _ in range(4):
        cb = pq.update(cb, x, iters=1)
        errs.append(pq.quantization_error(x, cb))
    for a, b in zip(errs, errs[1:]):
        assert b <= a * (1 + 1e-6), errs
    assert errs[-1] < errs[0]
    # iters=0 is the identity; update == continuing the fit
    assert torch.equal(pq.pq_update(cb0.centroids, x, 0), cb0.centroids)
    assert torch.allclose(pq.update(cb0, x, iters=4).centroids, cb.centroids, atol=1e-6)
    # refreshing on drifted keys beats the stale codebook
    x2 = x + 0.5
    stale = pq.quantization_error(x2, cb)
    assert pq.quantization_error(x2, pq.update(cb, x2, iters=2)) < stale


def test_empty_clusters_keep_their_centroid():
    x = torch.zeros(1, 10, 1, 2)
    x[0, 5:, 0, :] = 1.0
    cent = torch.tensor([[[[0.0, 0.0], [1.0, 1.0], [50.0, 50.0]]]])  # [1, 1, 3, 2]; the last one gets no sample
    new = pq.pq_update(cent, x, 2)
    assert torch.equal(new, cent)


def test_chunked_paths_agree(monkeypatch):
    x, _ = clustered(2, 50, 2, 8, 2, 8, 0.2, seed=5)
    q = torch.randn(2, 30, 2, 8)
    full_c = pq.pq_fit(x, 2, 8, 4, 0)
    full_codes = pq.pq_encode(x, full_c)
    full_top = pq.pq_topk(q, full_codes, full_c, 7, True)
    monkeypatch.setattr(pq, "CHUNK_ELEMENTS", 64)
    c = pq.pq_fit(x, 2, 8, 4, 0)
    assert torch.allclose(c, full_c, atol=1e-6)
    assert torch.equal(pq.pq_encode(x, full_c), full_codes)
    top = pq.pq_topk(q, full_codes, full_c, 7, True)
    # keys with equal codes tie, and ties may come out in another order: compare the scores
    assert torch.equal(top < 0, full_top < 0)
    s = pq_scores(q, full_codes, full_c)
    pick = lambda t: s.gather(-1, t.long().clamp(min=0)).masked_fill(t < 0, 0)  # noqa: E731
    assert torch.allclose(pick(top), pick(full_top), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# top-k
# ----------------------------------------------------------------------------------------------
def pq_scores(q, codes, centroids):
    """Brute-force PQ scores [B, Lq, H, Lk] in float64: q . (decoded key)."""
    return torch.einsum("bihd,bjhd->bihj", q.double(), reconstruct(codes, centroids))


@pytest.mark.parametrize("causal,lq,lk,k", [(False, 12, 12, 5), (False, 7, 19, 19), (True, 12, 12, 5),
                                            (True, 6, 10, 8), (True, 10, 6, 3)])
def test_topk_matches_brute_force(causal, lq, lk, k):
    g = torch.Generator().manual_seed(6)
    b, h, m, c, ds = 2, 3, 4, 8, 2
    keys = torch.randn(b, lk, h, m * ds, generator=g)
    q = torch.randn(b, lq, h, m * ds, generator=g)
    cent = torch.randn(h, m, c, ds, generator=g)
    codes = pq.pq_encode(keys, cent)
    idx = pq.pq_topk(q, codes, cent, k, causal)
    assert idx.dtype == torch.int32 and idx.shape == (b, lq, h, k)
    s = pq_scores(q, codes, cent)
    for bi in range(b):
        for i in range(lq):
            limit = i + lk - lq if causal else lk - 1
            allowed = [j for j in range(lk) if j <= limit]
            n = min(k, len(allowed))
            for hh in range(h):
                row = idx[bi, i, hh].tolist()
                assert row[n:] == [-1] * (k - n), row  # padding after the allowed keys
                chosen = row[:n]
                assert len(set(chosen)) == n and all(0 <= j <= limit for j in chosen)
                got = s[bi, i, hh, chosen]
                want = torch.sort(s[bi, i, hh, allowed], descending=True).values[:n]
                assert torch.allclose(got, want, atol=1e-5), (got, want)  # same score set, in order
    unsorted = pq.pq_topk(q, codes, cent, k, causal, sorted=False)
    for bi in range(b):
        for i in range(lq):
            for hh in range(h):
                row = idx[bi, i, hh].tolist()
                n = sum(j >= 0 for j in row)
                assert unsorted[bi, i, hh].tolist() == sorted(row[:n]) + [-1] * (k - n)


def test_topk_recall_on_clustered_keys():
    torch.manual_seed(0)
    b, l, h, d, m, c = 1, 512, 2, 32, 8, 16
    keys, _ = clustered(b, l, h, d, m, c, 0.1, seed=8)
    q = torch.randn(b, l, h, d)
    cb = pq.fit(keys, m, c, iters=10)
    k = l // 16
    got = pq.topk(q, pq.encode(keys, cb), cb, k)
    true = torch.einsum("bihd,bjhd->bihj", q.double(), keys.double()).topk(k, dim=-1).indices
    hits = sum(len(set(a) & set(t)) for a, t in zip(got.reshape(-1, k).tolist(), true.reshape(-1, k).tolist()))
    recall = hits / got.numel()
    print(f"PQ top-{k} recall of the exact top-{k} (L={l}, M={m}, C={c}): {recall:.3f}")
    assert recall > 0.75


def test_friendly_wrappers_match_plain_functions():
    x, _ = clustered(1, 40, 2, 8, 2, 4, 0.1, seed=9)
    cb = pq.fit(x, 2, 4, iters=2, seed=3)
    assert torch.equal(cb.centroids, pq.pq_fit(x, 2, 4, 2, 3))
    codes = pq.encode(x, cb)
    assert torch.equal(codes, pq.pq_encode(x, cb.centroids))
    assert torch.equal(pq.topk(x, codes, cb, 4, causal=True), pq.pq_topk(x, codes, cb.centroids, 4, True))
    assert torch.equal(pq.topk(x, codes, cb, 4, sorted=False), pq.pq_topk(x, codes, cb.centroids, 4, False, False))
    assert torch.equal(pq.update(cb, x, iters=2).centroids, pq.pq_update(cb.centroids, x, 2))


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
def _raises(name, fn, *args, **kwargs):
    with pytest.raises(ValueError) as e:
        fn(*args, **kwargs)
    assert f"'{name}'" in str(e.value), str(e.value)


def test_bad_input_names_the_argument():
    x = torch.randn(1, 16, 2, 8)
    cb = pq.fit(x, 2, 4, iters=1)
    codes = pq.encode(x, cb)
    _raises("x", pq.fit, x[0], 2)
    _raises("x", pq.fit, x.int(), 2)
    _raises("num_subspaces", pq.fit, x, 3)
    _raises("num_centroids", pq.fit, x, 2, 0)
    _raises("num_centroids", pq.fit, x, 2, 257)
    _raises("iters", pq.fit, x, 2, 4, -1)
    _raises("x", pq.encode, torch.randn(1, 16, 3, 8), cb)  # heads disagree with the codebook
    _raises("x", pq.encode, torch.randn(1, 16, 2, 6), cb)  # head dim disagrees
    _raises("x", pq.update, cb, torch.randn(16, 2, 8))
    _raises("codes", pq.topk, x, codes.long(), cb, 2)
    _raises("codes", pq.topk, x, codes[..., :1], cb, 2)
    _raises("codes", pq.topk, x, codes[0], cb, 2)
    _raises("k", pq.topk, x, codes, cb, 17)
    _raises("k", pq.topk, x, codes, cb, 0)
    _raises("q", pq.topk, torch.randn(1, 4, 2, 4), codes, cb, 2)
    _raises("centroids", pq.Codebook, torch.randn(2, 2, 300, 4))
    _raises("centroids", pq.pq_encode, x, torch.randn(2, 2, 4))
    _raises("codebook", pq.encode, x, "not a codebook")


def test_pq_ignores_autocast():
    """Called from a bf16 autocast region (a training loop), PQ still computes in float32."""
    x, _ = clustered(1, 64, 2, 8, 2, 4, 0.1, seed=11)
    q = torch.randn(1, 10, 2, 8)
    cb = pq.fit(x, 2, 4, iters=2)
    want = pq.topk(q, pq.encode(x, cb), cb, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cb2 = pq.fit(x, 2, 4, iters=2)
        got = pq.topk(q, pq.encode(x, cb2), cb2, 5)
    assert torch.equal(cb.centroids, cb2.centroids) and torch.equal(got, want)
