// Process groups on c10d, the collectives' failure reports, gradient buckets, SyncBatchNorm.
#include "vicreg/distributed.h"

#include "vicreg/error.h"

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/nn/module.h>
#include <torch/version.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <thread>

namespace vicreg {

namespace {

using torch::Tensor;

// LibTorch 2.0 split c10d's ProcessGroup into a front end over per-backend Backends:
// ProcessGroupGloo and ProcessGroupNCCL became Backends, with the same collectives.
#if TORCH_VERSION_MAJOR >= 2
using C10dBackend = c10d::Backend;
#else
using C10dBackend = c10d::ProcessGroup;
#endif

/// A non-negative integer from an environment variable, or throws naming it.
int env_int(const char* name, const char* value, int min_value, int max_value) {
  const std::string s = value;
  const bool digits = !s.empty() && s.size() <= 9 &&
                      std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  const int v = digits ? std::stoi(s) : -1;
  if (!digits || v < min_value || v > max_value) {
    throw UsageError(std::string(name) + "='" + s + "' must be an integer in [" +
                     std::to_string(min_value) + ", " + std::to_string(max_value) +
                     "] (set by torchrun; when launching by hand, export it with the "
                     "others: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)");
  }
  return v;
}

std::string first_line(const std::string& s) {
  const size_t end = s.find('\n');
  return end == std::string::npos ? s : s.substr(0, end);
}

std::string message_of(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e))
    return first_line(c->what_without_backtrace());
  return first_line(e.what());
}

// ---------------------------------------------------------------------------------------------
// The c10d group

class C10dGroup : public ProcessGroup {
 public:
  C10dGroup(const DistributedEnv& env, c10::intrusive_ptr<c10d::Store> store,
            c10::intrusive_ptr<C10dBackend> pg, std::string backend,
            std::chrono::milliseconds timeout)
      : env_(env),
        store_(std::move(store)),
        pg_(std::move(pg)),
        backend_(std::move(backend)),
        timeout_(timeout) {}

  int rank() const override { return env_.rank; }
  int world_size() const override { return env_.world_size; }
  std::string backend() const override { return backend_; }

  void all_reduce_sum(std::vector<Tensor>& tensors) override {
    guarded("all-reduce", [&] {
      std::vector<c10::intrusive_ptr<c10d::Work>> works;
      std::vector<std::vector<Tensor>> one(tensors.size());
      for (size_t i = 0; i < tensors.size(); ++i) {
        one[i] = {tensors[i]};
        works.push_back(pg_->allreduce(one[i]));
      }
      for (auto& w : works) wait(*w);
    });
  }

  Tensor all_gather(const Tensor& local) override {
    Tensor out;
    guarded("all-gather", [&] {
      const Tensor in = local.contiguous();
      std::vector<std::vector<Tensor>> outputs(1);
      for (int r = 0; r < env_.world_size; ++r) outputs[0].push_back(torch::empty_like(in));
      std::vector<Tensor> inputs = {in};
      wait(*pg_->allgather(outputs, inputs));
      out = torch::cat(outputs[0], 0);
    });
    return out;
  }

  void broadcast(std::vector<Tensor>& tensors, int root) override {
    guarded("broadcast", [&] {
      c10d::BroadcastOptions o;
      o.rootRank = root;
      for (auto& t : tensors) {
        std::vector<Tensor> one = {t};
        wait(*pg_->broadcast(one, o));
      }
    });
  }

  void barrier() override {
    guarded("barrier", [&] { wait(*pg_->barrier()); });
  }

 private:
  void wait(c10d::Work& work) {
    if (!work.wait(timeout_)) throw std::runtime_error("timed out");
  }

  template <typename F>
  void guarded(const char* op, F&& f) {
    try {
      f();
    } catch (const DistributedError&) {
      throw;
    } catch (const std::exception& e) {
      throw DistributedError(
          "rank " + std::to_string(env_.rank) + " of " + std::to_string(env_.world_size) + ": " +
              op + " failed: " + lost_ranks() + " [" + backend_ + ": " + message_of(e) + "]",
          {"dist_timeout"});
    }
  }

