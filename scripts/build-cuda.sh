#!/usr/bin/env bash
# Builds `autoif --features cuda` and the kernel harness `examples/kernel_check.rs` on a
# machine without a GPU or a system CUDA toolkit, and checks that both link and start.
#
# The toolkit comes from PyPI into a venv outside the repository (nvcc, headers, cudart,
# cuBLAS, cuRAND, NVRTC), every wheel pinned: an unpinned nvidia-nvvm pulls a newer
# release whose PTX the 13.0 assembler and driver reject. It is CUDA 13.0 on purpose:
# the GPU machines this project is lent run driver 580 (CUDA 13.0) with PyTorch's cu13 libraries, and the binary then
# finds the same sonames there (libcublas.so.13, …) and PTX the driver can load. The
# driver library itself (libcuda.so) is not on PyPI; the link uses a stub generated from
# cudarc's list of driver functions, and the real driver is found at run time.
#
#   scripts/build-cuda.sh                 # venv in $XDG_CACHE_HOME/autoif-cuda-venv
#   AUTOIF_CUDA_VENV=/work/cuda-venv CUDA_COMPUTE_CAP=80 scripts/build-cuda.sh
#
# Output: target-cuda/release/autoif and target-cuda/release/examples/kernel_check;
# target-cuda/cuda-env.sh, which sets LD_LIBRARY_PATH for running them on this machine
# (`--help` only: there is no GPU here); and target-cuda/autoif-cuda.tar.xz, both stripped
# binaries in one archive compressed to fit what travels to a GPU machine, which
# scripts/gpu-check.sh unpacks (each binary is ~85 MB, mostly candle's PTX; the device
# tool carries 64 MiB). The PTX is the same in both, so the archive is compressed with a
# dictionary larger than one binary: the second copy costs almost nothing.
set -euo pipefail

cd "$(dirname "$0")/.."
venv="${AUTOIF_CUDA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/autoif-cuda-venv}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
python="${PYTHON:-python3}"

packages=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-cccl==13.0.85"
  "nvidia-cublas==13.0.2.14"
  "nvidia-curand==10.4.0.35"
  "nvidia-cuda-nvrtc==13.0.88"
)
if [ ! -x "$venv/bin/pip" ]; then
  echo "== creating $venv"
  "$python" -m venv "$venv"
fi
echo "== installing the CUDA 13.0 toolkit wheels"
"$venv/bin/pip" install -q "${packages[@]}"

cuda_home="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
[ -x "$cuda_home/bin/nvcc" ] || { echo "error: no nvcc under $cuda_home" >&2; exit 1; }

# The wheels ship only versioned sonames; the linker looks for libNAME.so.
for lib in cudart cublas cublasLt nvrtc; do
  ln -sf "lib$lib.so.13" "$cuda_home/lib/lib$lib.so"
done
ln -sf libcurand.so.10 "$cuda_home/lib/libcurand.so"

# Link-time stand-in for the driver library: every cu* entry point cudarc declares,
# under the driver's soname, so the binary asks for libcuda.so.1 at run time.
cargo fetch --quiet
cudarc_version="$(cargo metadata --format-version 1 --features cuda --quiet |
  "$venv/bin/python" -c 'import json, sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')"
driver_sys="$(dirname "$cudarc_version")/src/driver/sys/mod.rs"
mkdir -p "$cuda_home/lib/stubs"
stub_c="$cuda_home/lib/stubs/libcuda-stub.c"
grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$driver_sys" | sed -E 's/^pub unsafe fn (.*)/int \1(void) { return 999; }/' | sort -u >"$stub_c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda_home/lib/stubs/libcuda.so" "$stub_c"
ln -sf libcuda.so "$cuda_home/lib/stubs/libcuda.so.1"
echo "== libcuda stub: $(wc -l <"$stub_c") entry points from $driver_sys"

export CUDA_HOME="$cuda_home"
export PATH="$cuda_home/bin:$PATH"
echo "== nvcc: $(nvcc --version | tail -2 | head -1); CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"

# Register spills in the attention and int8 projection kernels, from ptxas for the GPU
# this build targets (the driver JITs the same PTX with the same ptxas): there must be none.
for source in kernels/causal_attention.cu kernels/flash_attention.cu kernels/int8_projection.cu; do
  cubin="$(mktemp)"
  report="$(nvcc -cubin -O3 -std=c++17 -arch="sm_$CUDA_COMPUTE_CAP" -Xptxas -v -o "$cubin" "$source" 2>&1)"
  rm -f "$cubin"
  # "Compiling entry function 'NAME' ..." then "... N bytes spill stores, M bytes spill loads"
  spills="$(echo "$report" | awk '/Compiling entry function/ {name = $7} /spill stores/ {print name, $5 + $9}')"
  [ -n "$spills" ] || { echo "error: no ptxas report for $source" >&2; exit 1; }
  if echo "$spills" | awk '$2 > 0 {bad = 1; print "error: register spills (bytes stored + loaded) in", $0 > "/dev/stderr"} END {exit !bad}'; then
    exit 1
  fi
  echo "== no register spills in $source ($(echo "$spills" | wc -l) kernels, sm_$CUDA_COMPUTE_CAP)"
done

start=$(date +%s)
cargo build --release --features cuda --target-dir target-cuda --bin autoif --example kernel_check
echo "== build took $(( $(date +%s) - start )) s"

bin=target-cuda/release/autoif
kernel_check=target-cuda/release/examples/kernel_check
cat >target-cuda/cuda-env.sh <<EOF
# Libraries for running $bin and $kernel_check on the machine that built them (the stub
# driver has no GPU).
export LD_LIBRARY_PATH="$cuda_home/lib:$cuda_home/lib/stubs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
EOF
# shellcheck source=/dev/null
. target-cuda/cuda-env.sh
for exe in "$bin" "$kernel_check"; do
  echo "== shared libraries of $exe"
  ldd "$exe" | grep -E 'cuda|cublas|curand|nvrtc|not found' || true
  if ldd "$exe" | grep -q 'not found'; then
    echo "error: $exe has unresolved libraries" >&2
    exit 1
  fi
  "$exe" --help >/dev/null
done
package=target-cuda/package
rm -rf "$package"
mkdir -p "$package"
strip -o "$package/autoif" "$bin"
strip -o "$package/kernel_check" "$kernel_check"
tar -C "$package" -cf - autoif kernel_check | xz -T1 --lzma2=preset=6,dict=128MiB >target-cuda/autoif-cuda.tar.xz
rm -rf "$package"
echo "== ok: both link and run --help; target-cuda/autoif-cuda.tar.xz is $(du -h target-cuda/autoif-cuda.tar.xz | cut -f1)"
