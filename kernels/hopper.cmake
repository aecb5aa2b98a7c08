# attnd_kernels_hopper: the sm_90a forward kernel (wgmma, TMA, setmaxnreg; src/hopper/). wgmma and
# setmaxnreg exist only in the arch-specific sm_90a target, so these sources are compiled for
# exactly -gencode=arch=compute_90a,code=sm_90a, whatever CMAKE_CUDA_ARCHITECTURES says, and only
# when that list asks for sm_90 at all (an sm_80-only build skips them; the dispatcher in
# flash_fwd.cu then never picks the Hopper kernel). At run time the dispatcher checks that the
# device is sm_90 before launching it. Included from kernels/CMakeLists.txt.
set(ATTND_HOPPER_FWD OFF)
if(CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.0 AND
   "${CMAKE_CUDA_ARCHITECTURES}" MATCHES "(^|;)(90|all|all-major|native)")
  set(ATTND_HOPPER_FWD ON)
endif()
message(STATUS "attnd: Hopper forward kernel (sm_90a) ${ATTND_HOPPER_FWD}")

if(ATTND_HOPPER_FWD)
  add_library(attnd_kernels_hopper STATIC
    src/hopper/flash_fwd_hopper.cu
    src/hopper/flash_fwd_hopper_hdim64_bf16.cu
    src/hopper/flash_fwd_hopper_hdim64_fp16.cu
    src/hopper/flash_fwd_hopper_hdim128_bf16.cu
    src/hopper/flash_fwd_hopper_hdim128_fp16.cu
    src/hopper/tensor_map.cc
  )
  target_include_directories(attnd_kernels_hopper
    PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include
    PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
  target_link_libraries(attnd_kernels_hopper PUBLIC CUDA::cudart_static)
  # CUDA_ARCHITECTURES OFF: CMake adds no -gencode of its own, only the one below.
  set_target_properties(attnd_kernels_hopper PROPERTIES POSITION_INDEPENDENT_CODE ON CUDA_ARCHITECTURES OFF
                                                        CUDA_STANDARD 17)
  target_compile_options(attnd_kernels_hopper PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-gencode=arch=compute_90a,code=sm_90a -lineinfo --expt-relaxed-constexpr>
    $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${ATTND_PTXAS_VERBOSE}>>:-Xptxas=-v>)
  target_link_libraries(attnd_kernels PUBLIC attnd_kernels_hopper)
  target_compile_definitions(attnd_kernels PRIVATE ATTND_HAVE_HOPPER_FWD=1)
endif()
