// Process-wide runtime settings and accounting: devices, intra-op threads, peak memory.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>

namespace vicreg {

/// Sets LibTorch's intra-op thread count and, when LibTorch's BLAS is OpenBLAS, OpenBLAS's own
/// thread count (Debian's LibTorch starts with one thread, OpenBLAS with one per core).
/// threads <= 0 means one per available core. Returns the count that was set. Also calls
/// keep_freed_memory() and select_blas_kernels().
int set_threads(int threads);

/// Keeps glibc's malloc from returning freed blocks to the operating system (mallopt: mmap
/// threshold 32 MiB, trim threshold 1 GiB, and no mmap at all for larger blocks unless the
/// environment sets MALLOC_MMAP_MAX_), so that a training step reuses the memory of the previous
/// one instead of page-faulting it in again. Once per process; what LibTorch allocates is
/// unchanged.
void keep_freed_memory();

/// OpenBLAS's kernels: the ones it chose when it was loaded, and the ones it uses now.
struct BlasKernels {
  std::string detected;  ///< empty when LibTorch's BLAS is not OpenBLAS
  std::string core;
  bool user_choice = false;  ///< OPENBLAS_CORETYPE was set before select_blas_kernels() ran
};

/// When LibTorch's BLAS is OpenBLAS and it runs kernels older than the CPU, switches it to the
/// newest ones the CPU can run: SkylakeX (AVX-512) or Haswell (AVX2), as OPENBLAS_CORETYPE would
/// at load time. OpenBLAS 0.3.21 (Debian 12) does not know the Emerald Rapids Xeon (family 6,
/// model 207) and falls back to its Prescott (SSE3) kernels: sgemm at 65 GFLOP/s on 2 cores
/// instead of 300, the default fp32 training step 1.15x slower (docs/decisions.md). An
/// OPENBLAS_CORETYPE set by the user is kept. Once per process, from set_threads(): before any
/// BLAS call runs on another thread.
BlasKernels select_blas_kernels();

/// Whether `core` (an OpenBLAS core name, any case) is a kernel set without AVX2 or AVX-512.
bool is_pre_avx2_blas_core(const std::string& core);
/// The OpenBLAS core to switch to from `detected` on a CPU with these instructions, or "" to
/// keep it: SkylakeX with AVX-512 (F, BW, DQ, VL), Haswell with AVX2 and FMA, when `detected` is
/// a pre-AVX2 one.
std::string blas_core_for_cpu(const std::string& detected, bool avx512, bool avx2);

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
