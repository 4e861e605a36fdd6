# Sourced by scripts/test and scripts/demo: installs the system packages the build needs when
# they are missing (RocksDB and librdkafka build from source: a C++ compiler, cmake, libclang),
# and points cargo at a target directory under $HOME that later runs reuse.
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "journeyd: installing ${missing[*]} (RocksDB and librdkafka build from source)"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/journeyd/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
