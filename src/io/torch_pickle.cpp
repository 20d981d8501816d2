// The restricted unpickler (about 500 lines, one file on purpose): its opcode handlers, the
// object model they build and the bounds checks that keep it restricted belong together, so that
// whoever reviews what an untrusted file can make it do reads one file.
#include "vicreg/io/torch_pickle.h"

#include "vicreg/error.h"
#include "vicreg/io/files.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace vicreg {

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw FormatError("'" + path + "': " + what);
}

struct PyObject;
using PyRef = std::shared_ptr<PyObject>;

/// The values a state dict's pickle can hold.
struct PyObject {
  enum Kind { None, Bool, Int, Float, Str, Tuple, List, Dict, Global, Storage, Tensor };
  Kind kind = None;
  int64_t i = 0;  // Bool, Int
  double f = 0;
  std::string s;                                 // Str; Global: "module.name"
  std::vector<PyRef> items;                      // Tuple, List
  std::vector<std::pair<PyRef, PyRef>> entries;  // Dict
  torch::Tensor tensor;                          // Storage (1-D, its dtype), Tensor

  PyObject() = default;
  PyObject(const PyObject&) = delete;
  PyObject& operator=(const PyObject&) = delete;
  /// Containers are released without recursion: a pickle may nest them deeper than the stack.
  ~PyObject() {
    std::vector<PyRef> pending;
    move_children(pending);
    while (!pending.empty()) {
      PyRef o = std::move(pending.back());
      pending.pop_back();
      if (o && o.use_count() == 1) o->move_children(pending);  // o dies here, childless
    }
  }
  /// Moves the contained values out (to be released by the caller, or to break a cycle).
  void move_children(std::vector<PyRef>& out) {
    for (PyRef& x : items) out.push_back(std::move(x));
    for (auto& [k, v] : entries) {
      out.push_back(std::move(k));
      out.push_back(std::move(v));
    }
    items.clear();
    entries.clear();
  }
};

PyRef make(PyObject::Kind kind) {
  auto o = std::make_shared<PyObject>();
  o->kind = kind;
  return o;
}

const char* kind_name(PyObject::Kind k) {
  switch (k) {
    case PyObject::None:
      return "None";
    case PyObject::Bool:
      return "bool";
    case PyObject::Int:
      return "int";
    case PyObject::Float:
      return "float";
    case PyObject::Str:
      return "str";
    case PyObject::Tuple:
      return "tuple";
    case PyObject::List:
      return "list";
    case PyObject::Dict:
      return "dict";
    case PyObject::Global:
      return "class or function";
    case PyObject::Storage:
      return "storage";
    case PyObject::Tensor:
      return "tensor";
  }
  return "?";
}

torch::ScalarType storage_dtype(const std::string& global) {
  static const std::unordered_map<std::string, torch::ScalarType> types = {
      {"torch.FloatStorage", torch::kFloat32}, {"torch.DoubleStorage", torch::kFloat64},
      {"torch.HalfStorage", torch::kFloat16},  {"torch.BFloat16Storage", torch::kBFloat16},
      {"torch.LongStorage", torch::kInt64},    {"torch.IntStorage", torch::kInt32},
      {"torch.ShortStorage", torch::kInt16},   {"torch.CharStorage", torch::kInt8},
      {"torch.ByteStorage", torch::kUInt8},    {"torch.BoolStorage", torch::kBool}};
  const auto it = types.find(global);
  return it == types.end() ? torch::ScalarType::Undefined : it->second;
}

/// A pickle machine for the opcodes a state dict uses: one small handler per opcode, found in a
/// table; everything else is an error.
class Unpickler {
 public:
  Unpickler(const std::string& path, const char* data, size_t size,
            caffe2::serialize::PyTorchStreamReader& zip)
      : path_(path), p_(data), end_(data + size), zip_(zip) {}
  Unpickler(const Unpickler&) = delete;
  Unpickler& operator=(const Unpickler&) = delete;
  /// Breaks the reference cycles a pickle can make (DUP or BINGET, then APPEND or SETITEM of a
  /// container into itself), which shared ownership alone would leak.
  ~Unpickler() {
    std::vector<PyRef> released;
    for (const auto& weak : containers_) {
      if (PyRef o = weak.lock()) o->move_children(released);
    }
  }

