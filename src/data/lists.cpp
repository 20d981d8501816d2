// File lists, class folders and class lists, and class-stratified subsets (data.h).
#include "vicreg/data.h"

#include "vicreg/io/files.h"
#include "vicreg/io/jpeg.h"
#include "vicreg/io/npy.h"

#include "vicreg/error.h"

#include <ATen/CPUGeneratorImpl.h>
#include <zlib.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <regex>
#include <set>
#include <stdexcept>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace vicreg {

namespace {

bool is_image_file(const std::filesystem::path& p) {
  static const std::set<std::string> kExt = {".jpg", ".jpeg", ".png", ".bmp", ".webp"};
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return kExt.count(ext) > 0;
}

std::vector<std::string> images_under(const std::filesystem::path& dir) {
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file() && is_image_file(e.path())) files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// FileList

FileList::FileList(std::initializer_list<std::string> paths) {
  reserve(paths.size());
  for (const auto& p : paths) push_back(p);
}

FileList::FileList(const std::vector<std::string>& paths) {
  reserve(paths.size());
  for (const auto& p : paths) push_back(p);
}

void FileList::reserve(size_t n) {
  dir_.reserve(n);
  end_.reserve(n);
}

void FileList::push_back(const std::string& path) {
  const auto slash = path.find_last_of('/');
  const size_t split = slash == std::string::npos ? 0 : slash + 1;
  uint32_t dir = 0;
  if (!dir_.empty() && dirs_[dir_.back()].size() == split &&
      path.compare(0, split, dirs_[dir_.back()]) == 0) {
    dir = dir_.back();  // the same folder as the last file: the usual case
  } else {
    std::string folder = path.substr(0, split);
    const auto found = dir_index_.find(folder);
    if (found != dir_index_.end()) {
      dir = found->second;
    } else {
      TORCH_CHECK(dirs_.size() < UINT32_MAX, "FileList: too many folders");
      dir = static_cast<uint32_t>(dirs_.size());
      dir_index_.emplace(folder, dir);
      dirs_.push_back(std::move(folder));
    }
  }
  names_.append(path, split, std::string::npos);
  dir_.push_back(dir);
  end_.push_back(names_.size());
}

std::string_view FileList::name(size_t i) const {
  TORCH_CHECK(i < size(), "FileList: index ", i, " out of range [0, ", size(), ")");
  const uint64_t begin = i == 0 ? 0 : end_[i - 1];
  return std::string_view(names_).substr(begin, end_[i] - begin);
}

std::string FileList::operator[](size_t i) const {
  const std::string_view n = name(i);
  std::string path = dirs_[dir_[i]];
  path.append(n.data(), n.size());
  return path;
}

std::vector<std::string> FileList::to_vector() const { return {begin(), end()}; }

bool operator==(const FileList& a, const std::vector<std::string>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < b.size(); ++i) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

std::ostream& operator<<(std::ostream& out, const FileList& files) {
  out << "{";
  for (size_t i = 0; i < files.size(); ++i) out << (i > 0 ? ", " : "") << files[i];
  return out << "}";
}

std::vector<std::string> class_folders(const std::string& root) {
  std::vector<std::string> classes;
  for (const auto& e : std::filesystem::directory_iterator(root)) {
    if (e.is_directory()) classes.push_back(e.path().filename().string());
  }
  std::sort(classes.begin(), classes.end());
  return classes;
}

ImageFolder scan_image_folder(const std::string& root, const std::vector<std::string>* classes,
                              bool require_all) {
  std::error_code ec;
  if (!std::filesystem::is_directory(root, ec)) {
    throw FormatError("image folder '" + root + "': no such directory");
  }
  ImageFolder folder;
  folder.classes = classes != nullptr ? *classes : class_folders(root);
  for (size_t c = 0; c < folder.classes.size(); ++c) {
    const auto dir = std::filesystem::path(root) / folder.classes[c];
    if (!std::filesystem::is_directory(dir, ec)) {
      if (!require_all) continue;
      throw FormatError("image folder '" + root + "' has no folder for the class '" +
                        folder.classes[c] + "' of the class list");
    }
    for (const auto& f : images_under(dir)) {
      folder.files.push_back(f);
      folder.labels.push_back(static_cast<int64_t>(c));
    }
  }
  if (folder.classes.empty()) {
    std::vector<std::string> files;
    for (const auto& e : std::filesystem::directory_iterator(root)) {
      if (e.is_regular_file() && is_image_file(e.path())) files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
    folder.files = FileList(files);
  }
  if (folder.files.empty()) {
    throw FormatError("image folder '" + root +
                      "' holds no images (.jpg, .jpeg, .png, .bmp, .webp), neither directly "
                      "nor in one subfolder per class");
  }
  // A copy holds no growth slack (vectors and strings copy at their size, not their capacity):
  // about 40 % less memory for a large tree.
  folder.files = FileList(folder.files);
  return folder;
}

namespace {

/// A line of a list file without its surrounding blanks ("" for a blank line).
std::string trimmed(const std::string& line) {
  const auto first = line.find_first_not_of(" \t\r");
  if (first == std::string::npos) return "";
  return line.substr(first, line.find_last_not_of(" \t\r") - first + 1);
}

}  // namespace

std::vector<std::string> read_class_list(const std::string& path) {
  const auto fail_list = [&path](const std::string& what) {
    throw FormatError("class list '" + path + "': " + what);
  };
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) fail_list("no such file");
  std::ifstream in(path);
  std::vector<std::string> names;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    std::string name = trimmed(line);
    if (name.empty()) continue;
    if (name.find('/') != std::string::npos || name == "." || name == "..") {
      fail_list("line " + std::to_string(number) + " ('" + name +
                "') is not a class folder name (one name per line, no '/')");
    }
    names.push_back(std::move(name));
  }
  if (in.bad()) fail_list("cannot be read");
  if (names.empty()) fail_list("names no class (one class folder name per line)");
  std::sort(names.begin(), names.end());
  const auto dup = std::adjacent_find(names.begin(), names.end());
  if (dup != names.end()) fail_list("names the class '" + *dup + "' twice");
  return names;
}

