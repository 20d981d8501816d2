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

// ---------------------------------------------------------------------------------------------
// FileList

FileList::FileList(std::initializer_list<std::string> paths) {
  reserve(paths.size());
  for (const auto& p : paths) push_back(p);
}

FileList::FileList(const std::vector<std::string>& paths) {
  reserve(paths.size());
  for (const auto& p : paths) push_back(p);
}

void FileList::reserve(size_t n) {
  dir_.reserve(n);
  end_.reserve(n);
}

void FileList::push_back(const std::string& path) {
  const auto slash = path.find_last_of('/');
  const size_t split = slash == std::string::npos ? 0 : slash + 1;
  uint32_t dir = 0;
  if (!dir_.empty() && dirs_[dir_.back()].size() == split &&
      path.compare(0, split, dirs_[dir_.back()]) == 0) {
    dir = dir_.back();  // the same folder as the last file: the usual case
  } else {
    std::string folder = path.substr(0, split);
    const auto found = dir_index_.find(folder);
    if (found != dir_index_.end()) {
      dir = found->second;
    } else {
      TORCH_CHECK(dirs_.size() < UINT32_MAX, "FileList: too many folders");
      dir = static_cast<uint32_t>(dirs_.size());
      dir_index_.emplace(folder, dir);
      dirs_.push_back(std::move(folder));
    }
  }
  names_.append(path, split, std::string::npos);
  dir_.push_back(dir);
  end_.push_back(names_.size());
}

std::string_view FileList::name(size_t i) const {
  TORCH_CHECK(i < size(), "FileList: index ", i, " out of range [0, ", size(), ")");
  const uint64_t begin = i == 0 ? 0 : end_[i - 1];
  return std::string_view(names_).substr(begin, end_[i] - begin);
}

std::string FileList::operator[](size_t i) const {
  const std::string_view n = name(i);
  std::string path = dirs_[dir_[i]];
  path.append(n.data(), n.size());
  return path;
}

std::vector<std::string> FileList::to_vector() const { return {begin(), end()}; }

bool operator==(const FileList& a, const std::vector<std::string>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < b.size(); ++i) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

std::ostream& operator<<(std::ostream& out, const FileList& files) {
  out << "{";
  for (size_t i = 0; i < files.size(); ++i) out << (i > 0 ? ", " : "") << files[i];
  return out << "}";
}

std::vector<std::string> class_folders(const std::string& root) {
  std::vector<std::string> classes;
  for (const auto& e : std::filesystem::directory_iterator(root)) {
    if (e.is_directory()) classes.push_back(e.path().filename().string());
  }
  std::sort(classes.begin(), classes.end());
  return classes;
}

ImageFolder scan_image_folder(const std::string& root, const std::vector<std::string>* classes,
                              bool require_all) {
  std::error_code ec;
  if (!std::filesystem::is_directory(root, ec)) {
    throw FormatError("image folder '" + root + "': no such directory");
  }
  ImageFolder folder;
  folder.classes = classes != nullptr ? *classes : class_folders(root);
  for (size_t c = 0; c < folder.classes.size(); ++c) {
    const auto dir = std::filesystem::path(root) / folder.classes[c];
    if (!std::filesystem::is_directory(dir, ec)) {
      if (!require_all) continue;
      throw FormatError("image folder '" + root + "' has no folder for the class '" +
                        folder.classes[c] + "' of the class list");
    }
    for (const auto& f : images_under(dir)) {
      folder.files.push_back(f);
      folder.labels.push_back(static_cast<int64_t>(c));
    }
  }
  if (folder.classes.empty()) {
    std::vector<std::string> files;
    for (const auto& e : std::filesystem::directory_iterator(root)) {
      if (e.is_regular_file() && is_image_file(e.path())) files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
    folder.files = FileList(files);
  }
  if (folder.files.empty()) {
    throw FormatError("image folder '" + root +
                      "' holds no images (.jpg, .jpeg, .png, .bmp, .webp), neither directly "
                      "nor in one subfolder per class");
  }
  // A copy holds no growth slack (vectors and strings copy at their size, not their capacity):
  // about 40 % less memory for a large tree.
  folder.files = FileList(folder.files);
  return folder;
}

namespace {

/// A line of a list file without its surrounding blanks ("" for a blank line).
std::string trimmed(const std::string& line) {
  const auto first = line.find_first_not_of(" \t\r");
  if (first == std::string::npos) return "";
  return line.substr(first, line.find_last_not_of(" \t\r") - first + 1);
}

}  // namespace

std::vector<std::string> read_class_list(const std::string& path) {
  const auto fail_list = [&path](const std::string& what) {
    throw FormatError("class list '" + path + "': " + what);
  };
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) fail_list("no such file");
  std::ifstream in(path);
  std::vector<std::string> names;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    std::string name = trimmed(line);
    if (name.empty()) continue;
    if (name.find('/') != std::string::npos || name == "." || name == "..") {
      fail_list("line " + std::to_string(number) + " ('" + name +
                "') is not a class folder name (one name per line, no '/')");
    }
    names.push_back(std::move(name));
  }
  if (in.bad()) fail_list("cannot be read");
  if (names.empty()) fail_list("names no class (one class folder name per line)");
  std::sort(names.begin(), names.end());
  const auto dup = std::adjacent_find(names.begin(), names.end());
  if (dup != names.end()) fail_list("names the class '" + *dup + "' twice");
  return names;
}

