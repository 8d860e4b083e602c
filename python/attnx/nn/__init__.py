"""Drop-in modules built on the attnx ops."""
from .modules import (MLADecoder, NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D,
                      PQSparseSelfAttention, VarlenSelfAttention)

__all__ = ["NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D", "VarlenSelfAttention",
           "MLADecoder", "PQSparseSelfAttention"]