  /// Limits of what a state dict's pickle may ask for (a ResNet-200x2 pushes about 25,000 values).
  static constexpr int64_t kMaxPushes = 4'000'000;

  PyRef load() {
    while (true) {
      const uint8_t op = u8();
      if (op == '.') {  // STOP
        if (stack_.size() != 1) bad("STOP with " + std::to_string(stack_.size()) + " values");
        return stack_.back();
      }
      const Handler h = table()[op];
      if (h == nullptr) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", op);
        bad(std::string("pickle opcode ") + hex + " is not supported (only data can be read)");
      }
      (this->*h)(op);
    }
  }

 private:
  // One handler per opcode (or family of opcodes that share their code), registered in table().
  using Handler = void (Unpickler::*)(uint8_t op);

  static const std::array<Handler, 256>& table() {
    static const std::array<Handler, 256> t = [] {
      std::array<Handler, 256> h{};
      const auto set = [&h](std::initializer_list<int> ops, Handler f) {
        for (const int op : ops) h[static_cast<size_t>(op)] = f;
      };
      set({0x80}, &Unpickler::op_proto);
      set({0x95}, &Unpickler::op_frame);
      set({'('}, &Unpickler::op_mark);
      set({'0'}, &Unpickler::op_pop);
      set({'1'}, &Unpickler::op_pop_mark);
      set({'2'}, &Unpickler::op_dup);
      set({'N'}, &Unpickler::op_none);
      set({0x88, 0x89}, &Unpickler::op_bool);
      set({'J', 'K', 'M'}, &Unpickler::op_binint);
      set({0x8a}, &Unpickler::op_long1);
      set({'G'}, &Unpickler::op_binfloat);
      set({'X', 'B', 'T', 0x8c, 'C', 'U', 0x8d, 0x8e}, &Unpickler::op_string);
      set({'c'}, &Unpickler::op_global);
      set({0x93}, &Unpickler::op_stack_global);
      set({'}', ']', ')'}, &Unpickler::op_empty);
      set({'t', 'l', 'd'}, &Unpickler::op_from_mark);
      set({0x85, 0x86, 0x87}, &Unpickler::op_small_tuple);
      set({'a'}, &Unpickler::op_append);
      set({'e'}, &Unpickler::op_appends);
      set({'s'}, &Unpickler::op_setitem);
      set({'u'}, &Unpickler::op_setitems);
      set({'q', 'r', 0x94}, &Unpickler::op_memo_put);
      set({'h', 'j'}, &Unpickler::op_memo_get);
      set({'Q'}, &Unpickler::op_persistent_id);
      set({'R', 0x81}, &Unpickler::op_reduce);
      set({'b'}, &Unpickler::op_build);
      return h;
    }();
    return t;
  }

  void op_proto(uint8_t) { u8(); }
  void op_frame(uint8_t) { take(8); }
  void op_mark(uint8_t) { marks_.push_back(stack_.size()); }
  void op_pop(uint8_t) { pop(); }
  void op_pop_mark(uint8_t) { pop_mark(); }
  void op_dup(uint8_t) { push(top()); }
  void op_none(uint8_t) { push(make(PyObject::None)); }
  void op_bool(uint8_t op) {  // NEWTRUE, NEWFALSE
    auto o = make(PyObject::Bool);
    o->i = op == 0x88;
    push(o);
  }
  void op_binint(uint8_t op) {  // BININT (signed, 4 bytes), BININT1, BININT2
    push_int(op == 'J' ? static_cast<int32_t>(le(4)) : static_cast<int64_t>(le(op == 'K' ? 1 : 2)));
  }
  void op_long1(uint8_t) {
    const size_t n = u8();
    if (n > 8) bad("integer of " + std::to_string(n) + " bytes");
    uint64_t v = n ? le(n) : 0;
    if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);  // sign
    push_int(static_cast<int64_t>(v));
  }
  void op_binfloat(uint8_t) {  // big-endian
    uint64_t v = 0;
    for (uint8_t b : take(8)) v = (v << 8) | b;
    auto o = make(PyObject::Float);
    std::memcpy(&o->f, &v, 8);
    push(o);
  }
  void op_string(uint8_t op) {
    switch (op) {
      case 0x8c:
      case 'C':
      case 'U':
        push_str(le(1));
        break;  // SHORT_BINUNICODE/BYTES/STRING
      case 0x8d:
      case 0x8e:
        push_str(le(8));
        break;  // BINUNICODE8, BINBYTES8
      default:
        push_str(le(4));
        break;  // BINUNICODE, BINBYTES, BINSTRING
    }
  }
  void op_global(uint8_t) {  // GLOBAL module\nname\n
    const std::string module = line(), name = line();
    auto o = make(PyObject::Global);
    o->s = module + "." + name;
    push(o);
  }
  void op_stack_global(uint8_t) {
    PyRef name = pop(), module = pop();
    if (name->kind != PyObject::Str || module->kind != PyObject::Str) bad("STACK_GLOBAL");
    auto o = make(PyObject::Global);
    o->s = module->s + "." + name->s;
    push(o);
  }
  void op_empty(uint8_t op) {  // EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE
    push(make(op == '}' ? PyObject::Dict : op == ']' ? PyObject::List : PyObject::Tuple));
  }
  void op_from_mark(uint8_t op) {  // TUPLE, LIST, DICT
    std::vector<PyRef> items = pop_mark();
    auto o = make(op == 't' ? PyObject::Tuple : op == 'l' ? PyObject::List : PyObject::Dict);
    if (op == 'd') {
      if (items.size() % 2) bad("DICT with an odd number of items");
      for (size_t k = 0; k < items.size(); k += 2) o->entries.emplace_back(items[k], items[k + 1]);
    } else {
      o->items = std::move(items);
    }
    push(o);
  }
  void op_small_tuple(uint8_t op) {  // TUPLE1, TUPLE2, TUPLE3
    const size_t n = op - 0x84u;
    auto o = make(PyObject::Tuple);
    o->items.resize(n);
    for (size_t k = n; k-- > 0;) o->items[k] = pop();  // pop() respects the current MARK
    push(o);
  }
  void op_append(uint8_t) {
    PyRef v = pop();
    expect(top(), PyObject::List, "APPEND")->items.push_back(v);
  }
  void op_appends(uint8_t) {
    std::vector<PyRef> items = pop_mark();
    auto& list = expect(top(), PyObject::List, "APPENDS")->items;
    list.insert(list.end(), items.begin(), items.end());
  }
  void op_setitem(uint8_t) {
    PyRef v = pop(), k = pop();
    expect(top(), PyObject::Dict, "SETITEM")->entries.emplace_back(k, v);
  }
  void op_setitems(uint8_t) {
    std::vector<PyRef> items = pop_mark();
    if (items.size() % 2) bad("SETITEMS with an odd number of items");
    auto& d = expect(top(), PyObject::Dict, "SETITEMS")->entries;
    for (size_t k = 0; k < items.size(); k += 2) d.emplace_back(items[k], items[k + 1]);
  }
  void op_memo_put(uint8_t op) {  // BINPUT, LONG_BINPUT, MEMOIZE
    memo(op == 'q' ? le(1) : op == 'r' ? le(4) : memo_.size());
  }
  void op_memo_get(uint8_t op) { push(get(le(op == 'h' ? 1 : 4))); }  // BINGET, LONG_BINGET
  void op_persistent_id(uint8_t) { push(persistent(pop())); }         // BINPERSID
  void op_reduce(uint8_t) {                                           // REDUCE, NEWOBJ
    PyRef args = pop(), callable = pop();
    push(call(callable, expect(args, PyObject::Tuple, "REDUCE")->items));
  }
  // BUILD: the state of an OrderedDict (its _metadata) or of a tensor; not needed.
  void op_build(uint8_t) { pop(); }

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
    const char* nl =
        static_cast<const char*>(std::memchr(p_, '\n', static_cast<size_t>(end_ - p_)));
    if (!nl) bad("truncated GLOBAL");
    std::string s(p_, nl);
    p_ = nl + 1;
    return s;
  }
  void push(PyRef o) {
    if (++pushes_ > kMaxPushes) {
      bad("the pickle builds more than 4,000,000 values (a state dict needs far fewer)");
    }
    if (o->kind == PyObject::Tuple || o->kind == PyObject::List || o->kind == PyObject::Dict) {
      containers_.push_back(o);
    }
    stack_.push_back(std::move(o));
  }
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
    if (memo_.size() >= 1'000'000 && memo_.count(k) == 0)
      bad("a memo of more than 1,000,000 values");
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
    if (callable->kind != PyObject::Global)
      bad("a call of a " + std::string(kind_name(callable->kind)));
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
      if (offset > kMax) bad("storage offset out of range");
      for (size_t k = 0; k < size.size(); ++k) {
        if (size[k] < 0 || stride[k] < 0) bad("negative tensor size or stride");
        if (size[k] > kMax || stride[k] > kMax) bad("tensor size or stride out of range");
        if (size[k] == 0) {
          empty = true;
        } else if (stride[k] > 0 && size[k] - 1 > (kMax - last) / stride[k]) {
          bad("tensor extent out of range");  // (size - 1) * stride would pass the storage
        } else {
          last += (size[k] - 1) * stride[k];
        }
        // Saturating: the product of a few sizes of up to 2^40 each would overflow int64.
        int64_t product = 0;
        if (__builtin_mul_overflow(numel, std::max<int64_t>(size[k], 1), &product)) {
          product = kMax + 1;
        }
        numel = std::min(product, kMax + 1);
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
  int64_t pushes_ = 0;
  std::vector<std::weak_ptr<PyObject>> containers_;  ///< to break cycles when done
};

