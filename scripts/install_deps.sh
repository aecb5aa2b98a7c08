#!/usr/bin/env bash
# Installs everything attnd needs to build and test on a fresh Debian 12 machine, from Debian's
# packages only. Idempotent: a machine that already has them spends a second here.
# ATTND_DEPS=build (the container's build stage) installs what building needs and skips the tools
# only the tests use (a real Prometheus for the metrics integration test, python3-yaml for the
# manifest checks, PyTorch and matplotlib for the Python client's tests and plots, openssl and
# clang-14 for the reliability tests and fuzzers); the default, all, installs both.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libcpp-httplib-dev
  googletest libgtest-dev libgmock-dev
  python3 python3-grpcio python3-grpc-tools python3-protobuf python3-numpy
  libssl-dev
)
if [[ ${ATTND_DEPS:-all} != build ]]; then
  packages+=(prometheus python3-yaml python3-torch python3-matplotlib)
  # Reliability tests: openssl makes their TLS certificates; clang-14 with its runtimes builds the
  # libFuzzer targets (scripts/fuzz.sh). gcc's ASan/UBSan/TSan runtimes come with build-essential.
  packages+=(openssl clang-14 libclang-rt-14-dev)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install_deps: installing ${missing[*]}"
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "install_deps: all dependencies present"
