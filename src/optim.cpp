#include "vicreg/optim.h"

#include "vicreg/error.h"

#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>
#include <torch/serialize/archive.h>

#include <cmath>

namespace vicreg {

LARSOptions::LARSOptions(double lr) : lr_(lr) {}

void LARSOptions::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(lr);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(momentum);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(weight_decay);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(eta);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(exclude_1d);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(clip_lr);
}

void LARSOptions::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, lr);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, momentum);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, weight_decay);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, eta);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(bool, exclude_1d);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(bool, clip_lr);
}

double LARSOptions::get_lr() const { return lr(); }
void LARSOptions::set_lr(const double lr) { this->lr(lr); }

void LARSParamState::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(momentum_buffer);
}

void LARSParamState::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(torch::Tensor, momentum_buffer);
}

namespace {

void check_lars_options(const LARSOptions& o) {
  TORCH_CHECK(o.lr() >= 0, "LARS: lr must be >= 0, got ", o.lr());
  TORCH_CHECK(o.momentum() >= 0 && o.momentum() < 1, "LARS: momentum must be in [0, 1), got ",
              o.momentum());
  TORCH_CHECK(o.weight_decay() >= 0, "LARS: weight_decay must be >= 0, got ", o.weight_decay());
  TORCH_CHECK(o.eta() > 0, "LARS: eta (trust coefficient) must be > 0, got ", o.eta());
}

}  // namespace

LARS::LARS(std::vector<torch::optim::OptimizerParamGroup> param_groups, LARSOptions defaults)
    : Optimizer(std::move(param_groups), std::make_unique<LARSOptions>(defaults)) {
  check_lars_options(defaults);
}

LARS::LARS(std::vector<torch::Tensor> params, LARSOptions defaults)
    : LARS({torch::optim::OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

torch::Tensor LARS::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  for (auto& group : param_groups_) {
    const auto& o = static_cast<const LARSOptions&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      torch::Tensor update = p.grad();
      const bool adapt = !(o.exclude_1d() && p.dim() == 1);
      if (adapt) {
        if (o.weight_decay() != 0) update = update.add(p, o.weight_decay());
        // q = eta ||p|| / ||u||, or 1 where either norm is 0; kept on the device (no sync).
        const torch::Tensor p_norm = p.norm(), u_norm = update.norm();
        const torch::Tensor one = torch::ones_like(p_norm);
        torch::Tensor q =
            torch::where(p_norm > 0, torch::where(u_norm > 0, o.eta() * p_norm / u_norm, one), one);
        if (o.clip_lr() && o.lr() > 0) q = torch::clamp_max(q / o.lr(), 1.0);
        update = update * q;
      }
      auto& slot = state_[c10::guts::to_string(p.unsafeGetTensorImpl())];
      if (!slot) {
        auto st = std::make_unique<LARSParamState>();
        st->momentum_buffer(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        slot = std::move(st);
      }
      torch::Tensor& mu = static_cast<LARSParamState&>(*slot).momentum_buffer();
      mu.mul_(o.momentum()).add_(update);
      p.add_(mu, -o.lr());
    }
  }
  return loss;
}

void LARS::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<LARSParamState, LARSOptions>(archive, *this);
}

void LARS::load(torch::serialize::InputArchive& archive) {
  torch::optim::serialize<LARSParamState, LARSOptions>(archive, *this);
  // LibTorch restores the per-parameter state only; bring back each group's options too, so
  // that a resumed run has the saved lr, momentum, eta, ... whatever it was constructed with.
  torch::serialize::InputArchive groups_archive;
  archive.read("param_groups", groups_archive);
  std::vector<std::pair<std::vector<std::string>, std::unique_ptr<torch::optim::OptimizerOptions>>>
      saved;
  torch::optim::detail::serialize<LARSOptions>(groups_archive, saved);
  for (size_t i = 0; i < saved.size(); ++i) {
    param_groups_[i].set_options(std::move(saved[i].second));
  }
}

