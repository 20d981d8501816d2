#include "vicreg/io/npy.h"

#include "vicreg/error.h"
#include "vicreg/io/files.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

namespace vicreg {

void npy_error(const std::string& path, const std::string& what) {
  throw FormatError(".npy file '" + path + "': " + what);
}

namespace {

struct NpyType {
  const char* descr;
  torch::Dtype dtype;
};
constexpr NpyType kNpyTypes[] = {{"<f4", torch::kFloat},
                                 {"<f8", torch::kDouble},
                                 {"<i8", torch::kLong},
                                 {"<i4", torch::kInt},
                                 {"|u1", torch::kUInt8}};

}  // namespace

namespace {

std::string trim_blanks(const std::string& text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(" \t\r\n") - first + 1);
}

/// The value of 'key' in a .npy header dict: the text between `open` and `close` after the colon
/// (open 0: from the colon up to `close` or the dict's end, trimmed). No regular expression: a
/// header is the file's to choose, and std::regex recurses on long matches.
std::string header_value(const std::string& path, const std::string& header, const std::string& key,
                         char open, char close) {
  const std::string quoted = "'" + key + "'";
  const size_t at = header.find(quoted);
  if (at == std::string::npos) npy_error(path, "header has no '" + key + "'");
  size_t i = header.find_first_not_of(" \t", at + quoted.size());
  if (i == std::string::npos || header[i] != ':') {
    npy_error(path, "header's '" + key + "' has no value");
  }
  i = header.find_first_not_of(" \t", i + 1);
  if (i == std::string::npos) npy_error(path, "header's '" + key + "' has no value");
  if (open != 0) {
    if (header[i] != open) npy_error(path, "header's '" + key + "' is malformed");
    ++i;
  }
  size_t end = header.find(close, i);
  if (end == std::string::npos) {
    if (open != 0) npy_error(path, "header's '" + key + "' is not closed");
    end = header.find('}', i);
    if (end == std::string::npos) end = header.size();
  }
  return open != 0 ? header.substr(i, end - i) : trim_blanks(header.substr(i, end - i));
}

}  // namespace

