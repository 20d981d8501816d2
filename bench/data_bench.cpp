// Scanning an image-folder data set at ImageNet's scale: a synthetic tree of 200,000 empty files
// in 1,000 class folders (train/ and a 10,000-file val/), laid out and named as ImageNet is.
// Measured against a baseline in the same run: a bare recursive listing of the same tree into a
// vector of path strings (std::filesystem, no sorting, no labels), which any scanner must at
// least do. Counters: the baseline's seconds, the ratio of vicreg's scan (training split: class
// folders, sorted files, labels) to it, the heap bytes held per sample by the loaded Dataset
// (malloc's own count, so every string and vector is in it) and, for comparison, per path by the
// listing's vector of std::string.
//
//   data_bench [--files=N] [google benchmark flags]
#include "vicreg/data.h"

#include <benchmark/benchmark.h>
#include <malloc.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

int64_t g_files = 200000;
constexpr int64_t kClasses = 1000;

/// The tree (made once, reused by later runs): root/train/nXXXXXXXX/nXXXXXXXX_K.JPEG and a
/// val/ with 10 files per class.
fs::path tree() {
  const fs::path root =
      fs::temp_directory_path() / ("vicreg_bench_tree_" + std::to_string(g_files));
  const fs::path done = root / "complete";
  if (fs::exists(done)) return root;
  fs::remove_all(root);
  const int64_t per_class = g_files / kClasses;
  char wnid[16];
  for (int64_t c = 0; c < kClasses; ++c) {
    std::snprintf(wnid, sizeof wnid, "n%08lld", static_cast<long long>(1440764 + 7919 * c));
    for (const char* split : {"train", "val"}) {
      const fs::path dir = root / split / wnid;
      fs::create_directories(dir);
      const int64_t n = std::string(split) == "train" ? per_class : 10;
      for (int64_t k = 0; k < n; ++k) {
        std::ofstream(dir / (std::string(wnid) + "_" + std::to_string(10000 + 37 * k) + ".JPEG"));
      }
    }
  }
  std::ofstream(done) << "ok\n";
  return root;
}

double seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void BM_ScanImageFolder(benchmark::State& state) {
  const fs::path root = tree();
  vicreg::DatasetConfig c;
  c.dataset = vicreg::DatasetKind::ImageFolder;
  c.data_dir = root.string();
  double baseline_s = 0, ours_s = 0, bytes_per_sample = 0, listing_bytes = 0;
  int64_t samples = 0;
  for (auto _ : state) {
    malloc_trim(0);
    size_t before = mallinfo2().uordblks;
    auto t0 = std::chrono::steady_clock::now();
    {
      std::vector<std::string> paths;
      for (const auto& e : fs::recursive_directory_iterator(root / "train")) {
        if (e.is_regular_file()) paths.push_back(e.path().string());
      }
      benchmark::DoNotOptimize(paths.data());
      baseline_s += seconds(t0);
      listing_bytes =
          static_cast<double>(mallinfo2().uordblks - before) / static_cast<double>(paths.size());
    }
    malloc_trim(0);
    before = mallinfo2().uordblks;
    t0 = std::chrono::steady_clock::now();
    const vicreg::Dataset d = vicreg::load_dataset(c);
    const double t = seconds(t0);
    ours_s += t;
    state.SetIterationTime(t);
    samples = d.size();
    bytes_per_sample =
        static_cast<double>(mallinfo2().uordblks - before) / static_cast<double>(samples);
  }
  const auto n = static_cast<double>(state.iterations());
  state.counters["samples"] = static_cast<double>(samples);
  state.counters["listing_s"] = baseline_s / n;
  state.counters["vs_listing"] = ours_s / baseline_s;
  state.counters["bytes_per_sample"] = bytes_per_sample;
  state.counters["listing_bytes_per_path"] = listing_bytes;
}
BENCHMARK(BM_ScanImageFolder)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--files=", 8) == 0) g_files = std::atoll(argv[i] + 8);
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
