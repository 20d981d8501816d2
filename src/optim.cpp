#include "vicreg/optim.h"

#include "vicreg/error.h"

#include <ATen/Parallel.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>
#include <torch/serialize/archive.h>

#include <cmath>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define VICREG_FUSED_ADAMW 1
#endif

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

namespace {

/// The loss of an optimizer step's closure, evaluated with gradients on (as LibTorch's
/// optimizers do); undefined without one.
torch::Tensor closure_loss(const torch::optim::Optimizer::LossClosure& closure) {
  if (closure == nullptr) return {};
  at::AutoGradMode enable_grad(true);
  return closure();
}

}  // namespace

LARS::LARS(std::vector<torch::optim::OptimizerParamGroup> param_groups, LARSOptions defaults,
           const std::vector<torch::Tensor>& excluded)
    : Optimizer(std::move(param_groups), std::make_unique<LARSOptions>(defaults)) {
  check_lars_options(defaults);
  for (const auto& p : excluded) excluded_.insert(p.unsafeGetTensorImpl());
}

LARS::LARS(std::vector<torch::Tensor> params, LARSOptions defaults,
           const std::vector<torch::Tensor>& excluded)
    : LARS({torch::optim::OptimizerParamGroup(std::move(params))}, std::move(defaults), excluded) {}

torch::Tensor LARS::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  const torch::Tensor loss = closure_loss(closure);
  for (auto& group : param_groups_) {
    const auto& o = static_cast<const LARSOptions&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      torch::Tensor update = p.grad();
      const bool adapt =
          !(o.exclude_1d() && (p.dim() == 1 || excluded_.count(p.unsafeGetTensorImpl()) > 0));
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
      auto& slot = state_[optimizer_state_key(p)];
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

// ---------------------------------------------------------------------------------------------
// AdamW

namespace {

/// The scalars of one AdamW update, rounded to float as ATen rounds the Scalar argument of a
/// float tensor's operation.
struct AdamWScalars {
  float keep = 1;  ///< 1 - lr * weight_decay (1 without weight decay: p * 1 is p, bit for bit)
  float beta1 = 0, one_minus_beta1 = 0, beta2 = 0, one_minus_beta2 = 0;
  float bias_correction2_sqrt = 1, eps = 0, neg_step_size = 0;
};

#ifdef VICREG_FUSED_ADAMW
/// One pass of LibTorch's AdamW update over n floats, eight at a time (the last group masked),
/// in ATen's operations and order:
///   p.mul_(keep)                                     p * keep
///   exp_avg.mul_(beta1).add_(grad, 1 - beta1)        fma(g, 1 - beta1, m * beta1)
///   exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2) fma((1 - beta2) * g, g, v * beta2)
///   denom = (exp_avg_sq.sqrt() / sqrt(bc2)).add_(eps) sqrt(v) / sqrt(bc2) + eps
///   p.addcdiv_(exp_avg, denom, -step_size)           p + (-step_size * m) / denom
/// ATen's vectorised add with alpha is a fused multiply-add by construction, its addcmul one as
/// GCC compiles it (Debian's LibTorch: the multiply and add contracted); the fused forms are
/// written out, and the file is compiled with -ffp-contract=off (CMakeLists.txt), so that no
/// compiler's contraction changes the result (clang does not contract across intrinsics, GCC
/// does).
__attribute__((target("avx2,fma"))) void adamw_avx2(float* p, const float* g, float* m, float* v,
                                                    int64_t n, const AdamWScalars& s) {
  const __m256 keep = _mm256_set1_ps(s.keep);
  const __m256 beta1 = _mm256_set1_ps(s.beta1), one_minus_beta1 = _mm256_set1_ps(s.one_minus_beta1);
  const __m256 beta2 = _mm256_set1_ps(s.beta2), one_minus_beta2 = _mm256_set1_ps(s.one_minus_beta2);
  const __m256 bc2 = _mm256_set1_ps(s.bias_correction2_sqrt), eps = _mm256_set1_ps(s.eps);
  const __m256 neg_step = _mm256_set1_ps(s.neg_step_size);
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t i = 0; i < n; i += 8) {
    const bool full = n - i >= 8;
    const __m256i mask =
        _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(full ? 8 : n - i)), lanes);
    __m256 pv = full ? _mm256_loadu_ps(p + i) : _mm256_maskload_ps(p + i, mask);
    const __m256 gv = full ? _mm256_loadu_ps(g + i) : _mm256_maskload_ps(g + i, mask);
    __m256 mv = full ? _mm256_loadu_ps(m + i) : _mm256_maskload_ps(m + i, mask);
    __m256 vv = full ? _mm256_loadu_ps(v + i) : _mm256_maskload_ps(v + i, mask);
    pv = _mm256_mul_ps(pv, keep);
    mv = _mm256_fmadd_ps(gv, one_minus_beta1, _mm256_mul_ps(mv, beta1));
    vv = _mm256_fmadd_ps(_mm256_mul_ps(one_minus_beta2, gv), gv, _mm256_mul_ps(vv, beta2));
    const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vv), bc2), eps);
    pv = _mm256_add_ps(pv, _mm256_div_ps(_mm256_mul_ps(neg_step, mv), denom));
    if (full) {
      _mm256_storeu_ps(p + i, pv);
      _mm256_storeu_ps(m + i, mv);
      _mm256_storeu_ps(v + i, vv);
    } else {
      _mm256_maskstore_ps(p + i, mask, pv);
      _mm256_maskstore_ps(m + i, mask, mv);
      _mm256_maskstore_ps(v + i, mask, vv);
    }
  }
}

bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

