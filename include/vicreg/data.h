// Data sets: readers for IDX (MNIST, Fashion-MNIST; raw or gzip), CIFAR-10/100 binary batches,
// image folders (JPEG/PNG through OpenCV) and .npy matrices, and the Dataset that the two-view
// loader (loader.h) draws from. Every reader throws std::runtime_error naming the file and what is
// wrong with it.
#pragma once

#include "vicreg/io/npy.h"
#include "vicreg/names.h"

#include <torch/types.h>

#include <opencv2/core/mat.hpp>

#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <iterator>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace vicreg {

/// The seed of --holdout's split: fixed, so that runs with different --seed hold out the same
/// samples and can be compared.
constexpr uint64_t kHoldoutSeed = 20210504;

/// Reads an IDX file of unsigned bytes (type 0x08), raw or gzip-compressed (detected from the
/// content, not the name). Returns a uint8 tensor with the file's dimensions, e.g. [N, H, W] for
/// images or [N] for labels. Throws std::runtime_error naming the file and the problem: missing,
/// not IDX (magic), another element type, a truncated header or body, trailing bytes, bad gzip.
torch::Tensor read_idx(const std::string& path);

/// Images and labels of one split.
struct LabeledImages {
  torch::Tensor images;  ///< [N, C, H, W] uint8
  torch::Tensor labels;  ///< [N] int64
};

/// An IDX image file ([N, H, W]) and its IDX label file ([N]) as [N, 1, H, W] images and int64
/// labels. Throws if either file is invalid or their counts differ.
LabeledImages read_idx_split(const std::string& images_path, const std::string& labels_path);

/// CIFAR binary batches (cifar-10-batches-bin/data_batch_1.bin, cifar-100-binary/train.bin):
/// records of 1 label byte (CIFAR-10) or 2 (coarse, fine: CIFAR-100, whose fine label is used)
/// then 3072 bytes of 32x32 RGB planes. Several files are concatenated in order.
/// Throws if a file is missing, empty, not a whole number of records, or has a label out of range.
LabeledImages read_cifar_bin(const std::vector<std::string>& paths, bool cifar100);

/// An image file decoded to uint8, RGB (3 channels) or grayscale (1), HWC: JPEGs by libjpeg
/// straight to RGB where decode_jpeg (io/jpeg.h) can, pixel for pixel what OpenCV gives; the rest
/// (PNG, BMP, WebP, CMYK JPEGs, EXIF orientations to apply) with OpenCV. Throws naming the file
/// when it is missing or cannot be decoded.
cv::Mat decode_image(const std::string& path, int channels);

/// The paths of a data set's files, held compactly: each folder once (ImageNet: 1,000 class
/// folders for 1.28 M files) and the file names in one character buffer, 12 bytes plus the name
/// per file instead of a std::string of the whole path (about 100 bytes each at ImageNet's path
/// lengths; bench/data_bench measures both). Paths come back as std::string by value.
class FileList {
 public:
  FileList() = default;
  FileList(std::initializer_list<std::string> paths);
  explicit FileList(const std::vector<std::string>& paths);

  /// Appends a path (its folder is the part up to the last '/').
  void push_back(const std::string& path);
  void reserve(size_t n);
  size_t size() const { return dir_.size(); }
  bool empty() const { return dir_.empty(); }
  /// The whole path of file i.
  std::string operator[](size_t i) const;
  /// The file name of file i (valid while the list is not changed).
  std::string_view name(size_t i) const;
  std::vector<std::string> to_vector() const;

  /// Iterates over the paths (by value).
  class const_iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = std::string;
    using difference_type = std::ptrdiff_t;
    using pointer = void;
    using reference = std::string;
    const_iterator(const FileList* list, size_t i) : list_(list), i_(i) {}
    std::string operator*() const { return (*list_)[i_]; }
    const_iterator& operator++() {
      ++i_;
      return *this;
    }
    bool operator==(const const_iterator& o) const { return i_ == o.i_; }
    bool operator!=(const const_iterator& o) const { return i_ != o.i_; }

   private:
    const FileList* list_;
    size_t i_;
  };
  const_iterator begin() const { return {this, 0}; }
  const_iterator end() const { return {this, size()}; }

 private:
  std::vector<std::string> dirs_;  ///< distinct folders, each with its trailing '/'
  std::unordered_map<std::string, uint32_t> dir_index_;
  std::vector<uint32_t> dir_;  ///< per file: its folder in dirs_
  std::vector<uint64_t> end_;  ///< per file: where its name ends in names_
  std::string names_;
};
bool operator==(const FileList& a, const std::vector<std::string>& b);
std::ostream& operator<<(std::ostream& out, const FileList& files);

/// An image folder: every JPEG/PNG/BMP/WebP file under `root`, sorted. With one subfolder per
/// class (root/cat/1.jpg, root/dog/2.png) the labels are the indices of the sorted class names;
/// with the images directly in `root` there are no labels. Throws if there are no images.
struct ImageFolder {
  FileList files;
  std::vector<int64_t> labels;       ///< empty when unlabelled
  std::vector<std::string> classes;  ///< sorted subfolder names
};
/// With `classes`, only those subfolders, labelled by their index in `classes` (a sorted list, as
/// read_class_list returns): a named class without a folder is an error when `require_all`,
/// otherwise it has no samples (a held-out split need not hold every class).
ImageFolder scan_image_folder(const std::string& root,
                              const std::vector<std::string>* classes = nullptr,
                              bool require_all = true);
/// The subfolder names of `root` (its classes), sorted.
std::vector<std::string> class_folders(const std::string& root);

