// Every reader on files the test writes, good and corrupt (IDX raw and gzip, CIFAR binary, .npy,
// image folders), load_dataset(), and the real Fashion-MNIST test split when Debian's
// dataset-fashion-mnist is installed.
#include "vicreg/data.h"
#include "vicreg/error.h"
#include "vicreg/io/jpeg.h"

#include "support/synthetic_data.h"
#include "support/temp_dir.h"

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <optional>
#include <set>
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
  // Declared sizes are believed only as far as the file can hold them, before any allocation.
  expect_error(write("bomb.gz", idx({1u << 16, 1u << 16, 1u << 8}, {}), true),
               "more than a gzip file of");
  expect_error(write("big", idx({1u << 16, 1u << 16, 1u << 8}, {})),
               "declares 1099511627776 bytes of data, the file holds 0");
  expect_error(write("wrap", idx({1u << 31, 1u << 31, 1u << 31}, {})), "more than 2^40 elements");
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
  // Format 1.0 (2-byte header length), or 2.0 (4 bytes) for headers that need it.
  const bool v2 = header_dict.size() > 60000;
  const size_t prefix = v2 ? 12 : 10;
  std::string h = header_dict;
  while ((prefix + h.size() + 1) % 64 != 0) h.push_back(' ');
  h.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back(v2 ? 2 : 1);
  out.push_back(0);
  for (size_t i = 0; i < (v2 ? 4u : 2u); ++i)
    out.push_back(static_cast<char>((h.size() >> (8 * i)) & 0xff));
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
  // Hostile headers: negative and overflowing sizes, a size the file cannot hold (refused before
  // any memory is taken), a long header (no regular expression to recurse on), no shape.
  const auto header = [](const std::string& shape) {
    return "{'descr': '<f4', 'fortran_order': False, 'shape': (" + shape + "), }";
  };
  p = put("neg.npy", npy_bytes(header("-2, 3"), std::string(24, '\0')));
  expect_error_from(read(p), p, "'-2', not a non-negative integer");
  p = put("wrap.npy", npy_bytes(header("999999999999, 999999999999, 999999999999"), ""));
  expect_error_from(read(p), p, "more than 2^40 elements");
  // No elements at all, but sizes whose product LibTorch refuses (found by fuzz_npy): an error of
  // ours, not LibTorch's; a true empty array still reads.
  p = put("zero.npy", npy_bytes(header("0, 3, 66666666663, 23, 3, 3, 23"), ""));
  expect_error_from(read(p), p, "more than 2^40 elements (zero-length sizes aside)");
  p = put("empty.npy", npy_bytes(header("0, 3"), ""));
  EXPECT_EQ(vicreg::read_npy(p).sizes(), (std::vector<int64_t>{0, 3}));
  p = put("huge.npy", npy_bytes(header("1000000, 100000"), std::string(8, '\0')));
  expect_error_from(read(p), p, "declares 400000000000 bytes of data, the file holds 8");
  p = put("gap.npy", npy_bytes(header("2,, 3"), std::string(24, '\0')));
  expect_error_from(read(p), p, "empty entry");
  p = put("deep.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'x': '" +
                                    std::string(500000, 'a') + "', 'shape': (2, 3), }",
                                std::string(24, '\0')));
  EXPECT_EQ(vicreg::read_npy(p).sizes(), (std::vector<int64_t>{2, 3}));
  p = put("noshape.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, }", ""));
  expect_error_from(read(p), p, "header has no 'shape'");
  p = put("scalar.npy", npy_bytes(header(""), std::string(4, '\0')));
  EXPECT_EQ(vicreg::read_npy(p).dim(), 0);
  p = put("vec.npy", npy_bytes(header("3,"), std::string(12, '\0')));
  EXPECT_EQ(vicreg::read_npy(p).sizes(), (std::vector<int64_t>{3}));
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

