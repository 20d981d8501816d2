// Weights files: the safetensors writer and reader, the torch.save reader, loading state dicts
// with torchvision's names into encoders, and exported backbones.
#include "vicreg/models.h"
#include "vicreg/run/artifacts.h"
#include "vicreg/weights.h"

#include "support/temp_dir.h"

#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <torch/serialize.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

namespace {

namespace fs = std::filesystem;
using vicreg::NamedTensors;

class Weights : public vicreg::testing::TempDirTest {
 protected:
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  static std::string slurp(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  static void spit(const std::string& p, const std::string& bytes) {
    std::ofstream(p, std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  /// A safetensors file from a header and data bytes, as the format lays them out.
  static std::string safetensors_bytes(const std::string& header, const std::string& data) {
    std::string out(8, '\0');
    const uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    return out + header + data;
  }
  /// Expects `fn` to throw std::runtime_error whose message holds `needle`.
  static void expect_error(const std::function<void()>& fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "no error; expected one with '" << needle << "'";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
};

TEST_F(Weights, SafetensorsRoundTripsEveryDtypeShapeAndMetadata) {
  torch::manual_seed(0);
  const NamedTensors tensors = {
      {"f64", torch::randn({3, 4}, torch::kFloat64)},
      {"f32", torch::randn({2, 3, 5})},
      {"f16", torch::randn({7}).to(torch::kFloat16)},
      {"bf16", torch::randn({2, 2}).to(torch::kBFloat16)},
      {"i64", torch::arange(-3, 4, torch::kInt64)},
      {"i32", torch::arange(5, torch::kInt32)},
      {"i16", torch::arange(3, torch::kInt16)},
      {"i8", torch::tensor({-128, 0, 127}, torch::kInt8)},
      {"u8", torch::tensor({0, 255}, torch::kUInt8)},
      {"bool", torch::tensor({true, false, true})},
      {"scalar", torch::tensor(2.5)},
      {"empty", torch::empty({0, 3})},
      {"strided", torch::randn({4, 6}).t()},  // not contiguous: written in logical order
  };
  vicreg::write_safetensors(path("a.safetensors"), tensors, {{"format", "pt"}, {"k", "v"}});
  const std::string bytes = slurp(path("a.safetensors"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);  // the data start 8-byte aligned
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(header["f32"]["dtype"], "F32");
  EXPECT_EQ(header["bf16"]["dtype"], "BF16");
  EXPECT_EQ(header["__metadata__"]["k"], "v");

  const vicreg::WeightsFile f = vicreg::read_safetensors(path("a.safetensors"));
  EXPECT_EQ(f.format, "safetensors");
  EXPECT_EQ(f.metadata.at("format"), "pt");
  ASSERT_EQ(f.tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {  // in the order written
    EXPECT_EQ(f.tensors[i].first, tensors[i].first);
    EXPECT_EQ(f.tensors[i].second.scalar_type(), tensors[i].second.scalar_type());
    EXPECT_EQ(f.tensors[i].second.sizes(), tensors[i].second.sizes());
    EXPECT_TRUE(torch::equal(f.tensors[i].second, tensors[i].second)) << tensors[i].first;
  }
  // No temporary file is left behind.
  EXPECT_FALSE(fs::exists(path("a.safetensors.tmp")));
}

TEST_F(Weights, SafetensorsWriterRejectsWhatTheFormatCannotHold) {
  EXPECT_THROW(
      vicreg::write_safetensors(path("x"), {{"c", torch::zeros({2}, torch::kComplexFloat)}}),
      vicreg::UsageError);
  EXPECT_THROW(
      vicreg::write_safetensors(path("x"), {{"a", torch::zeros({1})}, {"a", torch::zeros({1})}}),
      vicreg::UsageError);
  EXPECT_THROW(vicreg::write_safetensors(path("x"), {{"__metadata__", torch::zeros({1})}}),
               vicreg::UsageError);
  EXPECT_THROW(
      vicreg::write_safetensors((dir_ / "no" / "dir" / "x").string(), {{"a", torch::zeros({1})}}),
      std::runtime_error);
}

TEST_F(Weights, SafetensorsReaderNamesWhatIsWrong) {
  const std::string f = path("bad.safetensors");
  const auto check = [&](const std::string& bytes, const std::string& needle) {
    spit(f, bytes);
    expect_error([&] { vicreg::read_safetensors(f); }, needle);
  };
  const std::string good_header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data(8, '\1');
  spit(f, safetensors_bytes(good_header, data));
  EXPECT_EQ(vicreg::read_safetensors(f).tensors.at(0).second.numel(), 2);

  check("abc", "truncated");
  check(safetensors_bytes(good_header, data).substr(0, 20), "does not fit");  // cut in the header
  check(safetensors_bytes(good_header, data).substr(0, 8 + good_header.size() + 4),
        "outside");  // cut in the data
  check(safetensors_bytes("{not json", ""), "not valid JSON");
  // 100,000 nested arrays: refused at depth 1,000 instead of exhausting the stack.
  check(
      safetensors_bytes("{\"w\":" + std::string(100000, '[') + std::string(100000, ']') + "}", ""),
      "nested deeper than 1000 levels");
  check(safetensors_bytes("[1,2]", ""), "not a JSON object");
  check(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2]}})", data), "data_offsets");
  check(safetensors_bytes(R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", "ab"),
        "not supported");
  // A header whose dtype or shape does not match the bytes it points at.
  check(safetensors_bytes(R"({"w":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", data),
        "dtype or shape mismatch");
  check(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data),
        "dtype or shape mismatch");
  check(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data),
        "not a list of sizes");
  // Sizes whose product wraps past 2^64 (2^40 x 2^40), and a 0 before them (no elements, but
  // LibTorch refuses the shape): errors of ours, not LibTorch's; a true empty tensor still reads.
  check(safetensors_bytes(
            R"({"w":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,0]}})",
            ""),
        "is too large (over 2^40 elements)");
  check(safetensors_bytes(
            R"({"w":{"dtype":"F32","shape":[0,1099511627776,1099511627776],"data_offsets":[0,0]}})",
            ""),
        "is too large (over 2^40 elements)");
  spit(f, safetensors_bytes(R"({"w":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}})", ""));
  EXPECT_EQ(vicreg::read_safetensors(f).tensors.at(0).second.sizes(), (std::vector<int64_t>{0, 3}));
  check(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                          data),
        "overlap");
  check(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data),
        "belong to no tensor");
  check(safetensors_bytes(good_header, data + "xx"), "after the last tensor");
  check(safetensors_bytes(R"({"__metadata__":{"k":1}})", ""), "not a string");
  expect_error([&] { vicreg::read_safetensors(path("missing")); }, "no such file");
}

TEST_F(Weights, TorchSaveFilesAreReadWithNestedDictsFlattened) {
  torch::manual_seed(1);
  const torch::Tensor w = torch::randn({3, 2}), b = torch::arange(4, torch::kInt64);
  c10::impl::GenericDict inner(c10::StringType::get(), c10::AnyType::get());
  c10::impl::GenericDict outer(c10::StringType::get(), c10::AnyType::get());
  inner.insert("weight", w);
  inner.insert("steps", b);
  outer.insert("model", inner);
  outer.insert("epoch", 7);     // not a tensor: skipped
  outer.insert("view", w.t());  // a strided view of another tensor's storage
  const std::vector<char> bytes = torch::pickle_save(outer);
  spit(path("a.pth"), std::string(bytes.begin(), bytes.end()));

  const vicreg::WeightsFile f = vicreg::read_weights(path("a.pth"));  // by content
  EXPECT_EQ(f.format, "torch");
  ASSERT_EQ(f.tensors.size(), 3u);
  std::map<std::string, torch::Tensor> m(f.tensors.begin(), f.tensors.end());
  EXPECT_TRUE(torch::equal(m.at("model.weight"), w));
  EXPECT_TRUE(torch::equal(m.at("model.steps"), b));
  EXPECT_TRUE(torch::equal(m.at("view"), w.t()));

  // Corrupt and foreign files.
  const std::string good = slurp(path("a.pth"));
  spit(path("cut.pth"), good.substr(0, good.size() / 2));
  expect_error([&] { vicreg::read_weights(path("cut.pth")); }, "corrupt or truncated");
  std::string legacy = "\x80\x02\x8a\x0a";
  spit(path("legacy.pth"), legacy + "rest");
  expect_error([&] { vicreg::read_weights(path("legacy.pth")); }, "legacy torch.save format");
  spit(path("text.pth"), "hello world, not weights");
  expect_error([&] { vicreg::read_weights(path("text.pth")); }, "neither a safetensors");
  spit(path("empty.pth"), "");
  expect_error([&] { vicreg::read_weights(path("empty.pth")); }, "empty or truncated");
  const std::vector<char> list = torch::pickle_save(c10::IValue(std::vector<int64_t>{1, 2}));
  spit(path("list.pth"), std::string(list.begin(), list.end()));
  expect_error([&] { vicreg::read_weights(path("list.pth")); }, "not a state dict");
}

/// A torch.save archive of a hand-written pickle, with data/0 a storage of 2 floats.
void write_pickle_archive(const std::string& file, const std::string& pkl) {
  caffe2::serialize::PyTorchStreamWriter writer(file);
  writer.writeRecord("data.pkl", pkl.data(), pkl.size());
  const float storage[2] = {1.5f, -2.0f};
  writer.writeRecord("data/0", storage, sizeof storage);
  writer.writeEndOfFile();
}

/// A torch.save archive with a hand-written pickle: {"w": a float tensor of sizes `size` and
/// strides `stride` at `offset` over a storage of 2 floats}, as torch.save lays it out.
void write_tensor_view_archive(const std::string& file, const std::vector<int64_t>& size,
                               int64_t offset, std::vector<int64_t> stride = {}) {
  if (stride.empty()) stride.assign(size.size(), 1);
  const auto str = [](const std::string& v) {
    std::string out = "X";
    for (int i = 0; i < 4; ++i) out += static_cast<char>((v.size() >> (8 * i)) & 0xff);
    return out + v;
  };
  const auto integer = [](int64_t v) {  // LONG1: 8 little-endian bytes, two's complement
    std::string out = "\x8a\x08";
    for (int i = 0; i < 8; ++i)
      out += static_cast<char>((static_cast<uint64_t>(v) >> (8 * i)) & 0xff);
    return out;
  };
  const auto tuple = [&integer](const std::vector<int64_t>& v) {
    std::string out = "(";
    for (const int64_t x : v) out += integer(x);
    return out + "t";
  };
  std::string pkl = "\x80\x02}" + str("w") + "ctorch._utils\n_rebuild_tensor_v2\n(";
  pkl +=
      "(" + str("storage") + "ctorch\nFloatStorage\n" + str("0") + str("cpu") + integer(2) + "tQ";
  pkl += integer(offset) + tuple(size) + tuple(stride) + "\x89";
  pkl += "ccollections\nOrderedDict\n)RtRs.";
  write_pickle_archive(file, pkl);
}

TEST_F(Weights, TorchSaveTensorViewsAreBoundsChecked) {
  write_tensor_view_archive(path("ok.pth"), {1}, 1);  // the second element
  const vicreg::WeightsFile f = vicreg::read_torch_file(path("ok.pth"));
  ASSERT_EQ(f.tensors.size(), 1u);
  EXPECT_TRUE(torch::equal(f.tensors[0].second, torch::tensor({-2.0f})));
  // A view past the end of its storage would read other memory: refused.
  write_tensor_view_archive(path("past.pth"), {4}, 0);
  expect_error([&] { vicreg::read_torch_file(path("past.pth")); },
               "reaches element 3 of a storage of 2");
  write_tensor_view_archive(path("offset.pth"), {1}, 2);
  expect_error([&] { vicreg::read_torch_file(path("offset.pth")); },
               "reaches element 2 of a storage of 2");
  // Offsets and extents whose arithmetic would overflow int64 (a 2^63 offset would wrap back
  // into the storage, or before it).
  const int64_t big = int64_t{1} << 62;
  write_tensor_view_archive(path("huge_offset.pth"), {1}, big);
  expect_error([&] { vicreg::read_torch_file(path("huge_offset.pth")); }, "storage offset");
  write_tensor_view_archive(path("negative.pth"), {1}, -4);
  expect_error([&] { vicreg::read_torch_file(path("negative.pth")); }, "size and stride");
  write_tensor_view_archive(path("extent.pth"), {int64_t{1} << 40, 2}, 0, {int64_t{1} << 40, 1});
  expect_error([&] { vicreg::read_torch_file(path("extent.pth")); }, "out of range");
  // 2^40 x 2^40 x 2^40 repeated elements (stride 0): the element count saturates, not wraps.
  const int64_t t = int64_t{1} << 40;
  write_tensor_view_archive(path("repeat.pth"), {t, t, t}, 0, {0, 0, 0});
  expect_error([&] { vicreg::read_torch_file(path("repeat.pth")); }, "elements over a storage");
}

TEST_F(Weights, HostilePicklesAreRefusedWithoutCrashLeakOrUnboundedMemory) {
  using namespace std::string_literals;  // the pickles hold NUL bytes
  // 200,000 nested lists (a few hundred bytes compressed): released without recursion.
  write_pickle_archive(path("deep.pth"),
                       "\x80\x02" + std::string(200000, ']') + std::string(199999, 'a') + ".");
  expect_error([&] { vicreg::read_torch_file(path("deep.pth")); }, "not a state dict");
  // A list and a dict that contain themselves (DUP, then APPEND / SETITEM): no leak (the
  // sanitizer build checks), no endless walk.
  write_pickle_archive(path("cycle.pth"), "\x80\x02]2a.");
  expect_error([&] { vicreg::read_torch_file(path("cycle.pth")); }, "not a state dict");
  write_pickle_archive(path("dict_cycle.pth"), "\x80\x02}q\x00X\x01\x00\x00\x00kh\x00s."s);
  expect_error([&] { vicreg::read_torch_file(path("dict_cycle.pth")); }, "without tensors");
  // A dict under 8 keys of itself: 8^16 paths, cut off at the entry budget.
  std::string fan = "\x80\x02}q\x00"s;
  for (int k = 0; k < 8; ++k)
    fan += "h\x00X\x01\x00\x00\x00"s + static_cast<char>('a' + k) + "h\x00s0"s;
  write_pickle_archive(path("fan.pth"), fan + ".");
  expect_error([&] { vicreg::read_torch_file(path("fan.pth")); }, "more than 1,000,000");
  // 5 million None opcodes: stopped at the limit, not 1.7 GB later.
  write_pickle_archive(path("nones.pth"), "\x80\x02" + std::string(5000000, 'N') + ".");
  expect_error([&] { vicreg::read_torch_file(path("nones.pth")); }, "more than 4,000,000 values");
  // TUPLE2 may not take values from below a MARK.
  write_pickle_archive(path("mark.pth"), "\x80\x02NN(\x86.");
  expect_error([&] { vicreg::read_torch_file(path("mark.pth")); }, "empty stack");
}

std::string resnet_arch(int64_t depth) { return "resnet" + std::to_string(depth); }

vicreg::Encoder resnet(int64_t depth, int64_t in_channels, int64_t image_size) {
  vicreg::EncoderConfig ec;
  ec.arch = resnet_arch(depth);
  ec.in_channels = in_channels;
  ec.image_size = image_size;
  return vicreg::make_encoder(ec);
}

/// A copy of a module's state under a prefix, with torchvision's classifier.
NamedTensors torchvision_state(const torch::nn::Module& m, const std::string& prefix,
                               int64_t features) {
  NamedTensors out;
  for (const auto& [k, t] : vicreg::module_state(m)) out.emplace_back(prefix + k, t.clone());
  out.emplace_back(prefix + "fc.weight", torch::zeros({1000, features}));
  out.emplace_back(prefix + "fc.bias", torch::zeros({1000}));
  return out;
}

TEST_F(Weights, ModuleStateHasTorchvisionNamesInStateDictOrder) {
  const vicreg::Encoder r = resnet(18, 3, 224);
  const NamedTensors s = vicreg::module_state(*r);
  ASSERT_EQ(s.size(), 120u);  // torchvision resnet18's state_dict has 122 entries with fc
  EXPECT_EQ(s[0].first, "conv1.weight");
  EXPECT_EQ(s[1].first, "bn1.weight");
  EXPECT_EQ(s[5].first, "bn1.num_batches_tracked");
  EXPECT_EQ(s[6].first, "layer1.0.conv1.weight");
  EXPECT_EQ(s.back().first, "layer4.1.bn2.num_batches_tracked");
  bool downsample = false;
  for (const auto& [k, t] : s) downsample |= k == "layer2.0.downsample.1.running_var";
  EXPECT_TRUE(downsample);
}

TEST_F(Weights, LoadsUnderAnyPrefixSkipsTheClassifierAndChecksEverything) {
  torch::manual_seed(2);
  const vicreg::Encoder src = resnet(18, 1, 28), dst = resnet(18, 1, 28);
  for (auto& [k, t] : vicreg::module_state(*src)) {
    torch::NoGradGuard g;
    if (k.find("running_var") != std::string::npos)
      t.uniform_(0.5, 1.5);
    else if (t.is_floating_point())
      t.normal_(0, 0.1);
  }
  const torch::Tensor x = torch::randn({2, 1, 28, 28});
  src->eval();
  dst->eval();
  for (const std::string prefix : {"", "backbone.", "model.module.backbone."}) {
    NamedTensors state = torchvision_state(*src, prefix, 512);
    if (!prefix.empty()) state.emplace_back("projector.0.weight", torch::zeros({4, 512}));
    const vicreg::WeightsLoadReport r = vicreg::load_encoder_weights(*dst, state, "test");
    EXPECT_EQ(r.prefix, prefix);
    EXPECT_EQ(r.loaded, 120);
    EXPECT_EQ(r.other, prefix.empty() ? 0 : 1);  // the projector's key, outside the prefix
    EXPECT_EQ(r.head, (std::vector<std::string>{"fc.weight", "fc.bias"}));
    EXPECT_TRUE(torch::equal(dst->forward(x), src->forward(x))) << prefix;
  }
  // A full VICReg model holds two encoders' worth of names only under "backbone.".
  NamedTensors two = torchvision_state(*src, "backbone.", 512);
  for (auto& e : torchvision_state(*src, "backbone_b.", 512)) two.push_back(e);
  EXPECT_EQ(vicreg::load_encoder_weights(*dst, two, "t").prefix, "backbone.");
  NamedTensors ambiguous = torchvision_state(*src, "student.", 512);
  for (auto& e : torchvision_state(*src, "teacher.", 512)) ambiguous.push_back(e);
  expect_error([&] { vicreg::load_encoder_weights(*dst, ambiguous, "t"); }, "several encoders");

  // num_batches_tracked may be absent (older state dicts); floating point converts.
  NamedTensors older;
  for (auto& [k, t] : torchvision_state(*src, "", 512)) {
    if (k.find("num_batches_tracked") == std::string::npos)
      older.emplace_back(k, t.to(torch::kFloat64));
  }
  const auto r = vicreg::load_encoder_weights(*dst, older, "t");
  EXPECT_EQ(r.kept.size(), 20u);
  EXPECT_TRUE(torch::allclose(dst->forward(x), src->forward(x)));

  // What does not fit is named, and nothing is copied.
  const torch::Tensor before = vicreg::module_state(*dst)[0].second.clone();
  const auto mutate = [&](const std::function<void(NamedTensors&)>& f, const std::string& needle) {
    NamedTensors s = torchvision_state(*src, "", 512);
    for (auto& [k, t] : s) {
      if (k == "conv1.weight") t = t + 1;  // would change the output if copied
    }
    f(s);
    expect_error([&] { vicreg::load_encoder_weights(*dst, s, "FILE"); }, needle);
    EXPECT_TRUE(torch::equal(vicreg::module_state(*dst)[0].second, before));
  };
  mutate([](NamedTensors& s) { s.emplace_back("layer5.0.conv1.weight", torch::zeros({1})); },
         "unknown keys layer5.0.conv1.weight");
  mutate(
      [](NamedTensors& s) {
        s.erase(std::remove_if(s.begin(), s.end(),
                               [](auto& e) { return e.first == "layer3.1.bn2.bias"; }),
                s.end());
      },
      "missing layer3.1.bn2.bias");
  mutate(
      [](NamedTensors& s) {
        for (auto& [k, t] : s)
          if (k == "layer1.0.conv2.weight") t = torch::zeros({64, 64, 1, 1});
      },
      "layer1.0.conv2.weight has shape [64, 64, 1, 1], the model's is [64, 64, 3, 3]");
  mutate(
      [](NamedTensors& s) {
        for (auto& [k, t] : s)
          if (k == "bn1.weight") t = t.to(torch::kInt64);
      },
      "bn1.weight is Long, the model's is Float");
  // torchvision's stem (7x7, 3 channels) into the small-image one.
  const vicreg::Encoder large = resnet(18, 3, 224);
  expect_error([&] { vicreg::load_encoder_weights(*dst, torchvision_state(*large, "", 512), "F"); },
               "conv1.weight has shape [64, 3, 7, 7], the model's is [64, 1, 3, 3]");
  expect_error(
      [&] {
        vicreg::load_encoder_weights(*dst, {{"x.weight", torch::zeros({1})}}, "F");
      },
      "holds no weights of this encoder");
}

TEST_F(Weights, InfersTheResNetFromItsWeights) {
  struct Case {
    int64_t depth, channels, size;
    bool small;
  };
  for (const Case c : {Case{18, 3, 224, false}, Case{18, 1, 28, true}, Case{34, 3, 32, true},
                       Case{50, 3, 224, false}}) {
    const vicreg::Encoder e = resnet(c.depth, c.channels, c.size);
    const vicreg::EncoderConfig ec =
        vicreg::infer_encoder_config(torchvision_state(*e, "module.", e->output_dim()), "t");
    EXPECT_EQ(ec.arch, resnet_arch(c.depth));
    EXPECT_EQ(ec.in_channels, c.channels);
    EXPECT_EQ(ec.image_size <= 64, c.small);
  }
  vicreg::EncoderConfig conv;
  const vicreg::Encoder convnet = vicreg::make_encoder(conv);
  // A ConvNet's own names are recognised too (its family reads its settings off them).
  const vicreg::EncoderConfig back =
      vicreg::infer_encoder_config(vicreg::module_state(*convnet), "t");
  EXPECT_EQ(back.arch, "convnet");
  EXPECT_EQ(back.width, conv.width);
  EXPECT_EQ(back.stages, conv.stages);
  EXPECT_EQ(back.final_conv, conv.final_conv);
  EXPECT_EQ(back.in_channels, conv.in_channels);
  expect_error(
      [&] {
        vicreg::infer_encoder_config({{"fc.weight", torch::zeros({2, 2})}}, "F");
      },
      "holds the weights of no backbone vicreg knows");
  NamedTensors odd = torchvision_state(*resnet(18, 3, 224), "", 512);
  odd.emplace_back("layer1.2.conv1.weight", torch::zeros({64, 64, 3, 3}));
  expect_error([&] { vicreg::infer_encoder_config(odd, "F"); }, "BasicBlock blocks [3,2,2,2]");
  // The official wide ResNets: the widening from the stem.
  vicreg::EncoderConfig wide;
  wide.arch = "resnet50x2";
  wide.in_channels = 3;
  wide.image_size = 224;
  NamedTensors w = torchvision_state(*vicreg::make_encoder(wide), "backbone.", 4096);
  EXPECT_EQ(vicreg::infer_encoder_config(w, "t").arch, "resnet50x2");
  // torchvision's wide_resnet50_2 (64-channel stem, 128-wide blocks) is another model.
  for (auto& [k, t] : w) {
    if (k == "backbone.conv1.weight") t = torch::zeros({64, 3, 7, 7});
  }
  expect_error([&] { vicreg::infer_encoder_config(w, "F"); }, "wide_resnet50_2");
  // A widening the zoo does not have.
  NamedTensors x3 = torchvision_state(*resnet(50, 3, 224), "", 2048);
  for (auto& [k, t] : x3) {
    if (k == "conv1.weight") t = torch::zeros({192, 3, 7, 7});
    if (k == "layer1.0.conv1.weight") t = torch::zeros({192, 192, 1, 1});
  }
  expect_error([&] { vicreg::infer_encoder_config(x3, "F"); }, "none of resnet18");
}

TEST_F(Weights, SettingsReadOffForeignWeightsAreNoBiggerThanTheFile) {
  // A ConvNet's names with a few small tensors that would make a model of 10^14 parameters: the
  // settings read off the shapes are checked against the values the file holds before building.
  NamedTensors tensors = {{"stage1.0.weight", torch::zeros({4096, 1, 3, 3})}};
  for (int s = 2; s <= 8; ++s) {
    tensors.emplace_back("stage" + std::to_string(s) + ".0.weight", torch::zeros({1}));
  }
  vicreg::write_safetensors(path("huge.safetensors"), tensors, {});
  expect_error([&] { vicreg::read_backbone(path("huge.safetensors")); },
               "describes a convnet encoder of");
  // A ConvNet's own weights read back whole, with their settings.
  vicreg::EncoderConfig c;
  c.width = 6;
  c.stages = 2;
  c.final_conv = 0;
  torch::manual_seed(1);
  const vicreg::Encoder e = vicreg::make_encoder(c);
  vicreg::write_safetensors(path("convnet.safetensors"), vicreg::module_state(*e), {});
  const vicreg::Backbone b = vicreg::read_backbone(path("convnet.safetensors"));
  EXPECT_EQ(b.config.model.arch, "convnet");
  EXPECT_EQ(b.config.model.width, 6);
  EXPECT_EQ(b.config.model.stages, 2);
  EXPECT_EQ(b.config.model.final_conv, 0);
  e->eval();
  const torch::Tensor x = torch::randn({2, 1, 8, 8});
  EXPECT_TRUE(torch::equal(b.encoder->forward(x), e->forward(x)));
}

TEST_F(Weights, ExportedBackbonesReadBackWithTheirSettings) {
  torch::manual_seed(3);
  for (const std::string arch : {"resnet18", "convnet"}) {
    vicreg::Backbone b;
    b.config.model.arch = arch;
    b.config.model.width = 8;
    b.config.model.stages = 3;
    b.in_channels = 1;
    b.image_size = 16;
    b.encoder = vicreg::make_encoder(b.config.encoder_config(b.config.model.arch, 1, 16, 0));
    b.encoder->eval();
    const std::string out = path(arch + ".safetensors");
    EXPECT_EQ(vicreg::export_backbone(b, out),
              static_cast<int64_t>(vicreg::module_state(*b.encoder).size()));
    const vicreg::WeightsFile f = vicreg::read_safetensors(out);
    EXPECT_EQ(f.metadata.at("vicreg.arch"), arch);
    EXPECT_EQ(f.metadata.count("vicreg.torchvision"), arch == "resnet18" ? 1u : 0u);
    const vicreg::Backbone back = vicreg::read_backbone(out);
    EXPECT_EQ(back.config.model.arch, arch);
    EXPECT_EQ(back.image_size, 16);
    const torch::Tensor x = torch::randn({2, 1, 16, 16});
    EXPECT_TRUE(torch::equal(back.encoder->forward(x), b.encoder->forward(x))) << arch;
  }
  // A foreign ResNet state dict: the architecture comes from the weights.
  const vicreg::Encoder tv = resnet(18, 3, 224);
  vicreg::write_safetensors(path("tv.safetensors"), torchvision_state(*tv, "", 512));
  const vicreg::Backbone foreign = vicreg::read_backbone(path("tv.safetensors"));
  EXPECT_EQ(foreign.config.model.arch, "resnet18");
  EXPECT_EQ(foreign.in_channels, 3);
  EXPECT_EQ(foreign.image_size, 0);
  tv->eval();
  const torch::Tensor x = torch::randn({1, 3, 64, 64});
  EXPECT_TRUE(torch::equal(foreign.encoder->forward(x), tv->forward(x)));
  // Broken metadata is named.
  vicreg::write_safetensors(path("meta.safetensors"), vicreg::module_state(*tv),
                            {{"vicreg.config", "{}"}, {"vicreg.in_channels", "three"}});
  expect_error([&] { vicreg::read_backbone(path("meta.safetensors")); }, "vicreg.in_channels");
}

}  // namespace