/// A class list (--classes): one class folder name per line (e.g. the usual ImageNet-100 list);
/// blank lines and surrounding spaces ignored. Returned sorted, so that labels are what a folder
/// holding just those classes would give. Throws FormatError naming the file for a missing or
/// empty file, a duplicate or a name with a '/'.
std::vector<std::string> read_class_list(const std::string& path);

/// A class-balanced subset of a labelled split, as sorted indices: from each class c with n_c
/// samples, max(1, round(fraction * n_c)) of them, drawn without replacement by a generator seeded
/// with `seed` (the same seed gives the same subset). fraction in (0, 1].
torch::Tensor balanced_subset(const torch::Tensor& labels, double fraction, uint64_t seed);

/// The held-out part of `n` samples (--holdout), as sorted indices: from each class (`labels`
/// [n], or one class when undefined) with n_c samples, round(fraction * n_c) of them but at least
/// one and at most n_c - 1 (a class of one sample stays in training), seeded like
/// balanced_subset. fraction in (0, 1).
torch::Tensor holdout_indices(const torch::Tensor& labels, int64_t n, double fraction,
                              uint64_t seed = kHoldoutSeed);

/// What the loader draws from: images in memory, images as files, or feature vectors.
struct Dataset {
  std::string name;
  /// In-memory images [N, H, W, C] uint8 (IDX, CIFAR), HWC so that a sample is a cv::Mat view.
  torch::Tensor images;
  /// Image files decoded on demand (image-folder).
  FileList files;
  /// Feature vectors [N, F] float32 (npy).
  torch::Tensor vectors;
  /// [N] int64 labels, or undefined when the data have none.
  torch::Tensor labels;
  /// Class names by label (image-folder: the subfolders; fashion-mnist, mnist, cifar10: the
  /// data set's names); may be empty.
  std::vector<std::string> classes;
  /// [N] int64: each sample's row in the file(s) it was read from (a --holdout part's rows in the
  /// training files); undefined: 0..N-1.
  torch::Tensor rows;
  /// Image channels (1 or 3); 0 for vectors.
  int64_t channels = 0;
  /// Where the samples came from: the folder or file(s), and the held-out part when there is one
  /// (every evaluation prints and records it).
  std::string source;

  int64_t size() const;
  bool is_vector() const { return vectors.defined(); }
  /// Columns of `vectors`.
  int64_t features() const { return is_vector() ? vectors.size(1) : 0; }
  /// Image side of in-memory images (they are square); 0 for files and vectors.
  int64_t image_size() const { return images.defined() ? images.size(1) : 0; }
  /// Sample i as an image: a view of `images` (no copy) or the decoded file.
  cv::Mat image(int64_t i) const;
  /// The labels of all samples of an in-memory set as one tensor; throws if there are none.
  torch::Tensor require_labels() const;
  /// The samples at `indices` ([K] int64, in that order) as a data set of their own: in-memory
  /// images, vectors and labels are gathered (copied), file lists subset.
  Dataset subset(const torch::Tensor& indices) const;
};

/// The indices of the files of an image-folder split named in a subset file (--train-subset): one
/// image file name per line (e.g. n01440764_10026.JPEG, as in the 1 % / 10 % ImageNet subsets;
/// a path is matched by its file name). Sorted. Throws FormatError naming the file for a missing
/// or empty list, names the split lacks (the first few of them) or that name several of its files.
torch::Tensor subset_by_file_names(const Dataset& data, const std::string& list_path);

/// The data sets load_dataset() reads: fashion-mnist, mnist, cifar10, cifar100, image-folder, npy.
enum class DatasetKind { FashionMnist, Mnist, Cifar10, Cifar100, ImageFolder, Npy };
template <>
const NameTable<DatasetKind>& name_table<DatasetKind>();

/// The two splits of a data set: train, and the held-out split that evaluation measures on
/// ("test": a data set's test or validation files, --val-dir, or a --holdout part of train).
enum class Split { Train, Test };
template <>
const NameTable<Split>& name_table<Split>();

/// Where load_dataset() finds a data set.
struct DatasetConfig {
  DatasetKind dataset = DatasetKind::FashionMnist;
  /// Folder of the files; empty: /usr/share/datasets/fashion-mnist for fashion-mnist (Debian's
  /// dataset-fashion-mnist), required for the others. For npy: a folder holding
  /// {split}.npy (and optionally {split}_labels.npy), or the .npy file itself.
  std::string data_dir;
  Split split = Split::Train;
  /// image-folder: channels to decode to (3: RGB, 1: grayscale).
  int64_t channels = 3;
  /// The held-out split elsewhere: a folder of class folders (image-folder), a .npy file (npy),
  /// the folder of the test files (fashion-mnist, mnist, cifar10, cifar100). Empty: beside the
  /// training data (image-folder: val/ or test/ beside train/; npy: val.npy or test.npy beside
  /// train.npy; the built-in data sets: their test files).
  std::string val_dir;
  /// In (0, 1): the held-out split is this fraction of the training data, class-stratified and
  /// seeded (kHoldoutSeed, the same for every run), and the training split is the rest.
  double holdout = 0;
  /// image-folder: a class list file (read_class_list); only those classes, in both splits.
  std::string classes_file;
};

/// The default --data-dir of a data set ("" when it has none).
std::string default_data_dir(DatasetKind dataset);
/// Loads a split. The held-out split is never the training data: without one (no test files, no
/// val/ or test/ folder or val.npy/test.npy, no --val-dir, no --holdout) it throws a FormatError
/// that says how to give one. Throws UsageError when the data set needs a --data-dir or the
/// settings contradict each other, FormatError naming the path for missing or corrupt data.
Dataset load_dataset(const DatasetConfig& config);

}  // namespace vicreg
