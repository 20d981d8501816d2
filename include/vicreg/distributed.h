// Multi-process training on torch.distributed's c10d: the process group (Gloo on CPU, NCCL on
// CUDA where LibTorch has it) created from torchrun's environment, the collectives the library
// needs, gradient averaging in buckets, and synchronised BatchNorm.
//
// One process = one device. `torchrun --no-python --nproc_per_node=2 build/vicreg train ...`
// sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a plain process with none of
// them set is a world of one and needs no process group at all.
//
// Conventions (docs/interop.md, Distributed training):
// - Every call on a ProcessGroup is collective: all ranks make the same calls in the same order.
// - Gradients are averaged over ranks (all_reduce_gradients), as with PyTorch's DDP. Losses whose
//   value is a statistic of the global batch (vicreg_loss_sharded, sync_batch_norm) therefore
//   return W times the gradient of their own rows, as the reference's gather layer does, so that
//   the average is the gradient of the global loss.
// - A failed collective (a rank died, or did not answer within the timeout) throws
//   DistributedError naming the ranks that were lost; nothing hangs past the timeout.
#pragma once

#include "vicreg/error.h"
#include "vicreg/names.h"

#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace torch::nn {
class Module;
}

namespace vicreg {

/// The launcher's environment (torchrun's variables).
struct DistributedEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr;
  int master_port = 0;
  /// TORCHELASTIC_USE_AGENT_STORE=True: torchrun's agent hosts the TCPStore (all ranks are
  /// clients); otherwise rank 0 hosts it.
  bool agent_store = false;
  /// TORCHELASTIC_RESTART_COUNT: keys of an earlier attempt are kept apart.
  int restart_count = 0;

  bool distributed() const { return world_size > 1; }
};

/// Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_USE_AGENT_STORE and
/// TORCHELASTIC_RESTART_COUNT through `get` (std::getenv by default). With neither RANK nor
/// WORLD_SIZE set, a single process. Throws UsageError naming the variable and the fix
/// for an inconsistent environment: WORLD_SIZE > 1 without RANK, MASTER_ADDR or MASTER_PORT, a
/// RANK outside [0, WORLD_SIZE), values that are not integers, a port outside 1..65535.
DistributedEnv read_distributed_env(const std::function<const char*(const char*)>& get =
                                        [](const char* n) { return std::getenv(n); });

/// The collectives the library uses. Every call is collective (see the top of this file).
class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  /// "gloo", "nccl" or "simulated".
  virtual std::string backend() const = 0;
  /// Sums every tensor over ranks, in place. All of them are started before the first is waited
  /// for, so buckets travel back to back. Tensors: contiguous, the same shapes on every rank.
  virtual void all_reduce_sum(std::vector<torch::Tensor>& tensors) = 0;
  /// local: [n, ...], the same shape on every rank -> [W * n, ...], rank r's rows at r * n.
  virtual torch::Tensor all_gather(const torch::Tensor& local) = 0;
  /// Copies `root`'s tensors into every rank's, in place.
  virtual void broadcast(std::vector<torch::Tensor>& tensors, int root = 0) = 0;
  /// Returns when every rank has called it.
  virtual void barrier() = 0;
};

/// The c10d backend: auto (NCCL for CUDA devices when LibTorch has it, else Gloo), gloo, nccl.
enum class DistBackend { Auto, Gloo, Nccl };
template <>
const NameTable<DistBackend>& name_table<DistBackend>();

struct DistributedOptions {
  DistBackend backend = DistBackend::Auto;
  /// Rendezvous and collective timeout: a rank that does not answer within it is reported lost.
  std::chrono::milliseconds timeout = std::chrono::seconds(300);
  /// The device this process trains on (decides the automatic backend).
  torch::Device device = torch::kCPU;
};

/// The process group of `env` (TCPStore rendezvous at MASTER_ADDR:MASTER_PORT). Returns nullptr
/// for a world of one. Throws UsageError for an unavailable backend and
/// DistributedError when the store cannot be reached or a rank does not join within the timeout.
std::shared_ptr<ProcessGroup> init_process_group(const DistributedEnv& env,
                                                 const DistributedOptions& options = {});

/// Rank `rank` of `world` ranks that all hold the same data: all_reduce_sum multiplies by W,
/// all_gather repeats the local rows W times, broadcast and barrier do nothing. What a real group
/// computes when every rank has these inputs, in one process: for tests, and for benchmarks of
/// one rank's share of the work (the communication itself is not simulated).
class SimulatedGroup : public ProcessGroup {
 public:
  SimulatedGroup(int rank, int world);
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string backend() const override { return "simulated"; }
  void all_reduce_sum(std::vector<torch::Tensor>& tensors) override;
  torch::Tensor all_gather(const torch::Tensor& local) override;
  void broadcast(std::vector<torch::Tensor>&, int) override {}
  void barrier() override {}

 private:
  int rank_, world_;
};

/// Copies rank 0's parameters and buffers into every rank's module (in place).
void broadcast_module(torch::nn::Module& module, ProcessGroup& group);

/// Averages the gradients of `parameters` over ranks, in place: flattened into buckets of at most
/// `bucket_bytes` (one parameter larger than that gets a bucket of its own), one all-reduce per
/// bucket, all started before the first is waited for. Parameters without a gradient are skipped
/// (the same on every rank: same model). Returns the number of buckets.
int64_t all_reduce_gradients(const std::vector<torch::Tensor>& parameters, ProcessGroup& group,
                             int64_t bucket_bytes = 25 << 20);

/// BatchNorm in training mode with the statistics of the batch over all ranks (PyTorch's
/// SyncBatchNorm). input: [N, C, ...] (N may differ between ranks); weight, bias: [C] or
/// undefined; running_mean, running_var: [C] or undefined, updated in place with the global mean
/// and unbiased variance. Forward: one all-gather of (count, mean, M2) per channel, combined with
/// Chan's formula (no cancellation); backward: one all-reduce of two [C] sums, after which the
/// input gradient is exact for the output gradients all ranks pass in. `group` must outlive the
/// backward pass (the BatchNorm module that calls this holds it).
torch::Tensor sync_batch_norm(const torch::Tensor& input, const torch::Tensor& weight,
                              const torch::Tensor& bias, torch::Tensor running_mean,
                              torch::Tensor running_var, double momentum, double eps,
                              const std::shared_ptr<ProcessGroup>& group);

}  // namespace vicreg
