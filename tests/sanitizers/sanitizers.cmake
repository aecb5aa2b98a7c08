# Sanitizer builds, chosen with -DATTND_SANITIZE=... (scripts/sanitize.sh runs them in CI):
#   address  AddressSanitizer + UndefinedBehaviorSanitizer (LeakSanitizer included); any UB aborts.
#   thread   ThreadSanitizer. Every executable also links tests/sanitizers/tsan_absl_mutex.cc,
#            which makes Debian's uninstrumented Abseil Mutex visible to TSan (see that file).
#   fuzzer   clang only: ASan + UBSan plus libFuzzer's coverage on everything, and the
#            tests/fuzz targets linked with libFuzzer (scripts/fuzz.sh).
# Debian's gRPC, protobuf and Abseil stay uninstrumented: their own code is not checked, ours is.
set(ATTND_SANITIZE "" CACHE STRING "Sanitizer build: empty, address (ASan+UBSan), thread (TSan) or fuzzer (libFuzzer)")
set_property(CACHE ATTND_SANITIZE PROPERTY STRINGS "" address thread fuzzer)

# Compile and link flags for every target created after this call.
macro(attnd_sanitizer_flags)
  if(ATTND_SANITIZE STREQUAL "address")
    add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
    add_link_options(-fsanitize=address,undefined)
  elseif(ATTND_SANITIZE STREQUAL "thread")
    add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
    add_link_options(-fsanitize=thread)
  elseif(ATTND_SANITIZE STREQUAL "fuzzer")
    if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
      message(FATAL_ERROR "ATTND_SANITIZE=fuzzer needs clang (libFuzzer): -DCMAKE_CXX_COMPILER=clang++-14")
    endif()
    add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
    add_link_options(-fsanitize=address,undefined)
  elseif(ATTND_SANITIZE)
    message(FATAL_ERROR "ATTND_SANITIZE must be empty, address, thread or fuzzer, not '${ATTND_SANITIZE}'")
  endif()
  if(ATTND_SANITIZE)
    message(STATUS "attnd: sanitizer build (${ATTND_SANITIZE})")
  endif()
endmacro()

# The executables of `dir` and its subdirectories.
function(attnd_collect_executables dir out)
  get_property(targets DIRECTORY ${dir} PROPERTY BUILDSYSTEM_TARGETS)
  set(found)
  foreach(t IN LISTS targets)
    get_target_property(type ${t} TYPE)
    if(type STREQUAL "EXECUTABLE")
      list(APPEND found ${t})
    endif()
  endforeach()
  get_property(subdirs DIRECTORY ${dir} PROPERTY SUBDIRECTORIES)
  foreach(sub IN LISTS subdirs)
    attnd_collect_executables(${sub} sub_found)
    list(APPEND found ${sub_found})
  endforeach()
  set(${out} ${found} PARENT_SCOPE)
endfunction()

# After every target exists: the TSan build links the Abseil Mutex annotations into each program.
function(attnd_sanitizer_link_support)
  if(NOT ATTND_SANITIZE STREQUAL "thread" OR NOT ATTND_WITH_GRPC)
    return()
  endif()
  add_library(attnd_tsan_absl_mutex OBJECT ${PROJECT_SOURCE_DIR}/tests/sanitizers/tsan_absl_mutex.cc)
  target_link_libraries(attnd_tsan_absl_mutex PUBLIC absl::synchronization absl::time)
  attnd_collect_executables(${PROJECT_SOURCE_DIR} programs)
  foreach(t IN LISTS programs)
    target_link_libraries(${t} PRIVATE attnd_tsan_absl_mutex ${CMAKE_DL_LIBS})
  endforeach()
endfunction()
