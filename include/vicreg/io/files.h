// Files: the one atomic writer every output of vicreg goes through, bounded reading, and telling
// a file's format from its first bytes.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace vicreg {

/// Writes `path` atomically: `write` fills a temporary file in the same directory (so that the
/// rename stays on one filesystem), which is flushed to disk (fsync), renamed over `path`, and
/// the directory is flushed so that the rename itself survives a crash. On any failure (of
/// `write`, of the disk, a full disk) the temporary is removed, `path` is left as it was, and a
/// FormatError names `path` and the cause. The directory must exist.
void write_file_atomically(const std::string& path,
                           const std::function<void(const std::string& temporary)>& write);

/// write_file_atomically() of these bytes.
void write_file_atomically(const std::string& path, std::string_view bytes);

/// The whole file. Throws FormatError naming `what` and `path` when it is missing, not a regular
/// file, unreadable, or longer than `max_bytes` (the limit protects against a file that is not
/// what it claims to be).
std::string read_file(const std::string& path, const std::string& what,
                      uint64_t max_bytes = uint64_t{1} << 34);

/// The first `count` bytes of a file (fewer when it is shorter). Throws FormatError naming
/// `what` and `path` when it is missing or unreadable.
std::string read_file_head(const std::string& path, const std::string& what, size_t count);

/// An exclusive lock on a directory (flock on DIR/.lock, which holds the owner's PID), held
/// while the object lives and released by the kernel when the process dies (kill -9 included).
/// Throws UsageError naming the holder's PID when another process holds it, FormatError when the
/// lock file cannot be made. On a filesystem without locks (ENOLCK: some NFS mounts) it warns on
/// stderr and holds nothing.
class DirectoryLock {
 public:
  DirectoryLock(const std::string& dir, const std::string& what);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

 private:
  int fd_ = -1;
};

/// Removes what write_file_atomically leaves in `dir` of a process killed while writing one of
/// the files `names` (".NAME.XXXXXX"); returns how many. Only for a directory whose lock this
/// process holds.
int remove_stale_temporaries(const std::string& dir, const std::vector<std::string>& names);

/// Whether two paths name the same file or folder: the same inode when both exist, else the
/// same absolute, normalised path.
bool same_path(const std::string& a, const std::string& b);

/// How deep a JSON document read from a file may nest (objects and arrays).
constexpr int kMaxJsonDepth = 1000;

/// JSON text from a file (a config, a safetensors header, metadata), parsed without recursion on
/// the file's nesting: deeper than `max_depth` is a FormatError ("... nested deeper than 1000
/// levels"), as is invalid JSON ("WHAT is not valid JSON: ..."); `what` names the file.
nlohmann::json parse_json(std::string_view text, const std::string& what,
                          int max_depth = kMaxJsonDepth);

/// What a file holds, judged by its first bytes (never by its name).
enum class FileFormat {
  Unknown,
  Zip,           ///< a zip archive: torch.save (PyTorch >= 1.6) or LibTorch's torch::save
  LegacyPickle,  ///< torch.save of PyTorch < 1.6 (a bare pickle)
  Safetensors,   ///< an 8-byte little-endian length, then a JSON header
  Gzip,
  Npy,
};

/// The format of `head` (a file's first bytes; 9 are enough).
FileFormat sniff_format(std::string_view head);

}  // namespace vicreg
