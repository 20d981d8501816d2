// Data formats: IDX (MNIST, Fashion-MNIST), CIFAR binary batches and image files (data.h).
#include "vicreg/data.h"

#include "vicreg/io/files.h"
#include "vicreg/io/jpeg.h"
#include "vicreg/io/npy.h"

#include "vicreg/error.h"

#include <ATen/CPUGeneratorImpl.h>
#include <zlib.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <regex>
#include <set>
#include <stdexcept>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace vicreg {

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw FormatError("IDX file '" + path + "': " + what, {"data_dir"});
}

/// gzread() reads gzip streams and passes plain files through unchanged.
class GzFile {
 public:
  explicit GzFile(const std::string& path) : path_(path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) {
      fail(path,
           "no such file (for Fashion-MNIST: apt-get install dataset-fashion-mnist, or "
           "point data_dir at the folder holding the *-ubyte[.gz] files)");
    }
    file_ = gzopen(path.c_str(), "rb");
    if (file_ == nullptr) fail(path, "cannot be opened for reading");
  }
  ~GzFile() {
    if (file_ != nullptr) gzclose(file_);
  }
  /// True when the file is not compressed (valid after the first read).
  bool direct() const { return gzdirect(file_) == 1; }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;

  /// Reads up to n bytes; returns how many were read, throws on a decompression error.
  size_t read(void* dst, size_t n) {
    size_t done = 0;
    auto* out = static_cast<char*>(dst);
    while (done < n) {
      const auto chunk = static_cast<unsigned>(std::min<size_t>(n - done, 1u << 30));
      const int got = gzread(file_, out + done, chunk);
      if (got < 0) {
        int code = 0;
        fail(path_, std::string("corrupt compressed data (") + gzerror(file_, &code) + ")");
      }
      if (got == 0) break;
      done += static_cast<size_t>(got);
    }
    return done;
  }

 private:
  std::string path_;
  gzFile file_ = nullptr;
};

}  // namespace

torch::Tensor read_idx(const std::string& path) {
  GzFile in(path);
  std::array<uint8_t, 4> magic{};
  if (in.read(magic.data(), 4) != 4) fail(path, "shorter than the 4-byte IDX magic number");
  if (magic[0] != 0 || magic[1] != 0) {
    fail(path, "not an IDX file (the magic number must start with two zero bytes)");
  }
  if (magic[2] != 0x08) {
    fail(path, "element type 0x" + std::to_string(magic[2]) +
                   " is not supported (only unsigned bytes, 0x08, as in MNIST)");
  }
  const int ndims = magic[3];
  if (ndims < 1 || ndims > 4) {
    fail(path, "has " + std::to_string(ndims) + " dimensions; expected 1 to 4");
  }
  std::vector<int64_t> sizes;
  int64_t count = 1;
  for (int i = 0; i < ndims; ++i) {
    std::array<uint8_t, 4> b{};
    if (in.read(b.data(), 4) != 4) fail(path, "truncated in its header (dimension sizes)");
    const int64_t size =
        (int64_t{b[0]} << 24) | (int64_t{b[1]} << 16) | (int64_t{b[2]} << 8) | int64_t{b[3]};
    if (size <= 0 || size > (int64_t{1} << 31)) {
      fail(path, "dimension " + std::to_string(i) + " has size " + std::to_string(size));
    }
    if (__builtin_mul_overflow(count, size, &count) || count > (int64_t{1} << 40)) {
      fail(path, "declares more than 2^40 elements");
    }
    sizes.push_back(size);
  }
  // The declared size is believed only as far as the file can hold it, before any allocation:
  // a raw file must hold the bytes, a gzip file can inflate to at most 1032 times its size
  // (deflate's limit).
  std::error_code ec;
  const uintmax_t file_bytes = std::filesystem::file_size(path, ec);
  const auto header_bytes = static_cast<uintmax_t>(4 + 4 * ndims);
  const auto declared = static_cast<uintmax_t>(count);
  if (!ec && in.direct() && file_bytes < header_bytes + declared) {
    fail(path, "truncated: the header declares " + std::to_string(declared) +
                   " bytes of data, the file holds " + std::to_string(file_bytes - header_bytes) +
                   " (an interrupted download?)");
  }
  if (!ec && !in.direct() && declared > 1032 * file_bytes) {
    fail(path, "declares " + std::to_string(declared) +
                   " bytes of data, more than a gzip file of " + std::to_string(file_bytes) +
                   " bytes can inflate to (deflate's limit is 1032:1): a corrupt or hostile file");
  }
  torch::Tensor data = torch::empty(sizes, torch::kUInt8);
  const size_t got = in.read(data.data_ptr<uint8_t>(), static_cast<size_t>(count));
  if (got != static_cast<size_t>(count)) {
    fail(path, "truncated: the header declares " + std::to_string(count) +
                   " bytes of data, the "
                   "file holds " +
                   std::to_string(got) + " (an interrupted download?)");
  }
  uint8_t extra = 0;
  if (in.read(&extra, 1) != 0) fail(path, "has bytes after the data its header declares");
  return data;
}

