// Dataset, and loading a data set's split from its files, held-out splits included (data.h).
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
         ", or holdout FRACTION to hold out a class-stratified part of the training data "
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
                            "/<class>/, or point data_dir at the training folder and val_dir at "
                            "the held-out one",
                        {"data_dir", "val_dir"});
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
            how_to_hold_out("val_dir DIR (a folder of the same class folders)"),
        {"val_dir", "holdout"});
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
            how_to_hold_out("val_data FILE (with FILE_labels.npy beside it), or put val.npy and "
                            "val_labels.npy beside train.npy"),
        {"val_data", "holdout"});
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
    throw UsageError("dataset " + name + " needs data_dir", {"dataset", "data_dir"});
  }
  if (!(config.holdout >= 0 && config.holdout < 1)) {
    throw UsageError("holdout must be in [0, 1) (0: none), got " + std::to_string(config.holdout),
                     {"holdout"});
  }
  if (config.holdout > 0 && !config.val_dir.empty()) {
    throw UsageError("holdout and val_dir both name a held-out split: give one of them",
                     {"holdout", "val_dir"});
  }
  if (!config.classes_file.empty() && config.dataset != DatasetKind::ImageFolder) {
    throw UsageError("classes selects class folders: it is for dataset image-folder",
                     {"classes", "dataset"});
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