/// Flattens string-keyed dicts of tensors: {"a": {"b": t}} -> "a.b". At most 16 levels and
/// `budget` entries in all: dicts that hold themselves, or one dict under many keys at every
/// level, would otherwise be walked without end.
void flatten(const PyRef& o, const std::string& prefix, NamedTensors& out, int depth,
             int64_t& budget, const std::string& path) {
  if (depth > 16) return;
  for (const auto& [k, v] : o->entries) {
    if (--budget < 0) {
      fail(path, "nests more than 1,000,000 dict entries (dicts that hold themselves?)");
    }
    if (k->kind != PyObject::Str) continue;  // e.g. an optimizer's state, keyed by index
    const std::string name = prefix.empty() ? k->s : prefix + "." + k->s;
    if (v->kind == PyObject::Tensor)
      out.emplace_back(name, v->tensor);
    else if (v->kind == PyObject::Dict)
      flatten(v, name, out, depth + 1, budget, path);
  }
}

}  // namespace

WeightsFile read_torch_file(const std::string& path) {
  const std::string head = read_file_head(path, "torch.save file", 4);
  if (head.size() >= 2 && static_cast<unsigned char>(head[0]) == 0x80) {
    fail(path,
         "is in the legacy torch.save format of PyTorch < 1.6; load it in Python and save "
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
      fail(path,
           "has no data.pkl: a TorchScript archive (torch.jit.save) or not a torch.save "
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
  int64_t budget = 1'000'000;
  if (root->kind == PyObject::Dict) flatten(root, "", file.tensors, 0, budget, path);
  if (file.tensors.empty()) {
    fail(path,
         std::string("holds a ") + kind_name(root->kind) + " without tensors, not a state dict");
  }
  return file;
}

}  // namespace vicreg
