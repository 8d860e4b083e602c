# Locates the CUTLASS/CuTe headers: CUTLASS_DIR if set, else the nvidia-cutlass wheel
# (found without importing cutlass_library, whose import pulls heavy dependencies).
if(DEFINED ENV{CUTLASS_DIR} AND NOT CUTLASS_DIR)
  set(CUTLASS_DIR $ENV{CUTLASS_DIR})
endif()
if(NOT CUTLASS_DIR)
  execute_process(
    COMMAND ${Python3_EXECUTABLE} -c "import importlib.util as u, os; s = u.find_spec('cutlass_library'); print(os.path.join(list(s.submodule_search_locations)[0], 'source') if s else '')"
    OUTPUT_VARIABLE CUTLASS_DIR OUTPUT_STRIP_TRAILING_WHITESPACE)
endif()
if(NOT CUTLASS_DIR OR NOT EXISTS "${CUTLASS_DIR}/include/cute/tensor.hpp")
  message(FATAL_ERROR "attnx: CUTLASS/CuTe headers not found (CUTLASS_DIR='${CUTLASS_DIR}'). "
                      "Install them with `pip install nvidia-cutlass==4.2.0.0` or set CUTLASS_DIR to a CUTLASS checkout.")
endif()
set(CUTLASS_INCLUDE_DIRS "${CUTLASS_DIR}/include" "${CUTLASS_DIR}/tools/util/include")
message(STATUS "attnx: CUTLASS headers in ${CUTLASS_DIR}")
