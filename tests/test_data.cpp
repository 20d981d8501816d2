// Every reader on files the test writes, good and corrupt (IDX raw and gzip, CIFAR binary, .npy,
// image folders), load_dataset(), and the real Fashion-MNIST test split when Debian's
// dataset-fashion-mnist is installed.
#include "vicreg/data.h"

#include "support/temp_dir.h"

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

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
    expect_error_from([&] { vicreg::read_idx(path); }, path, needle);
  }

  template <typename F>
  void expect_error_from(F&& f, const std::string& path, const std::string& needle) {
    try {
      f();
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
  expect_error(write("body", short_body),
               "the header declares 18 bytes of data, the file holds 13");
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
  EXPECT_THROW(
      vicreg::read_idx_split(write("flat", idx({18}, kPixels)), write("l", idx({18}, kPixels))),
      std::runtime_error);
  EXPECT_THROW(vicreg::read_idx_split(images, images), std::runtime_error);  // 3-D labels
}

TEST(FashionMnist, RealTestSplit) {
  const std::string dir = "/usr/share/datasets/fashion-mnist/";
  if (!fs::exists(dir + "t10k-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  }
  const auto split =
      vicreg::read_idx_split(dir + "t10k-images-idx3-ubyte.gz", dir + "t10k-labels-idx1-ubyte.gz");
  EXPECT_EQ(split.images.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  // Fashion-MNIST's test split has exactly 1000 images of each of its 10 classes.
  const auto counts = torch::bincount(split.labels);
  ASSERT_EQ(counts.size(0), 10);
  EXPECT_TRUE(torch::equal(counts, torch::full({10}, 1000, torch::kLong)));
  const double mean = split.images.to(torch::kDouble).mean().item<double>() / 255.0;
  EXPECT_NEAR(mean, 0.286, 0.01);  // the data set's well-known mean pixel value
}

// ---------------------------------------------------------------------------------------------
// CIFAR

using Readers = Idx;

Bytes cifar_records(int n, int label_bytes, uint8_t label_base) {
  Bytes b;
  for (int i = 0; i < n; ++i) {
    if (label_bytes == 2) b.push_back(static_cast<uint8_t>(i % 20));  // coarse
    b.push_back(static_cast<uint8_t>(label_base + i));
    for (int p = 0; p < 3072; ++p) b.push_back(static_cast<uint8_t>((p / 1024) * 100 + i));
  }
  return b;
}

TEST_F(Readers, CifarBinaryBatches) {
  const auto a = write("data_batch_1.bin", cifar_records(3, 1, 0));
  const auto b = write("data_batch_2.bin", cifar_records(2, 1, 5));
  const auto c10 = vicreg::read_cifar_bin({a, b}, false);
  EXPECT_EQ(c10.images.sizes(), (std::vector<int64_t>{5, 3, 32, 32}));
  EXPECT_EQ(c10.labels[4].item<int64_t>(), 6);
  EXPECT_EQ(c10.images[1][2][31][31].item<int>(), 201);  // blue plane of record 1
  const auto c100 = vicreg::read_cifar_bin({write("train.bin", cifar_records(4, 2, 90))}, true);
  EXPECT_EQ(c100.labels[3].item<int64_t>(), 93);  // the fine label
  EXPECT_EQ(c100.images[3][0][0][0].item<int>(), 3);

  const auto read10 = [](const std::string& path) { vicreg::read_cifar_bin({path}, false); };
  expect_error_from([&] { read10((dir_ / "none.bin").string()); }, (dir_ / "none.bin").string(),
                    "no such file");
  Bytes cut = cifar_records(2, 1, 0);
  cut.pop_back();
  const auto cut_path = write("cut.bin", cut);
  expect_error_from([&] { read10(cut_path); }, cut_path, "not a whole number of 3073-byte records");
  const auto big_label = write("label.bin", cifar_records(1, 1, 42));
  expect_error_from([&] { read10(big_label); }, big_label, "label >= 10");
  const auto empty = write("empty.bin", {});
  expect_error_from([&] { read10(empty); }, empty, "holds 0 bytes");
}

// ---------------------------------------------------------------------------------------------
// .npy

TEST_F(Readers, NpyRoundTripsEveryDtype) {
  for (const auto dtype :
       {torch::kFloat, torch::kDouble, torch::kLong, torch::kInt, torch::kUInt8}) {
    const auto t = (torch::arange(12) * 7 % 11).to(dtype).reshape({3, 4});
    const std::string path = (dir_ / "a.npy").string();
    vicreg::write_npy(path, t);
    EXPECT_EQ((fs::file_size(path) - t.nbytes()) % 64, 0u);  // data start 64-byte aligned
    const auto back = vicreg::read_npy(path);
    EXPECT_EQ(back.scalar_type(), dtype);
    EXPECT_TRUE(torch::equal(back, t)) << dtype;
  }
  vicreg::write_npy((dir_ / "v.npy").string(), torch::arange(5, torch::kLong));
  EXPECT_EQ(vicreg::read_npy((dir_ / "v.npy").string()).sizes(), (std::vector<int64_t>{5}));
}

std::string npy_bytes(const std::string& header_dict, const std::string& data) {
  std::string h = header_dict;
  while ((10 + h.size() + 1) % 64 != 0) h.push_back(' ');
  h.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back(1);
  out.push_back(0);
  out.push_back(static_cast<char>(h.size() & 0xff));
  out.push_back(static_cast<char>(h.size() >> 8));
  return out + h + data;
}

TEST_F(Readers, NpyFortranOrderAndCorruptFiles) {
  // numpy writes a Fortran-ordered [2, 3] array column by column.
  const float col_major[6] = {1, 4, 2, 5, 3, 6};
  const std::string f_path = write("f.npy", [&] {
    const std::string s = npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
                                    std::string(reinterpret_cast<const char*>(col_major), 24));
    return Bytes(s.begin(), s.end());
  }());
  const auto f = vicreg::read_npy(f_path);
  EXPECT_TRUE(torch::equal(f, torch::arange(1, 7, torch::kFloat).reshape({2, 3})));

  const auto put = [&](const std::string& name, const std::string& s) {
    return write(name, Bytes(s.begin(), s.end()));
  };
  const auto read = [](const std::string& p) { return [p] { vicreg::read_npy(p); }; };
  const std::string ok_header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  std::string p = put("magic.npy", "PK\x03\x04 not numpy");
  expect_error_from(read(p), p, "not a .npy file");
  p = put("short.npy", npy_bytes(ok_header, std::string(20, '\0')));
  expect_error_from(read(p), p, "truncated: the header declares 24 bytes");
  p = put("long.npy", npy_bytes(ok_header, std::string(28, '\0')));
  expect_error_from(read(p), p, "bytes after the data");
  p = put("be.npy", npy_bytes("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }",
                              std::string(24, '\0')));
  expect_error_from(read(p), p, "dtype '>f4' is not supported");
  p = put("obj.npy", npy_bytes("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", ""));
  expect_error_from(read(p), p, "not supported");
  p = put("hdr.npy", std::string("\x93NUMPY\x01\x00\xff", 9));
  expect_error_from(read(p), p, "truncated header");
  p = (dir_ / "missing.npy").string();
  expect_error_from(read(p), p, "no such file");
}

// ---------------------------------------------------------------------------------------------
// Image folders

void write_png(const fs::path& path, int value, int channels = 3) {
  fs::create_directories(path.parent_path());
  cv::Mat m(6, 5, channels == 3 ? CV_8UC3 : CV_8UC1, cv::Scalar(value, value / 2, 0));
  ASSERT_TRUE(cv::imwrite(path.string(), m));
}

TEST_F(Readers, ImageFolderWithClassesAndWithout) {
  write_png(dir_ / "labelled" / "dog" / "b.png", 10);
  write_png(dir_ / "labelled" / "cat" / "a.png", 20);
  write_png(dir_ / "labelled" / "cat" / "sub" / "c.PNG", 30);
  std::ofstream(dir_ / "labelled" / "cat" / "notes.txt") << "not an image";
  const auto folder = vicreg::scan_image_folder((dir_ / "labelled").string());
  EXPECT_EQ(folder.classes, (std::vector<std::string>{"cat", "dog"}));
  ASSERT_EQ(folder.files.size(), 3u);
  EXPECT_EQ(folder.labels, (std::vector<int64_t>{0, 0, 1}));

  write_png(dir_ / "flat" / "x.png", 40);
  const auto flat = vicreg::scan_image_folder((dir_ / "flat").string());
  EXPECT_TRUE(flat.labels.empty());
  EXPECT_EQ(flat.files.size(), 1u);

  // Decoding: BGR files come back RGB.
  const cv::Mat img = vicreg::decode_image(folder.files[0], 3);
  EXPECT_EQ(img.channels(), 3);
  EXPECT_EQ(img.at<cv::Vec3b>(0, 0), cv::Vec3b(0, 10, 20));  // written as B=20, G=10, R=0
  EXPECT_EQ(vicreg::decode_image(folder.files[0], 1).channels(), 1);

  fs::create_directories(dir_ / "empty" / "class");
  const std::string empty = (dir_ / "empty").string();
  expect_error_from([&] { vicreg::scan_image_folder(empty); }, empty, "holds no images");
  const std::string corrupt = (dir_ / "bad.jpg").string();
  std::ofstream(corrupt) << "\xff\xd8 truncated jpeg";
  expect_error_from([&] { vicreg::decode_image(corrupt, 3); }, corrupt, "cannot be decoded");
}

// ---------------------------------------------------------------------------------------------
// load_dataset

TEST(DatasetTest, SubsetGathersSamplesAndLabels) {
  vicreg::Dataset d;
  d.name = "x";
  d.channels = 1;
  d.images = torch::arange(5 * 2 * 2, torch::kUInt8).reshape({5, 2, 2, 1});
  d.labels = torch::tensor({10, 11, 12, 13, 14}, torch::kLong);
  const auto s = d.subset(torch::tensor({3, 0, 3}, torch::kLong));
  ASSERT_EQ(s.size(), 3);
  EXPECT_TRUE(s.images[0].equal(d.images[3]));
  EXPECT_TRUE(s.images[1].equal(d.images[0]));
  EXPECT_TRUE(s.labels.equal(torch::tensor({13, 10, 13}, torch::kLong)));
  EXPECT_EQ(s.channels, 1);
  EXPECT_EQ(s.image(0).at<uint8_t>(1, 1), d.image(3).at<uint8_t>(1, 1));
  vicreg::Dataset f;
  f.files = {"a.png", "b.png", "c.png"};
  EXPECT_EQ(f.subset(torch::tensor({2, 1}, torch::kLong)).files,
            (std::vector<std::string>{"c.png", "b.png"}));
  vicreg::Dataset v;
  v.vectors = torch::arange(6, torch::kFloat).reshape({3, 2});
  EXPECT_TRUE(v.subset(torch::tensor({1}, torch::kLong)).vectors.equal(v.vectors.narrow(0, 1, 1)));
  EXPECT_THROW(d.subset(torch::tensor({5}, torch::kLong)), c10::Error);
  EXPECT_THROW(d.subset(torch::tensor({-1}, torch::kLong)), c10::Error);
}

TEST_F(Readers, LoadDatasetByName) {
  // IDX in a folder, as Debian ships Fashion-MNIST (gzip) or as raw files.
  write("train-images-idx3-ubyte.gz", idx({3, 2, 3}, kPixels), true);
  write("train-labels-idx1-ubyte", idx({3}, {1, 2, 3}));
  vicreg::DatasetConfig c;
  c.dataset = vicreg::DatasetKind::Mnist;
  c.data_dir = dir_.string();
  const auto d = vicreg::load_dataset(c);
  EXPECT_EQ(d.size(), 3);
  EXPECT_EQ(d.channels, 1);
  EXPECT_EQ(d.images.sizes(), (std::vector<int64_t>{3, 2, 3, 1}));
  const cv::Mat m = d.image(1);
  EXPECT_EQ(m.at<uint8_t>(0, 2), 12);
  EXPECT_EQ(m.at<uint8_t>(1, 2), 15);
  EXPECT_EQ(d.classes.size(), 10u);
  c.dataset = vicreg::DatasetKind::FashionMnist;
  EXPECT_EQ(vicreg::load_dataset(c).classes.at(9), "Ankle boot");
  c.dataset = vicreg::DatasetKind::Mnist;
  c.split = vicreg::Split::Test;
  expect_error_from([&] { vicreg::load_dataset(c); }, (dir_ / "t10k-images-idx3-ubyte.gz").string(),
                    "no such file");

  // CIFAR-10 in HWC order.
  for (int i = 1; i <= 5; ++i)
    write("data_batch_" + std::to_string(i) + ".bin", cifar_records(2, 1, 0));
  c = {};
  c.dataset = vicreg::DatasetKind::Cifar10;
  c.data_dir = dir_.string();
  const auto cifar = vicreg::load_dataset(c);
  EXPECT_EQ(cifar.size(), 10);
  EXPECT_EQ(cifar.image(1).at<cv::Vec3b>(4, 4), cv::Vec3b(1, 101, 201));

  // npy: a folder with {split}.npy and {split}_labels.npy.
  vicreg::write_npy((dir_ / "train.npy").string(), torch::randn({7, 4}, torch::kDouble));
  vicreg::write_npy((dir_ / "train_labels.npy").string(), torch::arange(7, torch::kInt));
  c = {};
  c.dataset = vicreg::DatasetKind::Npy;
  c.data_dir = dir_.string();
  const auto vec = vicreg::load_dataset(c);
  EXPECT_TRUE(vec.is_vector());
  EXPECT_EQ(vec.features(), 4);
  EXPECT_EQ(vec.vectors.scalar_type(), torch::kFloat);
  EXPECT_EQ(vec.labels[6].item<int64_t>(), 6);
  vicreg::write_npy((dir_ / "nan.npy").string(), torch::full({2, 2}, NAN));
  c.data_dir = (dir_ / "nan.npy").string();
  expect_error_from([&] { vicreg::load_dataset(c); }, c.data_dir, "NaN or Inf");
  vicreg::write_npy((dir_ / "flat.npy").string(), torch::ones({4}));
  c.data_dir = (dir_ / "flat.npy").string();
  expect_error_from([&] { vicreg::load_dataset(c); }, c.data_dir, "2-D float32 or float64");

  // Image folder with a train/ split.
  write_png(dir_ / "imgs" / "train" / "a" / "1.png", 50);
  write_png(dir_ / "imgs" / "train" / "b" / "2.png", 60);
  c = {};
  c.dataset = vicreg::DatasetKind::ImageFolder;
  c.data_dir = (dir_ / "imgs").string();
  const auto folder = vicreg::load_dataset(c);
  EXPECT_EQ(folder.size(), 2);
  EXPECT_EQ(folder.classes.size(), 2u);
  EXPECT_EQ(folder.image(1).at<cv::Vec3b>(0, 0), cv::Vec3b(0, 30, 60));

  EXPECT_THROW(vicreg::parse_name<vicreg::DatasetKind>("imagenet21k"), vicreg::UsageError);
  c.dataset = vicreg::DatasetKind::Cifar100;
  c.data_dir = "";
  EXPECT_THROW(vicreg::load_dataset(c), vicreg::UsageError);  // needs --data-dir
}

}  // namespace