torch::Tensor read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec) || !in) npy_error(path, "no such file");
  char magic[8] = {};
  in.read(magic, 8);
  if (in.gcount() != 8 || std::memcmp(magic, "\x93NUMPY", 6) != 0) {
    npy_error(path, "not a .npy file (no \\x93NUMPY magic)");
  }
  const int major = static_cast<unsigned char>(magic[6]);
  if (major < 1 || major > 3) npy_error(path, "unknown format version " + std::to_string(major));
  uint32_t header_len = 0;
  unsigned char len_bytes[4] = {};
  in.read(reinterpret_cast<char*>(len_bytes), major == 1 ? 2 : 4);
  header_len = len_bytes[0] | (len_bytes[1] << 8) | (uint32_t{len_bytes[2]} << 16) |
               (uint32_t{len_bytes[3]} << 24);
  if (!in || header_len == 0 || header_len > (1u << 20)) npy_error(path, "truncated header");
  std::string header(header_len, '\0');
  in.read(header.data(), header_len);
  if (static_cast<uint32_t>(in.gcount()) != header_len) npy_error(path, "truncated header");

  const std::string descr = header_value(path, header, "descr", '\'', '\'');
  const NpyType* type = nullptr;
  for (const auto& t : kNpyTypes) {
    if (descr == t.descr || (descr == "<u1" && std::string(t.descr) == "|u1")) type = &t;
  }
  if (type == nullptr) {
    npy_error(path, "dtype '" + descr +
                        "' is not supported (use little-endian float32, float64, "
                        "int64, int32 or uint8, e.g. numpy's arr.astype('<f4'))");
  }
  const std::string order = header_value(path, header, "fortran_order", 0, ',');
  if (order != "True" && order != "False") {
    npy_error(path, "header's 'fortran_order' is '" + order + "', not True or False");
  }
  const bool fortran = order == "True";
  // Sizes: non-negative integers, their product checked without overflow before any allocation.
  // The product of the non-zero sizes is bounded too: LibTorch refuses a shape whose sizes
  // overflow even when one of them is 0, (0, 2^40, 2^40) among them.
  std::vector<int64_t> shape;
  const std::string dims = header_value(path, header, "shape", '(', ')');
  int64_t count = 1, extent = 1;
  size_t start = 0;
  while (start <= dims.size()) {
    size_t comma = dims.find(',', start);
    if (comma == std::string::npos) comma = dims.size();
    const std::string entry = trim_blanks(dims.substr(start, comma - start));
    start = comma + 1;
    if (entry.empty()) {
      if (comma == dims.size()) break;  // "()" and the trailing comma of "(3,)"
      npy_error(path, "header's shape (" + dims + ") has an empty entry");
    }
    if (entry.size() > 12 || entry.find_first_not_of("0123456789") != std::string::npos) {
      npy_error(path, "header's shape (" + dims + ") has the entry '" + entry +
                          "', not a non-negative integer of at most 12 digits");
    }
    shape.push_back(std::stoll(entry));
    if (__builtin_mul_overflow(extent, std::max<int64_t>(shape.back(), 1), &extent) ||
        extent > (int64_t{1} << 40)) {
      npy_error(path, "header's shape (" + dims + ") declares more than 2^40 elements" +
                          (count == 0 || shape.back() == 0 ? " (zero-length sizes aside)" : ""));
    }
    count *= shape.back();  // at most extent
  }
  // The data must be in the file before memory is taken for it.
  const auto data_start = static_cast<uintmax_t>(in.tellg());
  const uintmax_t file_bytes = std::filesystem::file_size(path, ec);
  const uintmax_t declared = static_cast<uintmax_t>(count) * torch::elementSize(type->dtype);
  if (ec || file_bytes < data_start || file_bytes - data_start < declared) {
    npy_error(path,
              "truncated: the header declares " + std::to_string(declared) +
                  " bytes of data, the file holds " +
                  std::to_string(ec || file_bytes < data_start ? 0 : file_bytes - data_start));
  }
  if (fortran) std::reverse(shape.begin(), shape.end());
  torch::Tensor out = torch::empty(shape, type->dtype);
  const auto bytes = static_cast<std::streamsize>(out.nbytes());
  in.read(static_cast<char*>(out.data_ptr()), bytes);
  if (in.gcount() != bytes) {
    npy_error(path, "truncated: the header declares " + std::to_string(bytes) +
                        " bytes of data, the file holds " + std::to_string(in.gcount()));
  }
  if (in.peek() != std::char_traits<char>::eof()) {
    npy_error(path, "has bytes after the data its header declares");
  }
  if (fortran && out.dim() > 1) {
    std::vector<int64_t> perm(out.dim());
    for (int64_t i = 0; i < out.dim(); ++i) perm[i] = out.dim() - 1 - i;
    out = out.permute(perm).contiguous();
  }
  return out;
}

void write_npy(const std::string& path, const torch::Tensor& array) {
  const NpyType* type = nullptr;
  for (const auto& t : kNpyTypes) {
    if (array.scalar_type() == t.dtype) type = &t;
  }
  if (type == nullptr) {
    throw UsageError("write_npy: dtype " + std::string(c10::toString(array.scalar_type())) +
                     " is not supported (float32, float64, int64, int32, uint8)");
  }
  const torch::Tensor a = array.to(torch::kCPU).contiguous();
  std::string shape;
  for (int64_t i = 0; i < a.dim(); ++i) shape += std::to_string(a.size(i)) + ", ";
  if (a.dim() > 1) shape.resize(shape.size() - 2);
  std::string header = std::string("{'descr': '") + type->descr +
                       "', 'fortran_order': False, 'shape': (" + shape + "), }";
  // Pad with spaces so that the data start at a multiple of 64 bytes, newline-terminated.
  const size_t total = ((10 + header.size() + 1 + 63) / 64) * 64;
  header.append(total - 10 - header.size() - 1, ' ');
  header.push_back('\n');
  const auto len = static_cast<uint16_t>(header.size());
  const char prefix[10] = {'\x93',
                           'N',
                           'U',
                           'M',
                           'P',
                           'Y',
                           1,
                           0,
                           static_cast<char>(len & 0xff),
                           static_cast<char>(len >> 8)};
  write_file_atomically(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(prefix, 10);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    out.write(static_cast<const char*>(a.data_ptr()), static_cast<std::streamsize>(a.nbytes()));
    out.flush();
    if (!out) throw FormatError("write failed (is the disk full?)");
  });
}

}  // namespace vicreg
