"""The benchmark cases: one function per family, each returning [Case] for the run's mode.

Modes: "full" (GPU defaults), "quick" (GPU, smaller), "cpu" and "cpu-quick" (references only,
small sizes, float32). Building a case allocates nothing on the device: inputs are made by
``Case.make_set`` when the case runs. One module per API family (dense, varlen, neighborhood, gna,
mla, pq, ceilings), as the tests are laid out; a family's forward and backward cases sit together.
"""
from .ceilings import ceilings
from .dense import dense, dense_bwd
from .gna import gna, gna_bwd, gna_paper, gna_paper_bwd, gna_plan
from .mla import mla, mla_block_table, mla_skew_lengths
from .neighborhood import neighborhood, neighborhood_bwd
from .pq import clustered_qk, pq_recall, pq_sparse, random_key_lists
from .varlen import mean_fraction_lengths, unpad_pad, varlen, varlen_bwd, varlen_lengths

__all__ = ["FAMILIES", "clustered_qk", "gna_plan", "mean_fraction_lengths", "mla_block_table", "mla_skew_lengths", "pq_recall",
           "random_key_lists", "varlen_lengths"]

FAMILIES = {
    "ceilings": (ceilings, "device ceilings: copy and read-only bandwidth, bf16 matmul"),
    "dense": (dense, "attnx.attention vs SDPA flash / cuDNN"),
    "varlen": (varlen, "attnx.varlen_attention vs varlen_attn / flex (document mask) / padded SDPA (key mask)"),
    "dense_bwd": (dense_bwd, "backward only: attnx.attention_backward vs SDPA flash / cuDNN backward"),
    "varlen_bwd": (varlen_bwd, "backward only: attnx.varlen_attention_backward vs varlen_attn backward"),
    "neighborhood": (neighborhood, "attnx.neighborhood_attention vs flex (NA mask)"),
    "neighborhood_bwd": (neighborhood_bwd, "backward only: attnx NA backward vs flex (NA mask) backward"),
    "gna": (gna, "strided NA and attnx.block_sparse_attention over GNA tile plans vs flex"),
    "gna_bwd": (gna_bwd, "backward only: strided NA and block-sparse GNA plans vs flex's backward"),
    "gna_paper": (gna_paper, "the GNA paper's HunyuanVideo and FLUX-4K configurations: fused NA vs attnx dense, flex"),
    "gna_paper_bwd": (gna_paper_bwd, "backward only: the GNA paper's configurations vs attnx's dense backward, flex"),
    "mla": (mla, "attnx.mla_decode vs plain-PyTorch gather + matmul"),
    "pq_sparse": (pq_sparse, "attnx.sparse_attention / pq_sparse_attention vs dense SDPA"),
    "unpad_pad": (unpad_pad, "attnx.unpad / pad (row copies) vs x[mask] and index_select / index_copy_"),
}