  /// Which ranks are gone: every survivor marks itself in the store, then each looks for a few
  /// seconds for the others' marks; the ranks that never mark are the lost ones. If the store
  /// itself is unreachable, its host is the lost one.
  std::string lost_ranks() {
    const std::string where = env_.master_addr + ":" + std::to_string(env_.master_port);
    try {
      store_->set("failed/" + std::to_string(env_.rank), std::vector<uint8_t>{1});
      const auto grace = std::min<std::chrono::milliseconds>(timeout_, std::chrono::seconds(5));
      const auto deadline = std::chrono::steady_clock::now() + grace;
      std::vector<int> missing;
      while (true) {
        missing.clear();
        for (int r = 0; r < env_.world_size; ++r) {
          if (r != env_.rank && !store_->check({"failed/" + std::to_string(r)}))
            missing.push_back(r);
        }
        if (missing.empty() || std::chrono::steady_clock::now() > deadline) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      if (missing.empty()) {
        return "every rank is still there, so one was slower than the timeout (" +
               std::to_string(timeout_.count() / 1000) + " s, dist_timeout) or the network failed";
      }
      std::string list;
      for (int r : missing) list += (list.empty() ? "" : ", ") + std::to_string(r);
      return "lost rank" + std::string(missing.size() > 1 ? "s " : " ") + list +
             " (exited, crashed, hung or unreachable; see its own log for why)";
    } catch (const std::exception&) {
      return env_.agent_store ? "lost torchrun's rendezvous store at " + where
                              : "lost rank 0 (it hosts the rendezvous store at " + where +
                                    " and no longer answers)";
    }
  }

  DistributedEnv env_;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<C10dBackend> pg_;
  std::string backend_;
  std::chrono::milliseconds timeout_;
};

}  // namespace

DistributedEnv read_distributed_env(const std::function<const char*(const char*)>& get) {
  DistributedEnv env;
  const char* rank = get("RANK");
  const char* world = get("WORLD_SIZE");
  if (rank == nullptr && world == nullptr) return env;
  if (world == nullptr) {
    throw UsageError(
        "RANK is set but WORLD_SIZE is not: set both (torchrun does), or "
        "neither for a single process");
  }
  env.world_size = env_int("WORLD_SIZE", world, 1, 1 << 20);
  if (rank == nullptr) {
    if (env.world_size == 1) return env;
    throw UsageError("WORLD_SIZE=" + std::to_string(env.world_size) +
                     " but RANK is not set: each process needs its RANK in [0, " +
                     std::to_string(env.world_size) + ")");
  }
  env.rank = env_int("RANK", rank, 0, 1 << 20);
  if (env.rank >= env.world_size) {
    throw UsageError("RANK=" + std::to_string(env.rank) + " is not below WORLD_SIZE=" +
                     std::to_string(env.world_size) + ": ranks are 0 .. WORLD_SIZE - 1");
  }
  const char* local = get("LOCAL_RANK");
  env.local_rank = local != nullptr ? env_int("LOCAL_RANK", local, 0, 1 << 20) : 0;
  if (!env.distributed()) return env;
  const char* addr = get("MASTER_ADDR");
  const char* port = get("MASTER_PORT");
  if (addr == nullptr || std::string(addr).empty()) {
    throw UsageError("WORLD_SIZE=" + std::to_string(env.world_size) +
                     " but MASTER_ADDR is not set: export the address of rank 0's host "
                     "(torchrun sets it from --master_addr / --rdzv_endpoint)");
  }
  if (port == nullptr) {
    throw UsageError("WORLD_SIZE=" + std::to_string(env.world_size) +
                     " but MASTER_PORT is not set: export a free TCP port on rank 0's "
                     "host (torchrun sets it from --master_port)");
  }
  env.master_addr = addr;
  env.master_port = env_int("MASTER_PORT", port, 1, 65535);
  const char* agent = get("TORCHELASTIC_USE_AGENT_STORE");
  env.agent_store = agent != nullptr && std::string(agent) == "True";
  const char* restarts = get("TORCHELASTIC_RESTART_COUNT");
  env.restart_count =
      restarts != nullptr ? env_int("TORCHELASTIC_RESTART_COUNT", restarts, 0, 1 << 20) : 0;
  return env;
}

template <>
const NameTable<DistBackend>& name_table<DistBackend>() {
  static const NameTable<DistBackend> t{
      "--dist-backend",
      {{DistBackend::Auto, "auto"}, {DistBackend::Gloo, "gloo"}, {DistBackend::Nccl, "nccl"}}};
  return t;
}

