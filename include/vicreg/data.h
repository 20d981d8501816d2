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
#include <string>
#include <vector>

namespace vicreg {

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

/// Images decoded with OpenCV: uint8, RGB (3 channels) or grayscale (1), HWC.
/// Throws naming the file when it is missing or cannot be decoded.
cv::Mat decode_image(const std::string& path, int channels);

/// An image folder: every JPEG/PNG/BMP/WebP file under `root`, sorted. With one subfolder per
/// class (root/cat/1.jpg, root/dog/2.png) the labels are the indices of the sorted class names;
/// with the images directly in `root` there are no labels. Throws if there are no images.
struct ImageFolder {
  std::vector<std::string> files;
  std::vector<int64_t> labels;       ///< empty when unlabelled
  std::vector<std::string> classes;  ///< sorted subfolder names
};
ImageFolder scan_image_folder(const std::string& root);

/// What the loader draws from: images in memory, images as files, or feature vectors.
struct Dataset {
  std::string name;
  /// In-memory images [N, H, W, C] uint8 (IDX, CIFAR), HWC so that a sample is a cv::Mat view.
  torch::Tensor images;
  /// Image files decoded on demand (image-folder).
  std::vector<std::string> files;
  /// Feature vectors [N, F] float32 (npy).
  torch::Tensor vectors;
  /// [N] int64 labels, or undefined when the data have none.
  torch::Tensor labels;
  /// Class names by label (image-folder: the subfolders; fashion-mnist, mnist, cifar10: the
  /// data set's names); may be empty.
  std::vector<std::string> classes;
  /// Image channels (1 or 3); 0 for vectors.
  int64_t channels = 0;

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

/// The data sets load_dataset() reads: fashion-mnist, mnist, cifar10, cifar100, image-folder, npy.
enum class DatasetKind { FashionMnist, Mnist, Cifar10, Cifar100, ImageFolder, Npy };
template <>
const NameTable<DatasetKind>& name_table<DatasetKind>();

/// The two splits of a data set: train, test.
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
};

/// The default --data-dir of a data set ("" when it has none).
std::string default_data_dir(DatasetKind dataset);
/// Loads a split. Throws UsageError when the data set needs a --data-dir, FormatError naming the
/// path for missing or corrupt data.
Dataset load_dataset(const DatasetConfig& config);

}  // namespace vicreg