namespace {

/// Sorted indices: from each class's members (in order of appearance), take(n_c) of them, drawn
/// by a generator seeded with `seed`.
template <class Take>
torch::Tensor stratified_pick(const torch::Tensor& labels, int64_t n, uint64_t seed, Take take) {
  std::map<int64_t, std::vector<int64_t>> by_class;
  if (labels.defined()) {
    const torch::Tensor y = labels.to(torch::kCPU, torch::kLong).contiguous();
    const int64_t* p = y.data_ptr<int64_t>();
    for (int64_t i = 0; i < y.numel(); ++i) by_class[p[i]].push_back(i);
  } else {
    auto& all = by_class[0];
    for (int64_t i = 0; i < n; ++i) all.push_back(i);
  }
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  std::vector<torch::Tensor> picked;
  for (const auto& [label, members] : by_class) {
    const auto count = static_cast<int64_t>(members.size());
    const int64_t k = take(count);
    if (k <= 0) continue;
    const torch::Tensor order = torch::randperm(count, gen).narrow(0, 0, k);
    picked.push_back(torch::tensor(members, torch::kLong).index_select(0, order));
  }
  if (picked.empty()) return torch::empty({0}, torch::kLong);
  return std::get<0>(torch::cat(picked).sort());
}

}  // namespace

torch::Tensor balanced_subset(const torch::Tensor& labels, double fraction, uint64_t seed) {
  TORCH_CHECK(labels.dim() == 1 && labels.numel() > 0, "balanced_subset: expected labels [N]");
  TORCH_CHECK(fraction > 0 && fraction <= 1, "--label-fraction must be in (0, 1], got ", fraction);
  return stratified_pick(labels, labels.numel(), seed, [fraction](int64_t count) {
    return std::min(count,
                    std::max<int64_t>(1, std::llround(fraction * static_cast<double>(count))));
  });
}