std::shared_ptr<ProcessGroup> init_process_group(const DistributedEnv& env,
                                                 const DistributedOptions& options) {
  if (!env.distributed()) return nullptr;
  DistBackend kind = options.backend;
  if (kind == DistBackend::Auto) {
#ifdef USE_C10D_NCCL
    kind = options.device.is_cuda() ? DistBackend::Nccl : DistBackend::Gloo;
#else
    kind = DistBackend::Gloo;
#endif
  }
#ifndef USE_C10D_NCCL
  if (kind == DistBackend::Nccl) {
    throw UsageError("dist_backend nccl: this LibTorch was built without NCCL; use gloo (or auto)",
                     {"dist_backend"});
  }
#endif
  if (kind == DistBackend::Nccl && !options.device.is_cuda()) {
    throw UsageError("dist_backend nccl needs device cuda; use gloo on CPU",
                     {"dist_backend", "device"});
  }
  const std::string& backend = to_string(kind);
  const std::string where = env.master_addr + ":" + std::to_string(env.master_port);
  const std::string who =
      "rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size);
  const bool server = env.rank == 0 && !env.agent_store;

  c10::intrusive_ptr<c10d::Store> store;
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(env.master_port);
    so.isServer = server;
    // As torch.distributed's env:// does: every rank checks in, the host waits for all of them.
    so.numWorkers = static_cast<size_t>(env.world_size);
    so.waitWorkers = true;
    so.timeout = options.timeout;
    so.multiTenant = true;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
    store = c10::make_intrusive<c10d::PrefixStore>(
        "vicreg/" + std::to_string(env.restart_count) + "/", tcp);
  } catch (const std::exception& e) {
    throw DistributedError(
        who + ": " +
            (server
                 ? "cannot host the rendezvous store on " + where + " or not every rank joined it"
                 : "cannot reach the rendezvous store at " + where) +
            " within " + std::to_string(options.timeout.count() / 1000) +
            " s (dist_timeout): check that every rank was started, MASTER_ADDR and MASTER_PORT are "
            "the same for all and the port is free on rank 0's host and open between hosts [" +
            message_of(e) + "]",
        {"dist_timeout"});
  }

  c10::intrusive_ptr<C10dBackend> pg;
  try {
    if (kind == DistBackend::Gloo) {
      auto o = c10d::ProcessGroupGloo::Options::create(options.timeout);
      // GLOO_SOCKET_IFNAME names the interface, as for PyTorch; loopback for a single-host run;
      // otherwise the interface of this host's name.
      const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
      const bool local = env.master_addr == "127.0.0.1" || env.master_addr == "localhost";
      o->devices.push_back(ifname != nullptr && *ifname != '\0'
                               ? c10d::ProcessGroupGloo::createDeviceForInterface(ifname)
                           : local ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                   : c10d::ProcessGroupGloo::createDefaultDevice());
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world_size, o);
    } else {
#ifdef USE_C10D_NCCL
      // Without asynchronous error handling a dead peer leaves NCCL kernels waiting forever.
      setenv("NCCL_ASYNC_ERROR_HANDLING", "1", /*overwrite=*/0);
      auto o = c10d::ProcessGroupNCCL::Options::create();
      o->timeout = options.timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, env.rank, env.world_size, o);
#endif
    }
  } catch (const std::exception& e) {
    throw DistributedError(who + ": the " + backend + " process group did not form within " +
                               std::to_string(options.timeout.count() / 1000) +
                               " s (dist_timeout): a rank did not join or the hosts cannot reach "
                               "each other [" +
                               message_of(e) + "]",
                           {"dist_timeout"});
  }
  auto group = std::make_shared<C10dGroup>(env, store, pg, backend, options.timeout);
  group->barrier();
  return group;
}

// ---------------------------------------------------------------------------------------------
// Simulated group

SimulatedGroup::SimulatedGroup(int rank, int world) : rank_(rank), world_(world) {
  TORCH_CHECK(world >= 1 && rank >= 0 && rank < world, "SimulatedGroup: rank ", rank, " of world ",
              world, " is impossible");
}

void SimulatedGroup::all_reduce_sum(std::vector<Tensor>& tensors) {
  for (auto& t : tensors) t.mul_(world_);
}

