#!/usr/bin/env bash
# The install, as a user gets it: `cmake --install` into a fresh prefix, then from that prefix
# only: the layout and the SONAME, the CLI, a separate CMake project through find_package(vicreg
# VERSION), the same program through pkg-config, and the Python package (CTest: install.prefix).
#   check_install.sh BUILD_DIR SOURCE_DIR VERSION PYTHON_DIR PYTHON CXX
# PYTHON_DIR: the Python package's directory relative to the prefix ("" when it is not built).
set -euo pipefail
# (Piped greps read all their input: with pipefail, grep -q could fail a pipeline by SIGPIPE.)
build=$1 src=$2 version=$3 pydir=$4 python=$5 cxx=$6
work="$build/install-check"
prefix="$work/prefix"
rm -rf "$prefix"
mkdir -p "$work"
fail() { echo "check_install: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$prefix" >"$work/install.log"
libdir=$(cd "$prefix" && ls -d lib*/libvicreg.so 2>/dev/null | head -1 | xargs -r dirname)
[ -n "$libdir" ] || fail "no libvicreg.so under $prefix/lib*"
major_minor=${version%.*}
[ -f "$prefix/$libdir/libvicreg.so.$version" ] || fail "no $libdir/libvicreg.so.$version"
soname=$(objdump -p "$prefix/$libdir/libvicreg.so.$version" | awk '$1 == "SONAME" {print $2}')
[ "$soname" = "libvicreg.so.$major_minor" ] || fail "SONAME $soname, expected libvicreg.so.$major_minor"
for f in include/vicreg/loss.h include/vicreg/models/vit.h include/vicreg/version.h \
         "$libdir/cmake/vicreg/vicregConfig.cmake" "$libdir/cmake/vicreg/vicregConfigVersion.cmake" \
         "$libdir/pkgconfig/vicreg.pc" bin/vicreg share/doc/vicreg/README.md \
         share/doc/vicreg/examples/pretrain_minimal.cpp; do
  [ -f "$prefix/$f" ] || fail "$f is not installed"
done
# Nothing of the build's own: no tests, benchmarks or static helper libraries.
leaked=$(cd "$prefix" && find . \( -name 'test_*' -o -name '*_bench' -o -name '*.a' \) -print)
[ -z "$leaked" ] || fail "installed build-only files: $leaked"

# The CLI from the prefix, with the prefix's library (RPATH $ORIGIN/../lib).
"$prefix/bin/vicreg" --version | grep -x "vicreg $version (LibTorch .*)" >/dev/null ||
  fail "bin/vicreg --version: $("$prefix/bin/vicreg" --version)"
loaded=$(ldd "$prefix/bin/vicreg" | awk '$1 ~ /^libvicreg/ {print $3}')
[ -n "$loaded" ] && [ "$(realpath "$loaded")" = "$(realpath "$prefix/$libdir/libvicreg.so.$version")" ] ||
  fail "bin/vicreg loads libvicreg from '$loaded', not from $prefix/$libdir"
# ... and with the OpenMP OpenBLAS the build linked against, whose RPATH the install keeps.
if compgen -G "/usr/lib/*/openblas-openmp/libblas.so.3" >/dev/null; then
  ldd "$prefix/bin/vicreg" | grep "libblas.so.3 => .*/openblas-openmp/" >/dev/null ||
    fail "bin/vicreg does not load the OpenMP OpenBLAS: $(ldd "$prefix/bin/vicreg" | grep blas)"
fi
grep -q "vicreg $version" "$src/README.md" || fail "README.md does not say vicreg $version"

# find_package(vicreg VERSION) from a separate project; a newer minor version must be refused.
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S "$src/tests/install/consumer" -B "$work/consumer" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" -DVICREG_EXPECTED_VERSION="$version" "${launcher[@]}" \
  -DCMAKE_CXX_COMPILER="$cxx" >"$work/consumer.log"
cmake --build "$work/consumer" >>"$work/consumer.log"
"$work/consumer/consumer" "$version"
too_new="${version%%.*}.$(( $(echo "$version" | cut -d. -f2) + 1 )).0"
if cmake -S "$src/tests/install/consumer" -B "$work/consumer-too-new" -DCMAKE_PREFIX_PATH="$prefix" \
     -DVICREG_EXPECTED_VERSION="$too_new" >"$work/consumer-too-new.log" 2>&1; then
  fail "find_package(vicreg $too_new) accepted vicreg $version"
fi
grep -q "vicreg" "$work/consumer-too-new.log" || fail "no message on find_package(vicreg $too_new)"

# pkg-config: the same program, compiled and linked with vicreg.pc's flags alone.
export PKG_CONFIG_PATH="$prefix/$libdir/pkgconfig"
[ "$(pkg-config --modversion vicreg)" = "$version" ] || fail "pkg-config --modversion vicreg"
cc=("$cxx")
if command -v ccache >/dev/null; then cc=(ccache "$cxx"); fi
# shellcheck disable=SC2046  # pkg-config's output is a list of flags
"${cc[@]}" -std=c++17 -O1 -o "$work/consumer-pc" "$src/tests/install/consumer/consumer.cpp" \
  $(pkg-config --cflags --libs vicreg) -Wl,-rpath,"$prefix/$libdir"
"$work/consumer-pc" "$version"

# Python: the package imported from the prefix computes the loss, with the library's version.
if [ -n "$pydir" ]; then
  PYTHONPATH="$prefix/$pydir" "$python" - "$prefix" "$version" <<'PY'
import sys
import torch
import vicreg
prefix, version = sys.argv[1], sys.argv[2]
assert vicreg.__file__.startswith(prefix), f"vicreg imported from {vicreg.__file__}, not {prefix}"
assert vicreg.__version__ == version, f"vicreg.__version__ {vicreg.__version__}, expected {version}"
z_a = torch.randn(16, 8, dtype=torch.float64, requires_grad=True)
z_b = torch.randn(16, 8, dtype=torch.float64)
got = vicreg.vicreg_loss(z_a, z_b)
def var_cov(z):  # the official preset's terms, written out
    c = z - z.mean(0)
    cov = c.T @ c / (z.shape[0] - 1)
    return (torch.relu(1 - (c.var(0) + 1e-4).sqrt()).mean(),
            (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / z.shape[1])
(va, ca), (vb, cb) = var_cov(z_a.detach()), var_cov(z_b)
ref = (25 * (z_a.detach() - z_b).pow(2).mean() + 12.5 * (va + vb) + ca + cb).item()
assert abs(got.total.item() - ref) <= 1e-9 * abs(ref), (got.total.item(), ref)
got.total.backward()
assert z_a.grad is not None and torch.isfinite(z_a.grad).all()
print(f"python: vicreg {vicreg.__version__} from {vicreg.__file__}, loss {got.total.item():.6f}")
PY
fi
echo "check_install: vicreg $version installed in $prefix: layout, CLI, find_package, pkg-config${pydir:+, Python} ok"
