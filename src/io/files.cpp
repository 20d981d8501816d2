#include "vicreg/io/files.h"

#include "vicreg/error.h"

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace vicreg {

namespace fs = std::filesystem;

namespace {

std::string errno_text() { return std::strerror(errno); }

/// Removes the temporary file when the write did not reach its rename.
class TemporaryFile {
 public:
  explicit TemporaryFile(std::string path) : path_(std::move(path)) {}
  ~TemporaryFile() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  TemporaryFile(const TemporaryFile&) = delete;
  TemporaryFile& operator=(const TemporaryFile&) = delete;
  const std::string& path() const { return path_; }
  void release() { path_.clear(); }

 private:
  std::string path_;
};

void fsync_path(const std::string& path, int flags, const std::string& target) {
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) throw FormatError("cannot write '" + target + "': " + errno_text());
  const int rc = ::fsync(fd);
  const std::string why = rc != 0 ? errno_text() : "";
  ::close(fd);
  if (rc != 0) throw FormatError("cannot write '" + target + "' to disk: " + why);
}

}  // namespace

void write_file_atomically(const std::string& path,
                           const std::function<void(const std::string& temporary)>& write) {
  const fs::path target(path);
  const fs::path dir = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  // A unique name beside the target: two writers never share a temporary, and a leftover of a
  // killed process is recognisable (and never read as the file itself).
  std::string pattern = (dir / ("." + target.filename().string() + ".XXXXXX")).string();
  const int fd = ::mkstemp(pattern.data());
  if (fd < 0) {
    throw FormatError("cannot write '" + path + "': " + errno_text() +
                      " (does its folder exist, and is it writable?)");
  }
  ::fchmod(fd, 0644);
  ::close(fd);
  TemporaryFile tmp(pattern);
  try {
    write(tmp.path());
  } catch (const Error& e) {
    throw FormatError("cannot write '" + path + "': " + e.what());
  } catch (const c10::Error& e) {
    throw FormatError("cannot write '" + path + "': " + e.what_without_backtrace() +
                      " (is the disk full?)");
  } catch (const std::exception& e) {
    throw FormatError("cannot write '" + path + "': " + e.what());
  }
  fsync_path(tmp.path(), O_RDONLY, path);
  if (std::rename(tmp.path().c_str(), path.c_str()) != 0) {
    throw FormatError("cannot write '" + path + "': rename failed: " + errno_text());
  }
  tmp.release();
  fsync_path(dir.string(), O_RDONLY | O_DIRECTORY, path);
}

void write_file_atomically(const std::string& path, std::string_view bytes) {
  write_file_atomically(path, [&](const std::string& tmp) {
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_TRUNC);
    if (fd < 0) throw FormatError(errno_text());
    const char* p = bytes.data();
    size_t left = bytes.size();
    while (left > 0) {
      const ssize_t w = ::write(fd, p, left);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        const std::string why = w < 0 ? errno_text() : "nothing written";
        ::close(fd);
        throw FormatError(why + " (is the disk full?)");
      }
      p += w;
      left -= static_cast<size_t>(w);
    }
    if (::close(fd) != 0) throw FormatError(errno_text());
  });
}

std::string read_file(const std::string& path, const std::string& what, uint64_t max_bytes) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    throw FormatError(what + " '" + path + "': no such file");
  }
  const uint64_t size = fs::file_size(path, ec);
  if (ec) throw FormatError(what + " '" + path + "' cannot be read: " + ec.message());
  if (size > max_bytes) {
    throw FormatError(what + " '" + path + "' is " + std::to_string(size) +
                      " bytes, more than the " + std::to_string(max_bytes) +
                      " such a file may have");
  }
  std::ifstream in(path, std::ios::binary);
  std::string bytes(size, '\0');
  if (!in || !in.read(bytes.data(), static_cast<std::streamsize>(size))) {
    throw FormatError(what + " '" + path + "' cannot be read");
  }
  return bytes;
}