namespace {

/// Sorted indices: from each class's members (in order of appearance), take(n_c) of them, drawn
/// by a generator seeded with `seed`.
template <class Take>
torch::Tensor stratified_pick(const torch::Tensor& labels, int64_t n, uint64_t seed, Take take) {
  std::map<int64_t, std::vector<int64_t>> by_class;
  if (labels.defined()) {
    const torch::Tensor y = labels.to(torch::kCPU, torch::kLong).contiguous();
    const int64_t* p = y.data_ptr<int64_t>();
    for (int64_t i = 0; i < y.numel(); ++i) by_class[p[i]].push_back(i);
  } else {
    auto& all = by_class[0];
    for (int64_t i = 0; i < n; ++i) all.push_back(i);
  }
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  std::vector<torch::Tensor> picked;
  for (const auto& [label, members] : by_class) {
    const auto count = static_cast<int64_t>(members.size());
    const int64_t k = take(count);
    if (k <= 0) continue;
    const torch::Tensor order = torch::randperm(count, gen).narrow(0, 0, k);
    picked.push_back(torch::tensor(members, torch::kLong).index_select(0, order));
  }
  if (picked.empty()) return torch::empty({0}, torch::kLong);
  return std::get<0>(torch::cat(picked).sort());
}

}  // namespace

torch::Tensor balanced_subset(const torch::Tensor& labels, double fraction, uint64_t seed) {
  TORCH_CHECK(labels.dim() == 1 && labels.numel() > 0, "balanced_subset: expected labels [N]");
  TORCH_CHECK(fraction > 0 && fraction <= 1, "--label-fraction must be in (0, 1], got ", fraction);
  return stratified_pick(labels, labels.numel(), seed, [fraction](int64_t count) {
    return std::min(count,
                    std::max<int64_t>(1, std::llround(fraction * static_cast<double>(count))));
  });
}

torch::Tensor subset_by_file_names(const Dataset& data, const std::string& list_path) {
  const auto fail_list = [&list_path](const std::string& what) {
    throw FormatError("subset file '" + list_path + "': " + what, {"classes"});
  };
  if (data.files.empty()) {
    throw UsageError("train_subset names image files: it is for dataset image-folder",
                     {"train_subset", "dataset"});
  }
  std::error_code ec;
  if (!std::filesystem::is_regular_file(list_path, ec)) fail_list("no such file");
  // File name -> index in the split (-1: several files have that name).
  std::unordered_map<std::string_view, int64_t> by_name;
  by_name.reserve(data.files.size());
  for (size_t i = 0; i < data.files.size(); ++i) {
    const auto [it, fresh] = by_name.emplace(data.files.name(i), static_cast<int64_t>(i));
    if (!fresh) it->second = -1;
  }
  std::ifstream in(list_path);
  std::string line;
  std::vector<int64_t> picked;
  std::vector<std::string> missing;
  int64_t missing_count = 0;
  while (std::getline(in, line)) {
    std::string entry = trimmed(line);
    if (entry.empty()) continue;
    const auto slash = entry.find_last_of('/');
    if (slash != std::string::npos) entry = entry.substr(slash + 1);
    const auto it = by_name.find(entry);
    if (it == by_name.end()) {
      if (missing.size() < 3) missing.push_back(entry);
      ++missing_count;
    } else if (it->second < 0) {
      fail_list("names '" + entry + "', which several files of '" + data.source +
                "' are called: file names must be unique");
    } else {
      picked.push_back(it->second);
    }
  }
  if (in.bad()) fail_list("cannot be read");
  if (missing_count > 0) {
    std::string names;
    for (const auto& m : missing) names += (names.empty() ? "" : ", ") + m;
    fail_list("names " + std::to_string(missing_count) + " image(s) that the training split '" +
              data.source + "' lacks (" + names + (missing_count > 3 ? ", ..." : "") +
              "): is it the subset of this data set, and classes the same?");
  }
  if (picked.empty()) fail_list("names no image (one image file name per line)");
  std::sort(picked.begin(), picked.end());
  picked.erase(std::unique(picked.begin(), picked.end()), picked.end());
  return torch::tensor(picked, torch::kLong);
}

torch::Tensor holdout_indices(const torch::Tensor& labels, int64_t n, double fraction,
                              uint64_t seed) {
  TORCH_CHECK(fraction > 0 && fraction < 1, "--holdout must be in (0, 1), got ", fraction);
  TORCH_CHECK(!labels.defined() || (labels.dim() == 1 && labels.numel() == n),
              "holdout_indices: expected labels [", n, "]");
  return stratified_pick(labels, n, seed, [fraction](int64_t count) -> int64_t {
    if (count < 2) return 0;
    return std::clamp<int64_t>(std::llround(fraction * static_cast<double>(count)), 1, count - 1);
  });
}

}  // namespace vicreg
