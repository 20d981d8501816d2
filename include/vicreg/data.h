// Data sets. So far: the IDX reader (MNIST, Fashion-MNIST), raw or gzip-compressed.
#pragma once

#include <torch/types.h>

#include <string>

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

}  // namespace vicreg
