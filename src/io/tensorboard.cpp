#include "vicreg/io/tensorboard.h"

#include "vicreg/error.h"
#include "vicreg/io/files.h"

#include "tensorboard.pb.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>

namespace vicreg {

namespace fs = std::filesystem;
namespace pb = vicreg::tensorboard;

namespace {

constexpr std::string_view kFilePrefix = "events.out.tfevents.";
constexpr std::string_view kFileVersion = "brain.Event:2";

/// The byte-at-a-time table of the reflected Castagnoli polynomial.
constexpr std::array<uint32_t, 256> crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) != 0 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = crc32c_table();

uint32_t mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

uint64_t get_le(std::string_view in, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{static_cast<unsigned char>(in[i])} << (8 * i);
  return v;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

pb::Event parse_event(const std::string& record, const std::string& path) {
  pb::Event e;
  if (!e.ParseFromString(record)) {
    throw FormatError("'" + path + "' holds a record that is not a TensorBoard Event");
  }
  return e;
}

bool is_event_file(const fs::path& p) {
  return p.filename().string().rfind(kFilePrefix, 0) == 0 && fs::is_regular_file(p);
}

/// The seconds in an event file's name (0 when it has none).
long long name_seconds(const std::string& name) {
  if (name.rfind(kFilePrefix, 0) != 0) return 0;
  return std::strtoll(name.c_str() + kFilePrefix.size(), nullptr, 10);
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  std::string h(buf);
  // A name component: no separators of paths.
  std::replace(h.begin(), h.end(), '/', '_');
  return h;
}

}  // namespace

uint32_t crc32c(std::string_view data, uint32_t crc) {
  crc = ~crc;
  for (const char ch : data) {
    crc = kCrc32cTable[(crc ^ static_cast<unsigned char>(ch)) & 0xFF] ^ (crc >> 8);
  }
  return ~crc;
}

uint32_t masked_crc32c(std::string_view data) { return mask(crc32c(data)); }

std::string frame_record(std::string_view data) {
  std::string out;
  out.reserve(data.size() + 16);
  put_le(out, data.size(), 8);
  put_le(out, masked_crc32c(out), 4);
  out.append(data);
  put_le(out, masked_crc32c(data), 4);
  return out;
}

EventRecords parse_records(std::string_view bytes) {
  EventRecords r;
  size_t at = 0;
  while (at < bytes.size()) {
    const std::string_view rest = bytes.substr(at);
    const uint64_t length = rest.size() >= 8 ? get_le(rest, 8) : 0;
    if (rest.size() < 16 || get_le(rest.substr(8), 4) != masked_crc32c(rest.substr(0, 8)) ||
        length > rest.size() - 16) {
      r.damaged = true;
      break;
    }
    const std::string_view data = rest.substr(12, length);
    if (get_le(rest.substr(12 + length), 4) != masked_crc32c(data)) {
      r.damaged = true;
      break;
    }
    r.records.emplace_back(data);
    at += 16 + length;
  }
  r.valid_bytes = at;
  return r;
}

std::vector<ScalarEvent> read_scalar_events(const std::string& path) {
  const std::string bytes = read_file(path, "TensorBoard event file");
  std::vector<ScalarEvent> out;
  for (const std::string& record : parse_records(bytes).records) {
    const pb::Event e = parse_event(record, path);
    if (!e.has_summary()) continue;
    for (const pb::Summary::Value& v : e.summary().value()) {
      if (v.value_case() != pb::Summary::Value::kSimpleValue) continue;
      out.push_back({e.step(), e.wall_time(), v.tag(), v.simple_value()});
    }
  }
  return out;
}

std::vector<std::string> event_files(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (is_event_file(entry.path())) out.push_back(entry.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

int64_t cut_event_files(const std::string& dir, int64_t step) {
  int64_t dropped = 0;
  for (const std::string& path : event_files(dir)) {
    const std::string bytes = read_file(path, "TensorBoard event file");
    const EventRecords r = parse_records(bytes);
    std::string kept;
    bool has_summaries = false, cut = r.damaged;
    for (const std::string& record : r.records) {
      const pb::Event e = parse_event(record, path);
      if (e.step() > step) {
        ++dropped;
        cut = true;
        continue;
      }
      has_summaries = has_summaries || e.has_summary();
      kept += frame_record(record);
    }
    if (!cut) continue;
    if (!has_summaries) {
      fs::remove(path);
    } else {
      write_file_atomically(path, kept);
    }
  }
  return dropped;
}

EventFileWriter::EventFileWriter(const std::string& dir) {
  static std::atomic<int> counter{0};
  const std::vector<std::string> existing = event_files(dir);
  long long seconds = static_cast<long long>(std::time(nullptr));
  const std::string host = host_name();
  for (int attempt = 0;; ++attempt) {
    char stamp[32];
    std::snprintf(stamp, sizeof stamp, "%010lld", seconds);
    const std::string name = std::string(kFilePrefix) + stamp + "." + host + "." +
                             std::to_string(::getpid()) + "." + std::to_string(counter++);
    const std::string path = (fs::path(dir) / name).string();
    // TensorBoard reads a directory's files in name order: this one must come last.
    if (!existing.empty() && path <= existing.back()) {
      seconds = std::max(seconds, name_seconds(fs::path(existing.back()).filename()) + 1);
      continue;
    }
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ >= 0) {
      path_ = path;
      break;
    }
    if (errno != EEXIST || attempt > 100) {
      throw FormatError("cannot make a TensorBoard event file in '" + dir +
                        "': " + std::strerror(errno) + " (is the directory writable?)");
    }
  }
  pb::Event e;
  e.set_wall_time(now_seconds());
  e.set_step(0);
  e.set_file_version(std::string(kFileVersion));
  append(e.SerializeAsString());
}

EventFileWriter::~EventFileWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void EventFileWriter::add_scalars(int64_t step,
                                  const std::vector<std::pair<std::string, double>>& scalars,
                                  double wall_time) {
  pb::Event e;
  e.set_wall_time(wall_time < 0 ? now_seconds() : wall_time);
  e.set_step(step);
  pb::Summary* summary = e.mutable_summary();
  for (const auto& [tag, value] : scalars) {
    pb::Summary::Value* v = summary->add_value();
    v->set_tag(tag);
    v->set_simple_value(static_cast<float>(value));
  }
  append(e.SerializeAsString());
}

void EventFileWriter::append(const std::string& event) {
  // One write() of the whole record: O_APPEND puts it at the end in one piece.
  const std::string record = frame_record(event);
  size_t done = 0;
  while (done < record.size()) {
    const ssize_t n = ::write(fd_, record.data() + done, record.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      throw FormatError("cannot write '" + path_ +
                        "': " + (n < 0 ? std::strerror(errno) : "nothing written") +
                        " (is the disk full?)");
    }
    done += static_cast<size_t>(n);
  }
}

}  // namespace vicreg