TEST_F(Readers, GrayscaleAlphaAnd16BitImagesDecodeToTheRequestedChannels) {
  // (CMYK JPEGs, which OpenCV cannot write, are checked from Python: tests/python.)
  const std::string gray = (dir_ / "gray.png").string(), rgba = (dir_ / "rgba.png").string(),
                    deep = (dir_ / "deep.png").string();
  ASSERT_TRUE(cv::imwrite(gray, cv::Mat(4, 5, CV_8UC1, cv::Scalar(90))));
  ASSERT_TRUE(cv::imwrite(rgba, cv::Mat(4, 5, CV_8UC4, cv::Scalar(10, 20, 30, 0))));  // BGRA
  ASSERT_TRUE(cv::imwrite(deep, cv::Mat(4, 5, CV_16UC3, cv::Scalar(0, 257 * 100, 65535))));
  for (const int channels : {3, 1}) {
    for (const std::string& f : {gray, rgba, deep}) {
      const cv::Mat m = vicreg::decode_image(f, channels);
      EXPECT_EQ(m.channels(), channels) << f;
      EXPECT_EQ(m.depth(), CV_8U) << f;
      EXPECT_EQ(m.rows, 4);
      EXPECT_EQ(m.cols, 5);
    }
  }
  EXPECT_EQ(vicreg::decode_image(gray, 3).at<cv::Vec3b>(1, 1), cv::Vec3b(90, 90, 90));
  EXPECT_EQ(vicreg::decode_image(rgba, 3).at<cv::Vec3b>(1, 1), cv::Vec3b(30, 20, 10));  // RGB
  EXPECT_EQ(vicreg::decode_image(deep, 3).at<cv::Vec3b>(1, 1), cv::Vec3b(255, 100, 0));
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
// JPEG: decode_jpeg against OpenCV's decoding of the same files

// What decode_image gave before decode_jpeg: OpenCV's decoding, in RGB.
cv::Mat opencv_decoding(const std::string& path, int channels) {
  cv::Mat m = cv::imread(path, channels == 1 ? cv::IMREAD_GRAYSCALE : cv::IMREAD_COLOR);
  if (channels == 3 && !m.empty()) cv::cvtColor(m, m, cv::COLOR_BGR2RGB);
  return m;
}

bool same_pixels(const cv::Mat& a, const cv::Mat& b) {
  return a.size() == b.size() && a.type() == b.type() && cv::norm(a, b, cv::NORM_INF) == 0;
}

std::vector<uint8_t> encode_jpeg(const cv::Mat& image, const std::vector<int>& params = {}) {
  std::vector<uint8_t> bytes;
  EXPECT_TRUE(cv::imencode(".jpg", image, bytes, params));
  return bytes;
}

// A picture with edges, gradients and noise: chroma subsampling, the DCT and the colour
// conversion all shape the decoded pixels. Odd sizes: partial MCUs at the right and the bottom.
cv::Mat test_picture(int rows, int cols) {
  cv::Mat bgr(rows, cols, CV_8UC3);
  cv::randu(bgr, 0, 256);
  cv::GaussianBlur(bgr, bgr, cv::Size(5, 5), 1.2);
  cv::rectangle(bgr, cv::Rect(cols / 4, rows / 3, cols / 2, rows / 4), cv::Scalar(250, 20, 90), -1);
  return bgr;
}

// An APP1 EXIF segment whose IFD0 holds one entry: (tag, type, count, value).
std::vector<uint8_t> exif_payload(bool little, uint16_t tag, uint16_t type, uint32_t count,
                                  uint16_t value) {
  std::vector<uint8_t> p = {'E', 'x', 'i', 'f', 0, 0};
  const auto u16 = [&](uint32_t v) {
    if (little) {
      p.insert(p.end(), {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8)});
    } else {
      p.insert(p.end(), {static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v)});
    }
  };
  const auto u32 = [&](uint32_t v) {
    if (little) {
      u16(v & 0xFFFF);
      u16(v >> 16);
    } else {
      u16(v >> 16);
      u16(v & 0xFFFF);
    }
  };
  p.insert(p.end(), little ? std::initializer_list<uint8_t>{'I', 'I'}
                           : std::initializer_list<uint8_t>{'M', 'M'});
  u16(42);
  u32(8);  // IFD0 right after the header
  u16(1);  // one entry
  u16(tag);
  u16(type);
  u32(count);
  u16(value);
  u16(0);
  u32(0);  // no IFD1
  return p;
}

// `jpeg` with an APP1 segment holding `payload` after its first segment (JFIF's APP0).
std::vector<uint8_t> with_app1(const std::vector<uint8_t>& jpeg,
                               const std::vector<uint8_t>& payload) {
  const size_t app0_end = 4 + (size_t{jpeg[4]} << 8 | jpeg[5]);
  const size_t length = payload.size() + 2;
  std::vector<uint8_t> out(jpeg.begin(), jpeg.begin() + static_cast<std::ptrdiff_t>(app0_end));
  out.insert(out.end(),
             {0xFF, 0xE1, static_cast<uint8_t>(length >> 8), static_cast<uint8_t>(length)});
  out.insert(out.end(), payload.begin(), payload.end());
  out.insert(out.end(), jpeg.begin() + static_cast<std::ptrdiff_t>(app0_end), jpeg.end());
  return out;
}

