// The fused VICReg loss: forward and closed-form backward side by side, then the reference
// formulation, then the checks and the module. Derivations: docs/loss.md.
#include "vicreg/loss.h"

#include "vicreg/distributed.h"
#include "vicreg/error.h"

#include <torch/csrc/autograd/custom_function.h>
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/loss.h>

#include <algorithm>
#include <cmath>
#include <ostream>
#include <sstream>

namespace vicreg {

template <>
const NameTable<LossPreset>& name_table<LossPreset>() {
  static const NameTable<LossPreset> t{
      "loss preset", {{LossPreset::Official, "official"}, {LossPreset::Paper, "paper"}}};
  return t;
}

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::string shape_of(const Tensor& t) {
  std::ostringstream s;
  s << t.dim() << "-D tensor of shape " << t.sizes();
  return s.str();
}

/// Weight of the variance term in the total: the reference code halves it.
double variance_weight(LossPreset preset) { return preset == LossPreset::Official ? 0.5 : 1.0; }

/// Accumulation dtype: fp64 for fp64 inputs, fp32 for everything else (never half precision).
torch::ScalarType accumulation_dtype(torch::ScalarType t) {
  return t == torch::kDouble ? torch::kDouble : torch::kFloat;
}

/// sum_i ||x[i, :]||^2 as a 0-dim fp64 tensor: rows reduced in x's dtype, rows summed in fp64.
/// x: [r, c]
Tensor sum_of_squares(const Tensor& x) {
  return torch::linalg_vector_norm(x, 2, torch::IntArrayRef{1}).to(torch::kDouble).square().sum();
}

/// Throws a message naming which input holds NaN/Inf, and how many.
void check_finite_inputs(const Tensor& z_a, const Tensor& z_b) {
  for (const auto& [name, z] : {std::pair<const char*, const Tensor&>{"z_a", z_a}, {"z_b", z_b}}) {
    const int64_t bad = (~torch::isfinite(z)).sum().item<int64_t>();
    TORCH_CHECK(bad == 0, "vicreg_loss: ", name, " contains ", bad, " NaN or Inf value(s) out of ",
                z.numel(),
                "; the embeddings must be finite (a diverged model or corrupt input upstream)");
  }
}

/// Statistics of one view that the forward pass computes and the backward pass reuses.
struct ViewStats {
  Tensor mean;    // [1, d]   column means
  Tensor zc;      // [n, d]   centred embeddings (forward only; not kept for the backward)
  Tensor sigma2;  // [d]      ||zc[:, j]||^2 = (n - 1) Var_j
  Tensor stdev;   // [d]      sqrt(Var_j + eps)
  Tensor m;       // Gram form (n < d): G = zc zc^T [n, n]; else zc^T zc with zeroed diagonal [d, d]
  Tensor gram_rhs;  // sharded Gram form: the gathered Zc [N, d] that this rank's G_r [n, N]
                    // multiplies in the backward pass (undefined: the view's own zc)
  Tensor v;         // 0-dim fp64  v(Z)
  Tensor c;         // 0-dim fp64  c(Z)
};

/// Forward statistics of one view. z: [n, d] in the accumulation dtype.
ViewStats view_forward(const Tensor& z, double gamma, double eps) {
  const int64_t n = z.size(0), d = z.size(1);
  const double nm1 = static_cast<double>(n - 1);
  ViewStats s;
  s.mean = z.mean(0, /*keepdim=*/true);
  s.zc = z - s.mean;
  s.sigma2 = s.zc.square().sum(0);  // (a column norm is ~30x slower on CPU)
  s.stdev = (s.sigma2 / nm1 + eps).sqrt();
  s.v = torch::relu(gamma - s.stdev).to(torch::kDouble).sum() / static_cast<double>(d);
  if (n < d) {
    // sum_{i != j} (Zc^T Zc)_ij^2 = ||Zc Zc^T||_F^2 - sum_j sigma_j^4: no d x d matrix.
    s.m = torch::mm(s.zc, s.zc.t());
    const Tensor diag4 = s.sigma2.to(torch::kDouble).square().sum();
    s.c = (sum_of_squares(s.m) - diag4) / (nm1 * nm1 * static_cast<double>(d));
  } else {
    // d <= n: the d x d matrix is the small one. Zeroing its diagonal makes the off-diagonal sum
    // exact (no cancellation) and leaves the matrix the backward pass needs.
    s.m = torch::mm(s.zc.t(), s.zc);
    s.m.diagonal().zero_();
    s.c = sum_of_squares(s.m) / (nm1 * nm1 * static_cast<double>(d));
  }
  s.zc = Tensor();  // the backward pass rebuilds it: one [n, d] buffer alive at a time
  return s;
}

/// Gradient of  inv_coef * invariance + var_coef * v(Z) + cov_coef * c(Z)  w.r.t. Z, for one
/// view. z, other: [n, d] this view and the other, in the accumulation dtype. inv_scale: 0-dim,
/// the invariance gradient's factor (d/dZ = inv_scale (Z - Z')). Coefficients are 0-dim tensors,
/// so there is no host synchronisation on accelerators. Returns [n, d].
///
/// variance:   dv/dZ_ij = -(1/d) [gamma > std_j] zc_ij / ((n - 1) std_j)
/// covariance: dc/dZ    = 4 / ((n - 1)^2 d) (G zc - zc diag(sigma^2))      (Gram form)
///                      = 4 / ((n - 1)^2 d) zc (Zc^T Zc - diag(sigma^2))   (covariance form)
/// Both already have zero column sums, so the centring needs no projection. Memory: the result
/// and one scratch [n, d] buffer (zc, then Z - Z').
/// `rows`: the batch the statistics are of (z's rows, or the global batch of a sharded loss, whose
/// Gram form multiplies this rank's G_r by s.gram_rhs).
Tensor view_backward(const ViewStats& s, const Tensor& z, const Tensor& other,
                     const Tensor& inv_scale, const Tensor& var_coef, const Tensor& cov_coef,
                     double gamma, int64_t rows) {
  const int64_t d = z.size(1);
  const double nm1 = static_cast<double>(rows - 1);
  const Tensor active = (s.stdev < gamma).to(z.scalar_type());
  const Tensor col = -var_coef * active / (s.stdev * (static_cast<double>(d) * nm1));  // [d]
  const Tensor k = cov_coef * (4.0 / (nm1 * nm1 * static_cast<double>(d)));            // 0-dim
  Tensor scratch = z - s.mean;                                                         // zc
  Tensor grad;
  if (rows < d) {
    // k G zc + zc diag(col - k sigma^2)
    grad = torch::mm(s.m, s.gram_rhs.defined() ? s.gram_rhs : scratch)
               .mul_(k)
               .addcmul_(scratch, col - k * s.sigma2);
  } else {
    // k zc (Zc^T Zc - diag(sigma^2)) + zc diag(col); s.m has its diagonal zeroed already
    grad = torch::mm(scratch, s.m).mul_(k).addcmul_(scratch, col);
  }
  torch::sub_out(scratch, z, other);  // Z - Z', exact, in the buffer zc no longer needs
  return grad.addcmul_(scratch, inv_scale);
}

/// What both loss functions keep for the backward pass: the inputs (autograd holds them anyway),
/// each view's d-vectors and square matrix (and, sharded, the gathered Zc), the coefficients.
/// rows: the batch the statistics are of; world: the factor on the gradient (distributed.h).
void save_for_backward(AutogradContext* ctx, const Tensor& z_a, const Tensor& z_b,
                       const ViewStats& sa, const ViewStats& sb, int64_t rows, int64_t world,
                       double inv_norm, const VICRegLossOptions& o) {
  ctx->save_for_backward({z_a, z_b});
  for (const auto& [k, st] : {std::pair<std::string, const ViewStats&>{"a", sa}, {"b", sb}}) {
    ctx->saved_data["mean_" + k] = st.mean;
    ctx->saved_data["sigma2_" + k] = st.sigma2;
    ctx->saved_data["std_" + k] = st.stdev;
    ctx->saved_data["m_" + k] = st.m;
    if (st.gram_rhs.defined()) ctx->saved_data["gram_rhs_" + k] = st.gram_rhs;
  }
  ctx->saved_data["rows"] = rows;
  ctx->saved_data["world"] = world;
  ctx->saved_data["inv_norm"] = inv_norm;
  ctx->saved_data["sim_coeff"] = o.sim_coeff();
  ctx->saved_data["std_coeff"] = variance_weight(o.preset()) * o.std_coeff();
  ctx->saved_data["cov_coeff"] = o.cov_coeff();
  ctx->saved_data["gamma"] = o.gamma();
}

/// The gradients of both inputs from what save_for_backward() kept, times `world`.
/// grads: d(out)/d{total, invariance, variance, covariance}, 0-dim (and std_a's, unused)
/// -> {dz_a [n, d], dz_b}.
variable_list backward_rows(AutogradContext* ctx, const variable_list& grads) {
  auto& sd = ctx->saved_data;
  auto stats = [&](const std::string& v) {
    ViewStats st;
    st.mean = sd["mean_" + v].toTensor();
    st.sigma2 = sd["sigma2_" + v].toTensor();
    st.stdev = sd["std_" + v].toTensor();
    st.m = sd["m_" + v].toTensor();
    const auto rhs = sd.find("gram_rhs_" + v);
    if (rhs != sd.end()) st.gram_rhs = rhs->second.toTensor();
    return st;
  };
  const variable_list inputs = ctx->get_saved_variables();
  const auto in_dtype = inputs[0].scalar_type();
  const auto acc = accumulation_dtype(in_dtype);
  const Tensor a = inputs[0].to(acc), b = inputs[1].to(acc);
  const double gamma = sd["gamma"].toDouble();
  const int64_t rows = sd["rows"].toInt();
  const double world = static_cast<double>(sd["world"].toInt());

  // Effective coefficient of each term: through the total and directly (times W, sharded).
  const Tensor& g_total = grads[0];
  const Tensor inv_coef = (g_total * sd["sim_coeff"].toDouble() + grads[1]) * world;
  const Tensor var_coef = (g_total * sd["std_coeff"].toDouble() + grads[2]) * world;
  const Tensor cov_coef = (g_total * sd["cov_coeff"].toDouble() + grads[3]) * world;
  // d/dz_a sum_i ||z_a[i] - z_b[i]||^2 / inv_norm = 2 (z_a - z_b) / inv_norm.
  const Tensor inv_scale = inv_coef * (2.0 / sd["inv_norm"].toDouble());

  Tensor ga, gb;
  if (ctx->needs_input_grad(0)) {
    ga = view_backward(stats("a"), a, b, inv_scale, var_coef, cov_coef, gamma, rows).to(in_dtype);
  }
  if (ctx->needs_input_grad(1)) {
    gb = view_backward(stats("b"), b, a, inv_scale, var_coef, cov_coef, gamma, rows).to(in_dtype);
  }
  return {ga, gb};
}

class FusedVICRegLoss : public torch::autograd::Function<FusedVICRegLoss> {
 public:
  /// z_a: [n, d], z_b: [n, d] -> {total, invariance, variance, covariance}, 0-dim.
  static variable_list forward(AutogradContext* ctx, const Tensor& z_a, const Tensor& z_b,
                               const VICRegLossOptions& o) {
    const int64_t n = z_a.size(0), d = z_a.size(1);
    const auto acc = accumulation_dtype(z_a.scalar_type());
    const Tensor a = z_a.to(acc), b = z_b.to(acc);

    // Invariance: sum_i ||z_a[i] - z_b[i]||^2, normalised per preset.
    const double inv_norm = static_cast<double>(n) *
                            (o.preset() == LossPreset::Official ? static_cast<double>(d) : 1.0);
    const Tensor invariance = sum_of_squares(a - b) / inv_norm;

    ViewStats sa = view_forward(a, o.gamma(), o.eps());
    ViewStats sb = view_forward(b, o.gamma(), o.eps());
    const Tensor variance = sa.v + sb.v;
    const Tensor covariance = sa.c + sb.c;
    const Tensor total = o.sim_coeff() * invariance +
                         (variance_weight(o.preset()) * o.std_coeff()) * variance +
                         o.cov_coeff() * covariance;

    if (o.check_finite() && !torch::isfinite(total).item<bool>()) {
      // Any NaN/Inf in the inputs makes the invariance sum non-finite, so a finite total proves
      // the inputs finite at the cost of one scalar read. Otherwise find out why.
      check_finite_inputs(z_a, z_b);
      TORCH_CHECK(false, "vicreg_loss: the loss overflowed (invariance ", invariance.item<double>(),
                  ", variance ", variance.item<double>(), ", covariance ",
                  covariance.item<double>(), ") although the embeddings are finite; their ",
                  "magnitude is too large for ", acc,
                  " (normalise the embeddings or lower the lr)");
    }

    // No [n, d] buffer outlives the forward pass.
    save_for_backward(ctx, z_a, z_b, sa, sb, n, /*world=*/1, inv_norm, o);

    const Tensor std_a = (sa.sigma2 / static_cast<double>(n - 1)).sqrt();
    ctx->mark_non_differentiable({std_a});
    return {total.to(acc), invariance.to(acc), variance.to(acc), covariance.to(acc), std_a};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list g = backward_rows(ctx, grads);
    g.push_back(Tensor());  // options
    return g;
  }
};

/// The loss of the global batch from this rank's rows (vicreg_loss_sharded, loss.h).
class ShardedVICRegLoss : public torch::autograd::Function<ShardedVICRegLoss> {
 public:
  /// z_a: [n, d], z_b: [n, d] (this rank's rows) -> {total, invariance, variance, covariance,
  /// std_a}, the global batch's.
  static variable_list forward(AutogradContext* ctx, const Tensor& z_a, const Tensor& z_b,
                               const VICRegLossOptions& o, ProcessGroup* group) {
    const int64_t n = z_a.size(0), d = z_a.size(1);
    const int64_t world = group->world_size(), rank = group->rank();
    const int64_t big_n = n * world;
    const double nm1 = static_cast<double>(big_n - 1), dd = static_cast<double>(d);
    const auto acc = accumulation_dtype(z_a.scalar_type());
    const Tensor a = z_a.to(acc), b = z_b.to(acc);
    const Tensor inv_local = sum_of_squares(a - b).view({1});  // fp64

    Tensor mean[2], sigma2[2], stdev[2], m[2], zc_all[2], gsq;
    const Tensor* local[2] = {&a, &b};
    if (big_n < d) {
      // Gram form: gather both views' rows once; statistics of the columns from the gathered
      // rows (identical on every rank); this rank's block rows of G = Zc Zc^T.
      const Tensor gathered = group->all_gather(torch::stack({a, b}, 1));  // [N, 2, d]
      std::vector<Tensor> g_sq;
      for (int v = 0; v < 2; ++v) {
        const Tensor all = gathered.select(1, v);
        mean[v] = all.mean(0, /*keepdim=*/true);
        zc_all[v] = all - mean[v];  // [N, d]
        sigma2[v] = zc_all[v].square().sum(0);
        m[v] = torch::mm(zc_all[v].narrow(0, rank * n, n), zc_all[v].t());  // G_r [n, N]
        g_sq.push_back(sum_of_squares(m[v]).view({1}));
      }
      std::vector<Tensor> sums = {torch::cat({inv_local, g_sq[0], g_sq[1]})};
      group->all_reduce_sum(sums);
      gsq = sums[0];
    } else {
      // Covariance form: column sums, then this rank's Zc_r^T Zc_r, summed over ranks.
      std::vector<Tensor> col = {torch::cat({a.sum(0), b.sum(0)}).to(torch::kDouble)};
      group->all_reduce_sum(col);
      for (int v = 0; v < 2; ++v) {
        mean[v] = (col[0].narrow(0, v * d, d) / static_cast<double>(big_n)).to(acc).view({1, d});
        const Tensor zc = *local[v] - mean[v];
        m[v] = torch::mm(zc.t(), zc);  // [d, d]
      }
      std::vector<Tensor> sums = {torch::stack({m[0], m[1]}), inv_local};
      group->all_reduce_sum(sums);
      gsq = torch::cat({sums[1], torch::zeros({2}, sums[1].options())});
      for (int v = 0; v < 2; ++v) {
        m[v] = sums[0][v];
        sigma2[v] = m[v].diagonal().clone();
        m[v].diagonal().zero_();
      }
    }
    Tensor v_term[2], c_term[2];
    for (int v = 0; v < 2; ++v) {
      stdev[v] = (sigma2[v] / nm1 + o.eps()).sqrt();
      v_term[v] = torch::relu(o.gamma() - stdev[v]).to(torch::kDouble).sum() / dd;
      c_term[v] =
          big_n < d ? (gsq[1 + v] - sigma2[v].to(torch::kDouble).square().sum()) / (nm1 * nm1 * dd)
                    : sum_of_squares(m[v]) / (nm1 * nm1 * dd);
    }
    const double inv_norm =
        static_cast<double>(big_n) * (o.preset() == LossPreset::Official ? dd : 1.0);
    const Tensor invariance = gsq[0] / inv_norm;
    const Tensor variance = v_term[0] + v_term[1];
    const Tensor covariance = c_term[0] + c_term[1];
    const Tensor total = o.sim_coeff() * invariance +
                         (variance_weight(o.preset()) * o.std_coeff()) * variance +
                         o.cov_coeff() * covariance;
    if (o.check_finite() && !torch::isfinite(total).item<bool>()) {
      // The same on every rank (global sums), so every rank stops here.
      check_finite_inputs(z_a, z_b);
      TORCH_CHECK(false, "vicreg_loss_sharded: the loss is not finite (invariance ",
                  invariance.item<double>(), ", variance ", variance.item<double>(),
                  ", covariance ", covariance.item<double>(),
                  "): another rank's embeddings hold "
                  "NaN or Inf, or their magnitude is too large for ",
                  acc);
    }

    ViewStats st[2];
    for (int v = 0; v < 2; ++v) {
      st[v].mean = mean[v];
      st[v].sigma2 = sigma2[v];
      st[v].stdev = stdev[v];
      st[v].m = m[v];
      st[v].gram_rhs = zc_all[v];  // undefined in the covariance form
    }
    save_for_backward(ctx, z_a, z_b, st[0], st[1], big_n, world, inv_norm, o);

    const Tensor std_a = (sigma2[0] / nm1).sqrt();
    ctx->mark_non_differentiable({std_a});
    return {total.to(acc), invariance.to(acc), variance.to(acc), covariance.to(acc), std_a};
  }

