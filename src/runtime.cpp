#include "vicreg/runtime.h"

#include "vicreg/error.h"

#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/cuda.h>
#include <torch/version.h>

#ifdef VICREG_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <dlfcn.h>
#include <malloc.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <iterator>
#include <sstream>
#include <thread>

namespace vicreg {

namespace {

using OpenBlasSetThreads = void (*)(int);
using OpenBlasGetConfig = char* (*)();
using OpenBlasGetParallel = int (*)();
using OpenBlasGetCorename = char* (*)();
using OpenBlasDynamicInit = void (*)();

template <typename Fn>
Fn find_symbol(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, name));
}

/// A CPU allocator that counts live and peak bytes. The size of each block is kept in a header
/// in front of it, so counting costs two atomic operations per allocation and nothing else. The
/// context of each DataPtr is its data pointer, as raw_allocate() (used by oneDNN's reorders)
/// requires; the deleter finds the header in front of it.
class CountingCpuAllocator final : public c10::Allocator {
 public:
  static constexpr size_t kHeader = 64;  // keeps the data as aligned as alloc_cpu's

  // LibTorch 2.3 made Allocator::allocate non-const and copy_data pure virtual.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
  c10::DataPtr allocate(size_t nbytes) override {
#else
  c10::DataPtr allocate(size_t nbytes) const override {
#endif
    auto* base = static_cast<char*>(c10::alloc_cpu(nbytes + kHeader));
    *reinterpret_cast<size_t*>(base) = nbytes;
    const int64_t now =
        current_.fetch_add(static_cast<int64_t>(nbytes)) + static_cast<int64_t>(nbytes);
    int64_t peak = peak_.load();
    while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
    }
    return {base + kHeader, base + kHeader, &CountingCpuAllocator::release, c10::Device(c10::kCPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &CountingCpuAllocator::release; }
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
#endif

  MemoryStats stats() const { return {current_.load(), peak_.load()}; }
  void reset_peak() { peak_.store(current_.load()); }

 private:
  static void release(void* data) {
    if (data == nullptr) return;
    char* base = static_cast<char*>(data) - kHeader;
    current_.fetch_sub(static_cast<int64_t>(*reinterpret_cast<size_t*>(base)));
    c10::free_cpu(base);
  }
  static std::atomic<int64_t> current_;
  static std::atomic<int64_t> peak_;
};

std::atomic<int64_t> CountingCpuAllocator::current_{0};
std::atomic<int64_t> CountingCpuAllocator::peak_{0};

// Never destroyed: tensors it allocated may outlive any scope.
CountingCpuAllocator* g_counting = nullptr;

}  // namespace

torch::Device usable_device(const std::string& name) {
  const torch::Device device(name);
  if (device.is_cuda() && !torch::cuda::is_available()) {
    throw UsageError("device " + name +
                         ": no CUDA GPU is available to this LibTorch build (use device cpu, or "
                         "build against a CUDA LibTorch)",
                     {"device"});
  }
  return device;
}

int available_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    return std::max(1, CPU_COUNT(&set));
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

void keep_freed_memory() {
  static const bool done = [] {
    // glibc hands blocks above its mmap threshold back to the OS when they are freed (and trims
    // the heap top above 128 KiB), so every training step page-faults its activations in
    // again: the default loop ran at 320-520 images/s instead of 745-1,376 (docs/decisions.md).
    // Blocks up to 32 MiB (glibc's largest threshold) now come from the heap, which is trimmed
    // only above 1 GiB free; larger ones too unless MALLOC_MMAP_MAX_ is set (ConvNeXt's first
    // stage holds activations of hundreds of MB: docs/decisions.md).
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    if (std::getenv("MALLOC_MMAP_MAX_") == nullptr) mallopt(M_MMAP_MAX, 0);
    return true;
  }();
  (void)done;
}

bool is_pre_avx2_blas_core(const std::string& core) {
  // OpenBLAS's x86-64 kernel sets (dynamic.c's corename[]) that use neither AVX2 nor AVX-512;
  // "Prescott" is also what it falls back to for a CPU it does not know.
  static const char* const kOld[] = {
      "unknown",   "katmai",        "coppermine",  "northwood",  "prescott",    "banias",
      "atom",      "core2",         "penryn",      "dunnington", "nehalem",     "athlon",
      "opteron",   "opteron(sse3)", "barcelona",   "nano",       "sandybridge", "bobcat",
      "bulldozer", "piledriver",    "steamroller", "excavator"};
  std::string lower(core);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return std::find(std::begin(kOld), std::end(kOld), lower) != std::end(kOld);
}

std::string blas_core_for_cpu(const std::string& detected, bool avx512, bool avx2) {
  if (!is_pre_avx2_blas_core(detected)) return "";
  if (avx512) return "SkylakeX";
  if (avx2) return "Haswell";
  return "";
}

BlasKernels select_blas_kernels() {
  static const BlasKernels chosen = [] {
    BlasKernels k;
    const auto corename = find_symbol<OpenBlasGetCorename>("openblas_get_corename");
    if (corename == nullptr) return k;  // not OpenBLAS
    k.core = k.detected = corename();
    k.user_choice = std::getenv("OPENBLAS_CORETYPE") != nullptr;
    if (k.user_choice) return k;
    __builtin_cpu_init();
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const std::string want = blas_core_for_cpu(k.detected, avx512, avx2);
    const auto quit = find_symbol<OpenBlasDynamicInit>("gotoblas_dynamic_quit");
    const auto init = find_symbol<OpenBlasDynamicInit>("gotoblas_dynamic_init");
    if (want.empty() || quit == nullptr || init == nullptr) return k;
    // What OPENBLAS_CORETYPE does at load time: OpenBLAS reads it when it picks its kernels,
    // which gotoblas_dynamic_init does again once gotoblas_dynamic_quit has dropped the first
    // choice. Blocking sizes and buffers are taken per call, so nothing allocated depends on it.
    setenv("OPENBLAS_CORETYPE", want.c_str(), /*overwrite=*/0);
    quit();
    init();
    k.core = corename();
    return k;
  }();
  return chosen;
}

int set_threads(int threads) {
  keep_freed_memory();
  select_blas_kernels();
  const int n = threads > 0 ? threads : available_cores();
  at::set_num_threads(n);
  if (auto fn = find_symbol<OpenBlasSetThreads>("openblas_set_num_threads")) fn(n);
  return n;
}

std::string describe_runtime() {
  std::ostringstream s;
  s << "LibTorch " << TORCH_VERSION << ", " << at::get_num_threads() << " intra-op thread(s) of "
    << available_cores() << " core(s)";
  if (auto cfg = find_symbol<OpenBlasGetConfig>("openblas_get_config")) {
    s << ", BLAS: " << cfg();
    const BlasKernels k = select_blas_kernels();
    if (k.core != k.detected) {
      s << " (switched from " << k.detected;
      if (k.detected == "Prescott") s << ", OpenBLAS's fallback for a CPU it does not know";
      s << ")";
    }
    if (auto par = find_symbol<OpenBlasGetParallel>("openblas_get_parallel")) {
      const int mode = par();
      s << (mode == 2   ? " (OpenMP threads)"
            : mode == 1 ? " (pthreads: slow next to LibTorch's "
                          "OpenMP, see docs/building.md, BLAS)"
                        : " (single-threaded)");
    }
  }
  s << ", CUDA: ";
  if (torch::cuda::is_available()) {
    s << torch::cuda::device_count() << " device(s)";
  } else {
    s << "none";
  }
  return s.str();
}

void enable_memory_tracking() {
  static const bool installed = [] {
    g_counting = new CountingCpuAllocator();
    // Priority 1 beats the default allocator's registration (priority 0).
    c10::SetCPUAllocator(g_counting, /*priority=*/1);
    return true;
  }();
  (void)installed;
}

MemoryStats memory_stats(const torch::Device& device) {
  if (device.is_cpu()) {
    TORCH_CHECK(g_counting != nullptr,
                "memory_stats: call vicreg::enable_memory_tracking() before measuring CPU memory");
    return g_counting->stats();
  }
#ifdef VICREG_WITH_CUDA
  if (device.is_cuda()) {
    const int index = device.has_index() ? device.index() : c10::cuda::current_device();
    const auto st = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
    // Later LibTorch (2.6 has it) moved the statistics' types to c10/core/CachingDeviceAllocator.h.
#if __has_include(<c10/core/CachingDeviceAllocator.h>)
    const auto agg = static_cast<size_t>(c10::CachingDeviceAllocator::StatType::AGGREGATE);
#else
    const auto agg = static_cast<size_t>(c10::cuda::CUDACachingAllocator::StatType::AGGREGATE);
#endif
    return {st.allocated_bytes[agg].current, st.allocated_bytes[agg].peak};
  }
#endif
  TORCH_CHECK(false, "memory_stats: cannot measure memory on ", device,
              " in this build (CPU, and CUDA when built against a CUDA LibTorch)");
}

void reset_peak_memory(const torch::Device& device) {
  if (device.is_cpu()) {
    TORCH_CHECK(g_counting != nullptr,
                "reset_peak_memory: call vicreg::enable_memory_tracking() first");
    g_counting->reset_peak();
    return;
  }
#ifdef VICREG_WITH_CUDA
  if (device.is_cuda()) {
    c10::cuda::CUDACachingAllocator::resetPeakStats(
        device.has_index() ? device.index() : c10::cuda::current_device());
    return;
  }
#endif
  TORCH_CHECK(false, "reset_peak_memory: cannot measure memory on ", device, " in this build");
}

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.has_index() ? device.index() : -1);
}

}  // namespace vicreg
