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
#include <sstream>
#include <thread>

namespace vicreg {

namespace {

using OpenBlasSetThreads = void (*)(int);
using OpenBlasGetConfig = char* (*)();
using OpenBlasGetParallel = int (*)();

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

  c10::DataPtr allocate(size_t nbytes) const override {
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
    throw UsageError("--device " + name +
                     ": no CUDA device is available to this LibTorch build (use --device cpu, or "
                     "build against a CUDA LibTorch)");
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
    // Blocks up to 32 MiB now come from the heap, which is trimmed only above 1 GiB free.
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    return true;
  }();
  (void)done;
}

int set_threads(int threads) {
  keep_freed_memory();
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
    if (auto par = find_symbol<OpenBlasGetParallel>("openblas_get_parallel")) {
      const int mode = par();
      s << (mode == 2   ? " (OpenMP threads)"
            : mode == 1 ? " (pthreads: slow next to LibTorch's "
                          "OpenMP, see the README, BLAS)"
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
    const auto agg = static_cast<size_t>(c10::cuda::CUDACachingAllocator::StatType::AGGREGATE);
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
