# ATTNX_CUDA_ARCHS: semicolon/comma list of targets such as "90a" (default). wgmma and setmaxnreg
# need the "a" variant, and the -gencode form (the -arch=sm_90a shorthand also ran a plain sm_90
# pass that rejects them).
set(ATTNX_CUDA_ARCHS "90a" CACHE STRING "CUDA targets, e.g. 90a")
string(REPLACE "," ";" _archs "${ATTNX_CUDA_ARCHS}")
set(ATTNX_GENCODE_FLAGS "")
foreach(_a ${_archs})
  list(APPEND ATTNX_GENCODE_FLAGS "-gencode=arch=compute_${_a},code=sm_${_a}")
endforeach()
message(STATUS "attnx: CUDA targets ${ATTNX_CUDA_ARCHS}")
