// Pretraining hot paths: one optimizer step of the default configuration, augmentation throughput
// per worker for each recipe, and the fraction of a training step spent waiting for data.
//
// The baselines are Python peers run by the same script (scripts/bench-train.sh): the same model,
// batch and augmentations in a plain PyTorch loop, and torchvision/PIL's per-image pipeline.
// The script divides the figures of one run by each other; this program reports its own side.
//
//   train_bench [--threads=N] [--device=cuda[:N] [--device-batch=256] [--device-image-size=224]]
//               [google benchmark flags]
// --device registers BM_TrainStepDevice (ImageNet-sized steps on that device:
// scripts/gpu-check.sh).
#include "vicreg/augment.h"
#include "vicreg/data.h"
#include "vicreg/kernels/conv.h"
#include "vicreg/loader.h"
#include "vicreg/models.h"
#include "vicreg/optim.h"
#include "vicreg/precision.h"
#include "vicreg/run/trainer.h"
#include "vicreg/runtime.h"

#include <ATen/ATen.h>
#include <benchmark/benchmark.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <sys/resource.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

namespace {

namespace fs = std::filesystem;

int g_threads = 0;
std::string g_device;  // BM_TrainStepDevice's device; empty: not registered
int64_t g_device_batch = 256, g_device_image_size = 224;

fs::path temp_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("vicreg_bench_" + name);
  fs::create_directories(dir);
  return dir;
}

/// The default configuration, in a scratch experiment directory.
vicreg::TrainConfig default_config(const std::string& name) {
  vicreg::TrainConfig c;
  c.runtime.threads = g_threads;
  c.runtime.exp_dir = temp_dir(name).string();
  fs::remove(fs::path(c.runtime.exp_dir) / "checkpoint.pt");
  fs::remove(fs::path(c.runtime.exp_dir) / "metrics.jsonl");
  return c;
}

/// One optimizer step (forward of both views, loss, backward, optimizer) of the default config
/// on a batch already made: what the model costs, without the data pipeline. Arguments: the
/// precision (0 fp32, 1 bf16) and the memory format (0 contiguous, 1 channels_last). Counters:
/// images/s and the peak tensor memory of a step above what was allocated before it (the
/// counting allocator).
void train_step(benchmark::State& state, bool bf16, bool channels_last,
                const std::string& note = "", const std::string& arch = "convnet") {
  vicreg::enable_memory_tracking();
  auto config = default_config(std::string("step_") + arch + (bf16 ? "_bf16" : "_fp32") +
                               (channels_last ? "_cl" : ""));
  config.model.arch = arch;
  if (arch == "vit_tiny") config.model.patch_size = 4;  // 7x7 tokens of Fashion-MNIST's 28 px
  config.runtime.precision = bf16 ? vicreg::Precision::Bf16 : vicreg::Precision::Fp32;
  config.runtime.channels_last = channels_last ? vicreg::Toggle::On : vicreg::Toggle::Off;
  vicreg::Trainer trainer(config);
  // One real batch from the loader, reused.
  vicreg::TwoViewLoader loader(
      std::make_shared<vicreg::Dataset>(vicreg::load_dataset({})),
      std::make_shared<vicreg::ImageTwoViewTransform>(vicreg::make_recipe("fashion-mnist", 1),
                                                      trainer.channels_last()),
      {trainer.config().optim.batch_size, 1, 1, 0});
  loader.start();
  const vicreg::TwoViewBatch batch = loader.next();
  trainer.train_step(batch);  // warm-up (optimizer state allocated)
  const torch::Device cpu(torch::kCPU);
  const int64_t resident = vicreg::memory_stats(cpu).current_bytes;
  vicreg::reset_peak_memory(cpu);
  for (auto _ : state) trainer.train_step(batch);
  const double peak = static_cast<double>(vicreg::memory_stats(cpu).peak_bytes - resident);
  const double images = 2.0 * static_cast<double>(trainer.config().optim.batch_size);
  state.counters["images/s"] =
      benchmark::Counter(images, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["step_peak_MiB"] = peak / (1 << 20);
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);  // the process's peak, comparable with the peer's
  state.counters["maxrss_MiB"] = static_cast<double>(usage.ru_maxrss) / 1024;
  state.SetLabel(arch + " " + (bf16 ? "bf16" : "fp32") + (channels_last ? " channels_last" : "") +
                 note + "; " + vicreg::describe_runtime().substr(0, 60));
}
void BM_TrainStep(benchmark::State& state) {
  train_step(state, state.range(0) == 1, state.range(1) == 1);
}
// Five repetitions: one sample of each moves by up to 10-20 % on a shared 2-core machine, more
// than the ratios between them are asked to show. scripts/bench-train.sh interleaves them
// (--benchmark_enable_random_interleaving) and reports the medians.
BENCHMARK(BM_TrainStep)
    ->ArgNames({"bf16", "channels_last"})
    ->Args({0, 0})
    ->Args({0, 1})
    ->Args({1, 0})
    ->Args({1, 1})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(3.0)
    ->Repetitions(5)
    ->UseRealTime();