double scaled_lr(double base_lr, int64_t batch_size) {
  TORCH_CHECK(base_lr >= 0, "base lr must be >= 0, got ", base_lr);
  TORCH_CHECK(batch_size > 0, "batch size must be > 0, got ", batch_size);
  return base_lr * static_cast<double>(batch_size) / 256.0;
}

void WarmupCosineSchedule::validate() const {
  TORCH_CHECK(peak_lr >= 0 && std::isfinite(peak_lr), "schedule: peak lr must be >= 0, got ",
              peak_lr);
  TORCH_CHECK(total_steps > 0, "schedule: total steps must be > 0, got ", total_steps);
  TORCH_CHECK(warmup_steps >= 0 && warmup_steps <= total_steps,
              "schedule: warm-up steps must be in [0, total steps = ", total_steps, "], got ",
              warmup_steps, " (fewer warm-up epochs than epochs)");
  TORCH_CHECK(end_ratio >= 0 && end_ratio <= 1, "schedule: end ratio must be in [0, 1], got ",
              end_ratio);
}

double WarmupCosineSchedule::lr_at(int64_t step) const {
  if (step < warmup_steps) {
    return peak_lr * static_cast<double>(step) / static_cast<double>(warmup_steps);
  }
  const int64_t decay_steps = total_steps - warmup_steps;
  const double progress = decay_steps > 0 ? std::min(1.0, static_cast<double>(step - warmup_steps) /
                                                              static_cast<double>(decay_steps))
                                          : 1.0;
  const double q = 0.5 * (1.0 + std::cos(M_PI * progress));
  const double end_lr = peak_lr * end_ratio;
  return peak_lr * q + end_lr * (1.0 - q);
}

template <>
const NameTable<OptimizerKind>& name_table<OptimizerKind>() {
  static const NameTable<OptimizerKind> t{"--optimizer",
                                          {{OptimizerKind::Lars, "lars"},
                                           {OptimizerKind::AdamW, "adamw"},
                                           {OptimizerKind::Sgd, "sgd"}}};
  return t;
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::vector<torch::Tensor>& params,
                                                        const OptimizerConfig& c) {
  TORCH_CHECK(c.lr >= 0, "optimizer: lr must be >= 0, got ", c.lr);
  TORCH_CHECK(c.weight_decay >= 0, "optimizer: weight decay must be >= 0, got ", c.weight_decay);
  if (c.kind == OptimizerKind::Lars) {
    return std::make_unique<LARS>(params, LARSOptions(c.lr)
                                              .momentum(c.momentum)
                                              .weight_decay(c.weight_decay)
                                              .eta(c.eta)
                                              .clip_lr(c.clip_lr));
  }
  std::vector<torch::Tensor> decayed, plain;
  for (const auto& p : params) (p.dim() == 1 ? plain : decayed).push_back(p);
  // Two groups, weight decay on the first only; empty groups are left out.
  auto grouped = [&](auto options) {
    using Options = decltype(options);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    if (!decayed.empty()) {
      groups.emplace_back(decayed,
                          std::make_unique<Options>(Options(options).weight_decay(c.weight_decay)));
    }
    if (!plain.empty()) {
      groups.emplace_back(plain, std::make_unique<Options>(Options(options).weight_decay(0)));
    }
    return groups;
  };
  if (c.kind == OptimizerKind::AdamW) {
    const auto opts = torch::optim::AdamWOptions(c.lr).betas({c.beta1, c.beta2});
    return std::make_unique<torch::optim::AdamW>(grouped(opts), opts);
  }
  TORCH_CHECK(c.momentum >= 0, "optimizer: momentum must be >= 0, got ", c.momentum);
  const auto opts = torch::optim::SGDOptions(c.lr).momentum(c.momentum);
  return std::make_unique<torch::optim::SGD>(grouped(opts), opts);
}

}  // namespace vicreg