Tensor SimulatedGroup::all_gather(const Tensor& local) {
  return torch::cat(std::vector<Tensor>(static_cast<size_t>(world_), local), 0);
}

// ---------------------------------------------------------------------------------------------
// Modules and gradients

void broadcast_module(torch::nn::Module& module, ProcessGroup& group) {
  torch::NoGradGuard no_grad;
  std::vector<Tensor> tensors;
  for (const auto& p : module.parameters()) tensors.push_back(p.data());
  for (const auto& b : module.buffers()) tensors.push_back(b);
  group.broadcast(tensors, 0);
}

int64_t all_reduce_gradients(const std::vector<Tensor>& parameters, ProcessGroup& group,
                             int64_t bucket_bytes) {
  torch::NoGradGuard no_grad;
  // Buckets of gradients with the same dtype and device, in reverse order (the order backward
  // produces them), each flattened into one buffer.
  std::vector<std::vector<Tensor>> buckets;
  std::map<std::pair<int, std::string>, size_t> open;  // (dtype, device) -> bucket being filled
  std::vector<int64_t> fill;
  for (auto it = parameters.rbegin(); it != parameters.rend(); ++it) {
    const Tensor& g = it->grad();
    if (!g.defined()) continue;
    const auto key = std::make_pair(static_cast<int>(g.scalar_type()), g.device().str());
    const int64_t bytes = g.numel() * static_cast<int64_t>(g.element_size());
    auto found = open.find(key);
    if (found == open.end() || fill[found->second] + bytes > bucket_bytes) {
      buckets.emplace_back();
      fill.push_back(0);
      found = open.insert_or_assign(key, buckets.size() - 1).first;
    }
    buckets[found->second].push_back(g);
    fill[found->second] += bytes;
  }
  if (buckets.empty()) return 0;
  std::vector<Tensor> flat;
  flat.reserve(buckets.size());
  for (const auto& b : buckets) {
    std::vector<Tensor> views;
    for (const auto& g : b) views.push_back(g.reshape(-1));
    flat.push_back(torch::cat(views));
  }
  group.all_reduce_sum(flat);
  const double inv_world = 1.0 / group.world_size();
  for (size_t i = 0; i < buckets.size(); ++i) {
    flat[i].mul_(inv_world);
    int64_t offset = 0;
    for (auto& g : buckets[i]) {
      g.copy_(flat[i].narrow(0, offset, g.numel()).view_as(g));
      offset += g.numel();
    }
  }
  return static_cast<int64_t>(buckets.size());
}

// ---------------------------------------------------------------------------------------------
// SyncBatchNorm

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

/// Every dimension but the channels (1).
std::vector<int64_t> reduce_dims(const Tensor& x) {
  std::vector<int64_t> dims = {0};
  for (int64_t i = 2; i < x.dim(); ++i) dims.push_back(i);
  return dims;
}

/// [C] -> [1, C, 1, ...] to broadcast against x.
Tensor per_channel(const Tensor& v, const Tensor& x) {
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[1] = v.size(0);
  return v.view(shape);
}

/// The running statistics travel outside the tensor arguments: autograd's inputs must be defined.
struct RunningStats {
  Tensor mean, var;
};

