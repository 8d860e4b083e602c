# Include and library folders of the installed torch, read from Python. find_package(Torch) is
# avoided on purpose: its CUDA probing needs toolkit parts (cuSPARSE headers) the build machines
# lack, and the stable-ABI bindings need only headers and three libraries.
execute_process(
  COMMAND ${Python3_EXECUTABLE} -c "import os, torch; r = os.path.dirname(torch.__file__); print(os.path.join(r, 'include') + ';' + os.path.join(r, 'lib') + ';' + torch.__version__)"
  OUTPUT_VARIABLE _torch_info OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _torch_rc)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "attnx: could not import torch with ${Python3_EXECUTABLE}")
endif()
list(GET _torch_info 0 TORCH_INCLUDE_DIR)
list(GET _torch_info 1 TORCH_LIBRARY_DIR)
list(GET _torch_info 2 TORCH_VERSION_STRING)
foreach(_lib torch torch_cpu torch_cuda)
  find_library(ATTNX_LIB_${_lib} ${_lib} PATHS ${TORCH_LIBRARY_DIR} NO_DEFAULT_PATH)
  if(NOT ATTNX_LIB_${_lib})
    message(FATAL_ERROR "attnx: lib${_lib}.so not found in ${TORCH_LIBRARY_DIR}: the bindings need a CUDA build of torch")
  endif()
  list(APPEND TORCH_STABLE_LIBRARIES ${ATTNX_LIB_${_lib}})
endforeach()
message(STATUS "attnx: building against torch ${TORCH_VERSION_STRING} (${TORCH_INCLUDE_DIR})")