  /// The rows of this rank, times W: view_backward() with the global N, G_r and Zc.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list g = backward_rows(ctx, grads);
    g.insert(g.end(), {Tensor(), Tensor()});  // options, group
    return g;
  }
};

}  // namespace

void check_loss_inputs(const Tensor& z_a, const Tensor& z_b, const VICRegLossOptions& o) {
  TORCH_CHECK(z_a.defined() && z_b.defined(), "vicreg_loss: z_a and z_b must be defined tensors");
  TORCH_CHECK(z_a.dim() == 2, "vicreg_loss: z_a must be a 2-D tensor [n, d] of embeddings, got a ",
              shape_of(z_a), " (flatten the expander output to [batch, features])");
  TORCH_CHECK(z_b.dim() == 2, "vicreg_loss: z_b must be a 2-D tensor [n, d] of embeddings, got a ",
              shape_of(z_b), " (flatten the expander output to [batch, features])");
  TORCH_CHECK(z_a.sizes() == z_b.sizes(), "vicreg_loss: z_a and z_b must have the same shape, got ",
              z_a.sizes(), " and ", z_b.sizes(), " (the two views of one batch, row i of each ",
              "from the same sample)");
  TORCH_CHECK(z_a.size(0) >= 2, "vicreg_loss: needs at least 2 rows (the variance is unbiased, ",
              "1/(n-1)), got n = ", z_a.size(0));
  TORCH_CHECK(z_a.size(1) >= 1, "vicreg_loss: needs at least 1 column, got d = 0");
  TORCH_CHECK(z_a.is_floating_point(), "vicreg_loss: z_a must be floating point (float, double, ",
              "half or bfloat16), got ", z_a.scalar_type());
  TORCH_CHECK(z_b.is_floating_point(), "vicreg_loss: z_b must be floating point (float, double, ",
              "half or bfloat16), got ", z_b.scalar_type());
  TORCH_CHECK(z_a.scalar_type() == z_b.scalar_type(),
              "vicreg_loss: z_a and z_b must have the same dtype, got ", z_a.scalar_type(), " and ",
              z_b.scalar_type());
  TORCH_CHECK(z_a.device() == z_b.device(), "vicreg_loss: z_a and z_b must be on the same device, ",
              "got ", z_a.device(), " and ", z_b.device());
  const std::pair<const char*, double> nonneg[] = {{"sim_coeff", o.sim_coeff()},
                                                   {"std_coeff", o.std_coeff()},
                                                   {"cov_coeff", o.cov_coeff()},
                                                   {"gamma", o.gamma()},
                                                   {"eps", o.eps()}};
  for (const auto& [name, value] : nonneg) {
    TORCH_CHECK(std::isfinite(value) && value >= 0.0, "vicreg_loss: ", name,
                " must be a finite number >= 0, got ", value);
  }
}