TEST_F(Readers, JpegsDecodePixelForPixelAsOpenCvDecodesThem) {
  const cv::Mat bgr = test_picture(37, 53);
  cv::Mat gray;
  cv::cvtColor(bgr, gray, cv::COLOR_BGR2GRAY);
  const struct {
    std::string name;
    cv::Mat image;
    std::vector<int> params;
  } cases[] = {
      {"default", bgr, {}},
      {"q40_optimized", bgr, {cv::IMWRITE_JPEG_QUALITY, 40, cv::IMWRITE_JPEG_OPTIMIZE, 1}},
      {"progressive", bgr, {cv::IMWRITE_JPEG_PROGRESSIVE, 1}},
      {"restart_markers", bgr, {cv::IMWRITE_JPEG_RST_INTERVAL, 2}},
      {"luma_chroma",
       bgr,
       {cv::IMWRITE_JPEG_LUMA_QUALITY, 90, cv::IMWRITE_JPEG_CHROMA_QUALITY, 30}},
      {"gray", gray, {}},
      {"gray_progressive", gray, {cv::IMWRITE_JPEG_PROGRESSIVE, 1}},
      {"one_pixel", test_picture(1, 1), {}},
      {"wide", test_picture(3, 517), {}},
  };
  for (const auto& c : cases) {
    const std::vector<uint8_t> bytes = encode_jpeg(c.image, c.params);
    const std::string path = (dir_ / (c.name + ".jpg")).string();
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    for (const int channels : {3, 1}) {
      SCOPED_TRACE(c.name + ", channels " + std::to_string(channels));
      const std::optional<cv::Mat> ours = vicreg::decode_jpeg(bytes.data(), bytes.size(), channels);
      ASSERT_TRUE(ours.has_value());  // decoded here, not left to OpenCV
      const cv::Mat reference = opencv_decoding(path, channels);
      ASSERT_FALSE(reference.empty());
      EXPECT_EQ(ours->channels(), channels);
      EXPECT_TRUE(same_pixels(*ours, reference));
      EXPECT_TRUE(same_pixels(vicreg::decode_image(path, channels), reference));
    }
  }
  // The channel order is RGB: the rectangle is red.
  const std::vector<uint8_t> bytes = encode_jpeg(bgr, {cv::IMWRITE_JPEG_QUALITY, 100});
  const cv::Vec3b centre =
      vicreg::decode_jpeg(bytes.data(), bytes.size(), 3)->at<cv::Vec3b>(37 / 3 + 4, 53 / 2);
  EXPECT_NEAR(centre[0], 90, 12);
  EXPECT_NEAR(centre[2], 250, 12);
}