torch::Tensor subset_by_file_names(const Dataset& data, const std::string& list_path) {
  const auto fail_list = [&list_path](const std::string& what) {
    throw FormatError("subset file '" + list_path + "': " + what);
  };
  if (data.files.empty()) {
    throw UsageError("--train-subset names image files: it is for --dataset image-folder");
  }
  std::error_code ec;
  if (!std::filesystem::is_regular_file(list_path, ec)) fail_list("no such file");
  // File name -> index in the split (-1: several files have that name).
  std::unordered_map<std::string_view, int64_t> by_name;
  by_name.reserve(data.files.size());
  for (size_t i = 0; i < data.files.size(); ++i) {
    const auto [it, fresh] = by_name.emplace(data.files.name(i), static_cast<int64_t>(i));
    if (!fresh) it->second = -1;
  }
  std::ifstream in(list_path);
  std::string line;
  std::vector<int64_t> picked;
  std::vector<std::string> missing;
  int64_t missing_count = 0;
  while (std::getline(in, line)) {
    std::string entry = trimmed(line);
    if (entry.empty()) continue;
    const auto slash = entry.find_last_of('/');
    if (slash != std::string::npos) entry = entry.substr(slash + 1);
    const auto it = by_name.find(entry);
    if (it == by_name.end()) {
      if (missing.size() < 3) missing.push_back(entry);
      ++missing_count;
    } else if (it->second < 0) {
      fail_list("names '" + entry + "', which several files of '" + data.source +
                "' are called: file names must be unique");
    } else {
      picked.push_back(it->second);
    }
  }
  if (in.bad()) fail_list("cannot be read");
  if (missing_count > 0) {
    std::string names;
    for (const auto& m : missing) names += (names.empty() ? "" : ", ") + m;
    fail_list("names " + std::to_string(missing_count) + " image(s) that the training split '" +
              data.source + "' lacks (" + names + (missing_count > 3 ? ", ..." : "") +
              "): is it the subset of this data set, and --classes the same?");
  }
  if (picked.empty()) fail_list("names no image (one image file name per line)");
  std::sort(picked.begin(), picked.end());
  picked.erase(std::unique(picked.begin(), picked.end()), picked.end());
  return torch::tensor(picked, torch::kLong);
}

