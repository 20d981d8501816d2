#include "vicreg/io/jpeg.h"

#include "vicreg/error.h"

#include <algorithm>
#include <csetjmp>
#include <cstdio>  // jpeglib.h uses FILE without including it
#include <cstdlib>
#include <cstring>
#include <string>

#include <jpeglib.h>

namespace vicreg {
namespace {

// libjpeg reports a fatal error through error_exit, which must not return: it jumps back to the
// setjmp of the phase running (read_header, read_pixels). Those functions hold nothing with a
// destructor, so the jump skips no C++ clean-up; the decompressor itself is destroyed by its
// owner, above them.
struct ErrorManager {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
};

[[noreturn]] void on_error(j_common_ptr cinfo) {
  std::longjmp(reinterpret_cast<ErrorManager*>(cinfo->err)->jump, 1);
}

// Warnings (corrupt data libjpeg recovers from) are accepted, as OpenCV accepts them, and not
// printed: libjpeg's message names no file, and many loader threads would interleave them.
void on_message(j_common_ptr /*cinfo*/, int /*level*/) {}

struct Decompressor {
  ErrorManager err{};
  jpeg_decompress_struct cinfo{};  // zeroed: destroying it before it is created does nothing
  Decompressor() {
    cinfo.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = on_error;
    err.mgr.emit_message = on_message;
  }
  ~Decompressor() { jpeg_destroy_decompress(&cinfo); }
  Decompressor(const Decompressor&) = delete;
  Decompressor& operator=(const Decompressor&) = delete;
};

// The header and the APP1 (EXIF) markers; false where libjpeg stops.
bool read_header(Decompressor& d, const uint8_t* data, size_t size) {
  if (setjmp(d.err.jump) != 0) return false;
  jpeg_create_decompress(&d.cinfo);
  jpeg_mem_src(&d.cinfo, data, static_cast<unsigned long>(size));
  jpeg_save_markers(&d.cinfo, JPEG_APP0 + 1, 0xFFFF);
  return jpeg_read_header(&d.cinfo, TRUE) == JPEG_HEADER_OK;
}

// The pixels, into rows `step` bytes apart from `out`, which holds `rows` rows of `row_bytes`;
// false where libjpeg stops or its output is not that shape.
bool read_pixels(Decompressor& d, unsigned char* out, size_t step, JDIMENSION rows,
                 size_t row_bytes) {
  if (setjmp(d.err.jump) != 0) return false;
  jpeg_start_decompress(&d.cinfo);
  if (d.cinfo.output_height != rows ||
      size_t{d.cinfo.output_width} * static_cast<size_t>(d.cinfo.output_components) != row_bytes) {
    return false;
  }
  constexpr JDIMENSION kBatch = 16;  // rows handed to libjpeg at a time (>= rec_outbuf_height)
  JSAMPROW row_pointers[kBatch];
  while (d.cinfo.output_scanline < rows) {
    const JDIMENSION first = d.cinfo.output_scanline;
    const JDIMENSION count = std::min(kBatch, rows - first);
    for (JDIMENSION k = 0; k < count; ++k) row_pointers[k] = out + (first + k) * step;
    if (jpeg_read_scanlines(&d.cinfo, row_pointers, count) == 0) return false;
  }
  jpeg_finish_decompress(&d.cinfo);
  return true;
}

}  // namespace

uint64_t image_pixel_limit(const char* value) {
  constexpr uint64_t kDefault = uint64_t{1} << 30;
  if (value == nullptr || *value < '0' || *value > '9') return kDefault;
  char* end = nullptr;
  const unsigned long long n = std::strtoull(value, &end, 10);
  const std::string unit(end);
  const int shift = unit.empty()                  ? 0
                    : unit == "K" || unit == "KB" ? 10
                    : unit == "M" || unit == "MB" ? 20
                    : unit == "G" || unit == "GB" ? 30
                                                  : -1;
  if (shift < 0 || n == 0 || n > (uint64_t{1} << 40) >> shift) return kDefault;
  return uint64_t{n} << shift;
}

uint64_t max_image_pixels() {
  static const uint64_t limit = image_pixel_limit(std::getenv("OPENCV_IO_MAX_IMAGE_PIXELS"));
  return limit;
}

bool looks_like_jpeg(const uint8_t* data, size_t size) {
  return size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF;
}

int exif_orientation(const uint8_t* data, size_t size) {
  if (size < 6 || std::memcmp(data, "Exif\0\0", 6) != 0) return 0;
  const uint8_t* tiff = data + 6;  // offsets count from the TIFF header
  const size_t n = size - 6;
  if (n < 8) return 0;
  bool little;
  if (tiff[0] == 'I' && tiff[1] == 'I') {
    little = true;
  } else if (tiff[0] == 'M' && tiff[1] == 'M') {
    little = false;
  } else {
    return 0;
  }
  const auto u16 = [&](size_t at) -> uint32_t {
    return little ? tiff[at] | uint32_t{tiff[at + 1]} << 8 : uint32_t{tiff[at]} << 8 | tiff[at + 1];
  };
  const auto u32 = [&](size_t at) -> uint32_t {
    return little ? u16(at) | u16(at + 2) << 16 : u16(at) << 16 | u16(at + 2);
  };
  if (u16(2) != 42) return 0;
  const size_t ifd = u32(4);
  if (ifd > n || n - ifd < 2) return 0;
  const size_t entries = u16(ifd);
  if ((n - ifd - 2) / 12 < entries) return 0;
  for (size_t i = 0; i < entries; ++i) {
    const size_t e = ifd + 2 + 12 * i;
    if (u16(e) != 0x0112) continue;
    if (u16(e + 2) != 3 || u32(e + 4) != 1) return 0;  // one SHORT, held in the entry itself
    const uint32_t orientation = u16(e + 8);
    return orientation >= 1 && orientation <= 8 ? static_cast<int>(orientation) : 0;
  }
  return 1;
}

std::optional<cv::Mat> decode_jpeg(const uint8_t* data, size_t size, int channels) {
  if ((channels != 1 && channels != 3) || !looks_like_jpeg(data, size)) return std::nullopt;
  Decompressor d;
  if (!read_header(d, data, size)) return std::nullopt;
  jpeg_decompress_struct& c = d.cinfo;
  // Before anything is left to OpenCV: its own limit is read when it is loaded, this one when
  // first asked (the fuzz target sets a small one).
  const uint64_t pixels = uint64_t{c.image_width} * c.image_height;
  if (pixels > max_image_pixels()) {
    throw FormatError("a JPEG of " + std::to_string(c.image_width) + " x " +
                      std::to_string(c.image_height) + " pixels, more than the limit of " +
                      std::to_string(max_image_pixels()) +
                      " (set OPENCV_IO_MAX_IMAGE_PIXELS to allow more)");
  }
  const bool known =
      (c.jpeg_color_space == JCS_GRAYSCALE && c.num_components == 1) ||
      ((c.jpeg_color_space == JCS_YCbCr || c.jpeg_color_space == JCS_RGB) && c.num_components == 3);
  if (!known) return std::nullopt;  // CMYK, YCCK: OpenCV converts them its own way
  for (jpeg_saved_marker_ptr m = c.marker_list; m != nullptr; m = m->next) {
    if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 &&
        std::memcmp(m->data, "Exif\0\0", 6) == 0 &&
        exif_orientation(m->data, m->data_length) != 1) {
      return std::nullopt;  // OpenCV turns the image upright, or decides what unreadable EXIF means
    }
  }
  // (libjpeg itself refuses an image of 0 pixels.) JCS_EXT_RGB: libjpeg-turbo's explicit RGB.
  c.out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_EXT_RGB;
  cv::Mat image(static_cast<int>(c.image_height), static_cast<int>(c.image_width),
                channels == 1 ? CV_8UC1 : CV_8UC3);
  if (!read_pixels(d, image.data, image.step[0], c.image_height,
                   static_cast<size_t>(image.cols) * static_cast<size_t>(channels))) {
    return std::nullopt;
  }
  return image;
}

}  // namespace vicreg