TEST_F(Readers, DamagedJpegsDecodeAsOpenCvDecodesThemOrFailByName) {
  const std::vector<uint8_t> whole = encode_jpeg(test_picture(64, 48));
  const auto put = [&](const std::string& name, const std::vector<uint8_t>& bytes) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    return path;
  };
  // Truncated in the scan: libjpeg warns and fills the rest, as OpenCV's decoding does too.
  std::vector<uint8_t> cut(whole.begin(),
                           whole.begin() + static_cast<std::ptrdiff_t>(whole.size() * 2 / 3));
  const std::string cut_path = put("cut.jpg", cut);
  const std::optional<cv::Mat> ours = vicreg::decode_jpeg(cut.data(), cut.size(), 3);
  ASSERT_TRUE(ours.has_value());
  EXPECT_TRUE(same_pixels(*ours, opencv_decoding(cut_path, 3)));
  // Garbage in the scan's entropy-coded data: a warning, not an error, for both.
  std::vector<uint8_t> noisy = whole;
  for (size_t i = noisy.size() / 2; i < noisy.size() / 2 + 40; ++i) noisy[i] = 0x5A;
  const std::string noisy_path = put("noisy.jpg", noisy);
  const std::optional<cv::Mat> noisy_ours = vicreg::decode_jpeg(noisy.data(), noisy.size(), 3);
  ASSERT_TRUE(noisy_ours.has_value());
  EXPECT_TRUE(same_pixels(*noisy_ours, opencv_decoding(noisy_path, 3)));
  // Cut in the header: libjpeg stops, decode_jpeg leaves it to OpenCV, which fails by name.
  const std::vector<uint8_t> header_only(whole.begin(), whole.begin() + 30);
  EXPECT_FALSE(vicreg::decode_jpeg(header_only.data(), header_only.size(), 3).has_value());
  const std::string header_path = put("header.jpg", header_only);
  expect_error_from([&] { vicreg::decode_image(header_path, 3); }, header_path,
                    "cannot be decoded");
  // Not JPEG at all, an unsupported channel count, an empty file.
  const std::vector<uint8_t> png = {0x89, 'P', 'N', 'G'};
  EXPECT_FALSE(vicreg::looks_like_jpeg(png.data(), png.size()));
  EXPECT_FALSE(vicreg::decode_jpeg(png.data(), png.size(), 3).has_value());
  EXPECT_FALSE(vicreg::decode_jpeg(whole.data(), whole.size(), 4).has_value());
  EXPECT_FALSE(vicreg::looks_like_jpeg(whole.data(), 2));
  const std::string empty = put("empty.jpg", {});
  expect_error_from([&] { vicreg::decode_image(empty, 3); }, empty, "cannot be decoded");
  // A header that declares 60000 x 60000 pixels (libjpeg would fill 10 GiB): refused by name,
  // before anything is allocated.
  std::vector<uint8_t> huge = whole;
  const uint8_t sof0[] = {0xFF, 0xC0};
  const auto sof = std::search(huge.begin(), huge.end(), std::begin(sof0), std::end(sof0));
  ASSERT_NE(sof, huge.end());
  for (const int at : {5, 7}) {  // height, width: 60000, big-endian
    sof[at] = 0xEA;
    sof[at + 1] = 0x60;
  }
  try {
    vicreg::decode_jpeg(huge.data(), huge.size(), 3);
    ADD_FAILURE() << "a 60000 x 60000 JPEG was not refused";
  } catch (const vicreg::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("60000 x 60000 pixels, more than the limit of"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("OPENCV_IO_MAX_IMAGE_PIXELS"), std::string::npos);
  }
  const std::string huge_path = put("huge.jpg", huge);
  expect_error_from([&] { vicreg::decode_image(huge_path, 1); }, huge_path, "more than the limit");
}

TEST(ImagePixelLimit, ReadsOpenCvsVariable) {
  constexpr uint64_t kDefault = uint64_t{1} << 30;
  EXPECT_EQ(vicreg::image_pixel_limit(nullptr), kDefault);
  EXPECT_EQ(vicreg::image_pixel_limit("1048576"), uint64_t{1} << 20);
  EXPECT_EQ(vicreg::image_pixel_limit("1M"), uint64_t{1} << 20);
  EXPECT_EQ(vicreg::image_pixel_limit("2KB"), 2048u);
  EXPECT_EQ(vicreg::image_pixel_limit("3G"), uint64_t{3} << 30);
  for (const char* bad : {"", "abc", "12X", "0", "-5", " 7", "99999999999999999999", "2048G"}) {
    EXPECT_EQ(vicreg::image_pixel_limit(bad), kDefault) << bad;
  }
}

