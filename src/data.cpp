#include "vicreg/data.h"

#include "vicreg/io/npy.h"

#include "vicreg/error.h"

#include <zlib.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <set>
#include <stdexcept>
#include <vector>

namespace vicreg {

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw FormatError("IDX file '" + path + "': " + what);
}

/// gzread() reads gzip streams and passes plain files through unchanged.
class GzFile {
 public:
  explicit GzFile(const std::string& path) : path_(path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) {
      fail(path,
           "no such file (for Fashion-MNIST: apt-get install dataset-fashion-mnist, or "
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
    const int64_t size =
        (int64_t{b[0]} << 24) | (int64_t{b[1]} << 16) | (int64_t{b[2]} << 8) | int64_t{b[3]};
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
      throw FormatError("CIFAR file '" + path + "': " + what);
    };
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) {
      fail_cifar(
          "no such file (download the binary version from "
          "https://www.cs.toronto.edu/~kriz/cifar.html, unpack it, and point --data-dir "
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
  cv::Mat img = cv::imread(path, channels == 1 ? cv::IMREAD_GRAYSCALE : cv::IMREAD_COLOR);
  if (img.empty()) {
    throw FormatError("image '" + path +
                      "': cannot be decoded (corrupt, truncated, or not JPEG/PNG/BMP/WebP)");
  }
  if (channels != 1) cv::cvtColor(img, img, cv::COLOR_BGR2RGB);
  return img;
}

namespace {

bool is_image_file(const std::filesystem::path& p) {
  static const std::set<std::string> kExt = {".jpg", ".jpeg", ".png", ".bmp", ".webp"};
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return kExt.count(ext) > 0;
}

std::vector<std::string> images_under(const std::filesystem::path& dir) {
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file() && is_image_file(e.path())) files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

ImageFolder scan_image_folder(const std::string& root) {
  std::error_code ec;
  if (!std::filesystem::is_directory(root, ec)) {
    throw FormatError("image folder '" + root + "': no such directory");
  }
  ImageFolder folder;
  for (const auto& e : std::filesystem::directory_iterator(root)) {
    if (e.is_directory()) folder.classes.push_back(e.path().filename().string());
  }
  std::sort(folder.classes.begin(), folder.classes.end());
  for (size_t c = 0; c < folder.classes.size(); ++c) {
    for (auto& f : images_under(std::filesystem::path(root) / folder.classes[c])) {
      folder.files.push_back(std::move(f));
      folder.labels.push_back(static_cast<int64_t>(c));
    }
  }
  if (folder.classes.empty()) {
    for (const auto& e : std::filesystem::directory_iterator(root)) {
      if (e.is_regular_file() && is_image_file(e.path())) folder.files.push_back(e.path().string());
    }
    std::sort(folder.files.begin(), folder.files.end());
  }
  if (folder.files.empty()) {
    throw FormatError("image folder '" + root +
                      "' holds no images (.jpg, .jpeg, .png, .bmp, .webp), neither directly "
                      "nor in one subfolder per class");
  }
  return folder;
}

// ---------------------------------------------------------------------------------------------
// Dataset

int64_t Dataset::size() const {
  if (images.defined()) return images.size(0);
  if (vectors.defined()) return vectors.size(0);
  return static_cast<int64_t>(files.size());
}

cv::Mat Dataset::image(int64_t i) const {
  TORCH_CHECK(i >= 0 && i < size(), "Dataset::image: index ", i, " out of range [0, ", size(), ")");
  if (images.defined()) {
    const torch::Tensor& t = images;
    const int type = channels == 1 ? CV_8UC1 : CV_8UC3;
    return cv::Mat(static_cast<int>(t.size(1)), static_cast<int>(t.size(2)), type,
                   const_cast<uint8_t*>(t.data_ptr<uint8_t>()) + i * t.stride(0));
  }
  TORCH_CHECK(!files.empty(), "Dataset '", name, "' holds vectors, not images");
  return decode_image(files[static_cast<size_t>(i)], static_cast<int>(channels));
}

torch::Tensor Dataset::require_labels() const {
  if (!labels.defined()) {
    throw FormatError("data set '" + name + "' has no labels");
  }
  return labels;
}

Dataset Dataset::subset(const torch::Tensor& indices) const {
  TORCH_CHECK(indices.dim() == 1, "Dataset::subset: indices must be [K], got ", indices.sizes());
  const torch::Tensor idx = indices.to(torch::kLong);
  if (idx.numel() > 0) {
    TORCH_CHECK(idx.min().item<int64_t>() >= 0 && idx.max().item<int64_t>() < size(),
                "Dataset::subset: an index is out of range [0, ", size(), ")");
  }
  Dataset out;
  out.name = name;
  out.classes = classes;
  out.channels = channels;
  if (images.defined()) out.images = images.index_select(0, idx).contiguous();
  if (vectors.defined()) out.vectors = vectors.index_select(0, idx).contiguous();
  if (labels.defined()) out.labels = labels.index_select(0, idx);
  if (!files.empty()) {
    const int64_t* p = idx.data_ptr<int64_t>();
    for (int64_t i = 0; i < idx.numel(); ++i) out.files.push_back(files[static_cast<size_t>(p[i])]);
  }
  return out;
}

template <>
const NameTable<DatasetKind>& name_table<DatasetKind>() {
  static const NameTable<DatasetKind> t{"--dataset",
                                        {{DatasetKind::FashionMnist, "fashion-mnist"},
                                         {DatasetKind::Mnist, "mnist"},
                                         {DatasetKind::Cifar10, "cifar10"},
                                         {DatasetKind::Cifar100, "cifar100"},
                                         {DatasetKind::ImageFolder, "image-folder"},
                                         {DatasetKind::Npy, "npy"}}};
  return t;
}

template <>
const NameTable<Split>& name_table<Split>() {
  static const NameTable<Split> t{"split", {{Split::Train, "train"}, {Split::Test, "test"}}};
  return t;
}

std::string default_data_dir(DatasetKind dataset) {
  return dataset == DatasetKind::FashionMnist ? "/usr/share/datasets/fashion-mnist" : "";
}

namespace {

/// dir/stem.gz if it exists, else dir/stem (the error then names the .gz, which Debian ships).
std::string idx_path(const std::filesystem::path& dir, const std::string& stem) {
  const auto gz = dir / (stem + ".gz");
  std::error_code ec;
  if (std::filesystem::exists(gz, ec) || !std::filesystem::exists(dir / stem, ec)) {
    return gz.string();
  }
  return (dir / stem).string();
}

Dataset from_images(const std::string& name, LabeledImages data) {
  Dataset d;
  d.name = name;
  d.channels = data.images.size(1);
  d.images = data.images.permute({0, 2, 3, 1}).contiguous();
  d.labels = data.labels;
  return d;
}

}  // namespace

Dataset load_dataset(const DatasetConfig& config) {
  const std::string& name = to_string(config.dataset);
  const std::string& split = to_string(config.split);
  const std::string dir_text =
      config.data_dir.empty() ? default_data_dir(config.dataset) : config.data_dir;
  if (dir_text.empty()) {
    throw UsageError("--dataset " + name + " needs --data-dir");
  }
  const std::filesystem::path dir(dir_text);
  const bool train = config.split == Split::Train;
  const DatasetKind kind = config.dataset;
  if (kind == DatasetKind::FashionMnist || kind == DatasetKind::Mnist) {
    const std::string prefix = train ? "train" : "t10k";
    Dataset d = from_images(name, read_idx_split(idx_path(dir, prefix + "-images-idx3-ubyte"),
                                                 idx_path(dir, prefix + "-labels-idx1-ubyte")));
    if (kind == DatasetKind::FashionMnist) {
      d.classes = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
    } else {
      d.classes = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
    }
    return d;
  }
  if (kind == DatasetKind::Cifar10) {
    std::vector<std::string> files;
    if (train) {
      for (int i = 1; i <= 5; ++i)
        files.push_back((dir / ("data_batch_" + std::to_string(i) + ".bin")).string());
    } else {
      files.push_back((dir / "test_batch.bin").string());
    }
    Dataset d = from_images(name, read_cifar_bin(files, false));
    d.classes = {"airplane", "automobile", "bird",  "cat",  "deer",
                 "dog",      "frog",       "horse", "ship", "truck"};
    return d;
  }
  if (kind == DatasetKind::Cifar100) {
    return from_images(name,
                       read_cifar_bin({(dir / (train ? "train.bin" : "test.bin")).string()}, true));
  }
  if (kind == DatasetKind::ImageFolder) {
    if (config.channels != 1 && config.channels != 3) {
      throw UsageError("image-folder: channels must be 1 or 3");
    }
    std::error_code ec;
    const auto split_dir = dir / split;
    const ImageFolder folder = scan_image_folder(
        std::filesystem::is_directory(split_dir, ec) ? split_dir.string() : dir.string());
    Dataset d;
    d.name = name;
    d.files = folder.files;
    d.classes = folder.classes;
    d.channels = config.channels;
    if (!folder.labels.empty()) d.labels = torch::tensor(folder.labels, torch::kLong);
    return d;
  }
  // npy
  std::error_code ec;
  std::filesystem::path matrix = dir, labels;
  if (std::filesystem::is_directory(dir, ec)) {
    matrix = dir / (split + ".npy");
    labels = dir / (split + "_labels.npy");
  } else {
    labels = dir.parent_path() / (dir.stem().string() + "_labels.npy");
  }
  torch::Tensor x = read_npy(matrix.string());
  if (x.dim() != 2 || (x.scalar_type() != torch::kFloat && x.scalar_type() != torch::kDouble)) {
    npy_error(matrix.string(), "must hold a 2-D float32 or float64 matrix [samples, features]");
  }
  if (x.size(0) == 0 || x.size(1) == 0) npy_error(matrix.string(), "is empty");
  Dataset d;
  d.name = name;
  d.vectors = x.to(torch::kFloat).contiguous();
  if (!torch::isfinite(d.vectors).all().item<bool>()) {
    npy_error(matrix.string(), "holds NaN or Inf values");
  }
  if (std::filesystem::exists(labels, ec)) {
    torch::Tensor y = read_npy(labels.string());
    if (y.dim() != 1 || y.size(0) != x.size(0) || y.is_floating_point()) {
      npy_error(labels.string(), "labels must be a 1-D integer array with one entry per row of '" +
                                     matrix.string() + "'");
    }
    d.labels = y.to(torch::kLong);
  }
  return d;
}

}  // namespace vicreg
