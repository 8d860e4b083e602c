// opaque(x): x, as a value the compiler cannot see through. What is computed from it is neither
// merged with the same expression computed earlier nor hoisted out of a loop, so a kernel can
// recompute cheap values (a tile's coordinates, its geometry) instead of holding them in registers
// through a mainloop that needs every register.
#pragma once

namespace attnx {

__device__ __forceinline__ int opaque(int x) {
  int y;
  asm volatile("mov.b32 %0, %1;" : "=r"(y) : "r"(x));
  return y;
}

}  // namespace attnx