TEST_F(Readers, JpegsWithExifOrientationAreTurnedUprightAsOpenCvDoes) {
  const std::vector<uint8_t> plain = encode_jpeg(test_picture(20, 30));
  for (const bool little : {true, false}) {
    SCOPED_TRACE(little ? "II" : "MM");
    const std::vector<uint8_t> upright = with_app1(plain, exif_payload(little, 0x0112, 3, 1, 1));
    const std::vector<uint8_t> turned = with_app1(plain, exif_payload(little, 0x0112, 3, 1, 6));
    const std::vector<uint8_t> p6 = exif_payload(little, 0x0112, 3, 1, 6);
    EXPECT_EQ(vicreg::exif_orientation(p6.data(), p6.size()), 6);
    // Orientation 1 is decoded here; 6 (a quarter turn) is left to OpenCV, which turns it.
    ASSERT_TRUE(vicreg::decode_jpeg(upright.data(), upright.size(), 3).has_value());
    EXPECT_FALSE(vicreg::decode_jpeg(turned.data(), turned.size(), 3).has_value());
    const std::string path = (dir_ / (little ? "turned_ii.jpg" : "turned_mm.jpg")).string();
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(turned.data()),
               static_cast<std::streamsize>(turned.size()));
    const cv::Mat image = vicreg::decode_image(path, 3);
    EXPECT_EQ(image.rows, 30);
    EXPECT_EQ(image.cols, 20);
    EXPECT_TRUE(same_pixels(image, opencv_decoding(path, 3)));
  }
  const auto orientation = [](const std::vector<uint8_t>& p) {
    return vicreg::exif_orientation(p.data(), p.size());
  };
  EXPECT_EQ(orientation(exif_payload(true, 0x0110, 2, 1, 7)), 1);   // no orientation tag: upright
  EXPECT_EQ(orientation(exif_payload(true, 0x0112, 4, 1, 6)), 0);   // a LONG: unreadable
  EXPECT_EQ(orientation(exif_payload(true, 0x0112, 3, 2, 6)), 0);   // two values
  EXPECT_EQ(orientation(exif_payload(false, 0x0112, 3, 1, 9)), 0);  // no such orientation
  std::vector<uint8_t> cut = exif_payload(true, 0x0112, 3, 1, 6);
  for (const size_t size : {size_t{0}, size_t{6}, size_t{13}, size_t{16}, size_t{27}}) {
    EXPECT_EQ(vicreg::exif_orientation(cut.data(), size), 0) << size;  // truncated
  }
  cut[7] = 'X';  // neither II nor MM
  EXPECT_EQ(orientation(cut), 0);
  // An unreadable EXIF block: left to OpenCV.
  const std::vector<uint8_t> odd = with_app1(plain, exif_payload(true, 0x0112, 4, 1, 6));
  EXPECT_FALSE(vicreg::decode_jpeg(odd.data(), odd.size(), 3).has_value());
}

// ---------------------------------------------------------------------------------------------
// load_dataset

TEST(DatasetTest, FileListHoldsEachFolderOnceAndGivesThePathsBack) {
  const std::vector<std::string> paths = {"/data/train/n01/a.JPEG",
                                          "/data/train/n01/b.JPEG",
                                          "/data/train/n02/a.JPEG",
                                          "rel/x.png",
                                          "plain.png",
                                          "/data/train/n01/c.JPEG",
                                          "/data/train/n01/",
                                          "/"};
  vicreg::FileList f(paths);
  ASSERT_EQ(f.size(), paths.size());
  EXPECT_EQ(f, paths);
  EXPECT_EQ(f.to_vector(), paths);
  EXPECT_EQ(std::vector<std::string>(f.begin(), f.end()), paths);
  EXPECT_EQ(f.name(0), "a.JPEG");
  EXPECT_EQ(f.name(4), "plain.png");
  EXPECT_EQ(f.name(6), "");
  EXPECT_EQ(f[5], "/data/train/n01/c.JPEG");  // its folder again, after others
  vicreg::FileList g = {"x/1", "x/2"};
  g.push_back("y/3");
  EXPECT_EQ(g, (std::vector<std::string>{"x/1", "x/2", "y/3"}));
  EXPECT_FALSE(g == (std::vector<std::string>{"x/1", "x/2"}));
  EXPECT_TRUE(vicreg::FileList().empty());
  EXPECT_THROW(g.name(3), c10::Error);
}

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

// ---------------------------------------------------------------------------------------------
// Splits: the held-out split is never training data

/// The files of `d` as a set, for overlap checks.
std::set<std::string> file_set(const vicreg::Dataset& d) {
  return std::set<std::string>(d.files.begin(), d.files.end());
}

bool disjoint(const std::set<std::string>& a, const std::set<std::string>& b) {
  for (const auto& x : a) {
    if (b.count(x) > 0) return false;
  }
  return true;
}