VICRegLossTerms vicreg_loss(const Tensor& z_a, const Tensor& z_b, const VICRegLossOptions& o) {
  check_loss_inputs(z_a, z_b, o);
  const variable_list out = FusedVICRegLoss::apply(z_a, z_b, o);
  return {out[0], out[1], out[2], out[3], out[4]};
}

VICRegLossTerms vicreg_loss_sharded(const Tensor& z_a, const Tensor& z_b, ProcessGroup& group,
                                    const VICRegLossOptions& o) {
  check_loss_inputs(z_a, z_b, o);
  const variable_list out = ShardedVICRegLoss::apply(z_a, z_b, o, &group);
  return {out[0], out[1], out[2], out[3], out[4]};
}

VICRegLossTerms vicreg_loss_reference(const Tensor& z_a, const Tensor& z_b,
                                      const VICRegLossOptions& o) {
  namespace F = torch::nn::functional;
  check_loss_inputs(z_a, z_b, o);
  if (o.check_finite()) check_finite_inputs(z_a, z_b);
  const int64_t n = z_a.size(0), d = z_a.size(1);

  const Tensor invariance =
      o.preset() == LossPreset::Official ? F::mse_loss(z_a, z_b) : (z_a - z_b).pow(2).sum(1).mean();

  const Tensor eye = torch::eye(d, z_a.options().dtype(torch::kBool));
  auto variance_of = [&](const Tensor& z) {
    const Tensor stdev = torch::sqrt(z.var(0) + o.eps());
    return F::relu(o.gamma() - stdev).mean();
  };
  auto covariance_of = [&](const Tensor& z) {
    const Tensor zc = z - z.mean(0);
    const Tensor cov = zc.t().mm(zc) / static_cast<double>(n - 1);
    return cov.masked_select(~eye).pow(2).sum() / static_cast<double>(d);
  };
  const Tensor variance = variance_of(z_a) + variance_of(z_b);
  const Tensor covariance = covariance_of(z_a) + covariance_of(z_b);
  const Tensor total = o.sim_coeff() * invariance +
                       variance_weight(o.preset()) * o.std_coeff() * variance +
                       o.cov_coeff() * covariance;
  return {total, invariance, variance, covariance, Tensor()};
}

double vicreg_loss_flops(int64_t n, int64_t d) {
  return 8.0 * static_cast<double>(n) * static_cast<double>(d) *
         static_cast<double>(std::min(n, d));
}

double vicreg_loss_reference_flops(int64_t n, int64_t d) {
  return 12.0 * static_cast<double>(n) * static_cast<double>(d) * static_cast<double>(d);
}

VICRegLossImpl::VICRegLossImpl(VICRegLossOptions options_) : options(std::move(options_)) {
  reset();
}

void VICRegLossImpl::reset() {}

void VICRegLossImpl::pretty_print(std::ostream& stream) const {
  stream << "vicreg::VICRegLoss(sim_coeff=" << options.sim_coeff()
         << ", std_coeff=" << options.std_coeff() << ", cov_coeff=" << options.cov_coeff()
         << ", gamma=" << options.gamma() << ", eps=" << options.eps()
         << ", preset=" << to_string(options.preset()) << ")";
}

VICRegLossTerms VICRegLossImpl::forward(const Tensor& z_a, const Tensor& z_b) {
  return vicreg_loss(z_a, z_b, options);
}

}  // namespace vicreg
