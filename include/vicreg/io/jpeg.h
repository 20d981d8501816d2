// JPEG decoding straight into RGB with libjpeg(-turbo): the image folders' common case, without
// OpenCV's two channel swaps (its decoder writes BGR through a scalar loop, and decode_image then
// swaps back to RGB). Anything it does not handle exactly as cv::imread would is left to OpenCV.
#pragma once

#include <opencv2/core/mat.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>

namespace vicreg {

/// Whether `data` starts as a JPEG file does (the SOI marker and the start of another marker).
bool looks_like_jpeg(const uint8_t* data, size_t size);

/// Decodes a baseline or progressive JPEG in YCbCr, RGB or grayscale to an 8-bit RGB (channels 3)
/// or grayscale (channels 1) image, pixel for pixel what cv::imread (IMREAD_COLOR, then BGR to
/// RGB; IMREAD_GRAYSCALE) gives from the same libjpeg. Returns nothing, for the caller to decode
/// with OpenCV, where that is not certain or not done here: CMYK and YCCK files, an EXIF
/// orientation other than 1 (OpenCV rotates the image) or EXIF data that cannot be read, and any
/// file libjpeg stops on (corrupt or truncated: OpenCV then reports it). libjpeg's warnings (a
/// few missing bytes at the end, extraneous bytes before a marker) are accepted, as OpenCV
/// accepts them. Throws FormatError for an image of more than max_image_pixels(), whatever its
/// kind: a damaged header can declare 65535 x 65535 pixels, which libjpeg would fill.
std::optional<cv::Mat> decode_jpeg(const uint8_t* data, size_t size, int channels);

/// OpenCV's limit on the pixels of an image it decodes: image_pixel_limit() of
/// OPENCV_IO_MAX_IMAGE_PIXELS as it was when first asked.
uint64_t max_image_pixels();

/// The limit `value` sets: a number, optionally followed by K, M or G (KB, MB, GB: x1024,
/// x1024^2, x1024^3), up to 2^40; 2^30 (OpenCV's default) where it is null or not such a number.
uint64_t image_pixel_limit(const char* value);

/// The EXIF orientation (1-8) in `data`, the payload of an APP1 marker (it starts "Exif\0\0");
/// 1 where IFD0 has no orientation tag, 0 where the data cannot be read.
int exif_orientation(const uint8_t* data, size_t size);

}  // namespace vicreg