class SyncBatchNormFunction : public torch::autograd::Function<SyncBatchNormFunction> {
 public:
  /// input: [N, C, ...]; weight, bias: [C] -> [N, C, ...]
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight,
                        const Tensor& bias, RunningStats running, double momentum, double eps,
                        const std::shared_ptr<ProcessGroup>& group) {
    Tensor& running_mean = running.mean;
    Tensor& running_var = running.var;
    const int64_t c = input.size(1);
    const auto acc = input.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
    const Tensor x = input.to(acc);
    const auto dims = reduce_dims(x);
    const double count = static_cast<double>(x.numel() / std::max<int64_t>(c, 1));
    // Local (count, mean, M2) per channel, combined over ranks with Chan's formula.
    const auto [var_local, mean_local] = torch::var_mean(x, dims, /*unbiased=*/false);
    const Tensor stats =
        torch::cat({torch::full({1}, count, x.options().dtype(torch::kDouble)),
                    mean_local.to(torch::kDouble), (var_local * count).to(torch::kDouble)});
    const Tensor all = group->all_gather(stats.view({1, -1}));  // [W, 2C + 1]
    const Tensor counts = all.select(1, 0).unsqueeze(1);        // [W, 1]
    const Tensor means = all.narrow(1, 1, c), m2s = all.narrow(1, 1 + c, c);
    const Tensor total = counts.sum();
    const Tensor mean = (counts * means).sum(0) / total;                // [C]
    const Tensor m2 = (m2s + counts * (means - mean).square()).sum(0);  // [C]
    const double n = total.item<double>();
    TORCH_CHECK(n > 1, "SyncBatchNorm: needs more than one value per channel over all ranks, got ",
                n, " (input ", input.sizes(), ")");
    const Tensor invstd = (m2 / n + eps).rsqrt().to(acc);
    const Tensor mean_f = mean.to(acc);
    if (running_mean.defined()) {
      torch::NoGradGuard no_grad;
      running_mean.mul_(1 - momentum).add_(mean.to(running_mean.scalar_type()), momentum);
      running_var.mul_(1 - momentum).add_((m2 / (n - 1)).to(running_var.scalar_type()), momentum);
    }
    const Tensor y = (x - per_channel(mean_f, x)) * per_channel(invstd * weight.to(acc), x) +
                     per_channel(bias.to(acc), x);
    ctx->save_for_backward({input, weight, mean_f, invstd});
    ctx->saved_data["n"] = n;
    // IValue cannot hold the group: its address travels instead. The caller keeps the group
    // alive until backward (the BatchNorm module holds it).
    ctx->saved_data["group"] = reinterpret_cast<int64_t>(group.get());
    return y.to(input.scalar_type());
  }

  /// grads: {dy [N, C, ...]} -> {dx, dweight [C], dbias [C], -...}
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& input = saved[0];
    const Tensor& weight = saved[1];
    const Tensor& mean = saved[2];
    const Tensor& invstd = saved[3];
    const double n = ctx->saved_data["n"].toDouble();
    const auto acc = mean.scalar_type();
    const Tensor x = input.to(acc);
    const Tensor dy = grads[0].to(acc);
    const auto dims = reduce_dims(x);
    const Tensor xhat = (x - per_channel(mean, x)) * per_channel(invstd, x);
    const Tensor sum_dy = dy.sum(dims);                // [C], this rank's rows
    const Tensor sum_dy_xhat = (dy * xhat).sum(dims);  // [C]
    std::vector<Tensor> global = {torch::cat({sum_dy, sum_dy_xhat}).to(torch::kDouble)};
    reinterpret_cast<ProcessGroup*>(ctx->saved_data["group"].toInt())->all_reduce_sum(global);
    const int64_t c = mean.size(0);
    const Tensor g_dy = global[0].narrow(0, 0, c).to(acc) / n;
    const Tensor g_dy_xhat = global[0].narrow(0, c, c).to(acc) / n;
    const Tensor scale = invstd * weight.to(acc);
    const Tensor dx =
        per_channel(scale, x) * (dy - per_channel(g_dy, x) - xhat * per_channel(g_dy_xhat, x));
    return {dx.to(input.scalar_type()),
            sum_dy_xhat.to(weight.scalar_type()),
            sum_dy.to(weight.scalar_type()),
            Tensor(),
            Tensor(),
            Tensor(),
            Tensor()};
  }
};

}  // namespace

Tensor sync_batch_norm(const Tensor& input, const Tensor& weight, const Tensor& bias,
                       Tensor running_mean, Tensor running_var, double momentum, double eps,
                       const std::shared_ptr<ProcessGroup>& group) {
  TORCH_CHECK(group != nullptr, "sync_batch_norm: needs a process group");
  TORCH_CHECK(input.dim() >= 2, "sync_batch_norm: input must be [N, C, ...], got ", input.sizes());
  TORCH_CHECK(running_mean.defined() == running_var.defined(),
              "sync_batch_norm: running_mean and running_var must be both set or both undefined");
  const auto options =
      input.options().dtype(input.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat);
  // Without affine parameters: weight 1, bias 0 (their gradients are not asked for).
  const Tensor w = weight.defined() ? weight : torch::ones({input.size(1)}, options);
  const Tensor b = bias.defined() ? bias : torch::zeros({input.size(1)}, options);
  return SyncBatchNormFunction::apply(input, w, b, RunningStats{running_mean, running_var},
                                      momentum, eps, group);
}

}  // namespace vicreg
