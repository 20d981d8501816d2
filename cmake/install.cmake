# cmake --install: the shared library, its headers, the CMake package (find_package(vicreg)), a
# pkg-config file, the CLI, the Python package when it is built, the documentation and the
# example's source; and CPack's Debian packages (cmake/packaging.cmake). Components: "vicreg"
# (all but Python) and "python".
include(CMakePackageConfigHelpers)

set(VICREG_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/vicreg" CACHE STRING
    "Install directory of vicregConfig.cmake, relative to the prefix")

install(TARGETS vicreg EXPORT vicregTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT vicreg NAMELINK_COMPONENT vicreg)
install(DIRECTORY include/vicreg DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT vicreg
        FILES_MATCHING PATTERN "*.h")
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/include/vicreg/version.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/vicreg COMPONENT vicreg)

# The package: targets, a config that finds the dependencies, a version file (SameMinorVersion:
# the ABI of 0.x changes with the minor version, as the SONAME says).
install(EXPORT vicregTargets NAMESPACE vicreg:: DESTINATION ${VICREG_INSTALL_CMAKEDIR}
        COMPONENT vicreg)
configure_package_config_file(cmake/vicregConfig.cmake.in
                              ${CMAKE_CURRENT_BINARY_DIR}/vicregConfig.cmake
                              INSTALL_DESTINATION ${VICREG_INSTALL_CMAKEDIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/vicregConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/vicregConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/vicregConfigVersion.cmake cmake/vicregOpenCV.cmake
        DESTINATION ${VICREG_INSTALL_CMAKEDIR} COMPONENT vicreg)

# vicreg.pc: prefix relative to the file (relocatable); LibTorch's libraries and headers as this
# build found them (LibTorch has no .pc of its own), and the OpenMP OpenBLAS RPATH that the CMake
# target carries (CMakeLists.txt, BLAS).
file(RELATIVE_PATH VICREG_PC_PREFIX_FROM_PCDIR "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
string(REGEX REPLACE "/$" "" VICREG_PC_PREFIX_FROM_PCDIR "${VICREG_PC_PREFIX_FROM_PCDIR}")
set(VICREG_PC_CFLAGS "")
foreach(_dir IN LISTS TORCH_INCLUDE_DIRS)
  if(NOT _dir IN_LIST CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES AND NOT _dir STREQUAL "/usr/include")
    string(APPEND VICREG_PC_CFLAGS " -I${_dir}")
  endif()
endforeach()
if(TORCH_CXX_FLAGS)
  string(APPEND VICREG_PC_CFLAGS " ${TORCH_CXX_FLAGS}")
endif()
set(VICREG_PC_LIBS "")
foreach(_lib torch torch_cpu torch_cuda c10 c10_cuda)
  if(TARGET ${_lib})
    string(APPEND VICREG_PC_LIBS " $<TARGET_LINKER_FILE:${_lib}>")
  endif()
endforeach()
if(VICREG_OPENBLAS_DIR AND EXISTS "${VICREG_OPENBLAS_DIR}/libblas.so.3")
  string(APPEND VICREG_PC_LIBS " -Wl,--disable-new-dtags,-rpath,${VICREG_OPENBLAS_DIR}")
endif()
string(STRIP "${VICREG_PC_CFLAGS}" VICREG_PC_CFLAGS)
string(STRIP "${VICREG_PC_LIBS}" VICREG_PC_LIBS)
configure_file(cmake/vicreg.pc.in ${CMAKE_CURRENT_BINARY_DIR}/vicreg.pc.in @ONLY)
file(GENERATE OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/vicreg.pc
     INPUT ${CMAKE_CURRENT_BINARY_DIR}/vicreg.pc.in)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/vicreg.pc
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig COMPONENT vicreg)

if(TARGET vicreg_cli)
  # The CLI finds libvicreg next to it, in ../lib (wherever the prefix is).
  file(RELATIVE_PATH _vicreg_bin_to_lib "/p/${CMAKE_INSTALL_BINDIR}" "/p/${CMAKE_INSTALL_LIBDIR}")
  set_target_properties(vicreg_cli PROPERTIES INSTALL_RPATH "$ORIGIN/${_vicreg_bin_to_lib}")
  install(TARGETS vicreg_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT vicreg)
endif()

if(TARGET vicreg_python)
  install(TARGETS vicreg_python LIBRARY DESTINATION ${VICREG_PYTHON_INSTALL_DIR}/vicreg
          COMPONENT python)
  install(FILES python/vicreg/__init__.py DESTINATION ${VICREG_PYTHON_INSTALL_DIR}/vicreg
          COMPONENT python)
endif()

install(FILES README.md DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT vicreg)
install(DIRECTORY docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR} COMPONENT vicreg)
install(FILES examples/pretrain_minimal.cpp DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples
        COMPONENT vicreg)

include(cmake/packaging.cmake)