/// The step of the transformer and ConvNeXt families on Fashion-MNIST (batch 128 x 2 views, the
/// default expander and AdamW): ViT-Tiny/4 (50 tokens) and ConvNeXt-Tiny with its small-image
/// stem. Arguments: the backbone (0 vit_tiny/4, 1 convnext_tiny), the precision (0 fp32, 1 bf16)
/// and the memory format (0 contiguous, 1 channels_last; the ViT has no convolutions to lay
/// out). The peer: bench/peer_pytorch.py train --arch vit_tiny|convnext_tiny.
void BM_TrainStepFamily(benchmark::State& state) {
  train_step(state, state.range(1) == 1, state.range(2) == 1, "",
             state.range(0) == 0 ? "vit_tiny" : "convnext_tiny");
}
BENCHMARK(BM_TrainStepFamily)
    ->ArgNames({"arch", "bf16", "channels_last"})
    ->Args({0, 0, 0})
    ->Args({0, 1, 0})
    ->Args({1, 0, 0})
    ->Args({1, 1, 1})
    ->Unit(benchmark::kMillisecond)
    ->Iterations(4)
    ->Repetitions(3)
    ->UseRealTime();

/// The bf16 step in each CpuBf16Conv mode (precision.h; the default depends on the CPU): the
/// end-to-end effect of BM_ConvForward's and BM_ConvBackward's per-layer figures. Arguments:
/// channels_last (0, 1) and the mode (0 bf16, 1 fp32-backward, 2 fp32).
void BM_TrainStepBf16Conv(benchmark::State& state) {
  const vicreg::CpuBf16Conv before = vicreg::cpu_bf16_conv();
  const vicreg::CpuBf16Conv modes[] = {vicreg::CpuBf16Conv::Bf16, vicreg::CpuBf16Conv::Fp32Backward,
                                       vicreg::CpuBf16Conv::Fp32};
  vicreg::set_cpu_bf16_conv(modes[state.range(1)]);
  train_step(state, true, state.range(0) == 1,
             ", convolutions " + vicreg::to_string(modes[state.range(1)]));
  vicreg::set_cpu_bf16_conv(before);
}
BENCHMARK(BM_TrainStepBf16Conv)
    ->ArgNames({"channels_last", "mode"})
    ->ArgsProduct({{0, 1}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(5.0)
    ->UseRealTime();

/// The bf16 + channels_last step with the small stride-1 convolutions' weight gradients (the
/// default ConvNet's 256->256 at 4x4 and its 1x1 conv) by oneDNN (0) or as patches and one matrix
/// product (1; patches_weight_grad_at_stride1, models.h; the default depends on the CPU), in the
/// CpuBf16Conv mode bf16 that rule belongs to.
void BM_TrainStepPatchesAtStride1(benchmark::State& state) {
  const vicreg::CpuBf16Conv mode_before = vicreg::cpu_bf16_conv();
  const bool before = vicreg::patches_weight_grad_at_stride1();
  vicreg::set_cpu_bf16_conv(vicreg::CpuBf16Conv::Bf16);
  vicreg::set_patches_weight_grad_at_stride1(state.range(0) == 1);
  train_step(state, true, true,
             state.range(0) == 1 ? ", stride-1 weight gradients as patches" : ", oneDNN's");
  vicreg::set_patches_weight_grad_at_stride1(before);
  vicreg::set_cpu_bf16_conv(mode_before);
}
BENCHMARK(BM_TrainStepPatchesAtStride1)
    ->ArgNames({"patches"})
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->MinTime(5.0)
    ->UseRealTime();

/// One AdamW step over the default model's parameters (fp32, channels_last as the step has them,
/// 4.6 M values in 47 tensors), the gradients in place: LibTorch's nine ATen operations per
/// parameter (impl 0) against vicreg::AdamW's one fused pass (impl 1; LibTorch's operations on a
/// CPU without AVX2 and FMA). Counter: parameter values updated per second.
void BM_AdamWStep(benchmark::State& state) {
  auto config = default_config("adamw");
  config.runtime.channels_last = vicreg::Toggle::On;
  vicreg::Trainer trainer(config);
  std::vector<torch::Tensor> params;
  for (const auto& p : trainer.model()->parameters()) {
    params.push_back(p.detach().clone().requires_grad_(true));
    params.back().mutable_grad() = torch::randn_like(p) * 1e-3;
  }
  vicreg::OptimizerConfig oc;
  oc.kind = vicreg::OptimizerKind::AdamW;
  oc.lr = 1e-3;
  std::unique_ptr<torch::optim::Optimizer> opt;
  if (state.range(0) == 1) {
    opt = vicreg::make_optimizer(params, oc);
  } else {
    opt = std::make_unique<torch::optim::AdamW>(
        params, torch::optim::AdamWOptions(oc.lr).weight_decay(oc.weight_decay));
  }
  opt->step();  // the moments allocated
  for (auto _ : state) opt->step();
  int64_t values = 0;
  for (const auto& p : params) values += p.numel();
  state.counters["values/s"] = benchmark::Counter(static_cast<double>(values),
                                                  benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(state.range(0) == 1 ? "vicreg::AdamW" : "torch::optim::AdamW");
}
BENCHMARK(BM_AdamWStep)
    ->ArgName("impl")
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0)
    ->Repetitions(3)
    ->UseRealTime();

/// One convolution of the default ConvNet (width 32, 4 stages, final 1x1 conv to 1024 channels,
/// 28 px, batch 2 x 128), forward or
/// backward, in bf16 or fp32: the measurements behind CpuBf16Conv's defaults and conv2d_forward's
/// rule (kFp32BackwardMaxPixels, kFp32BackwardMinChannels). The fp32 backward runs on the
/// bf16-rounded tensors with the conversions included, as the fp32-backward mode does; the fp32
/// forward on fp32 tensors, as the fp32 mode does. Arguments: the layer (0-7, in the order they
/// run; 8 the 1x1), the dtype (0 bf16, 1 fp32) and the memory format (0 contiguous, 1
/// channels_last).
struct ConvLayer {
  int64_t in, out, size, stride, kernel = 3;
};
const ConvLayer& convnet_layer(int64_t i) {
  static const ConvLayer layers[] = {{1, 32, 28, 1},   {32, 32, 28, 1},  {32, 64, 28, 2},
                                     {64, 64, 14, 1},  {64, 128, 14, 2}, {128, 128, 7, 1},
                                     {128, 256, 7, 2}, {256, 256, 4, 1}, {256, 1024, 4, 1, 1}};
  return layers[i];
}
std::string conv_label(const ConvLayer& l) {
  return std::to_string(l.kernel) + "x" + std::to_string(l.kernel) + " " + std::to_string(l.in) +
         "->" + std::to_string(l.out) + " at " + std::to_string(l.size) + " px, stride " +
         std::to_string(l.stride);
}

void conv_layer(benchmark::State& state, bool backward) {
  const ConvLayer& l = convnet_layer(state.range(0));
  const bool fp32 = state.range(1) == 1;
  const auto format =
      state.range(2) == 1 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  torch::manual_seed(0);
  const int64_t batch = 256, out_size = (l.size - 1) / l.stride + 1, pad = l.kernel / 2;
  const auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16);
  // The input as the loader's channels_last batches have it (for one channel, contiguous(format)
  // would keep contiguous strides); the weight as to_channels_last leaves it.
  const auto x0 = torch::randn({batch, l.in, l.size, l.size}, bf16);
  const auto x = state.range(2) == 1 ? vicreg::channels_last_copy(x0) : x0;
  const auto w = (0.05 * torch::randn({l.out, l.in, l.kernel, l.kernel}, bf16)).contiguous(format);
  const auto g = torch::randn({batch, l.out, out_size, out_size}, bf16).contiguous(format);
  const auto xf = x.to(torch::kFloat), wf = w.to(torch::kFloat);
  const std::vector<int64_t> stride{l.stride, l.stride}, padding{pad, pad}, dilation{1, 1};
  for (auto _ : state) {
    if (!backward) {
      benchmark::DoNotOptimize(at::convolution(fp32 ? xf : x, fp32 ? wf : w, c10::nullopt, stride,
                                               padding, dilation, false, {0, 0}, 1));
    } else if (fp32) {
      auto r = at::convolution_backward(g.to(torch::kFloat), x.to(torch::kFloat),
                                        w.to(torch::kFloat), c10::nullopt, stride, padding,
                                        dilation, false, {0, 0}, 1, {true, true, false});
      benchmark::DoNotOptimize(std::get<0>(r).to(torch::kBFloat16));
    } else {
      auto r = at::convolution_backward(g, x, w, c10::nullopt, stride, padding, dilation, false,
                                        {0, 0}, 1, {true, true, false});
      benchmark::DoNotOptimize(std::get<0>(r));
    }
  }
  state.SetLabel(conv_label(l) + (fp32 ? ", fp32" : ", bf16") +
                 (state.range(2) == 1 ? ", channels_last" : ""));
}
void BM_ConvForward(benchmark::State& state) { conv_layer(state, false); }
void BM_ConvBackward(benchmark::State& state) { conv_layer(state, true); }
BENCHMARK(BM_ConvForward)
    ->ArgNames({"layer", "fp32", "channels_last"})
    ->ArgsProduct({{0, 1, 2, 3, 4, 5, 6, 7, 8}, {0, 1}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(0.5)
    ->UseRealTime();
BENCHMARK(BM_ConvBackward)
    ->ArgNames({"layer", "fp32", "channels_last"})
    ->ArgsProduct({{0, 1, 2, 3, 4, 5, 6, 7, 8}, {0, 1}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(0.5)
    ->UseRealTime();

/// The weight gradient alone of one convolution of the default ConvNet (as BM_ConvBackward's
/// layers, but one view's batch of 128, as conv2d_forward sees it), bf16 and channels_last:
/// oneDNN's (method 0) or conv2d_patches_weight_grad's (method 1): the measurement behind
/// kPatchesWeightGradMaxPixels. Arguments: the layer and the method.
void BM_ConvWeightGrad(benchmark::State& state) {
  const ConvLayer& l = convnet_layer(state.range(0));
  const bool patches = state.range(1) == 1;
  torch::manual_seed(0);
  constexpr auto kCl = at::MemoryFormat::ChannelsLast;
  const int64_t batch = 128, out_size = (l.size - 1) / l.stride + 1, pad = l.kernel / 2;
  const auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16);
  const auto x = vicreg::channels_last_copy(torch::randn({batch, l.in, l.size, l.size}, bf16));
  const auto w = (0.05 * torch::randn({l.out, l.in, l.kernel, l.kernel}, bf16)).contiguous(kCl);
  const auto g = torch::randn({batch, l.out, out_size, out_size}, bf16).contiguous(kCl);
  for (auto _ : state) {
    if (patches) {
      benchmark::DoNotOptimize(vicreg::conv2d_patches_weight_grad(g, x, l.kernel, l.stride, pad));
    } else {
      benchmark::DoNotOptimize(std::get<1>(
          at::convolution_backward(g, x, w, c10::nullopt, {l.stride, l.stride}, {pad, pad}, {1, 1},
                                   false, {0, 0}, 1, {false, true, false})));
    }
  }
  state.SetLabel(conv_label(l) + (patches ? ", patches + matrix product" : ", oneDNN"));
}
BENCHMARK(BM_ConvWeightGrad)
    ->ArgNames({"layer", "patches"})
    ->ArgsProduct({{0, 1, 2, 3, 4, 5, 6, 7, 8}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(0.5)
    ->UseRealTime();

/// The training loop with its loader, default config: the fraction of wall time next() waited.
void BM_TrainLoopDataWait(benchmark::State& state) {
  double wait = 0, ips = 0, channels_last = 0;
  for (auto _ : state) {
    auto c = default_config("loop");  // the default: auto precision and memory format
    c.runtime.max_steps = 20;
    vicreg::Trainer trainer(c);
    const auto r = trainer.run({vicreg::ProgressStyle::None});
    wait = r.data_wait_fraction;
    channels_last = trainer.channels_last() ? 1 : 0;
    ips = r.images_per_second;
  }
  state.counters["data_wait_%"] = 100.0 * wait;
  state.counters["images/s"] = ips;
  state.counters["channels_last"] = channels_last;  // what auto chose on this machine
}
BENCHMARK(BM_TrainLoopDataWait)->Unit(benchmark::kSecond)->Iterations(1)->UseRealTime();

/// Synthetic photographs for the imagenet recipe: 500x375 JPEGs (ImageNet's typical size) of
/// smooth colour fields, edges and noise, at quality 90.
std::shared_ptr<vicreg::Dataset> jpeg_folder(int count) {
  const fs::path dir = temp_dir("jpeg");
  auto d = std::make_shared<vicreg::Dataset>();
  d->name = "jpeg";
  d->channels = 3;
  cv::RNG rng(1);
  for (int i = 0; i < count; ++i) {
    const fs::path path = dir / ("img" + std::to_string(i) + ".jpg");
    if (!fs::exists(path)) {
      cv::Mat img(375, 500, CV_8UC3);
      for (int y = 0; y < img.rows; ++y) {
        for (int x = 0; x < img.cols; ++x) {
          img.at<cv::Vec3b>(y, x) = cv::Vec3b(static_cast<uint8_t>((x + i * 7) % 256),
                                              static_cast<uint8_t>((y * 2 + i) % 256),
                                              static_cast<uint8_t>((x + y) / 4 % 256));
        }
      }
      for (int k = 0; k < 12; ++k) {
        cv::circle(img, {rng.uniform(0, 500), rng.uniform(0, 375)}, rng.uniform(10, 120),
                   cv::Scalar(rng.uniform(0, 255), rng.uniform(0, 255), rng.uniform(0, 255)), -1);
      }
      cv::Mat noise(img.size(), CV_8UC3);
      rng.fill(noise, cv::RNG::NORMAL, 0, 12);
      img += noise;
      cv::imwrite(path.string(), img, {cv::IMWRITE_JPEG_QUALITY, 90});
    }
    d->files.push_back(path.string());
  }
  return d;
}

/// Images per second of one worker thread making both views (decode included for imagenet).
/// Decoding the synthetic JPEGs to RGB: decode_image (libjpeg straight to RGB) against its
/// baseline in the same run, what it did before (cv::imread, which writes BGR, then BGR to RGB).
/// Argument: 0 the baseline, 1 decode_image.
void BM_DecodeJpeg(benchmark::State& state) {
  const std::shared_ptr<vicreg::Dataset> data = jpeg_folder(64);
  const bool ours = state.range(0) == 1;
  int64_t i = 0;
  for (auto _ : state) {
    const std::string path = data->files[static_cast<size_t>(i++ % data->size())];
    cv::Mat image;
    if (ours) {
      image = vicreg::decode_image(path, 3);
    } else {
      image = cv::imread(path, cv::IMREAD_COLOR);
      cv::cvtColor(image, image, cv::COLOR_BGR2RGB);
    }
    benchmark::DoNotOptimize(image.data);
  }
  state.SetLabel(ours ? "decode_image" : "cv::imread + BGR2RGB");
  state.counters["images/s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_DecodeJpeg)->ArgName("ours")->Arg(0)->Arg(1)->MinTime(1.0)->UseRealTime();

void BM_Augment(benchmark::State& state, const std::string& recipe_name) {
  cv::setNumThreads(0);
  std::shared_ptr<vicreg::Dataset> data;
  if (recipe_name == "imagenet") {
    data = jpeg_folder(64);
  } else {
    data = std::make_shared<vicreg::Dataset>();
    data->name = "synthetic";
    const int side = recipe_name == "cifar" ? 32 : 28;
    data->channels = recipe_name == "cifar" ? 3 : 1;
    data->images = torch::randint(0, 256, {1024, side, side, data->channels}, torch::kUInt8);
  }
  const vicreg::ImageTwoViewTransform transform(
      vicreg::make_recipe(recipe_name, static_cast<int>(data->channels)));
  const auto shape = transform.view_shape(*data);
  const int64_t per_view = shape[0] * shape[1] * shape[2];
  std::vector<float> a(per_view), b(per_view);
  int64_t i = 0;
  for (auto _ : state) {
    vicreg::Rng rng(vicreg::sample_seed(0, 0, i));
    transform.apply(*data, i % data->size(), rng, a.data(), b.data());
    benchmark::DoNotOptimize(a.data());
    ++i;
  }
  state.counters["images/s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK_CAPTURE(BM_Augment, imagenet, std::string("imagenet"))->MinTime(3.0)->UseRealTime();
BENCHMARK_CAPTURE(BM_Augment, cifar, std::string("cifar"))->MinTime(2.0)->UseRealTime();
BENCHMARK_CAPTURE(BM_Augment, fashion_mnist, std::string("fashion-mnist"))
    ->MinTime(2.0)
    ->UseRealTime();

/// An image folder (train/{a,b}/ and val/{a,b}/, the synthetic JPEGs of jpeg_folder) that a Trainer
/// opens: BM_TrainStepDevice's steps run on batches of their own, the folder only makes the run.
fs::path trainer_image_folder(int count) {
  const std::shared_ptr<vicreg::Dataset> jpegs = jpeg_folder(count);
  const fs::path root = temp_dir("device_folder");
  for (const char* split : {"train", "val"}) {
    for (size_t i = 0; i < jpegs->files.size(); ++i) {
      const fs::path folder = root / split / (i % 2 == 0 ? "a" : "b");  // two classes
      fs::create_directories(folder);
      fs::copy_file(jpegs->files[i], folder / fs::path(jpegs->files[i]).filename(),
                    fs::copy_options::skip_existing);
    }
  }
  return root;
}

/// The ImageNet-sized step of the GPU check (scripts/gpu-check.sh) on --device: ResNet-50,
/// ViT-B/16 or ConvNeXt-T (argument 0, 1, 2) with the reference's 8192-8192-8192 expander, AdamW,
/// batch --device-batch x 2 views of --device-image-size px, in fp32, bf16 or fp16 (argument 1:
/// 0, 1, 2; fp16 with loss scaling), on random views resident on the device: the trainer's own
/// step (Trainer::train_step), the numerics it chooses for the device (channels_last for the
/// convolutional ones on GPUs). Counters: images/s and the peak tensor memory of the process on
/// the device (weights and optimizer state included: the peer's torch.cuda.max_memory_allocated
/// after a reset). The peer: bench/peer_pytorch.py device-step.
void BM_TrainStepDevice(benchmark::State& state) {
  static const char* const arches[] = {"resnet50", "vit_b_16", "convnext_tiny"};
  static const vicreg::Precision precisions[] = {vicreg::Precision::Fp32, vicreg::Precision::Bf16,
                                                 vicreg::Precision::Fp16};
  static const char* const precision_names[] = {"fp32", "bf16", "fp16"};
  vicreg::enable_memory_tracking();  // the CPU's accounting (a CPU run: a smoke test)
  const std::string arch = arches[state.range(0)];
  const char* precision = precision_names[state.range(1)];
  auto config = default_config("device_" + arch + "_" + precision);
  config.data.dataset = vicreg::DatasetKind::ImageFolder;
  config.runtime.data_dir = trainer_image_folder(16).string();
  config.data.recipe = "imagenet";
  config.data.image_size = g_device_image_size;
  config.model.arch = arch;
  config.model.mlp = "8192-8192-8192";
  config.optim.batch_size = g_device_batch;
  config.runtime.device = g_device;
  config.runtime.precision = precisions[state.range(1)];
  config.runtime.online_probe = vicreg::Toggle::Off;
  config.runtime.tensorboard = vicreg::OnOff::Off;
  std::unique_ptr<vicreg::Trainer> made;
  try {
    made = std::make_unique<vicreg::Trainer>(config);
  } catch (const std::exception& e) {  // fp16 on a CPU, say: the row says why, the others run
    state.SkipWithError(e.what());
    return;
  }
  vicreg::Trainer& trainer = *made;
  const torch::Device device(g_device);
  const auto options = torch::TensorOptions().device(device).memory_format(
      trainer.channels_last() ? torch::MemoryFormat::ChannelsLast
                              : torch::MemoryFormat::Contiguous);
  vicreg::TwoViewBatch batch;
  batch.view_a =
      torch::randn({g_device_batch, 3, g_device_image_size, g_device_image_size}, options);
  batch.view_b = torch::randn_like(batch.view_a);
  // Warm-up: cuDNN's algorithm search, the optimizer's state, the allocator's blocks, the loss
  // scale settling. Each step reads its numbers back (a synchronisation), so a step's wall time
  // is the device's.
  for (int i = 0; i < 5; ++i) trainer.train_step(batch);
  vicreg::reset_peak_memory(device);
  for (auto _ : state) trainer.train_step(batch);
  state.counters["images/s"] = benchmark::Counter(2.0 * static_cast<double>(g_device_batch),
                                                  benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_MiB"] =
      static_cast<double>(vicreg::memory_stats(device).peak_bytes) / (1 << 20);
  state.SetLabel(arch + " " + precision + (trainer.channels_last() ? " channels_last" : "") + " " +
                 g_device + "; " + vicreg::describe_runtime().substr(0, 60));
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      g_threads = std::atoi(argv[i] + 10);
    } else if (std::strncmp(argv[i], "--device=", 9) == 0) {
      g_device = argv[i] + 9;
    } else if (std::strncmp(argv[i], "--device-batch=", 15) == 0) {
      g_device_batch = std::atoll(argv[i] + 15);
    } else if (std::strncmp(argv[i], "--device-image-size=", 20) == 0) {
      g_device_image_size = std::atoll(argv[i] + 20);
    } else {
      rest.push_back(argv[i]);
    }
  }
  int n = static_cast<int>(rest.size());
  vicreg::set_threads(g_threads);
  if (!g_device.empty()) {
    g_device = vicreg::usable_device(g_device).str();  // a clear error for a missing GPU
    benchmark::RegisterBenchmark("BM_TrainStepDevice", BM_TrainStepDevice)
        ->ArgNames({"arch", "precision"})
        ->ArgsProduct({{0, 1, 2}, {0, 1, 2}})
        ->Unit(benchmark::kMillisecond)
        ->MinTime(2.0)
        ->UseRealTime();
  }
  benchmark::Initialize(&n, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
