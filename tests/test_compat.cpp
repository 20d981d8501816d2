// Files written by vicreg 0.1 (before the configuration became a tree of sections) still read:
// tests/fixtures/v0.1-run holds a checkpoint.pt, backbone.pt and exported backbone.safetensors of
// a 3-step run of that version on support/synthetic_data.h's images, with what that version
// computed from them (the test split's representations and embeddings, the losses of two more
// steps after resuming). This version must compute the same values, to within float rounding:
// MKL and oneDNN choose their fp32 kernels by the CPU (AVX2, AVX-512 and AMX machines sum in
// different orders), so products and convolutions computed on another machine than the one that
// made the fixture may differ in the last bits (on the machine that made them, they are
// identical). The tolerances are 70x or more below what one training step changes: a misread
// weight, BatchNorm statistic, optimizer state or learning rate shows up as a step's worth.
#include "vicreg/io/npy.h"
#include "vicreg/run/artifacts.h"
#include "vicreg/run/evaluation.h"
#include "vicreg/run/trainer.h"

#include "support/synthetic_data.h"
#include "support/temp_dir.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

namespace {

namespace fs = std::filesystem;

class Compat : public vicreg::testing::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    // The data the fixture's run was trained on (the generator is deterministic).
    vicreg::testing::write_idx_dataset(dir_ / "data", 64, 28, 1, "train");
    vicreg::testing::write_idx_dataset(dir_ / "data", 20, 28, 2, "t10k");
    torch::set_num_threads(1);
  }
  static std::string fixture(const std::string& name) {
    return (fs::path(VICREG_FIXTURES) / "v0.1-run" / name).string();
  }
  // Equal to within 1e-5 of the largest magnitude (float rounding of sums of a few hundred terms).
  static void expect_close(const torch::Tensor& got, const torch::Tensor& want) {
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_LE((got - want).abs().max().item<double>(), 1e-5 * want.abs().max().item<double>());
  }
  torch::Tensor features(vicreg::SubjectSpec spec, bool embedding) {
    spec.data_dir = (dir_ / "data").string();
    vicreg::Subject s = vicreg::load_subject(spec, {vicreg::Split::Test});
    return vicreg::subject_features(s, s.test, embedding);
  }
};

TEST_F(Compat, OldCheckpointConfigReads) {
  const vicreg::TrainConfig c = vicreg::read_checkpoint_config(fixture("checkpoint.pt"));
  EXPECT_EQ(c.data.dataset, vicreg::DatasetKind::Mnist);
  EXPECT_EQ(c.model.arch, "convnet");
  EXPECT_TRUE(c.model.arch_b.empty());  // stored as ""
  EXPECT_EQ(c.model.width, 4);
  EXPECT_EQ(c.model.final_conv, 0);  // written before the setting existed
  EXPECT_EQ(c.model.mlp, "16-16");
  EXPECT_EQ(c.optim.optimizer, vicreg::OptimizerKind::AdamW);
  EXPECT_EQ(c.optim.batch_size, 8);
  EXPECT_EQ(c.runtime.max_steps, 3);
  // Trained with the fashion-mnist recipe as it was then (jitter 0.6), and resumed with it.
  EXPECT_EQ(c.data.recipe_overrides, "brightness=0.6,contrast=0.6");
  // The run's config.json reads the same way (vicreg report shows it).
  const vicreg::TrainConfig j = vicreg::read_run_config_file(fixture("config.json"));
  EXPECT_EQ(j.model.final_conv, 0);
  EXPECT_EQ(j.data.recipe_overrides, "brightness=0.6,contrast=0.6");
  EXPECT_EQ(j.model.width, 4);
}

TEST_F(Compat, OldBackbonesGiveTheSameRepresentations) {
  const torch::Tensor expected = vicreg::read_npy(fixture("emb_backbone.npy"));
  vicreg::SubjectSpec pt;
  pt.backbone = fixture("backbone.pt");
  expect_close(features(pt, false), expected);
  vicreg::SubjectSpec st;
  st.backbone = fixture("backbone.safetensors");  // vicreg 0.1's export: flat config metadata
  expect_close(features(st, false), expected);
  const vicreg::Backbone b = vicreg::read_checkpoint_backbone(fixture("checkpoint.pt"));
  EXPECT_EQ(b.in_channels, 1);
  EXPECT_EQ(b.image_size, 28);
}

TEST_F(Compat, OldCheckpointsGiveTheSameEmbeddings) {
  vicreg::SubjectSpec spec;
  spec.checkpoint = fixture("checkpoint.pt");
  expect_close(features(spec, true), vicreg::read_npy(fixture("emb_checkpoint.npy")));
}

TEST_F(Compat, OldCheckpointsResumeToTheSameLosses) {
  const fs::path exp = dir_ / "run";
  fs::create_directories(exp);
  fs::copy_file(fixture("checkpoint.pt"), exp / "checkpoint.pt");
  // The command line: only runtime settings matter when the checkpoint is named (--resume).
  vicreg::TrainConfig c;
  c.runtime.exp_dir = exp.string();
  c.runtime.data_dir = (dir_ / "data").string();
  c.runtime.max_steps = 5;
  c.runtime.log_every = 1;
  c.runtime.threads = 1;
  c.runtime.workers = 1;
  vicreg::Trainer trainer(c, (exp / "checkpoint.pt").string());
  EXPECT_EQ(trainer.step(), 3);
  EXPECT_EQ(trainer.config().model.mlp, "16-16");
  EXPECT_EQ(trainer.run({vicreg::ProgressStyle::None}).step, 5);
  std::ifstream old_lines(fixture("resumed_metrics.jsonl")), new_lines(exp / "metrics.jsonl");
  std::string a, b;
  int compared = 0;
  while (std::getline(old_lines, a) && std::getline(new_lines, b)) {
    const auto o = nlohmann::json::parse(a), n = nlohmann::json::parse(b);
    EXPECT_EQ(n["step"], o["step"]);
    for (const char* key : {"loss", "invariance", "variance", "covariance", "lr", "std_z"}) {
      const double want = o[key].get<double>();
      EXPECT_NEAR(n[key].get<double>(), want, 1e-4 * std::abs(want))
          << key << " at step " << o["step"];
    }
    ++compared;
  }
  EXPECT_EQ(compared, 2);
}

}  // namespace
