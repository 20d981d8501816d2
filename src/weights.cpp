#include "vicreg/weights.h"

#include <caffe2/serialize/inline_container.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <tuple>
#include <unordered_map>

namespace vicreg {

namespace fs = std::filesystem;

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error("'" + path + "': " + what);
}

/// A file's bytes, or its first `most` bytes (fewer when the file is shorter).
std::string read_bytes(const std::string& path, const char* what,
                       size_t most = std::string::npos) {
  if (!fs::is_regular_file(path)) {
    throw std::runtime_error(std::string(what) + " '" + path + "': no such file");
  }
  std::ifstream in(path, std::ios::binary);
  if (most != std::string::npos) {
    std::string head(most, '\0');
    in.read(head.data(), static_cast<std::streamsize>(most));
    head.resize(static_cast<size_t>(in.gcount()));
    return head;
  }
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) fail(path, "cannot be read");
  return bytes;
}

// ---------------------------------------------------------------------------------------------
// safetensors

struct DtypeName {
  const char* name;
  torch::ScalarType type;
};
constexpr DtypeName kSafetensorsDtypes[] = {
    {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16},
    {"BF16", torch::kBFloat16}, {"I64", torch::kInt64}, {"I32", torch::kInt32},
    {"I16", torch::kInt16},     {"I8", torch::kInt8},    {"U8", torch::kUInt8},
    {"BOOL", torch::kBool}};

const char* safetensors_dtype(torch::ScalarType t) {
  for (const auto& d : kSafetensorsDtypes) {
    if (d.type == t) return d.name;
  }
  return nullptr;
}

void write_all(int fd, const char* data, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, data, n);
    if (w <= 0) {
      ::close(fd);
      throw std::runtime_error("cannot write '" + path + "' (disk full?)");
    }
    data += w;
    n -= static_cast<size_t>(w);
  }
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
      throw std::invalid_argument("safetensors: tensor name '" + name +
                                  "' is empty, reserved or repeated");
    }
    const char* dtype = safetensors_dtype(t.scalar_type());
    if (!dtype) {
      throw std::invalid_argument("safetensors: '" + name + "' has dtype " +
                                  std::string(c10::toString(t.scalar_type())) +
                                  ", which the format cannot hold");
    }
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    const uint64_t bytes = static_cast<uint64_t>(c.nbytes());
    header[name] = {{"dtype", dtype},
                    {"shape", c.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(std::move(c));
  }
  std::string text = header.dump();
  // The format pads the header with spaces so that the data start 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t n = text.size();
  char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((n >> (8 * i)) & 0xff);

  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create '" + tmp + "' (does its folder exist?)");
  write_all(fd, len, 8, tmp);
  write_all(fd, text.data(), text.size(), tmp);
  for (const torch::Tensor& c : data) {
    write_all(fd, static_cast<const char*>(c.data_ptr()), c.nbytes(), tmp);
  }
  if (::fsync(fd) != 0) {
    ::close(fd);
    throw std::runtime_error("cannot flush '" + tmp + "' to disk");
  }
  ::close(fd);
  fs::rename(tmp, path);
}

