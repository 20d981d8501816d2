#include "vicreg/data.h"

#include <zlib.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <vector>

namespace vicreg {

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error("IDX file '" + path + "': " + what);
}

/// gzread() reads gzip streams and passes plain files through unchanged.
class GzFile {
 public:
  explicit GzFile(const std::string& path) : path_(path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) {
      fail(path, "no such file (for Fashion-MNIST: apt-get install dataset-fashion-mnist, or "
                 "point --data-dir at the folder holding the *-ubyte[.gz] files)");
    }
    file_ = gzopen(path.c_str(), "rb");
    if (file_ == nullptr) fail(path, "cannot be opened for reading");
  }
  ~GzFile() {
    if (file_ != nullptr) gzclose(file_);
  }
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
    const int64_t size = (int64_t{b[0]} << 24) | (int64_t{b[1]} << 16) | (int64_t{b[2]} << 8) |
                         int64_t{b[3]};
    if (size <= 0 || size > (int64_t{1} << 31)) {
      fail(path, "dimension " + std::to_string(i) + " has size " + std::to_string(size));
    }
    count *= size;
    if (count > (int64_t{1} << 40)) fail(path, "declares more than 2^40 elements");
    sizes.push_back(size);
  }
  torch::Tensor data = torch::empty(sizes, torch::kUInt8);
  const size_t got = in.read(data.data_ptr<uint8_t>(), static_cast<size_t>(count));
  if (got != static_cast<size_t>(count)) {
    fail(path, "truncated: the header declares " + std::to_string(count) + " bytes of data, the "
                   "file holds " + std::to_string(got) + " (an interrupted download?)");
  }
  uint8_t extra = 0;
  if (in.read(&extra, 1) != 0) fail(path, "has bytes after the data its header declares");
  return data;
}

LabeledImages read_idx_split(const std::string& images_path, const std::string& labels_path) {
  torch::Tensor images = read_idx(images_path);
  torch::Tensor labels = read_idx(labels_path);
  if (images.dim() != 3) {
    fail(images_path, "holds a " + std::to_string(images.dim()) +
                          "-D array; images must be [N, H, W]");
  }
  if (labels.dim() != 1) {
    fail(labels_path, "holds a " + std::to_string(labels.dim()) + "-D array; labels must be [N]");
  }
  if (images.size(0) != labels.size(0)) {
    throw std::runtime_error("IDX images '" + images_path + "' hold " +
                             std::to_string(images.size(0)) + " images but labels '" +
                             labels_path + "' hold " + std::to_string(labels.size(0)) +
                             " labels: the two files are not of the same split");
  }
  return {images.unsqueeze(1), labels.to(torch::kLong)};
}

}  // namespace vicreg
