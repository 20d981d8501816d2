# OpenCV's core, imgproc and imgcodecs as the imported targets opencv_core, opencv_imgproc and
# opencv_imgcodecs, for vicreg's build and for vicregConfig.cmake alike. Debian ships
# OpenCVConfig.cmake only in libopencv-dev, which pulls in the whole of OpenCV (GUI, video, ...);
# the three -dev packages vicreg needs have headers and libraries but no CMake config, so without
# it the libraries are found directly and wrapped in targets of the same names.
if(NOT TARGET opencv_core)
  find_package(OpenCV QUIET COMPONENTS core imgproc imgcodecs)
endif()
if(NOT TARGET opencv_core)
  find_path(VICREG_OPENCV_INCLUDE opencv2/core.hpp PATH_SUFFIXES opencv4)
  if(NOT VICREG_OPENCV_INCLUDE)
    message(FATAL_ERROR "vicreg needs OpenCV's core, imgproc and imgcodecs (Debian: apt install "
                        "libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev)")
  endif()
  foreach(_vicreg_cv core imgproc imgcodecs)
    find_library(VICREG_OPENCV_${_vicreg_cv} opencv_${_vicreg_cv})
    if(NOT VICREG_OPENCV_${_vicreg_cv})
      message(FATAL_ERROR "vicreg: libopencv_${_vicreg_cv} not found (Debian: apt install "
                          "libopencv-${_vicreg_cv}-dev)")
    endif()
    add_library(opencv_${_vicreg_cv} UNKNOWN IMPORTED)
    set_target_properties(opencv_${_vicreg_cv} PROPERTIES
      IMPORTED_LOCATION ${VICREG_OPENCV_${_vicreg_cv}}
      INTERFACE_INCLUDE_DIRECTORIES ${VICREG_OPENCV_INCLUDE})
  endforeach()
endif()
