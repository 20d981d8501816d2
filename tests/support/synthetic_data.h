// Small data sets written to disk for the training and CLI tests.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace vicreg::testing {

/// Writes MNIST-style raw IDX files {prefix}-{images-idx3,labels-idx1}-ubyte into `dir` (prefix
/// "train" or "t10k"): n images of side x side pixels, a bright square at a place that depends on
/// the class (10 classes), on noise.
inline void write_idx_dataset(const std::filesystem::path& dir, int n, int side, uint32_t seed = 1,
                              const std::string& prefix = "train") {
  std::filesystem::create_directories(dir);
  std::mt19937 rng(seed);
  std::vector<uint8_t> images = {0, 0, 8, 3}, labels = {0, 0, 8, 1};
  const auto be32 = [](std::vector<uint8_t>& b, uint32_t v) {
    for (int s : {24, 16, 8, 0}) b.push_back(static_cast<uint8_t>(v >> s));
  };
  be32(images, n);
  be32(images, side);
  be32(images, side);
  be32(labels, n);
  for (int i = 0; i < n; ++i) {
    const int label = i % 10;
    labels.push_back(static_cast<uint8_t>(label));
    const int cy = (label / 4) * side / 3, cx = (label % 4) * side / 4;
    for (int y = 0; y < side; ++y) {
      for (int x = 0; x < side; ++x) {
        const bool in_square = y >= cy && y < cy + side / 3 && x >= cx && x < cx + side / 4;
        images.push_back(static_cast<uint8_t>(in_square ? 200 + rng() % 56 : rng() % 60));
      }
    }
  }
  std::ofstream(dir / (prefix + "-images-idx3-ubyte"), std::ios::binary)
      .write(reinterpret_cast<const char*>(images.data()),
             static_cast<std::streamsize>(images.size()));
  std::ofstream(dir / (prefix + "-labels-idx1-ubyte"), std::ios::binary)
      .write(reinterpret_cast<const char*>(labels.data()),
             static_cast<std::streamsize>(labels.size()));
}

}  // namespace vicreg::testing
