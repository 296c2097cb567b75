#!/usr/bin/env bash
# Build llama.cpp's llama-bench from the llama.cpp source vendored in llama-cpp-python's source distribution on
# PyPI (the one package registry this needs), for benchmarks/llamacpp_decode.py. Not part of `make test`.
#
#   bash benchmarks/build_llama_cpp.sh [DEST]      (default DEST: .llama.cpp; needs curl, cmake, a C++ compiler)
#
# Prints the path of llama-bench. Takes about 10-20 CPU-minutes; run it once.
set -euo pipefail
DEST=${1:-.llama.cpp}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
mkdir -p "$DEST"
cd "$DEST"
if [ ! -d "llama_cpp_python-$VERSION" ]; then
  url=$(curl -fsS "https://pypi.org/pypi/llama-cpp-python/json" | VERSION="$VERSION" python3 -c '
import json, os, sys
files = json.load(sys.stdin)["releases"][os.environ["VERSION"]]
print(next(f["url"] for f in files if f["packagetype"] == "sdist"))')
  case "$url" in http*) ;; *) url="https://pypi.org/${url#../../}" ;; esac
  curl -fsSL -o sdist.tar.gz "$url"
  tar xzf sdist.tar.gz && rm sdist.tar.gz
fi
SRC="llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$SRC" -B build -G "$(command -v ninja >/dev/null && echo Ninja || echo 'Unix Makefiles')" \
  -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
cmake --build build -j "$(nproc)" --target llama-bench >/dev/null
echo "$(pwd)/build/bin/llama-bench"
