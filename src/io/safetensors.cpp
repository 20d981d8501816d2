#include "vicreg/io/safetensors.h"

#include "vicreg/error.h"
#include "vicreg/io/files.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <tuple>
#include <vector>

namespace vicreg {

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw FormatError("'" + path + "': " + what);
}

struct DtypeName {
  const char* name;
  torch::ScalarType type;
};
constexpr DtypeName kSafetensorsDtypes[] = {{"F64", torch::kFloat64}, {"F32", torch::kFloat32},
                                            {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
                                            {"I64", torch::kInt64},   {"I32", torch::kInt32},
                                            {"I16", torch::kInt16},   {"I8", torch::kInt8},
                                            {"U8", torch::kUInt8},    {"BOOL", torch::kBool}};

const char* safetensors_dtype(torch::ScalarType t) {
  for (const auto& d : kSafetensorsDtypes) {
    if (d.type == t) return d.name;
  }
  return nullptr;
}

}  // namespace

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == "__metadata__" || header.contains(name)) {
      throw UsageError("safetensors: tensor name '" + name + "' is empty, reserved or repeated");
    }
    const char* dtype = safetensors_dtype(t.scalar_type());
    if (!dtype) {
      throw UsageError("safetensors: '" + name + "' has dtype " +
                       std::string(c10::toString(t.scalar_type())) +
                       ", which the format cannot hold");
    }
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    const uint64_t bytes = static_cast<uint64_t>(c.nbytes());
    header[name] = {
        {"dtype", dtype}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(std::move(c));
  }
  std::string text = header.dump();
  // The format pads the header with spaces so that the data start 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t n = text.size();
  char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((n >> (8 * i)) & 0xff);

  write_file_atomically(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(len, 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const torch::Tensor& c : data) {
      out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.nbytes()));
    }
    out.flush();
    if (!out) throw FormatError("write failed (is the disk full?)");
  });
}

WeightsFile read_safetensors(const std::string& path) {
  const std::string bytes = read_file(path, "safetensors file");
  if (bytes.size() < 8) {
    fail(path, "truncated: " + std::to_string(bytes.size()) +
                   " bytes, a safetensors file starts with an 8-byte header length");
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  if (n > 100'000'000 || n > bytes.size() - 8) {
    fail(path, "header length " + std::to_string(n) + " does not fit in the file's " +
                   std::to_string(bytes.size()) + " bytes (truncated, or not safetensors)");
  }
  const nlohmann::json header = parse_json(std::string_view(bytes).substr(8, n),
                                           "safetensors file '" + path + "': the header");
  if (!header.is_object()) fail(path, "the header is not a JSON object");

  WeightsFile file;
  file.format = "safetensors";
  const char* data = bytes.data() + 8 + n;
  const uint64_t data_size = bytes.size() - 8 - n;
  struct Range {
    uint64_t begin, end;
    size_t tensor;  // index in file.tensors
    bool operator<(const Range& o) const {
      return std::tie(begin, end, tensor) < std::tie(o.begin, o.end, o.tensor);
    }
  };
  std::vector<Range> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail(path, "__metadata__ is not a JSON object");
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) fail(path, "__metadata__ value of '" + k + "' is not a string");
        file.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "': ";
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets") || !entry["dtype"].is_string() ||
        !entry["shape"].is_array() || !entry["data_offsets"].is_array() ||
        entry["data_offsets"].size() != 2) {
      fail(path, where +
                     "needs \"dtype\" (string), \"shape\" (array) and \"data_offsets\" "
                     "([begin, end]); got " +
                     entry.dump());
    }
    const std::string dtype = entry["dtype"].get<std::string>();
    const DtypeName* d = nullptr;
    for (const auto& cand : kSafetensorsDtypes) {
      if (dtype == cand.name) d = &cand;
    }
    if (!d) {
      fail(path, where + "dtype '" + dtype +
                     "' is not supported (F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
    }
    // The product of the sizes, and that of the non-zero ones (LibTorch refuses a shape whose
    // sizes overflow even when one is 0), both checked without overflow.
    std::vector<int64_t> shape;
    uint64_t numel = 1, extent = 1;
    for (const auto& s : entry["shape"]) {
      if (!s.is_number_unsigned() || s.get<uint64_t>() > (uint64_t{1} << 40)) {
        fail(path, where + "shape " + entry["shape"].dump() + " is not a list of sizes");
      }
      const uint64_t size = s.get<uint64_t>();
      shape.push_back(static_cast<int64_t>(size));
      if (__builtin_mul_overflow(extent, std::max<uint64_t>(size, 1), &extent) ||
          extent > (uint64_t{1} << 40)) {
        fail(path, where + "shape " + entry["shape"].dump() + " is too large (over 2^40 elements)");
      }
      numel *= size;  // at most extent
    }
    const auto& off = entry["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      fail(path, where + "data_offsets " + off.dump() + " are not byte offsets");
    }
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      fail(path, where + "bytes [" + std::to_string(begin) + ", " + std::to_string(end) +
                     ") lie outside the " + std::to_string(data_size) +
                     " data bytes (truncated file?)");
    }
    const uint64_t want = numel * torch::elementSize(d->type);
    if (end - begin != want) {
      fail(path, where + "dtype " + dtype + " and shape " + entry["shape"].dump() + " need " +
                     std::to_string(want) + " bytes, its data_offsets span " +
                     std::to_string(end - begin) + " (dtype or shape mismatch)");
    }
    torch::Tensor t = torch::empty(shape, torch::TensorOptions().dtype(d->type));
    if (want > 0) std::memcpy(t.data_ptr(), data + begin, want);
    ranges.push_back({begin, end, file.tensors.size()});
    file.tensors.emplace_back(name, std::move(t));
  }
  // The format indexes the whole data buffer: no overlaps, no holes.
  std::sort(ranges.begin(), ranges.end());
  uint64_t covered = 0;
  for (const Range& r : ranges) {
    if (r.begin != covered) {
      fail(path, r.begin < covered ? "tensors overlap at byte " + std::to_string(r.begin)
                                   : "bytes [" + std::to_string(covered) + ", " +
                                         std::to_string(r.begin) + ") belong to no tensor");
    }
    covered = r.end;
  }
  if (covered != data_size) {
    fail(path, std::to_string(data_size - covered) + " bytes after the last tensor");
  }
  // The header is a JSON object (its keys come back sorted): present the tensors in data order
  // instead, the order they were written in.
  NamedTensors sorted;
  for (const Range& r : ranges) sorted.push_back(std::move(file.tensors[r.tensor]));
  file.tensors = std::move(sorted);
  return file;
}

}  // namespace vicreg
