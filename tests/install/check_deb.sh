#!/usr/bin/env bash
# The Debian packages (CTest: install.deb): scripts/package.sh's cpack run into a fresh
# directory, then dpkg-deb --info / --contents: names, version, dependencies on Debian's
# packages, the files and nothing of the build's own; and apt's dry run of installing them.
#   check_deb.sh BUILD_DIR VERSION WITH_PYTHON(0|1)
set -euo pipefail
build=$1 version=$2 with_python=$3
out="$build/install-check/deb"
rm -rf "$out"
mkdir -p "$out"
fail() { echo "check_deb: $*" >&2; exit 1; }

(cd "$build" && cpack -G DEB -B "$out" >"$out/cpack.log") || { cat "$out/cpack.log"; fail "cpack failed"; }
deb="$out/vicreg_${version}-1_$(dpkg --print-architecture).deb"
[ -f "$deb" ] || fail "no $deb (cpack wrote: $(ls "$out"))"
info=$(dpkg-deb --info "$deb")
field() { dpkg-deb --field "$1" "$2"; }
[ "$(field "$deb" Package)" = vicreg ] || fail "Package: $(field "$deb" Package)"
[ "$(field "$deb" Version)" = "$version-1" ] || fail "Version: $(field "$deb" Version)"
depends=$(field "$deb" Depends)
# dpkg-shlibdeps' runtime packages, and the -dev packages the headers and CMake files need.
for dep in 'libtorch1\.13|libtorch2' 'libopencv-core4' 'libopencv-imgcodecs4' 'libjpeg62-turbo' \
           'libprotobuf' 'libtorch-dev' 'libopencv-core-dev' 'nlohmann-json3-dev' \
           'libopenblas0-openmp' 'libstdc\+\+6'; do
  echo "$depends" | grep -E "(^|, )($dep)" >/dev/null || fail "Depends lacks $dep: $depends"
done
contents=$(dpkg-deb --contents "$deb" | awk '{print $6}')
for f in ./usr/lib/libvicreg.so."$version" ./usr/lib/libvicreg.so ./usr/bin/vicreg \
         ./usr/include/vicreg/loss.h ./usr/include/vicreg/version.h \
         ./usr/lib/cmake/vicreg/vicregConfig.cmake ./usr/lib/cmake/vicreg/vicregTargets.cmake \
         ./usr/lib/pkgconfig/vicreg.pc ./usr/share/doc/vicreg/README.md; do
  echo "$contents" | grep -xF "$f" >/dev/null || echo "$contents" | grep -F "$f ->" >/dev/null ||
    fail "$deb lacks $f"
done
if echo "$contents" | grep -E '/(test_[a-z_]+|[a-z_]+_bench|[^/]+\.a)$'; then
  fail "$deb holds build-only files"
fi
debs=("$deb")
if [ "$with_python" = 1 ]; then
  pydeb="$out/python3-vicreg_${version}-1_$(dpkg --print-architecture).deb"
  [ -f "$pydeb" ] || fail "no $pydeb"
  pydepends=$(field "$pydeb" Depends)
  echo "$pydepends" | grep "vicreg (= $version" >/dev/null || fail "python3-vicreg Depends: $pydepends"
  echo "$pydepends" | grep "python3-torch" >/dev/null || fail "python3-vicreg Depends: $pydepends"
  dpkg-deb --contents "$pydeb" | grep "/usr/lib/python3/dist-packages/vicreg/__init__.py" >/dev/null ||
    fail "$pydeb lacks the package"
  debs+=("$pydeb")
fi
# apt resolves every dependency by name (a dry run: nothing is installed).
if command -v apt-get >/dev/null; then
  apt-get install --simulate --no-install-recommends "${debs[@]}" >"$out/apt.log" 2>&1 ||
    { cat "$out/apt.log"; fail "apt-get cannot install ${debs[*]}"; }
fi
echo "$info" | sed -n '/Package:/,$p'
echo "check_deb: ${debs[*]##*/} ok"
