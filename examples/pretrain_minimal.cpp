// pretrain_minimal: the library from top to bottom, without the CLI. A data set, the two-view
// loader, a model, the VICReg loss, an optimizer with its schedule, a few steps, and the backbone
// saved and read back. `vicreg train` does the same with checkpoints, logging and resuming
// (run/trainer.h).
//
//   build/examples/pretrain_minimal [DATA_DIR [STEPS [OUT_DIR]]]
//
// DATA_DIR holds Fashion-MNIST's IDX files (default: Debian's /usr/share/datasets/fashion-mnist).
#include "vicreg/augment.h"
#include "vicreg/data.h"
#include "vicreg/loader.h"
#include "vicreg/loss.h"
#include "vicreg/models.h"
#include "vicreg/objective.h"
#include "vicreg/optim.h"
#include "vicreg/run/artifacts.h"
#include "vicreg/runtime.h"

#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>

int main(int argc, char** argv) try {
  const std::string data_dir = argc > 1 ? argv[1] : "/usr/share/datasets/fashion-mnist";
  const int64_t steps = argc > 2 ? std::stoll(argv[2]) : 20;
  const std::string out_dir = argc > 3 ? argv[3] : "runs/pretrain-minimal";
  vicreg::set_threads(0);  // one intra-op thread per core (Debian's LibTorch starts with one)
  torch::manual_seed(0);

  // 1. The data: Fashion-MNIST's training split, 28x28 grayscale images in memory.
  vicreg::DatasetConfig dc;
  dc.dataset = vicreg::DatasetKind::FashionMnist;
  dc.data_dir = data_dir;
  auto data = std::make_shared<vicreg::Dataset>(vicreg::load_dataset(dc));

  // 2. Two augmented views of every image (the fashion-mnist recipe), batches of 64, 2 workers.
  const vicreg::Recipe recipe = vicreg::make_recipe("fashion-mnist", 1);
  auto transform = std::make_shared<vicreg::ImageTwoViewTransform>(recipe);
  vicreg::LoaderOptions lo;
  lo.batch_size = 64;
  lo.workers = 2;
  vicreg::TwoViewLoader loader(data, transform, lo);

  // 3. The model: a small ConvNet backbone and a 512-512 expander, the branches sharing weights.
  vicreg::VICRegModelConfig mc;
  mc.encoder.arch = "convnet";  // any of vicreg::backbone_names()
  mc.encoder.in_channels = 1;
  mc.encoder.image_size = recipe.view_a.crop.size;
  mc.encoder.width = 16;
  mc.encoder.stages = 3;
  mc.encoder.final_conv = 256;  // a last 1x1 conv: 256-d representations
  mc.mlp = "512-512";
  vicreg::VICReg model(mc);

  // 4. The optimizer (AdamW, no weight decay on 1-D parameters) and a warm-up + cosine schedule.
  vicreg::OptimizerConfig oc;
  oc.kind = vicreg::OptimizerKind::AdamW;
  auto optimizer = vicreg::make_optimizer(model->parameters(), oc);
  vicreg::WarmupCosineSchedule schedule;
  schedule.peak_lr = 1e-3;
  schedule.total_steps = steps;
  schedule.warmup_steps = steps / 10;

  // 5. Train: two views through the model, the objective's loss of their outputs, one step.
  vicreg::VICRegObjective objective{vicreg::VICRegLossOptions()};  // the official preset: 25/25/1
  model->train();
  loader.start();
  double first = 0, last = 0;
  for (int64_t step = 0; step < steps; ++step) {
    const vicreg::TwoViewBatch batch = loader.next();
    vicreg::set_learning_rate(*optimizer, schedule.lr_at(step));
    optimizer->zero_grad();
    const vicreg::ModelOutputs out = model->forward(batch.view_a, batch.view_b);
    const vicreg::ObjectiveLoss loss = objective.loss(out, /*group=*/nullptr);
    loss.total.backward();
    optimizer->step();
    last = loss.total.item<double>();
    if (step == 0) first = last;
    std::printf("step %lld loss %.4f (", static_cast<long long>(step), last);
    for (size_t i = 0; i < loss.terms.size(); ++i) {
      std::printf("%s%s %.4f", i ? " " : "", objective.terms()[i].key.c_str(),
                  loss.terms[i].item<double>());
    }
    std::printf(")\n");
  }

  // 6. Save the backbone as a run's backbone.pt, and read it back as `vicreg eval` would.
  std::filesystem::create_directories(out_dir);
  vicreg::Backbone b;
  b.encoder = model->backbone;
  b.config.model.arch = mc.encoder.arch;
  b.config.model.width = mc.encoder.width;
  b.config.model.stages = mc.encoder.stages;
  b.config.model.final_conv = mc.encoder.final_conv;
  b.config.model.mlp = mc.mlp;
  b.in_channels = data->channels;
  b.image_size = mc.encoder.image_size;
  const std::string path = out_dir + "/backbone.pt";
  vicreg::write_backbone(b, path);
  const vicreg::Encoder back = vicreg::load_backbone(path);
  torch::NoGradGuard no_grad;
  model->backbone->eval();
  const torch::Tensor x = loader.next().view_a;
  const double diff = (back->forward(x) - model->backbone->forward(x)).abs().max().item<double>();
  std::printf("loss %.4f -> %.4f over %lld steps; %s read back, max difference %.3g\n", first, last,
              static_cast<long long>(steps), path.c_str(), diff);
  return std::isfinite(last) && diff == 0.0 ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "pretrain_minimal: error: %s\n", e.what());
  return 1;
}