/// Each row of a vector data set [N, F] with F >= 1 as its first column's value (a sample id).
std::set<float> row_ids(const vicreg::Dataset& d) {
  const torch::Tensor c = d.vectors.select(1, 0).contiguous();
  return std::set<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

class Splits : public Readers {
 protected:
  vicreg::DatasetConfig folder_config(const fs::path& root, vicreg::Split split) {
    vicreg::DatasetConfig c;
    c.dataset = vicreg::DatasetKind::ImageFolder;
    c.data_dir = root.string();
    c.split = split;
    return c;
  }

  /// root/<split>/<class>/<i>.png, `per_class` images per class.
  void write_classes(const fs::path& dir, const std::vector<std::string>& classes, int per_class) {
    for (size_t c = 0; c < classes.size(); ++c) {
      for (int i = 0; i < per_class; ++i) {
        write_png(dir / classes[c] / (classes[c] + "_" + std::to_string(i) + ".png"),
                  static_cast<int>(10 * c + i));
      }
    }
  }

  template <typename F>
  void expect_message(F&& f, const std::vector<std::string>& needles) {
    try {
      f();
      ADD_FAILURE() << "expected an error containing '" << needles.front() << "'";
    } catch (const std::runtime_error& e) {
      for (const auto& n : needles)
        EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
    }
  }
};

TEST_F(Splits, ImageNetLayoutTrainsOnTrainAndMeasuresOnVal) {
  const fs::path root = dir_ / "imagenet";
  write_classes(root / "train", {"n01", "n02", "n03"}, 4);
  write_classes(root / "val", {"n02", "n03"}, 2);  // a class missing from val keeps the labels
  const auto train = vicreg::load_dataset(folder_config(root, vicreg::Split::Train));
  const auto val = vicreg::load_dataset(folder_config(root, vicreg::Split::Test));
  EXPECT_EQ(train.size(), 12);
  EXPECT_EQ(val.size(), 4);
  EXPECT_EQ(train.classes, (std::vector<std::string>{"n01", "n02", "n03"}));
  EXPECT_EQ(val.classes, train.classes);
  EXPECT_EQ(train.source, (root / "train").string());
  EXPECT_EQ(val.source, (root / "val").string());
  for (const auto& f : train.files) EXPECT_EQ(f.rfind((root / "train").string(), 0), 0u) << f;
  for (const auto& f : val.files) EXPECT_EQ(f.rfind((root / "val").string(), 0), 0u) << f;
  EXPECT_TRUE(disjoint(file_set(train), file_set(val)));
  EXPECT_TRUE(val.labels.equal(torch::tensor({1, 1, 2, 2}, torch::kLong)));
  // test/ when there is no val/.
  fs::rename(root / "val", root / "test");
  EXPECT_EQ(vicreg::load_dataset(folder_config(root, vicreg::Split::Test)).source,
            (root / "test").string());
  // A held-out class that training lacks, and a root with val/ but no train/.
  write_classes(root / "test", {"n09"}, 1);
  expect_message([&] { vicreg::load_dataset(folder_config(root, vicreg::Split::Test)); },
                 {"'n09'", "lacks"});
  fs::rename(root / "train", root / "training");
  expect_message([&] { vicreg::load_dataset(folder_config(root, vicreg::Split::Train)); },
                 {"no train/ folder", root.string()});
}

TEST_F(Splits, AFolderWithoutHeldOutSplitIsAnErrorOrAStratifiedHoldout) {
  const fs::path root = dir_ / "flowers";
  write_classes(root, {"daisy", "rose"}, 8);
  auto c = folder_config(root, vicreg::Split::Test);
  expect_message([&] { vicreg::load_dataset(c); }, {"no held-out split", "val_dir", "holdout"});
  // --val-dir anywhere.
  write_classes(dir_ / "elsewhere", {"rose"}, 3);
  c.val_dir = (dir_ / "elsewhere").string();
  const auto val = vicreg::load_dataset(c);
  EXPECT_EQ(val.size(), 3);
  EXPECT_TRUE((val.labels == 1).all().item<bool>());
  // --holdout: seeded, stratified, disjoint, together the whole folder.
  c.val_dir.clear();
  c.holdout = 0.25;
  const auto held = vicreg::load_dataset(c);
  c.split = vicreg::Split::Train;
  const auto rest = vicreg::load_dataset(c);
  EXPECT_EQ(held.size(), 4);
  EXPECT_EQ(rest.size(), 12);
  EXPECT_EQ((held.labels == 0).sum().item<int64_t>(), 2);
  EXPECT_EQ((held.labels == 1).sum().item<int64_t>(), 2);
  EXPECT_TRUE(disjoint(file_set(held), file_set(rest)));
  std::set<std::string> all = file_set(held);
  for (const auto& f : rest.files) all.insert(f);
  EXPECT_EQ(all.size(), 16u);
  EXPECT_NE(held.source.find("25 % class-stratified held-out part"), std::string::npos)
      << held.source;
  EXPECT_EQ(file_set(vicreg::load_dataset(c)), file_set(rest));  // the same every time
  c.val_dir = (dir_ / "elsewhere").string();
  EXPECT_THROW(vicreg::load_dataset(c), vicreg::UsageError);  // --holdout and --val-dir
}

TEST_F(Splits, NpyHeldOutBesideOrGivenOrHeldOut) {
  // Rows whose first column is their id.
  const auto rows = [](int first, int n) {
    return torch::cat(
        {torch::arange(first, first + n, torch::kFloat).unsqueeze(1), torch::randn({n, 3})}, 1);
  };
  vicreg::write_npy((dir_ / "train.npy").string(), rows(0, 20));
  vicreg::write_npy((dir_ / "train_labels.npy").string(), torch::arange(20, torch::kLong) % 2);
  vicreg::DatasetConfig c;
  c.dataset = vicreg::DatasetKind::Npy;
  c.data_dir = dir_.string();
  c.split = vicreg::Split::Test;
  expect_message([&] { vicreg::load_dataset(c); }, {"no val.npy or test.npy", "val_data"});
  vicreg::write_npy((dir_ / "test.npy").string(), rows(100, 5));
  EXPECT_EQ(vicreg::load_dataset(c).source, (dir_ / "test.npy").string());
  vicreg::write_npy((dir_ / "val.npy").string(), rows(200, 6));
  const auto val = vicreg::load_dataset(c);
  EXPECT_EQ(val.size(), 6);  // val.npy first
  EXPECT_FALSE(val.labels.defined());
  // A single file: the defect was that its "test split" was itself.
  c.data_dir = (dir_ / "train.npy").string();
  expect_message([&] { vicreg::load_dataset(c); }, {"a single file", "holdout"});
  c.val_dir = (dir_ / "test.npy").string();
  EXPECT_EQ(row_ids(vicreg::load_dataset(c)), (std::set<float>{100, 101, 102, 103, 104}));
  c.val_dir.clear();
  c.holdout = 0.2;
  const auto held = vicreg::load_dataset(c);
  c.split = vicreg::Split::Train;
  const auto rest = vicreg::load_dataset(c);
  EXPECT_EQ(held.size(), 4);
  EXPECT_EQ(rest.size(), 16);
  std::set<float> ids = row_ids(held);
  for (float id : row_ids(rest)) EXPECT_TRUE(ids.insert(id).second) << "row " << id << " in both";
  EXPECT_EQ(ids.size(), 20u);
  EXPECT_EQ((held.labels == 0).sum().item<int64_t>(), 2);
  // Another width of held-out data is caught where both splits meet (load_subject); here the
  // reader only checks each file.
}

TEST_F(Splits, BuiltInDataSetsHoldOutFromTrainOrReadTheirTestFiles) {
  vicreg::testing::write_idx_dataset(dir_ / "mnist", 40, 8, 1, "train");
  vicreg::testing::write_idx_dataset(dir_ / "other", 10, 8, 2, "t10k");
  vicreg::DatasetConfig c;
  c.dataset = vicreg::DatasetKind::Mnist;
  c.data_dir = (dir_ / "mnist").string();
  c.split = vicreg::Split::Test;
  expect_message([&] { vicreg::load_dataset(c); }, {"t10k-images-idx3-ubyte", "no such file"});
  c.val_dir = (dir_ / "other").string();
  const auto test = vicreg::load_dataset(c);
  EXPECT_EQ(test.size(), 10);
  EXPECT_NE(test.source.find("t10k-images"), std::string::npos);
  c.val_dir.clear();
  c.holdout = 0.1;
  const auto held = vicreg::load_dataset(c);
  c.split = vicreg::Split::Train;
  const auto rest = vicreg::load_dataset(c);
  ASSERT_EQ(held.size(), 10);  // one of each of the 10 classes
  ASSERT_EQ(rest.size(), 30);
  EXPECT_TRUE(std::get<0>(held.labels.sort()).equal(torch::arange(10, torch::kLong)));
  // No held-out image is a training image (the synthetic images are all different).
  const torch::Tensor a = held.images.flatten(1), b = rest.images.flatten(1);
  for (int64_t i = 0; i < a.size(0); ++i) {
    EXPECT_FALSE((b == a[i]).all(1).any().item<bool>()) << "held-out image " << i << " trains";
  }
}

TEST_F(Splits, HoldoutIsStratifiedDeterministicAndKeepsSingletonsInTraining) {
  const torch::Tensor labels =
      torch::tensor({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2}, torch::kLong);
  const torch::Tensor h = vicreg::holdout_indices(labels, 15, 0.3);
  EXPECT_TRUE(h.equal(vicreg::holdout_indices(labels, 15, 0.3)));
  EXPECT_FALSE(h.equal(vicreg::holdout_indices(labels, 15, 0.3, 7)));
  const torch::Tensor y = labels.index_select(0, h);
  EXPECT_EQ((y == 0).sum().item<int64_t>(), 3);
  EXPECT_EQ((y == 1).sum().item<int64_t>(), 1);
  EXPECT_EQ((y == 2).sum().item<int64_t>(), 0);  // its only sample stays in training
  EXPECT_EQ(vicreg::holdout_indices({}, 10, 0.5).numel(), 5);
  EXPECT_THROW(vicreg::holdout_indices(labels, 15, 1.0), c10::Error);
}

TEST_F(Splits, ClassListsSelectClassFoldersInBothSplits) {
  const fs::path root = dir_ / "imagenet";
  write_classes(root / "train", {"a", "b", "c", "d"}, 2);
  write_classes(root / "val", {"a", "b", "c", "d"}, 1);
  const fs::path list = dir_ / "classes.txt";
  std::ofstream(list) << "d\n  b \n\n";
  auto c = folder_config(root, vicreg::Split::Train);
  c.classes_file = list.string();
  const auto train = vicreg::load_dataset(c);
  EXPECT_EQ(train.classes, (std::vector<std::string>{"b", "d"}));
  EXPECT_EQ(train.size(), 4);
  c.split = vicreg::Split::Test;
  const auto val = vicreg::load_dataset(c);
  EXPECT_EQ(val.size(), 2);
  EXPECT_TRUE(val.labels.equal(torch::tensor({0, 1}, torch::kLong)));
  EXPECT_NE(val.files[1].find("/val/d/"), std::string::npos);
  // Bad lists: each error names the file.
  std::ofstream(list) << "b\nzebra\n";
  c.split = vicreg::Split::Train;
  expect_message([&] { vicreg::load_dataset(c); }, {"'zebra'", "no folder"});
  std::ofstream(list) << "b\nb\n";
  expect_error_from([&] { vicreg::read_class_list(list.string()); }, list.string(), "twice");
  std::ofstream(list) << "\n \n";
  expect_error_from([&] { vicreg::read_class_list(list.string()); }, list.string(), "no class");
  std::ofstream(list) << "train/a\n";
  expect_error_from([&] { vicreg::read_class_list(list.string()); }, list.string(), "line 1");
  expect_error_from([&] { vicreg::read_class_list((dir_ / "none.txt").string()); },
                    (dir_ / "none.txt").string(), "no such file");
  c.dataset = vicreg::DatasetKind::Mnist;
  EXPECT_THROW(vicreg::load_dataset(c), vicreg::UsageError);
}

TEST_F(Splits, TrainSubsetFilesPickImagesByName) {
  const fs::path root = dir_ / "imagenet";
  write_classes(root / "train", {"n01", "n02"}, 3);
  const auto train = vicreg::load_dataset(folder_config(root, vicreg::Split::Train));
  const fs::path list = dir_ / "1percent.txt";
  std::ofstream(list) << "n02_1.png\nn01/n01_0.png\n\nn02_1.png\n";
  const torch::Tensor idx = vicreg::subset_by_file_names(train, list.string());
  ASSERT_EQ(idx.numel(), 2);
  const auto sub = train.subset(idx);
  EXPECT_NE(sub.files[0].find("n01_0.png"), std::string::npos);
  EXPECT_NE(sub.files[1].find("n02_1.png"), std::string::npos);
  EXPECT_TRUE(sub.labels.equal(torch::tensor({0, 1}, torch::kLong)));
  std::ofstream(list) << "n01_0.png\nn05_1.JPEG\nn05_2.JPEG\n";
  expect_error_from([&] { vicreg::subset_by_file_names(train, list.string()); }, list.string(),
                    "names 2 image(s)");
  write_png(root / "train" / "n02" / "deeper" / "n01_0.png", 1);  // two files of one name
  const auto dup = vicreg::load_dataset(folder_config(root, vicreg::Split::Train));
  std::ofstream(list) << "n01_0.png\n";
  expect_error_from([&] { vicreg::subset_by_file_names(dup, list.string()); }, list.string(),
                    "several files");
  vicreg::Dataset vectors;
  vectors.vectors = torch::zeros({2, 2});
  EXPECT_THROW(vicreg::subset_by_file_names(vectors, list.string()), vicreg::UsageError);
}

}  // namespace
