# attnd_kernels_bwd: the FlashAttention-2 backward (issue 4). Its own library so that it builds
# (and its tests run) without compiling the forward's sources; attnd_kernels links it, so users of
# attnd_kernels get both. Included from kernels/CMakeLists.txt.
add_library(attnd_kernels_bwd STATIC
  src/flash_bwd.cu
  src/flash_bwd_fp32.cu
  src/flash_bwd_preprocess.cu
  src/flash_bwd_reduce.cu
  src/flash_bwd_hdim32.cu
  src/flash_bwd_hdim64.cu
  src/flash_bwd_hdim96.cu
  src/flash_bwd_hdim128.cu
  src/flash_bwd_hdim256.cu
)
target_include_directories(attnd_kernels_bwd
  PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include
  PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
target_link_libraries(attnd_kernels_bwd PUBLIC CUDA::cudart_static)
set_target_properties(attnd_kernels_bwd PROPERTIES POSITION_INDEPENDENT_CODE ON)
target_compile_options(attnd_kernels_bwd PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo --expt-relaxed-constexpr>
  $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${ATTND_PTXAS_VERBOSE}>>:-Xptxas=-v>)
target_link_libraries(attnd_kernels PUBLIC attnd_kernels_bwd)