torch::Tensor holdout_indices(const torch::Tensor& labels, int64_t n, double fraction,
                              uint64_t seed) {
  TORCH_CHECK(fraction > 0 && fraction < 1, "--holdout must be in (0, 1), got ", fraction);
  TORCH_CHECK(!labels.defined() || (labels.dim() == 1 && labels.numel() == n),
              "holdout_indices: expected labels [", n, "]");
  return stratified_pick(labels, n, seed, [fraction](int64_t count) -> int64_t {
    if (count < 2) return 0;
    return std::clamp<int64_t>(std::llround(fraction * static_cast<double>(count)), 1, count - 1);
  });
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
  out.source = source;
  if (images.defined()) out.images = images.index_select(0, idx).contiguous();
  if (vectors.defined()) out.vectors = vectors.index_select(0, idx).contiguous();
  if (labels.defined()) out.labels = labels.index_select(0, idx);
  out.rows = (rows.defined() ? rows : torch::arange(size(), torch::kLong)).index_select(0, idx);
  if (!files.empty()) {
    const int64_t* p = idx.data_ptr<int64_t>();
    out.files.reserve(static_cast<size_t>(idx.numel()));
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

namespace {

namespace fs = std::filesystem;

bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

/// How to give a held-out split, for the error when there is none.
std::string how_to_hold_out(const std::string& what) {
  return "give " + what +
         ", or --holdout FRACTION to hold out a class-stratified part of the training data "
         "(pretraining then never sees it); evaluation never measures on the training data";
}

Dataset idx_split(const std::string& name, DatasetKind kind, const fs::path& dir, bool train) {
  const std::string prefix = train ? "train" : "t10k";
  const std::string images = idx_path(dir, prefix + "-images-idx3-ubyte");
  Dataset d =
      from_images(name, read_idx_split(images, idx_path(dir, prefix + "-labels-idx1-ubyte")));
  if (kind == DatasetKind::FashionMnist) {
    d.classes = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  } else {
    d.classes = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
  }
  d.source = images;
  return d;
}

Dataset cifar_split(const std::string& name, DatasetKind kind, const fs::path& dir, bool train) {
  std::vector<std::string> files;
  if (kind == DatasetKind::Cifar10) {
    if (train) {
      for (int i = 1; i <= 5; ++i)
        files.push_back((dir / ("data_batch_" + std::to_string(i) + ".bin")).string());
    } else {
      files.push_back((dir / "test_batch.bin").string());
    }
  } else {
    files.push_back((dir / (train ? "train.bin" : "test.bin")).string());
  }
  Dataset d = from_images(name, read_cifar_bin(files, kind == DatasetKind::Cifar100));
  if (kind == DatasetKind::Cifar10) {
    d.classes = {"airplane", "automobile", "bird",  "cat",  "deer",
                 "dog",      "frog",       "horse", "ship", "truck"};
  }
  d.source = kind == DatasetKind::Cifar10 && train ? (dir / "data_batch_{1..5}.bin").string()
                                                   : files.front();
  return d;
}

Dataset from_folder(const std::string& name, ImageFolder folder, int64_t channels,
                    const std::string& root) {
  Dataset d;
  d.name = name;
  d.files = std::move(folder.files);
  d.classes = folder.classes;
  d.channels = channels;
  d.source = root;
  if (!folder.labels.empty()) d.labels = torch::tensor(folder.labels, torch::kLong);
  return d;
}

/// The training folder of an image-folder data set: root/train if there is one, else root itself
/// (its class folders), unless root holds only the held-out split's folders.
fs::path image_train_dir(const fs::path& root) {
  if (is_dir(root / "train")) return root / "train";
  for (const char* held : {"val", "test"}) {
    if (is_dir(root / held)) {
      throw FormatError("image folder '" + root.string() + "' has a " + held +
                        "/ folder but no train/ folder: put the training images in " +
                        (root / "train").string() +
                        "/<class>/, or point --data-dir at the training folder and --val-dir at "
                        "the held-out one");
    }
  }
  return root;
}

Dataset image_folder_split(const std::string& name, const DatasetConfig& c, const fs::path& root,
                           bool train) {
  if (c.channels != 1 && c.channels != 3) {
    throw UsageError("image-folder: channels must be 1 or 3");
  }
  if (!is_dir(root)) throw FormatError("image folder '" + root.string() + "': no such directory");
  std::optional<std::vector<std::string>> listed;
  if (!c.classes_file.empty()) listed = read_class_list(c.classes_file);
  const fs::path train_dir = image_train_dir(root);
  if (train) {
    return from_folder(name, scan_image_folder(train_dir.string(), listed ? &*listed : nullptr),
                       c.channels, train_dir.string());
  }
  fs::path held;
  if (!c.val_dir.empty()) {
    held = c.val_dir;
  } else if (train_dir != root) {
    for (const char* sub : {"val", "test"}) {
      if (is_dir(root / sub)) {
        held = root / sub;
        break;
      }
    }
  }
  if (held.empty()) {
    throw NoHeldOutSplitError(
        "image folder '" + root.string() +
        "' has no held-out split (no val/ or test/ folder beside train/): " +
        how_to_hold_out("--val-dir DIR (a folder of the same class folders)"));
  }
  if (!is_dir(held))
    throw FormatError("held-out image folder '" + held.string() + "': no such directory");
  // Labels by the training split's class names, so that a class missing from the held-out split
  // does not shift the others.
  const std::vector<std::string> classes = listed ? *listed : class_folders(train_dir.string());
  if (!classes.empty()) {
    for (const auto& name_here : class_folders(held.string())) {
      if (!listed && !std::binary_search(classes.begin(), classes.end(), name_here)) {
        throw FormatError("held-out image folder '" + held.string() + "' has the class folder '" +
                          name_here + "', which the training folder '" + train_dir.string() +
                          "' lacks: the two must have the same classes");
      }
    }
  }
  return from_folder(name,
                     scan_image_folder(held.string(), classes.empty() ? nullptr : &classes,
                                       /*require_all=*/false),
                     c.channels, held.string());
}

Dataset npy_file(const std::string& name, const fs::path& matrix, const fs::path& labels) {
  torch::Tensor x = read_npy(matrix.string());
  if (x.dim() != 2 || (x.scalar_type() != torch::kFloat && x.scalar_type() != torch::kDouble)) {
    npy_error(matrix.string(), "must hold a 2-D float32 or float64 matrix [samples, features]");
  }
  if (x.size(0) == 0 || x.size(1) == 0) npy_error(matrix.string(), "is empty");
  Dataset d;
  d.name = name;
  d.source = matrix.string();
  d.vectors = x.to(torch::kFloat).contiguous();
  if (!torch::isfinite(d.vectors).all().item<bool>()) {
    npy_error(matrix.string(), "holds NaN or Inf values");
  }
  if (is_file(labels)) {
    torch::Tensor y = read_npy(labels.string());
    if (y.dim() != 1 || y.size(0) != x.size(0) || y.is_floating_point()) {
      npy_error(labels.string(), "labels must be a 1-D integer array with one entry per row of '" +
                                     matrix.string() + "'");
    }
    d.labels = y.to(torch::kLong);
  }
  return d;
}

/// The labels file of a matrix file: {stem}_labels.npy beside it.
fs::path labels_beside(const fs::path& matrix) {
  return matrix.parent_path() / (matrix.stem().string() + "_labels.npy");
}

Dataset npy_split(const std::string& name, const DatasetConfig& c, const fs::path& dir,
                  bool train) {
  if (train) {
    const fs::path matrix = is_dir(dir) ? dir / "train.npy" : dir;
    return npy_file(name, matrix, labels_beside(matrix));
  }
  fs::path matrix;
  if (!c.val_dir.empty()) {
    matrix = c.val_dir;
  } else if (is_dir(dir)) {
    for (const char* stem : {"val", "test"}) {
      if (is_file(dir / (std::string(stem) + ".npy"))) {
        matrix = dir / (std::string(stem) + ".npy");
        break;
      }
    }
  }
  if (matrix.empty()) {
    throw NoHeldOutSplitError(
        "npy data '" + dir.string() + "' have no held-out split (" +
        (is_dir(dir) ? "no val.npy or test.npy beside train.npy" : "a single file") + "): " +
        how_to_hold_out("--val-data FILE (with FILE_labels.npy beside it), or put val.npy and "
                        "val_labels.npy beside train.npy"));
  }
  return npy_file(name, matrix, labels_beside(matrix));
}

/// The split as the files give it (no --holdout).
Dataset split_from_files(const DatasetConfig& c, const fs::path& dir, bool train) {
  const std::string& name = to_string(c.dataset);
  // The held-out split of a built-in data set may live elsewhere (--val-dir).
  const fs::path held_dir = c.val_dir.empty() ? dir : fs::path(c.val_dir);
  switch (c.dataset) {
    case DatasetKind::FashionMnist:
    case DatasetKind::Mnist:
      return idx_split(name, c.dataset, train ? dir : held_dir, train);
    case DatasetKind::Cifar10:
    case DatasetKind::Cifar100:
      return cifar_split(name, c.dataset, train ? dir : held_dir, train);
    case DatasetKind::ImageFolder:
      return image_folder_split(name, c, dir, train);
    case DatasetKind::Npy:
      break;
  }
  return npy_split(name, c, dir, train);
}

std::string percent(double fraction) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g %%", 100 * fraction);
  return buf;
}

}  // namespace

Dataset load_dataset(const DatasetConfig& config) {
  const std::string& name = to_string(config.dataset);
  const std::string dir_text =
      config.data_dir.empty() ? default_data_dir(config.dataset) : config.data_dir;
  if (dir_text.empty()) {
    throw UsageError("--dataset " + name + " needs --data-dir");
  }
  if (!(config.holdout >= 0 && config.holdout < 1)) {
    throw UsageError("--holdout must be in [0, 1) (0: none), got " +
                     std::to_string(config.holdout));
  }
  if (config.holdout > 0 && !config.val_dir.empty()) {
    throw UsageError("--holdout and --val-dir both name a held-out split: give one of them");
  }
  if (!config.classes_file.empty() && config.dataset != DatasetKind::ImageFolder) {
    throw UsageError("--classes selects class folders: it is for --dataset image-folder");
  }
  const fs::path dir(dir_text);
  const bool train = config.split == Split::Train;
  if (config.holdout == 0) return split_from_files(config, dir, train);
  // Both splits from the training data: the held-out part and the rest, disjoint by index.
  Dataset all = split_from_files(config, dir, true);
  const torch::Tensor held = holdout_indices(all.labels, all.size(), config.holdout);
  const std::string part = "a " + percent(config.holdout) +
                           " class-stratified held-out part (--holdout, seed " +
                           std::to_string(kHoldoutSeed) + ")";
  if (!train) {
    Dataset d = all.subset(held);
    d.source = all.source + ": " + part;
    return d;
  }
  torch::Tensor keep = torch::ones({all.size()}, torch::kBool);
  keep.index_fill_(0, held, false);
  Dataset d = all.subset(keep.nonzero().flatten());
  d.source = all.source + " without " + part;
  return d;
}

}  // namespace vicreg
