#!/usr/bin/env bash
# Debian packages of vicreg: builds ./build (scripts/build.sh) and runs CPack there, writing
# build/packages/vicreg_VERSION-1_ARCH.deb (library, headers, CMake and pkg-config files, CLI,
# docs) and python3-vicreg_VERSION-1_ARCH.deb (the Python package). Install them with
#   sudo apt install ./build/packages/vicreg_*.deb ./build/packages/python3-vicreg_*.deb
# Extra arguments go to CMake's configure step, as for scripts/build.sh.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/build.sh" "$@"
rm -rf "$root/build/packages"
(cd "$root/build" && cpack -G DEB -B "$root/build/packages")
for deb in "$root"/build/packages/*.deb; do
  echo "package: $deb"
  dpkg-deb --field "$deb" Package Version Depends | sed 's/^/  /'
done
