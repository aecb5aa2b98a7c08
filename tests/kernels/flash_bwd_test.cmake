# flash_bwd_test: the backward kernel against the float64 oracle (label gpu; skips without a GPU).
# Included from tests/kernels/CMakeLists.txt.
add_executable(flash_bwd_test ${CMAKE_CURRENT_LIST_DIR}/flash_bwd_test.cc)
target_link_libraries(flash_bwd_test PRIVATE attnd_kernels_bwd attnd_test_support GTest::gtest_main)
target_include_directories(flash_bwd_test PRIVATE ${PROJECT_SOURCE_DIR})
attnd_gpu_test(flash_bwd_test)

# The plan's split of the last partial wave (host arithmetic: runs without a GPU).
add_executable(flash_bwd_tail_test ${CMAKE_CURRENT_LIST_DIR}/flash_bwd_tail_test.cc)
target_link_libraries(flash_bwd_tail_test PRIVATE GTest::gtest_main)
target_include_directories(flash_bwd_tail_test PRIVATE ${PROJECT_SOURCE_DIR}/kernels/src)
gtest_discover_tests(flash_bwd_tail_test DISCOVERY_TIMEOUT 60)
