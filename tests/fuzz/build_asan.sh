#!/usr/bin/env bash
# Build the media worker's C lanes (gateway/media/_fastpath.c) with AddressSanitizer and
# UBSan into build/fuzz-asan/, apart from the normal build; tests/fuzz/target_lanes.py loads it
# from there. The Python here is not built with ASan, so the runtime is preloaded:
#   LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 python ...
# (python -m tests.fuzz lanes does that by itself.) Leak checking is off: CPython frees
# little at exit by design, and every "leak" would be its own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=build/fuzz-asan
mkdir -p "$out"
python=${PYTHON:-.venv/bin/python}
include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
suffix=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
gcc -shared -fPIC -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
  -fno-sanitize-recover=undefined -I"$include" gateway/media/_fastpath.c \
  -o "$out/_fastpath$suffix"
echo "$out/_fastpath$suffix"
