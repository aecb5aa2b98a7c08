# attn_bench_bwd: TFLOP/s of the backward kernel (issue 4). Included from bench/CMakeLists.txt.
if(ATTND_HAVE_CUDA)
  add_executable(attn_bench_bwd ${CMAKE_CURRENT_LIST_DIR}/attn_bench_bwd.cu)
  target_link_libraries(attn_bench_bwd PRIVATE attnd_kernels_bwd)
  # CMake 3.25 knows no C++20 dialect flag for nvcc (kernels/ builds as CUDA 17 too).
  set_target_properties(attn_bench_bwd PROPERTIES CUDA_STANDARD 17)
endif()
