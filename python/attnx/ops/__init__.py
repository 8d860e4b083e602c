"""Op definitions (schemas, reference impls, fake kernels, autograd) and the public wrappers."""
from . import attention, block_sparse, mla, neighborhood, pq, sparse  # noqa: F401
