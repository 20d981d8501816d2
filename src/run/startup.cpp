// The start-up of a run that needs no step of it: the memory-format measurement behind
// --channels-last auto and what is read off the data before the model is built.
#include "vicreg/run/trainer.h"

#include "vicreg/data.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <limits>

namespace vicreg {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

MemoryFormatTiming time_memory_formats(const VICRegModelConfig& config, int64_t rows,
                                       int64_t channels, int64_t size, Precision precision,
                                       const Objective& objective, double budget_s) {
  constexpr int kRounds = 3;
  at::Generator global = at::detail::getDefaultCPUGenerator();
  const torch::Tensor state = global.get_state();
  VICReg models[2] = {VICReg(config), VICReg(config)};
  global.set_state(state);
  to_channels_last(*models[1]);
  at::Generator own = at::detail::createCPUGenerator(0x5EED);
  const torch::Tensor x_a = torch::randn({rows, channels, size, size}, own);
  const torch::Tensor x_b = torch::randn({rows, channels, size, size}, own);
  const torch::Tensor inputs[2][2] = {{x_a, x_b},
                                      {channels_last_copy(x_a), channels_last_copy(x_b)}};
  const torch::Device cpu(torch::kCPU);
  const auto step = [&](int format) {
    const auto t0 = std::chrono::steady_clock::now();
    VICReg& m = models[format];
    m->zero_grad();
    ModelOutputs out;
    {
      const AutocastGuard autocast(cpu, precision);
      out = m->forward(inputs[format][0], inputs[format][1], objective.uses_features());
    }
    objective.loss(out, nullptr).total.backward();
    return seconds_since(t0);
  };
  step(0);
  step(1);
  MemoryFormatTiming t;
  t.contiguous_s = t.channels_last_s = std::numeric_limits<double>::infinity();
  double spent = 0;
  while (t.rounds < kRounds && (t.rounds == 0 || spent < budget_s)) {
    for (int i = 0; i < 2; ++i) {
      const int format = (t.rounds + i) % 2;
      const double s = step(format);
      spent += s;
      double& best = format == 0 ? t.contiguous_s : t.channels_last_s;
      best = std::min(best, s);
    }
    ++t.rounds;
  }
  return t;
}

int64_t typical_image_side(const Dataset& data, int samples) {
  if (data.is_vector() || data.size() == 0) return 0;
  if (data.image_size() > 0) return data.image_size();
  std::vector<int64_t> sides;
  const int64_t n = data.size(), count = std::min<int64_t>(n, std::max(samples, 1));
  for (int64_t k = 0; k < count; ++k) {
    try {
      const cv::Mat m = decode_image(data.files[static_cast<size_t>(k * n / count)], 1);
      sides.push_back(std::min(m.rows, m.cols));
    } catch (const std::exception&) {
      // An unreadable file: the loader reports it (or skips it) when it meets it.
    }
  }
  if (sides.empty()) return 0;
  std::nth_element(sides.begin(), sides.begin() + sides.size() / 2, sides.end());
  return sides[sides.size() / 2];
}

void Trainer::choose_memory_format() {
  if (measure_memory_format_ && is_main()) {
    ProgressReporter(notes_, true)
        .note(
            "vicreg train: timing a training step in both memory formats (--channels-last "
            "auto; on or off skips this)...");
    memory_format_timing_ =
        time_memory_formats(config_.model_config(*data_), config_.optim.batch_size / world_,
                            data_->channels, image_size_, precision_.precision,
                            // Random views of a model at its initialisation: only the time counts.
                            *config_.objective(/*check_finite=*/false), /*budget_s=*/10.0);
    channels_last_ = memory_format_timing_->channels_last();
  }
  if (group_) {
    // Every rank takes rank 0's format (the ranks could time them differently).
    const MemoryFormatTiming t = memory_format_timing_.value_or(MemoryFormatTiming{});
    std::vector<torch::Tensor> chosen = {
        torch::tensor({channels_last_ ? 1.0 : 0.0, memory_format_timing_ ? 1.0 : 0.0,
                       t.contiguous_s, t.channels_last_s, static_cast<double>(t.rounds)},
                      torch::TensorOptions(torch::kDouble))
            .to(device_)};
    group_->broadcast(chosen, 0);
    const torch::Tensor c = chosen[0].cpu();
    const double* v = c.data_ptr<double>();
    channels_last_ = v[0] > 0.5;
    if (v[1] > 0.5) {
      memory_format_timing_ = MemoryFormatTiming{v[2], v[3], static_cast<int>(v[4])};
    }
  }
  config_.runtime.channels_last = channels_last_ ? Toggle::On : Toggle::Off;
}

std::string Trainer::memory_format_note() const {
  if (!memory_format_timing_) return channels_last_ ? ", channels_last" : "";
  const MemoryFormatTiming& t = *memory_format_timing_;
  const auto ms = [](double s) {
    char b[32];
    std::snprintf(b, sizeof b, s < 0.01 ? "%.2f" : "%.0f", 1e3 * s);
    return std::string(b);
  };
  return std::string(channels_last_ ? ", channels_last" : ", contiguous") +
         " (auto: " + ms(channels_last_ ? t.channels_last_s : t.contiguous_s) +
         " ms a step against " + ms(channels_last_ ? t.contiguous_s : t.channels_last_s) +
         (channels_last_ ? " contiguous" : " channels_last") + ", measured)";
}

}  // namespace vicreg