WeightsFile read_safetensors(const std::string& path) {
  const std::string bytes = read_bytes(path, "safetensors file");
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
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<long>(n));
  } catch (const nlohmann::json::exception& e) {
    fail(path, std::string("the header is not valid JSON (not a safetensors file?): ") + e.what());
  }
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
      fail(path, where + "needs \"dtype\" (string), \"shape\" (array) and \"data_offsets\" "
                         "([begin, end]); got " + entry.dump());
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
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    for (const auto& s : entry["shape"]) {
      if (!s.is_number_unsigned() || s.get<uint64_t>() > (uint64_t{1} << 40)) {
        fail(path, where + "shape " + entry["shape"].dump() + " is not a list of sizes");
      }
      shape.push_back(s.get<int64_t>());
      numel *= s.get<uint64_t>();
      if (numel > (uint64_t{1} << 40)) fail(path, where + "shape is too large");
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

// ---------------------------------------------------------------------------------------------
// torch.save files: a restricted unpickler

namespace {

struct PyObject;
using PyRef = std::shared_ptr<PyObject>;

/// The values a state dict's pickle can hold.
struct PyObject {
  enum Kind { None, Bool, Int, Float, Str, Tuple, List, Dict, Global, Storage, Tensor };
  Kind kind = None;
  int64_t i = 0;  // Bool, Int
  double f = 0;
  std::string s;  // Str; Global: "module.name"
  std::vector<PyRef> items;                      // Tuple, List
  std::vector<std::pair<PyRef, PyRef>> entries;  // Dict
  torch::Tensor tensor;                          // Storage (1-D, its dtype), Tensor
};

PyRef make(PyObject::Kind kind) {
  auto o = std::make_shared<PyObject>();
  o->kind = kind;
  return o;
}

const char* kind_name(PyObject::Kind k) {
  switch (k) {
    case PyObject::None: return "None";
    case PyObject::Bool: return "bool";
    case PyObject::Int: return "int";
    case PyObject::Float: return "float";
    case PyObject::Str: return "str";
    case PyObject::Tuple: return "tuple";
    case PyObject::List: return "list";
    case PyObject::Dict: return "dict";
    case PyObject::Global: return "class or function";
    case PyObject::Storage: return "storage";
    case PyObject::Tensor: return "tensor";
  }
  return "?";
}

torch::ScalarType storage_dtype(const std::string& global) {
  static const std::unordered_map<std::string, torch::ScalarType> types = {
      {"torch.FloatStorage", torch::kFloat32},   {"torch.DoubleStorage", torch::kFloat64},
      {"torch.HalfStorage", torch::kFloat16},    {"torch.BFloat16Storage", torch::kBFloat16},
      {"torch.LongStorage", torch::kInt64},      {"torch.IntStorage", torch::kInt32},
      {"torch.ShortStorage", torch::kInt16},     {"torch.CharStorage", torch::kInt8},
      {"torch.ByteStorage", torch::kUInt8},      {"torch.BoolStorage", torch::kBool}};
  const auto it = types.find(global);
  return it == types.end() ? torch::ScalarType::Undefined : it->second;
}

class Unpickler {
 public:
  Unpickler(const std::string& path, const char* data, size_t size,
            caffe2::serialize::PyTorchStreamReader& zip)
      : path_(path), p_(data), end_(data + size), zip_(zip) {}

  PyRef load() {
    while (true) {
      const uint8_t op = u8();
      switch (op) {
        case 0x80: u8(); break;                          // PROTO
        case 0x95: take(8); break;                       // FRAME
        case '.':                                        // STOP
          if (stack_.size() != 1) bad("STOP with " + std::to_string(stack_.size()) + " values");
          return stack_.back();
        case '(': marks_.push_back(stack_.size()); break;  // MARK
        case '0': pop(); break;                            // POP
        case '1': pop_mark(); break;                       // POP_MARK
        case '2': push(top()); break;                      // DUP
        case 'N': push(make(PyObject::None)); break;
        case 0x88: case 0x89: {                            // NEWTRUE, NEWFALSE
          auto o = make(PyObject::Bool);
          o->i = op == 0x88;
          push(o);
          break;
        }
        case 'J': push_int(static_cast<int32_t>(le(4))); break;  // BININT
        case 'K': push_int(le(1)); break;                         // BININT1
        case 'M': push_int(le(2)); break;                         // BININT2
        case 0x8a: {                                              // LONG1
          const size_t n = u8();
          if (n > 8) bad("integer of " + std::to_string(n) + " bytes");
          uint64_t v = n ? le(n) : 0;
          if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);  // sign
          push_int(static_cast<int64_t>(v));
          break;
        }
        case 'G': {                                               // BINFLOAT (big-endian)
          uint64_t v = 0;
          for (uint8_t b : take(8)) v = (v << 8) | b;
          auto o = make(PyObject::Float);
          std::memcpy(&o->f, &v, 8);
          push(o);
          break;
        }
        case 'X': case 'B': push_str(le(4)); break;   // BINUNICODE, BINBYTES
        case 0x8c: case 'C': case 'U': push_str(le(1)); break;  // SHORT_BINUNICODE/BYTES/STRING
        case 'T': push_str(le(4)); break;             // BINSTRING
        case 0x8d: case 0x8e: push_str(le(8)); break; // BINUNICODE8, BINBYTES8
        case 'c': {                                   // GLOBAL module\nname\n
          const std::string module = line(), name = line();
          auto o = make(PyObject::Global);
          o->s = module + "." + name;
          push(o);
          break;
        }
        case 0x93: {                                  // STACK_GLOBAL
          PyRef name = pop(), module = pop();
          if (name->kind != PyObject::Str || module->kind != PyObject::Str) bad("STACK_GLOBAL");
          auto o = make(PyObject::Global);
          o->s = module->s + "." + name->s;
          push(o);
          break;
        }
        case '}': push(make(PyObject::Dict)); break;   // EMPTY_DICT
        case ']': push(make(PyObject::List)); break;   // EMPTY_LIST
        case ')': push(make(PyObject::Tuple)); break;  // EMPTY_TUPLE
        case 't': case 'l': case 'd': {                // TUPLE, LIST, DICT (from the mark)
          std::vector<PyRef> items = pop_mark();
          auto o = make(op == 't' ? PyObject::Tuple : op == 'l' ? PyObject::List : PyObject::Dict);
          if (op == 'd') {
            if (items.size() % 2) bad("DICT with an odd number of items");
            for (size_t k = 0; k < items.size(); k += 2) o->entries.emplace_back(items[k], items[k + 1]);
          } else {
            o->items = std::move(items);
          }
          push(o);
          break;
        }
        case 0x85: case 0x86: case 0x87: {             // TUPLE1, TUPLE2, TUPLE3
          const size_t n = op - 0x84u;
          if (stack_.size() < n) bad("TUPLE" + std::to_string(n) + " on a short stack");
          auto o = make(PyObject::Tuple);
          o->items.assign(stack_.end() - static_cast<long>(n), stack_.end());
          stack_.resize(stack_.size() - n);
          push(o);
          break;
        }
        case 'a': {                                    // APPEND
          PyRef v = pop();
          expect(top(), PyObject::List, "APPEND")->items.push_back(v);
          break;
        }
        case 'e': {                                    // APPENDS
          std::vector<PyRef> items = pop_mark();
          auto& list = expect(top(), PyObject::List, "APPENDS")->items;
          list.insert(list.end(), items.begin(), items.end());
          break;
        }
        case 's': {                                    // SETITEM
          PyRef v = pop(), k = pop();
          expect(top(), PyObject::Dict, "SETITEM")->entries.emplace_back(k, v);
          break;
        }
        case 'u': {                                    // SETITEMS
          std::vector<PyRef> items = pop_mark();
          if (items.size() % 2) bad("SETITEMS with an odd number of items");
          auto& d = expect(top(), PyObject::Dict, "SETITEMS")->entries;
          for (size_t k = 0; k < items.size(); k += 2) d.emplace_back(items[k], items[k + 1]);
          break;
        }
        case 'q': memo(le(1)); break;                  // BINPUT
        case 'r': memo(le(4)); break;                  // LONG_BINPUT
        case 0x94: memo(memo_.size()); break;          // MEMOIZE
        case 'h': push(get(le(1))); break;             // BINGET
        case 'j': push(get(le(4))); break;             // LONG_BINGET
        case 'Q': push(persistent(pop())); break;      // BINPERSID
        case 'R': case 0x81: {                         // REDUCE, NEWOBJ
          PyRef args = pop(), callable = pop();
          push(call(callable, expect(args, PyObject::Tuple, "REDUCE")->items));
          break;
        }
        case 'b': pop(); break;  // BUILD: state of an OrderedDict (its _metadata) or a tensor
        default: {
          char hex[8];
          std::snprintf(hex, sizeof hex, "0x%02x", op);
          bad(std::string("pickle opcode ") + hex + " is not supported (only data can be read)");
        }
      }
    }
  }

 private:
  [[noreturn]] void bad(const std::string& what) const {
    fail(path_, "corrupt or unsupported pickle data in the torch.save file: " + what);
  }
  uint8_t u8() {
    if (p_ >= end_) bad("truncated");
    return static_cast<uint8_t>(*p_++);
  }
  std::vector<uint8_t> take(size_t n) {
    if (static_cast<size_t>(end_ - p_) < n) bad("truncated");
    std::vector<uint8_t> out(p_, p_ + n);
    p_ += n;
    return out;
  }
  uint64_t le(size_t n) {
    uint64_t v = 0;
    const std::vector<uint8_t> b = take(n);
    for (size_t k = n; k-- > 0;) v = (v << 8) | b[k];
    return v;
  }
  std::string line() {
    const char* nl = static_cast<const char*>(std::memchr(p_, '\n', static_cast<size_t>(end_ - p_)));
    if (!nl) bad("truncated GLOBAL");
    std::string s(p_, nl);
    p_ = nl + 1;
    return s;
  }
  void push(PyRef o) { stack_.push_back(std::move(o)); }
  void push_int(int64_t v) {
    auto o = make(PyObject::Int);
    o->i = v;
    push(o);
  }
  void push_str(uint64_t n) {
    if (static_cast<uint64_t>(end_ - p_) < n) bad("truncated string");
    auto o = make(PyObject::Str);
    o->s.assign(p_, p_ + n);
    p_ += n;
    push(o);
  }
  PyRef pop() {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) bad("pop from an empty stack");
    PyRef o = stack_.back();
    stack_.pop_back();
    return o;
  }
  PyRef top() {
    if (stack_.empty()) bad("empty stack");
    return stack_.back();
  }
  std::vector<PyRef> pop_mark() {
    if (marks_.empty()) bad("no MARK");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<PyRef> items(stack_.begin() + static_cast<long>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  PyRef expect(const PyRef& o, PyObject::Kind kind, const char* op) {
    if (o->kind != kind) {
      bad(std::string(op) + " on a " + kind_name(o->kind) + ", expected a " + kind_name(kind));
    }
    return o;
  }
  void memo(uint64_t k) {
    if (k > 10'000'000) bad("memo index");
    memo_[k] = top();
  }
  PyRef get(uint64_t k) {
    const auto it = memo_.find(k);
    if (it == memo_.end()) bad("memo " + std::to_string(k) + " is not set");
    return it->second;
  }
  int64_t as_int(const PyRef& o, const char* what) {
    if (o->kind != PyObject::Int) bad(std::string(what) + " is a " + kind_name(o->kind));
    return o->i;
  }
  std::vector<int64_t> as_ints(const PyRef& o, const char* what) {
    if (o->kind != PyObject::Tuple && o->kind != PyObject::List) bad(std::string(what));
    std::vector<int64_t> v;
    for (const PyRef& x : o->items) v.push_back(as_int(x, what));
    return v;
  }

  /// ('storage', storage type, key, location, numel) -> the storage, read from data/<key>.
  PyRef persistent(const PyRef& pid) {
    expect(pid, PyObject::Tuple, "BINPERSID");
    const auto& t = pid->items;
    if (t.size() != 5 || t[0]->kind != PyObject::Str || t[0]->s != "storage" ||
        t[1]->kind != PyObject::Global || t[2]->kind != PyObject::Str) {
      bad("a persistent id that is not a storage");
    }
    const std::string key = t[2]->s;
    if (const auto it = storages_.find(key); it != storages_.end()) return it->second;
    const torch::ScalarType dtype = storage_dtype(t[1]->s);
    if (dtype == torch::ScalarType::Undefined) bad("storage type " + t[1]->s);
    const int64_t numel = as_int(t[4], "storage size");
    const std::string record = "data/" + key;
    if (!zip_.hasRecord(record)) bad("the storage '" + record + "' is missing from the archive");
    at::DataPtr ptr;
    size_t size = 0;
    std::tie(ptr, size) = zip_.getRecord(record);
    const size_t want = static_cast<size_t>(numel) * torch::elementSize(dtype);
    if (numel < 0 || size != want) {
      bad("storage '" + record + "' holds " + std::to_string(size) + " bytes, its " + t[1]->s +
          " of " + std::to_string(numel) + " elements needs " + std::to_string(want));
    }
    auto o = make(PyObject::Storage);
    o->tensor = torch::empty({numel}, torch::TensorOptions().dtype(dtype));
    if (size > 0) std::memcpy(o->tensor.data_ptr(), ptr.get(), size);
    storages_[key] = o;
    return o;
  }

  PyRef call(const PyRef& callable, const std::vector<PyRef>& args) {
    if (callable->kind != PyObject::Global) bad("a call of a " + std::string(kind_name(callable->kind)));
    const std::string& f = callable->s;
    if (f == "collections.OrderedDict") {
      if (!args.empty()) bad("OrderedDict with arguments");
      return make(PyObject::Dict);
    }
    if (f == "torch._utils._rebuild_tensor_v2" || f == "torch._utils._rebuild_tensor") {
      // (storage, storage_offset, size, stride[, requires_grad, backward_hooks[, metadata]])
      if (args.size() < 4 || args[0]->kind != PyObject::Storage) bad(f + " arguments");
      const torch::Tensor& storage = args[0]->tensor;
      const int64_t offset = as_int(args[1], "storage offset");
      const std::vector<int64_t> size = as_ints(args[2], "tensor size");
      const std::vector<int64_t> stride = as_ints(args[3], "tensor stride");
      if (size.size() != stride.size() || offset < 0) bad("tensor size and stride");
      // as_strided does not check bounds: make sure every element lies inside the storage.
      // Checked without overflow; a view repeating elements (stride 0) may not be huge.
      constexpr int64_t kMax = int64_t{1} << 40;
      int64_t last = offset, numel = 1;
      bool empty = false;
      for (size_t k = 0; k < size.size(); ++k) {
        if (size[k] < 0 || stride[k] < 0) bad("negative tensor size or stride");
        if (size[k] > kMax || stride[k] > kMax) bad("tensor size or stride out of range");
        if (size[k] == 0) empty = true;
        else last += (size[k] - 1) * stride[k];
        if (last > kMax) bad("tensor extent out of range");
        numel = std::min(numel * std::max<int64_t>(size[k], 1), kMax + 1);
      }
      if (!empty && numel > std::max<int64_t>(storage.numel(), int64_t{1} << 31)) {
        bad("a tensor of " + std::to_string(numel) + " elements over a storage of " +
            std::to_string(storage.numel()));
      }
      if (!empty && last >= storage.numel()) {
        bad("a tensor reaches element " + std::to_string(last) + " of a storage of " +
            std::to_string(storage.numel()));
      }
      auto o = make(PyObject::Tensor);
      o->tensor = empty ? torch::empty(size, storage.options())
                        : storage.as_strided(size, stride, offset).clone();
      return o;
    }
    if (f == "torch.jit._pickle.restore_type_tag" || f.rfind("torch.jit._pickle.build_", 0) == 0) {
      // LibTorch's pickler (torch::pickle_save) tags typed containers: (value[, type string]).
      if (args.empty()) bad(f + " without arguments");
      return args[0];
    }
    if (f == "torch._utils._rebuild_parameter" ||
        f == "torch._utils._rebuild_parameter_with_state") {
      if (args.empty() || args[0]->kind != PyObject::Tensor) bad(f + " arguments");
      return args[0];
    }
    fail(path_, "holds a '" + f + "' object, which cannot be read without running its code: " +
                    "only dicts of tensors (state dicts) are read. Save model.state_dict(), not "
                    "the model");
  }

  std::string path_;
  const char* p_;
  const char* end_;
  caffe2::serialize::PyTorchStreamReader& zip_;
  std::vector<PyRef> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PyRef> memo_;
  std::unordered_map<std::string, PyRef> storages_;
};

/// Flattens string-keyed dicts of tensors: {"a": {"b": t}} -> "a.b".
void flatten(const PyRef& o, const std::string& prefix, NamedTensors& out, int depth) {
  if (depth > 16) return;
  for (const auto& [k, v] : o->entries) {
    if (k->kind != PyObject::Str) continue;  // e.g. an optimizer's state, keyed by index
    const std::string name = prefix.empty() ? k->s : prefix + "." + k->s;
    if (v->kind == PyObject::Tensor) out.emplace_back(name, v->tensor);
    else if (v->kind == PyObject::Dict) flatten(v, name, out, depth + 1);
  }
}

}  // namespace

WeightsFile read_torch_file(const std::string& path) {
  const std::string head = read_bytes(path, "torch.save file", 4);
  if (head.size() >= 2 && static_cast<unsigned char>(head[0]) == 0x80) {
    fail(path, "is in the legacy torch.save format of PyTorch < 1.6; load it in Python and save "
               "it again with torch.save(state_dict, path) (the zip format)");
  }
  if (head != std::string("PK\x03\x04", 4)) {
    fail(path, "is not a torch.save file (a zip archive) nor a safetensors file");
  }
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> zip;
  std::string pickle;
  try {
    zip = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
    if (zip->hasRecord("byteorder")) {
      at::DataPtr p;
      size_t n = 0;
      std::tie(p, n) = zip->getRecord("byteorder");
      if (std::string(static_cast<const char*>(p.get()), n) != "little") {
        fail(path, "was saved on a big-endian machine; only little-endian files are read");
      }
    }
    if (!zip->hasRecord("data.pkl")) {
      fail(path, "has no data.pkl: a TorchScript archive (torch.jit.save) or not a torch.save "
                 "file; save the state dict with torch.save(model.state_dict(), path)");
    }
    at::DataPtr p;
    size_t n = 0;
    std::tie(p, n) = zip->getRecord("data.pkl");
    pickle.assign(static_cast<const char*>(p.get()), n);
  } catch (const c10::Error& e) {
    fail(path, std::string("is a corrupt or truncated torch.save archive: ") +
                   e.what_without_backtrace());
  }
  Unpickler unpickler(path, pickle.data(), pickle.size(), *zip);
  PyRef root;
  try {
    root = unpickler.load();
  } catch (const c10::Error& e) {
    fail(path, std::string("is a corrupt or truncated torch.save archive: ") +
                   e.what_without_backtrace());
  }
  WeightsFile file;
  file.format = "torch";
  if (root->kind == PyObject::Dict) flatten(root, "", file.tensors, 0);
  if (file.tensors.empty()) {
    fail(path, std::string("holds a ") + kind_name(root->kind) +
                   " without tensors, not a state dict");
  }
  return file;
}

WeightsFile read_weights(const std::string& path) {
  const std::string bytes = read_bytes(path, "weights file", 9);
  if (bytes.size() >= 4 && bytes.compare(0, 4, std::string("PK\x03\x04", 4)) == 0) {
    return read_torch_file(path);
  }
  if (bytes.size() >= 1 && static_cast<unsigned char>(bytes[0]) == 0x80) {
    return read_torch_file(path);  // legacy format: says so
  }
  if (bytes.size() == 9 && bytes[8] == '{') return read_safetensors(path);
  fail(path, "is neither a safetensors file (8-byte length, then a JSON header) nor a torch.save "
             "file (a zip archive)" +
                 std::string(bytes.size() < 9 ? ": it is empty or truncated" : ""));
}

// ---------------------------------------------------------------------------------------------
// Module state

NamedTensors module_state(const torch::nn::Module& module) {
  NamedTensors out;
  for (const auto& m : module.named_modules("", /*include_self=*/true)) {
    const std::string prefix = m.key().empty() ? "" : m.key() + ".";
    for (const auto& p : m.value()->named_parameters(/*recurse=*/false)) {
      out.emplace_back(prefix + p.key(), p.value());
    }
    for (const auto& b : m.value()->named_buffers(/*recurse=*/false)) {
      out.emplace_back(prefix + b.key(), b.value());
    }
  }
  return out;
}

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string list_some(const std::vector<std::string>& keys, size_t most = 6) {
  std::string out;
  for (size_t k = 0; k < keys.size() && k < most; ++k) out += (k ? ", " : "") + keys[k];
  if (keys.size() > most) out += ", ... (" + std::to_string(keys.size()) + " in all)";
  return out;
}

}  // namespace