LabeledImages read_idx_split(const std::string& images_path, const std::string& labels_path) {
  torch::Tensor images = read_idx(images_path);
  torch::Tensor labels = read_idx(labels_path);
  if (images.dim() != 3) {
    fail(images_path,
         "holds a " + std::to_string(images.dim()) + "-D array; images must be [N, H, W]");
  }
  if (labels.dim() != 1) {
    fail(labels_path, "holds a " + std::to_string(labels.dim()) + "-D array; labels must be [N]");
  }
  if (images.size(0) != labels.size(0)) {
    throw FormatError("IDX images '" + images_path + "' hold " + std::to_string(images.size(0)) +
                      " images but labels '" + labels_path + "' hold " +
                      std::to_string(labels.size(0)) +
                      " labels: the two files are not of the same split");
  }
  return {images.unsqueeze(1), labels.to(torch::kLong)};
}

// ---------------------------------------------------------------------------------------------
// CIFAR

LabeledImages read_cifar_bin(const std::vector<std::string>& paths, bool cifar100) {
  const int64_t label_bytes = cifar100 ? 2 : 1, pixels = 3 * 32 * 32;
  const int64_t record = label_bytes + pixels, classes = cifar100 ? 100 : 10;
  std::vector<torch::Tensor> images, labels;
  for (const auto& path : paths) {
    const auto fail_cifar = [&path](const std::string& what) {
      throw FormatError("CIFAR file '" + path + "': " + what, {"data_dir"});
    };
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) {
      fail_cifar(
          "no such file (download the binary version from "
          "https://www.cs.toronto.edu/~kriz/cifar.html, unpack it, and point data_dir "
          "at the folder holding the .bin files)");
    }
    const auto bytes = static_cast<int64_t>(std::filesystem::file_size(path));
    if (bytes == 0 || bytes % record != 0) {
      fail_cifar("holds " + std::to_string(bytes) + " bytes, not a whole number of " +
                 std::to_string(record) + "-byte records (truncated, or CIFAR-" +
                 (cifar100 ? "10" : "100") + " data given as CIFAR-" + (cifar100 ? "100" : "10") +
                 "?)");
    }
    const int64_t n = bytes / record;
    torch::Tensor raw = torch::empty({n, record}, torch::kUInt8);
    std::ifstream in(path, std::ios::binary);
    in.read(reinterpret_cast<char*>(raw.data_ptr<uint8_t>()), bytes);
    if (in.gcount() != bytes) fail_cifar("could not be read completely");
    torch::Tensor label = raw.select(1, label_bytes - 1).to(torch::kLong);
    if (label.max().item<int64_t>() >= classes) {
      fail_cifar("has a label >= " + std::to_string(classes) + " (CIFAR-100 data given as " +
                 "CIFAR-10, or a corrupt file)");
    }
    labels.push_back(label);
    images.push_back(raw.narrow(1, label_bytes, pixels).reshape({n, 3, 32, 32}));
  }
  if (images.empty()) throw FormatError("CIFAR: no files given");
  return {torch::cat(images), torch::cat(labels)};
}

// ---------------------------------------------------------------------------------------------
// Image files

cv::Mat decode_image(const std::string& path, int channels) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    throw FormatError("image '" + path + "': no such file");
  }
  // JPEGs decode straight to RGB where decode_jpeg can (most of them); the rest through OpenCV.
  const std::string head = read_file_head(path, "image", 3);
  if (looks_like_jpeg(reinterpret_cast<const uint8_t*>(head.data()), head.size())) {
    const std::string bytes = read_file(path, "image");
    std::optional<cv::Mat> img;
    try {
      img = decode_jpeg(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                        channels == 1 ? 1 : 3);
    } catch (const FormatError& e) {
      throw FormatError("image '" + path + "': " + e.what());
    }
    if (img) return std::move(*img);
  }
  cv::Mat img = cv::imread(path, channels == 1 ? cv::IMREAD_GRAYSCALE : cv::IMREAD_COLOR);
  if (img.empty()) {
    throw FormatError("image '" + path +
                      "': cannot be decoded (corrupt, truncated, or not JPEG/PNG/BMP/WebP)");
  }
  if (channels != 1) cv::cvtColor(img, img, cv::COLOR_BGR2RGB);
  return img;
}

}  // namespace vicreg
