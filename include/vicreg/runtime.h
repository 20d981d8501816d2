// Process-wide runtime settings and accounting: devices, intra-op threads, peak memory.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>

namespace vicreg {

/// Sets LibTorch's intra-op thread count and, when LibTorch's BLAS is OpenBLAS, OpenBLAS's own
/// thread count (Debian's LibTorch starts with one thread, OpenBLAS with one per core).
/// threads <= 0 means one per available core. Returns the count that was set. Also calls
/// keep_freed_memory().
int set_threads(int threads);

/// Keeps glibc's malloc from returning freed blocks of up to 32 MiB to the operating system
/// (mallopt: mmap threshold 32 MiB, trim threshold 1 GiB), so that a training step reuses the
/// memory of the previous one instead of page-faulting it in again (2.3x on the default loop).
/// Once per process; what LibTorch allocates is unchanged.
void keep_freed_memory();

/// The device named `name` (cpu, cuda, cuda:N), checked to be usable here. Throws UsageError
/// naming --device when CUDA is asked for and this LibTorch has no CUDA device, c10::Error for a
/// name that is no device.
torch::Device usable_device(const std::string& name);

/// Cores available to this process (sched affinity), at least 1.
int available_cores();

/// One line: LibTorch version, intra-op threads, BLAS, CUDA devices.
std::string describe_runtime();

/// Bytes of tensor memory on `device`: in use now and the peak since the last reset.
struct MemoryStats {
  int64_t current_bytes = 0;
  int64_t peak_bytes = 0;
};

/// Starts counting CPU tensor allocations (installs a counting CPU allocator, once per process;
/// a no-op after the first call). CUDA memory is always counted by LibTorch's caching allocator.
void enable_memory_tracking();
/// Current and peak bytes on `device` (CPU: since enable_memory_tracking()).
/// Throws if CPU tracking was never enabled, or for a device type that cannot be measured.
MemoryStats memory_stats(const torch::Device& device);
/// Sets the peak on `device` to the current use.
void reset_peak_memory(const torch::Device& device);

/// Waits for all work queued on `device` (a no-op on CPU), so that timings are honest.
void synchronize(const torch::Device& device);

}  // namespace vicreg
