// The IDX reader on files the test writes, raw and gzip, good and corrupt; and on the real
// Fashion-MNIST test split when Debian's dataset-fashion-mnist is installed.
#include "vicreg/data.h"

#include "temp_dir.h"

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

/// IDX bytes: magic 00 00 <type> <ndims>, big-endian sizes, then `data`.
Bytes idx(const std::vector<uint32_t>& sizes, const Bytes& data, uint8_t type = 0x08) {
  Bytes b = {0, 0, type, static_cast<uint8_t>(sizes.size())};
  for (uint32_t s : sizes) {
    for (int shift : {24, 16, 8, 0}) b.push_back(static_cast<uint8_t>(s >> shift));
  }
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

class Idx : public vicreg::testing::TempDirTest {
 protected:
  std::string write(const std::string& name, const Bytes& bytes, bool gzip = false) {
    const std::string path = (dir_ / name).string();
    if (gzip) {
      gzFile f = gzopen(path.c_str(), "wb");
      EXPECT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
                static_cast<int>(bytes.size()));
      gzclose(f);
    } else {
      std::ofstream(path, std::ios::binary)
          .write(reinterpret_cast<const char*>(bytes.data()),
                 static_cast<std::streamsize>(bytes.size()));
    }
    return path;
  }

  void expect_error(const std::string& path, const std::string& needle) {
    try {
      vicreg::read_idx(path);
      ADD_FAILURE() << "expected an error containing '" << needle << "' for " << path;
    } catch (const std::runtime_error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
      EXPECT_NE(msg.find(path), std::string::npos) << "the message must name the file: " << msg;
    }
  }

};

// Three 2x3 images with pixel value 10 * image + position.
const Bytes kPixels = {0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15, 20, 21, 22, 23, 24, 255};

TEST_F(Idx, ReadsRawAndGzipIdentically) {
  for (bool gz : {false, true}) {
    const auto t = vicreg::read_idx(write(gz ? "a.gz" : "a", idx({3, 2, 3}, kPixels), gz));
    ASSERT_EQ(t.sizes(), (std::vector<int64_t>{3, 2, 3}));
    EXPECT_EQ(t.scalar_type(), torch::kUInt8);
    EXPECT_EQ(t[1][0][2].item<int>(), 12);
    EXPECT_EQ(t[2][1][2].item<int>(), 255);
  }
}

TEST_F(Idx, ReadsASplitAsImagesAndLabels) {
  const auto images = write("img", idx({3, 2, 3}, kPixels));
  const auto labels = write("lbl.gz", idx({3}, {7, 0, 9}), true);
  const auto split = vicreg::read_idx_split(images, labels);
  EXPECT_EQ(split.images.sizes(), (std::vector<int64_t>{3, 1, 2, 3}));
  EXPECT_EQ(split.labels.scalar_type(), torch::kLong);
  EXPECT_EQ(split.labels[2].item<int64_t>(), 9);
}

TEST_F(Idx, RejectsCorruptFiles) {
  expect_error((dir_ / "missing").string(), "apt-get install dataset-fashion-mnist");
  expect_error(write("empty", {}), "shorter than the 4-byte");
  expect_error(write("magic", {1, 2, 8, 1, 0, 0, 0, 1, 5}), "not an IDX file");
  expect_error(write("type", idx({2}, {0, 0, 0, 0, 0, 0, 0, 0}, 0x0D)), "element type");
  expect_error(write("dims", Bytes{0, 0, 8, 0}), "0 dimensions");
  expect_error(write("header", Bytes{0, 0, 8, 3, 0, 0, 0, 3, 0, 0}), "truncated in its header");
  Bytes short_body = idx({3, 2, 3}, kPixels);
  short_body.resize(short_body.size() - 5);
  expect_error(write("body", short_body), "the header declares 18 bytes of data, the file holds 13");
  expect_error(write("body.gz", short_body, true), "truncated");
  Bytes trailing = idx({3}, {1, 2, 3});
  trailing.push_back(0);
  expect_error(write("trailing", trailing), "bytes after the data");
  expect_error(write("zero", idx({0}, {})), "has size 0");
  // A gzip stream cut in the middle.
  const std::string gz = write("cut.gz", idx({3, 2, 3}, kPixels), true);
  fs::resize_file(gz, fs::file_size(gz) - 12);
  expect_error(gz, "truncated: the header declares 18 bytes of data, the file holds 15");
}

TEST_F(Idx, RejectsMismatchedSplits) {
  const auto images = write("img", idx({3, 2, 3}, kPixels));
  try {
    vicreg::read_idx_split(images, write("lbl", idx({2}, {1, 2})));
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("3 images but labels"), std::string::npos) << e.what();
  }
  EXPECT_THROW(vicreg::read_idx_split(write("flat", idx({18}, kPixels)), write("l", idx({18}, kPixels))),
               std::runtime_error);
  EXPECT_THROW(vicreg::read_idx_split(images, images), std::runtime_error);  // 3-D labels
}

TEST(FashionMnist, RealTestSplit) {
  const std::string dir = "/usr/share/datasets/fashion-mnist/";
  if (!fs::exists(dir + "t10k-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  }
  const auto split = vicreg::read_idx_split(dir + "t10k-images-idx3-ubyte.gz",
                                            dir + "t10k-labels-idx1-ubyte.gz");
  EXPECT_EQ(split.images.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  // Fashion-MNIST's test split has exactly 1000 images of each of its 10 classes.
  const auto counts = torch::bincount(split.labels);
  ASSERT_EQ(counts.size(0), 10);
  EXPECT_TRUE(torch::equal(counts, torch::full({10}, 1000, torch::kLong)));
  const double mean = split.images.to(torch::kDouble).mean().item<double>() / 255.0;
  EXPECT_NEAR(mean, 0.286, 0.01);  // the data set's well-known mean pixel value
}

}  // namespace
