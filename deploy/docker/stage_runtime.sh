#!/usr/bin/env bash
# Copies programs and the shared libraries they load into a staging root for the runtime image:
#   stage_runtime.sh BIN_DIR STAGE_DIR PROGRAM...
# Programs land in STAGE/usr/local/bin, their libraries in STAGE/usr/local/lib/attnd (with an
# ld.so.conf.d entry). Left out: the C library and loader, which every image has, and the CUDA
# libraries, which the CUDA runtime image provides (cudart, ...) or the NVIDIA container runtime
# mounts from the host (libcuda, the driver). Fails if a program needs a library ldd cannot find.
set -euo pipefail
bin_dir=$1 stage=$2
shift 2
mkdir -p "$stage/usr/local/bin" "$stage/usr/local/lib/attnd" "$stage/etc/ld.so.conf.d"
echo /usr/local/lib/attnd > "$stage/etc/ld.so.conf.d/attnd.conf"
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libcuda\.so|libnvidia-)'
for program in "$@"; do
  install -m 0755 "$bin_dir/$program" "$stage/usr/local/bin/$program"
  if ldd "$bin_dir/$program" | grep -q 'not found'; then
    ldd "$bin_dir/$program" | grep 'not found' >&2
    echo "stage_runtime: $program needs libraries that are not installed" >&2
    exit 1
  fi
  ldd "$bin_dir/$program" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
    [[ $name =~ $skip || $path == /usr/local/cuda* ]] && continue
    cp -L "$path" "$stage/usr/local/lib/attnd/$name"
  done
done
echo "stage_runtime: $# programs, $(ls "$stage/usr/local/lib/attnd" | wc -l) libraries staged in $stage"