bool same_layout(const torch::Tensor& a, const torch::Tensor& b) {
  return a.defined() && a.device() == b.device() && a.scalar_type() == b.scalar_type() &&
         a.layout() == torch::kStrided && a.sizes() == b.sizes() && a.strides() == b.strides();
}

}  // namespace

bool adamw_fuses(const torch::Tensor& p, const torch::Tensor& grad) {
#ifdef VICREG_FUSED_ADAMW
  return cpu_has_avx2_fma() && p.device().is_cpu() && p.layout() == torch::kStrided &&
         p.scalar_type() == torch::kFloat && p.is_non_overlapping_and_dense() &&
         same_layout(grad, p);
#else
  (void)p;
  (void)grad;
  return false;
#endif
}

torch::Tensor AdamW::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  const torch::Tensor loss = closure_loss(closure);
  for (auto& group : param_groups_) {
    const auto& o = static_cast<const torch::optim::AdamWOptions&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const torch::Tensor& grad = p.grad();
      TORCH_CHECK(!grad.is_sparse(), "AdamW does not support sparse gradients");
      auto& slot = state_[optimizer_state_key(p)];
      if (!slot) {
        auto st = std::make_unique<torch::optim::AdamWParamState>();
        st->step(0);
        st->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        st->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        if (o.amsgrad()) st->max_exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        slot = std::move(st);
      }
      auto& st = static_cast<torch::optim::AdamWParamState&>(*slot);
      st.step(st.step() + 1);
      torch::Tensor& exp_avg = st.exp_avg();
      torch::Tensor& exp_avg_sq = st.exp_avg_sq();
      // As LibTorch computes them, in double.
      const double beta1 = std::get<0>(o.betas()), beta2 = std::get<1>(o.betas());
      const double bias_correction1 = 1 - std::pow(beta1, static_cast<double>(st.step()));
      const double bias_correction2 = 1 - std::pow(beta2, static_cast<double>(st.step()));
      const double step_size = o.lr() / bias_correction1;
#ifdef VICREG_FUSED_ADAMW
      if (!o.amsgrad() && adamw_fuses(p, grad) && same_layout(exp_avg, p) &&
          same_layout(exp_avg_sq, p)) {
        AdamWScalars s;
        s.keep = static_cast<float>(1 - o.lr() * o.weight_decay());
        s.beta1 = static_cast<float>(beta1);
        s.one_minus_beta1 = static_cast<float>(1 - beta1);
        s.beta2 = static_cast<float>(beta2);
        s.one_minus_beta2 = static_cast<float>(1 - beta2);
        s.bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
        s.eps = static_cast<float>(o.eps());
        s.neg_step_size = static_cast<float>(-step_size);
        float* pp = p.data_ptr<float>();
        const float* gp = grad.data_ptr<float>();
        float* mp = exp_avg.data_ptr<float>();
        float* vp = exp_avg_sq.data_ptr<float>();
        at::parallel_for(0, p.numel(), at::internal::GRAIN_SIZE, [&](int64_t b, int64_t e) {
          adamw_avx2(pp + b, gp + b, mp + b, vp + b, e - b, s);
        });
        // Written through raw pointers: count the writes as ATen's in-place operations do, so
        // that autograd still notices a parameter changed under a graph that saved it.
        for (torch::Tensor* t : {&p, &exp_avg, &exp_avg_sq})
          t->unsafeGetTensorImpl()->bump_version();
        continue;
      }
#endif
      // LibTorch's own operations (torch/csrc/api/src/optim/adamw.cpp).
      if (o.weight_decay() != 0) p.mul_(1 - o.lr() * o.weight_decay());
      exp_avg.mul_(beta1).add_(grad, 1 - beta1);
      exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
      torch::Tensor denom;
      if (o.amsgrad()) {
        torch::Tensor& max_exp_avg_sq = st.max_exp_avg_sq();
        torch::max_out(max_exp_avg_sq, exp_avg_sq, max_exp_avg_sq);
        denom = (max_exp_avg_sq.sqrt() / std::sqrt(bias_correction2)).add_(o.eps());
      } else {
        denom = (exp_avg_sq.sqrt() / std::sqrt(bias_correction2)).add_(o.eps());
      }
      p.addcdiv_(exp_avg, denom, -step_size);
    }
  }
  return loss;
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

std::unique_ptr<torch::optim::Optimizer> make_optimizer(
    const std::vector<torch::Tensor>& params, const OptimizerConfig& c,
    const std::vector<torch::Tensor>& no_decay) {
  TORCH_CHECK(c.lr >= 0, "optimizer: lr must be >= 0, got ", c.lr);
  TORCH_CHECK(c.weight_decay >= 0, "optimizer: weight decay must be >= 0, got ", c.weight_decay);
  if (c.kind == OptimizerKind::Lars) {
    return std::make_unique<LARS>(params,
                                  LARSOptions(c.lr)
                                      .momentum(c.momentum)
                                      .weight_decay(c.weight_decay)
                                      .eta(c.eta)
                                      .clip_lr(c.clip_lr),
                                  no_decay);
  }
  std::set<const c10::TensorImpl*> excluded;
  for (const auto& p : no_decay) excluded.insert(p.unsafeGetTensorImpl());
  std::vector<torch::Tensor> decayed, plain;
  for (const auto& p : params) {
    (p.dim() == 1 || excluded.count(p.unsafeGetTensorImpl()) ? plain : decayed).push_back(p);
  }
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
    return std::make_unique<AdamW>(grouped(opts), opts);
  }
  TORCH_CHECK(c.momentum >= 0, "optimizer: momentum must be >= 0, got ", c.momentum);
  const auto opts = torch::optim::SGDOptions(c.lr).momentum(c.momentum);
  return std::make_unique<torch::optim::SGD>(grouped(opts), opts);
}

}  // namespace vicreg
