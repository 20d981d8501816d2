// Image files (decode_image): JPEGs through decode_jpeg (libjpeg, its EXIF reading and the
// fallback to OpenCV), each input decoded to RGB and to grayscale. Images of more than 2^20
// pixels are refused (OPENCV_IO_MAX_IMAGE_PIXELS, which decode_jpeg honours): a damaged header
// can declare 65535 x 65535 pixels, and decoding them would measure nothing but time.
#include "fuzz.h"
#include "vicreg/data.h"

#include <cstdlib>

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  setenv("OPENCV_IO_MAX_IMAGE_PIXELS", "1M", 1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = vicreg::fuzz::input_file(data, size, ".jpg");
  vicreg::fuzz::run([&] { vicreg::decode_image(path, 3); });
  return vicreg::fuzz::run([&] { vicreg::decode_image(path, 1); });
}