std::string choose_encoder_prefix(const std::vector<std::string>& candidates,
                                  const std::string& source) {
  if (candidates.empty()) throw std::runtime_error(source + ": holds no encoder");
  if (candidates.size() == 1) return candidates.front();
  std::vector<std::string> backbones;
  for (const auto& p : candidates) {
    if (p.empty() || ends_with(p, "backbone.")) backbones.push_back(p);
  }
  if (backbones.size() != 1) {
    throw std::runtime_error(source + ": holds several encoders (under " + list_some(candidates) +
                             "); keep one of them in the file");
  }
  return backbones.front();
}

WeightsLoadReport load_encoder_weights(torch::nn::Module& module, const NamedTensors& weights,
                                       const std::string& source) {
  const NamedTensors expected = module_state(module);
  if (expected.empty()) throw std::invalid_argument("load_encoder_weights: the module has no state");
  // Where the encoder's keys are: of the prefixes under which its first key occurs, those
  // under which most of its keys occur ("layer1.0." holds a conv1.weight too).
  const std::string& first = expected.front().first;
  std::set<std::string> names;
  for (const auto& w : weights) names.insert(w.first);
  std::vector<std::string> prefixes;
  size_t best = 0;
  for (const auto& [name, t] : weights) {
    if (name != first && !ends_with(name, "." + first)) continue;
    const std::string p = name.substr(0, name.size() - first.size());
    size_t score = 0;
    for (const auto& e : expected) score += names.count(p + e.first);
    if (score > best) prefixes.clear();
    if (score >= best) {
      best = score;
      prefixes.push_back(p);
    }
  }
  WeightsLoadReport report;
  if (prefixes.empty()) {
    std::vector<std::string> some;
    for (size_t k = 0; k < weights.size() && k < 4; ++k) some.push_back(weights[k].first);
    throw std::runtime_error(source + ": no '" + first + "' under any prefix, so it holds no " +
                             "weights of this encoder (another architecture?); its keys are " +
                             list_some(some) + (weights.size() > 4 ? ", ..." : ""));
  }
  report.prefix = choose_encoder_prefix(prefixes, source);

  std::map<std::string, torch::Tensor> found;
  std::vector<std::string> unknown;
  std::set<std::string> known;
  for (const auto& e : expected) known.insert(e.first);
  for (const auto& [name, t] : weights) {
    if (name.compare(0, report.prefix.size(), report.prefix) != 0) {
      ++report.other;
      continue;
    }
    const std::string key = name.substr(report.prefix.size());
    if (known.count(key)) found[key] = t;
    else if (key == "fc.weight" || key == "fc.bias") report.head.push_back(key);
    else unknown.push_back(report.prefix + key);
  }
  std::vector<std::string> missing, problems;
  for (const auto& [key, target] : expected) {
    const auto it = found.find(key);
    if (it == found.end()) {
      if (ends_with(key, "num_batches_tracked")) report.kept.push_back(key);
      else missing.push_back(report.prefix + key);
      continue;
    }
    const torch::Tensor& t = it->second;
    std::ostringstream msg;
    if (t.sizes() != target.sizes()) {
      msg << report.prefix << key << " has shape " << t.sizes() << ", the model's is "
          << target.sizes();
      problems.push_back(msg.str());
    } else if (t.is_floating_point() != target.is_floating_point() ||
               t.scalar_type() == torch::kBool) {
      msg << report.prefix << key << " is " << t.scalar_type() << ", the model's is "
          << target.scalar_type();
      problems.push_back(msg.str());
    }
  }
  if (!missing.empty() || !unknown.empty() || !problems.empty()) {
    std::string msg = source + " does not fit this encoder";
    if (!problems.empty()) msg += "; " + list_some(problems, 4);
    if (!missing.empty()) msg += "; missing " + list_some(missing);
    if (!unknown.empty()) msg += "; unknown keys " + list_some(unknown);
    msg += " (another architecture, stem or input channels?)";
    throw std::runtime_error(msg);
  }
  torch::NoGradGuard no_grad;
  for (const auto& [key, target] : expected) {
    const auto it = found.find(key);
    if (it == found.end()) continue;
    torch::Tensor dst = target;  // shares storage with the module's tensor
    dst.copy_(it->second);
    ++report.loaded;
  }
  return report;
}

}  // namespace vicreg
