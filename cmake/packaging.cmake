# CPack: `cpack -G DEB` in the build directory (scripts/package.sh) makes two Debian packages,
# vicreg (library, headers, CMake and pkg-config files, CLI, documentation) and python3-vicreg
# (the Python package), whose dependencies are Debian 12's package names: the shared libraries'
# found by dpkg-shlibdeps, and the -dev packages that vicreg's headers and CMake package need.
set(CPACK_PACKAGE_NAME vicreg)
set(CPACK_PACKAGE_VENDOR "The vicreg developers")
set(CPACK_PACKAGE_CONTACT "The vicreg developers")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_GENERATOR DEB)
set(CPACK_COMPONENTS_ALL vicreg)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # NAME_VERSION-REVISION_ARCH.deb
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_ENABLE_COMPONENT_DEPENDS ON)
set(CPACK_COMPONENT_PYTHON_DEPENDS vicreg)

set(CPACK_DEBIAN_VICREG_PACKAGE_NAME vicreg)
set(CPACK_DEBIAN_VICREG_PACKAGE_SHLIBDEPS ON)
# libvicreg.so is in the package itself: dpkg-shlibdeps must not look for it elsewhere.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS ${CMAKE_INSTALL_LIBDIR})
set(CPACK_DEBIAN_VICREG_PACKAGE_DEPENDS
    "libtorch-dev, libopencv-core-dev, libopencv-imgproc-dev, libopencv-imgcodecs-dev, nlohmann-json3-dev, libopenblas0-openmp")
set(CPACK_COMPONENT_VICREG_DESCRIPTION
    "VICReg self-supervised representation learning on LibTorch
The fused VICReg loss, backbones (ResNet, ViT, ConvNeXt) with torchvision's names, data
readers and augmentations, training with LARS/AdamW and mixed precision, evaluation, and the
vicreg command-line tool; for C++ projects through find_package(vicreg) or pkg-config.")

if(TARGET vicreg_python)
  list(APPEND CPACK_COMPONENTS_ALL python)
  set(CPACK_DEBIAN_PYTHON_PACKAGE_NAME python3-vicreg)
  # The extension links python3-torch's libtorch_python, which dpkg-shlibdeps cannot attribute.
  set(CPACK_DEBIAN_PYTHON_PACKAGE_SHLIBDEPS OFF)
  # The extension is built for one CPython ABI (its file name says cpython-3XY).
  math(EXPR _vicreg_python_next "${VICREG_PYTHON_VERSION_MINOR} + 1")
  set(CPACK_DEBIAN_PYTHON_PACKAGE_DEPENDS
      "python3-torch, python3 (>= 3.${VICREG_PYTHON_VERSION_MINOR}), python3 (<< 3.${_vicreg_python_next})")
  set(CPACK_DEBIAN_PYTHON_PACKAGE_SECTION python)
  set(CPACK_COMPONENT_PYTHON_DESCRIPTION
      "VICReg self-supervised representation learning on LibTorch: the Python module
vicreg.vicreg_loss (the fused loss with a closed-form backward), vicreg.load_backbone and
the weights readers, on python3-torch.")
endif()
include(CPack)