std::string read_file_head(const std::string& path, const std::string& what, size_t count) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    throw FormatError(what + " '" + path + "': no such file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FormatError(what + " '" + path + "' cannot be read");
  std::string head(count, '\0');
  in.read(head.data(), static_cast<std::streamsize>(count));
  head.resize(static_cast<size_t>(in.gcount()));
  return head;
}

FileFormat sniff_format(std::string_view head) {
  const auto starts = [&](std::string_view magic) {
    return head.size() >= magic.size() && head.substr(0, magic.size()) == magic;
  };
  if (starts(std::string_view("PK\x03\x04", 4))) return FileFormat::Zip;
  if (starts("\x93NUMPY")) return FileFormat::Npy;
  if (starts("\x1f\x8b")) return FileFormat::Gzip;
  // Safetensors before the pickle: its first byte is the header length's lowest, which can be
  // 0x80 (a 640- or 2,688-byte header); a legacy torch.save file has its magic number's 0xf9 at 8.
  if (head.size() >= 9 && head[8] == '{') return FileFormat::Safetensors;
  if (!head.empty() && static_cast<unsigned char>(head[0]) == 0x80) return FileFormat::LegacyPickle;
  return FileFormat::Unknown;
}

nlohmann::json parse_json(std::string_view text, const std::string& what, int max_depth) {
  // nlohmann's parser keeps its own stack; the callback sees each value's depth and stops the
  // parse before a deep document is built (whose destruction and dump() would recurse).
  const nlohmann::json::parser_callback_t limit = [&](int depth, nlohmann::json::parse_event_t,
                                                      nlohmann::json&) {
    if (depth > max_depth) {
      throw FormatError(what + ": JSON nested deeper than " + std::to_string(max_depth) +
                        " levels");
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), limit);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(what + " is not valid JSON: " + e.what());
  }
}

DirectoryLock::DirectoryLock(const std::string& dir, const std::string& what) {
  const std::string path = (fs::path(dir) / ".lock").string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw FormatError("cannot lock " + what + " '" + dir + "': " + errno_text());
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char buf[32] = {};
    const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    ::close(fd_);
    fd_ = -1;
    if (err == ENOLCK || err == EOPNOTSUPP || err == ENOSYS) {
      // Some network filesystems have no flock: run unlocked rather than not at all.
      std::fprintf(stderr,
                   "vicreg: warning: cannot lock %s '%s' (%s): this filesystem has no file "
                   "locks, so a second process on the same directory would not be refused\n",
                   what.c_str(), dir.c_str(), std::strerror(err));
      return;
    }
    if (err != EWOULDBLOCK) {
      throw FormatError("cannot lock " + what + " '" + dir + "': " + std::strerror(err));
    }
    const std::string holder = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "?";
    throw UsageError(what + " '" + dir + "' is in use by process " +
                         holder.substr(0, holder.find_first_of("\n ")) +
                         " (another vicreg train): wait for it, stop it, or give another exp_dir",
                     {"exp_dir"});
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  // Best effort: without the PID the lock still holds; only a second process's message lacks it.
  const bool written = ::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, pid.data(), pid.size(), 0) > 0;
  static_cast<void>(written);
}

bool same_path(const std::string& a, const std::string& b) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(a, ec) && fs::exists(b, ec)) return fs::equivalent(a, b, ec);
  return fs::absolute(a).lexically_normal() == fs::absolute(b).lexically_normal();
}

int remove_stale_temporaries(const std::string& dir, const std::vector<std::string>& names) {
  // write_file_atomically's temporaries: "." + the file's name + "." + 6 characters of mkstemp.
  int removed = 0;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string file = entry.path().filename().string();
    for (const std::string& name : names) {
      if (file.size() == name.size() + 8 && file[0] == '.' &&
          file.compare(1, name.size(), name) == 0 && file[name.size() + 1] == '.' &&
          entry.is_regular_file(ec) && fs::remove(entry.path(), ec)) {
        ++removed;
      }
    }
  }
  return removed;
}

DirectoryLock::~DirectoryLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

}  // namespace vicreg
