// Image files (decode_image): JPEGs through decode_jpeg (libjpeg, its EXIF reading and the
// fallback to OpenCV), each input decoded to RGB and to grayscale.
#include "fuzz.h"
#include "vicreg/data.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = vicreg::fuzz::input_file(data, size, ".jpg");
  vicreg::fuzz::run([&] { vicreg::decode_image(path, 3); });
  return vicreg::fuzz::run([&] { vicreg::decode_image(path, 1); });
}
