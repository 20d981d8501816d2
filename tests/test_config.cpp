// The configuration tree (run/config.h): its JSON (sections, flat keys, vicreg 0.1's files), the
// named choices, resuming by section, and the CLI's flags mapped onto it, in process.
#include "vicreg/run/config.h"

#include "commands.h"

#include "vicreg/error.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using vicreg::Section;
using vicreg::Setting;
using vicreg::TrainConfig;

/// Every setting of `c` changed to another valid value of its type (numbers + 1, booleans
/// flipped, strings suffixed, choices the next name): a config that differs in every setting.
TrainConfig changed_everywhere(TrainConfig c) {
  vicreg::for_each_setting(c, [](const Setting& s, auto& field) {
    using T = std::decay_t<decltype(field)>;
    if constexpr (std::is_same_v<T, bool>) {
      field = !field;
    } else if constexpr (std::is_same_v<T, std::string>) {
      // A text of listed names takes another of them (the last: "vector" for --recipe; the
      // first for the last), unless there is only one (the objective, while vicreg is the only).
      if (s.choices == nullptr) {
        field += "x";
      } else {
        const std::vector<std::string>& names = s.choices();
        field = names.back() != field ? names.back() : names.front();
      }
    } else if constexpr (std::is_enum_v<T>) {
      const auto& entries = vicreg::name_table<T>().entries;
      for (size_t k = 0; k < entries.size(); ++k) {
        if (entries[k].first == field) {
          field = entries[(k + 1) % entries.size()].first;
          break;
        }
      }
    } else {
      field = field + 1;
    }
  });
  return c;
}

std::vector<std::string> keys(const TrainConfig& c) {
  std::vector<std::string> out;
  vicreg::for_each_setting(c, [&](const Setting& s, const auto&) { out.push_back(s.key); });
  return out;
}

TEST(Config, EverySettingHasOneKeyAndReadsBackFromJson) {
  const TrainConfig c;
  const std::vector<std::string> k = keys(c);
  EXPECT_EQ(std::set<std::string>(k.begin(), k.end()).size(), k.size()) << "a key is repeated";
  // vicreg 0.1's 40 settings, each kept under its name, 0.2's precision, channels_last,
  // loss_scale and max_skipped_steps, holdout, classes, val_dir and skip_bad_images, and
  // checkpoint_every and checkpoint_minutes, tensorboard and online_probe, bf16_conv,
  // recipe_overrides, final_conv, objective, and the ViT's and ConvNeXt's patch_size, depth,
  // class_token, mean_pool and drop_path, expander_norm.
  EXPECT_EQ(k.size(), 62u);
  const TrainConfig other = changed_everywhere(c);
  const nlohmann::json j = vicreg::to_json(other);
  TrainConfig back;
  vicreg::update_from_json(back, j);
  EXPECT_EQ(vicreg::to_json(back), j);
  EXPECT_EQ(vicreg::differing_settings(back, c).size(),
            vicreg::differing_settings(other, c).size());
}

TEST(Config, JsonHoldsOneObjectPerSection) {
  TrainConfig c;
  c.optim.epochs = 3;
  c.model.arch_b = "resnet18";
  const nlohmann::json j = vicreg::to_json(c);
  for (const char* section : {"data", "model", "optim", "loss", "runtime", "distributed"}) {
    EXPECT_TRUE(j.at(section).is_object()) << section;
  }
  EXPECT_EQ(j["optim"]["epochs"], 3);
  EXPECT_EQ(j["data"]["dataset"], "fashion-mnist");
  EXPECT_EQ(j["model"]["arch_b"], "resnet18");
  EXPECT_EQ(j["seed"], 0);
  // No second backbone: "" (vicreg 0.3 wrote null, which reads as "").
  EXPECT_EQ(vicreg::to_json(TrainConfig{})["model"]["arch_b"], "");
  TrainConfig from_null;
  from_null.model.arch_b = "resnet18";
  vicreg::update_from_json(from_null, {{"model", {{"arch_b", nullptr}}}});
  EXPECT_TRUE(from_null.model.arch_b.empty());
  // A name no backbone family has is refused when the file is read.
  EXPECT_THROW(vicreg::update_from_json(from_null, {{"model", {{"arch", "vgg"}}}}),
               vicreg::UsageError);
}

TEST(Config, FlatKeysAndSectionsBothRead) {
  TrainConfig c;
  vicreg::update_from_json(c, {{"epochs", 3}, {"model", {{"mlp", "8-8"}}}, {"arch_b", ""}});
  EXPECT_EQ(c.optim.epochs, 3);
  EXPECT_EQ(c.model.mlp, "8-8");
  EXPECT_TRUE(c.model.arch_b.empty());
  // vicreg 0.1's flat config.json, as a checkpoint of that version stores it.
  vicreg::update_from_json(c, nlohmann::json::parse(R"({"dataset": "mnist", "arch": "convnet",
      "arch_b": "", "optimizer": "lars", "loss_preset": "paper", "dist_backend": "gloo",
      "data_dir": "/d", "seed": 4})"));
  EXPECT_EQ(c.data.dataset, vicreg::DatasetKind::Mnist);
  EXPECT_EQ(c.optim.optimizer, vicreg::OptimizerKind::Lars);
  EXPECT_EQ(c.loss.loss_preset, vicreg::LossPreset::Paper);
  EXPECT_EQ(c.distributed.dist_backend, vicreg::DistBackend::Gloo);
  EXPECT_EQ(c.runtime.data_dir, "/d");
  EXPECT_EQ(c.seed, 4u);
}

TEST(Config, BadJsonIsNamed) {
  struct Case {
    nlohmann::json j;
    const char* message;
  };
  const Case cases[] = {
      {{{"epochz", 3}}, "unknown key 'epochz'"},
      {{{"epochs", "three"}}, "key 'epochs' has a wrong value"},
      {{{"epochs", 2.5}}, "expected an integer"},
      {{{"seed", -1}}, "expected an integer >= 0"},
      {{{"threads", int64_t{1} << 40}}, "out of range"},
      {{{"optimizer", "adam"}}, "unknown --optimizer 'adam': use lars, adamw or sgd"},
      {{{"optimizer", 1}}, "expected one of lars, adamw or sgd"},
      {{{"model", {{"epochs", 3}}}}, "unknown key 'epochs' in section 'model'"},
      {{{"model", 3}}, "section 'model' must be a JSON object"},
      {nlohmann::json::array(), "expected a JSON object"},
  };
  for (const Case& c : cases) {
    TrainConfig config;
    try {
      vicreg::update_from_json(config, c.j);
      ADD_FAILURE() << "accepted " << c.j.dump();
    } catch (const vicreg::UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos)
          << c.j.dump() << ": " << e.what();
    }
  }
}

TEST(Config, DeeplyNestedConfigFilesAreRefusedNotRecursedInto) {
  const std::string path = std::filesystem::temp_directory_path() / "vicreg_deep_config.json";
  std::ofstream(path) << "{\"epochs\": " << std::string(100000, '[') << std::string(100000, ']')
                      << "}";
  try {
    vicreg::read_config_file(path);
    ADD_FAILURE() << "accepted a 100,000-deep config";
  } catch (const vicreg::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("nested deeper than 1000 levels"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  std::ofstream(path) << "{\"epochs\": [[[1]]]}";  // shallow: a plain wrong value
  EXPECT_THROW(vicreg::read_config_file(path), vicreg::UsageError);
  std::filesystem::remove(path);
}

TEST(Config, ResumeTakesTheCheckpointsSectionsAndTheCommandLinesRuntime) {
  // Decided by structure: every setting of the data, model, optim and loss sections and the seed
  // comes from the checkpoint, every runtime and distributed setting from the command line. A
  // new setting needs no change here: it is checked through its section.
  const TrainConfig stored;
  const TrainConfig given = changed_everywhere(stored);
  const TrainConfig merged = vicreg::config_for_resume(stored, given);
  const nlohmann::json m = vicreg::to_json(merged), s = vicreg::to_json(stored),
                       g = vicreg::to_json(given);
  int checked = 0;
  vicreg::for_each_setting(merged, [&](const Setting& setting, const auto&) {
    const auto at = [&](const nlohmann::json& j) {
      return setting.section == Section::Seed ? j[setting.key]
                                              : j[vicreg::to_string(setting.section)][setting.key];
    };
    const bool from_command_line = vicreg::decided_by_command_line(setting.section);
    EXPECT_EQ(at(m), at(from_command_line ? g : s)) << setting.key;
    if (setting.choices == nullptr || setting.choices().size() > 1) {
      EXPECT_NE(at(g), at(s)) << setting.key << " was not changed by the test";
    }
    ++checked;
  });
  EXPECT_EQ(checked, 62);
  // An empty data_dir keeps where the run found its data.
  TrainConfig with_dir = stored;
  with_dir.runtime.data_dir = "/data/fm";
  EXPECT_EQ(vicreg::config_for_resume(with_dir, TrainConfig{}).runtime.data_dir, "/data/fm");
  with_dir.runtime.val_dir = "/data/val";
  EXPECT_EQ(vicreg::config_for_resume(with_dir, TrainConfig{}).runtime.val_dir, "/data/val");
  // Only the checkpoint's sections are named as overridden.
  const std::vector<std::string> named = vicreg::differing_settings(given, merged);
  EXPECT_EQ(named.size(), 37u);  // data 7, model 15, optim 10, loss 4, seed 1
  for (const std::string& n : named) {
    EXPECT_EQ(n.find("--threads"), std::string::npos) << n;
    EXPECT_EQ(n.find("--data-dir"), std::string::npos) << n;
  }
}

TEST(Config, ValidateNamesTheSettingAndTheCliItsFlag) {
  struct Case {
    void (*change)(TrainConfig&);
    const char* message;
  };
  // The library names settings by key; SettingError::settings lists them and with_flag_names
  // gives the CLI's wording.
  const Case cases[] = {
      {[](TrainConfig& c) { c.optim.batch_size = 1; }, "--batch-size must be at least 2"},
      {[](TrainConfig& c) { c.optim.epochs = 0; }, "--epochs must be at least 1"},
      {[](TrainConfig& c) { c.optim.base_lr = -1; }, "--base-lr must be > 0"},
      {[](TrainConfig& c) { c.model.mlp = "8-x"; }, "8-x"},
      {[](TrainConfig& c) { c.model.final_conv = -1; }, "--final-conv must be in [0, 65536]"},
      {[](TrainConfig& c) { c.model.arch = "mlp"; }, "--arch mlp is for vector data"},
      {[](TrainConfig& c) { c.model.arch = "vgg"; }, "unknown backbone 'vgg': use resnet18"},
      {[](TrainConfig& c) { c.model.arch_b = "resnet18"; }, "--arch-b needs --no-shared-weights"},
      {[](TrainConfig& c) { c.loss.objective = "simclr"; },
       "unknown --objective 'simclr': use vicreg"},
      {[](TrainConfig& c) { c.data.recipe = "simclr"; }, "unknown --recipe 'simclr'"},
      {[](TrainConfig& c) { c.runtime.device = "tpu"; }, "--device must be cpu or cuda"},
      {[](TrainConfig& c) { c.distributed.dist_timeout = 0; }, "--dist-timeout"},
      {[](TrainConfig& c) { c.data.holdout = 1; }, "--holdout must be in [0, 1)"},
      {[](TrainConfig& c) { c.data.holdout = std::nan(""); }, "--holdout must be in [0, 1)"},
      {[](TrainConfig& c) {
         c.data.holdout = 0.1;
         c.runtime.val_dir = "/v";
       },
       "--holdout and --val-dir both"},
      {[](TrainConfig& c) { c.data.classes = "c.txt"; }, "it is for --dataset image-folder"},
      {[](TrainConfig& c) { c.data.recipe_overrides = "blur=2"; },
       "blur probability must be a probability in [0, 1], got 2.000000 (in --recipe-overrides "
       "'blur=2')"},
      {[](TrainConfig& c) { c.data.recipe_overrides = "sharpen=1"; },
       "--recipe-overrides 'sharpen=1': expected"},
      {[](TrainConfig& c) {
         c.data.dataset = vicreg::DatasetKind::Npy;
         c.model.arch = "mlp";
         c.data.recipe_overrides = "flip=0";
       },
       "--recipe-overrides changes image views"},
  };
  for (const Case& c : cases) {
    TrainConfig config;
    c.change(config);
    try {
      config.validate();
      ADD_FAILURE() << "accepted: " << c.message;
    } catch (const vicreg::UsageError& e) {
      const std::string library = e.what(), cli = vicreg::with_flag_names(e);
      EXPECT_NE(cli.find(c.message), std::string::npos) << cli;
      EXPECT_EQ(library.find("--"), std::string::npos)
          << "a flag in a library message: " << library;
      if (std::string(c.message).find("--") != std::string::npos) {
        EXPECT_FALSE(e.settings().empty()) << library;
      }
    }
  }
  EXPECT_NO_THROW(TrainConfig{}.validate());
}

TEST(Config, TheCliSaysTheSettingsOfAnErrorAsItsFlags) {
  const vicreg::UsageError e(
      "batch_size 9 over online_probe off, shared_weights off, max_batch_size and batch_sizes; "
      "batch_size",
      {"batch_size", "online_probe", "shared_weights"});
  // Whole words only; a switch's "off" is its --no- flag, a choice's "off" its value.
  EXPECT_EQ(vicreg::with_flag_names(e),
            "--batch-size 9 over --online-probe off, --no-shared-weights, max_batch_size and "
            "batch_sizes; --batch-size");
  EXPECT_EQ(vicreg::with_flag_names(vicreg::FormatError("batch_size")), "batch_size");
}

TEST(Config, TheModulesOptionsComeFromTheTree) {
  TrainConfig c;
  c.optim.optimizer = vicreg::OptimizerKind::Lars;
  c.optim.base_lr = 0.3;
  c.optim.batch_size = 512;
  c.optim.epochs = 10;
  c.optim.warmup_epochs = 2;
  const vicreg::WarmupCosineSchedule s = c.schedule(100);
  EXPECT_DOUBLE_EQ(s.peak_lr, 0.6);  // LARS scales with the batch
  EXPECT_EQ(s.total_steps, 1000);
  EXPECT_EQ(s.warmup_steps, 200);
  c.optim.optimizer = vicreg::OptimizerKind::AdamW;
  EXPECT_DOUBLE_EQ(c.schedule(100).peak_lr, 0.3);  // AdamW does not
  c.loss.loss_preset = vicreg::LossPreset::Paper;
  c.loss.cov_coeff = 0.5;
  EXPECT_EQ(c.loss_options().preset(), vicreg::LossPreset::Paper);
  EXPECT_DOUBLE_EQ(c.loss_options().cov_coeff(), 0.5);
  // The objective of the loss section, with its settings; its terms by name.
  const auto objective = c.objective(/*check_finite=*/false);
  const auto* vicreg_objective = dynamic_cast<const vicreg::VICRegObjective*>(objective.get());
  ASSERT_NE(vicreg_objective, nullptr);
  EXPECT_DOUBLE_EQ(vicreg_objective->options().cov_coeff(), 0.5);
  EXPECT_FALSE(vicreg_objective->options().check_finite());
  EXPECT_EQ(&objective->terms(), &vicreg::objective_terms("vicreg"));
  EXPECT_EQ(vicreg::objective_names(), (std::vector<std::string>{"vicreg"}));
  EXPECT_THROW(vicreg::objective_terms("simclr"), vicreg::UsageError);
  c.runtime.workers = 3;
  c.seed = 9;
  const vicreg::LoaderOptions lo = c.loader_options(1, 4);
  EXPECT_EQ(lo.batch_size, 512);
  EXPECT_EQ(lo.workers, 3);
  EXPECT_EQ(lo.seed, 9u);
  EXPECT_EQ(lo.shard_rank, 1);
  EXPECT_EQ(lo.shard_count, 4);
  c.runtime.data_dir = "/d";
  const vicreg::DatasetConfig dc = c.dataset_config(vicreg::Split::Test);
  EXPECT_EQ(dc.data_dir, "/d");
  EXPECT_EQ(dc.split, vicreg::Split::Test);
  EXPECT_EQ(c.resolved_recipe(), "fashion-mnist");
  c.data.dataset = vicreg::DatasetKind::Cifar100;
  EXPECT_EQ(c.resolved_recipe(), "cifar");
  c.data.dataset = vicreg::DatasetKind::ImageFolder;
  EXPECT_EQ(c.resolved_recipe(), "imagenet");
}

TEST(Names, ParsePrintAndNameTheChoices) {
  EXPECT_EQ(vicreg::backbone_family("resnet50").name, "resnet");
  EXPECT_THROW(vicreg::backbone_family("resnet99"), vicreg::UsageError);
  EXPECT_EQ(vicreg::to_string(vicreg::DatasetKind::ImageFolder), "image-folder");
  EXPECT_EQ(vicreg::names_of<vicreg::DistBackend>(),
            (std::vector<std::string>{"auto", "gloo", "nccl"}));
  try {
    vicreg::parse_name<vicreg::DatasetKind>("imagenet");
    FAIL() << "expected an error";
  } catch (const vicreg::UsageError& e) {
    EXPECT_STREQ(e.what(),
                 "unknown --dataset 'imagenet': use fashion-mnist, mnist, cifar10, cifar100, "
                 "image-folder or npy");
  }
}

// ---------------------------------------------------------------------------------------------
// The CLI's flags, parsed in process (apps/vicreg/commands.h)

TEST(TrainFlags, EveryFlagSetsItsSetting) {
  // Each setting's flag, given the value changed_everywhere() picks, sets exactly that value.
  const TrainConfig target = changed_everywhere(TrainConfig{});
  const nlohmann::json j = vicreg::to_json(target);
  std::vector<std::string> args;
  vicreg::for_each_setting(target, [&](const Setting& s, const auto& field) {
    using T = std::decay_t<decltype(field)>;
    const std::string flag = vicreg::flag_name(s.key);
    if constexpr (std::is_same_v<T, bool>) {
      args.push_back(field ? flag : "--no-" + flag.substr(2));
    } else {
      const nlohmann::json& value =
          s.section == Section::Seed ? j.at(s.key) : j.at(vicreg::to_string(s.section)).at(s.key);
      args.push_back(flag);
      args.push_back(value.is_string() ? value.get<std::string>()
                     : value.is_null() ? std::string()
                                       : value.dump());
    }
  });
  const TrainConfig parsed = vicreg::cli::parse_train_config(args);
  EXPECT_EQ(vicreg::to_json(parsed), vicreg::to_json(target));
}

TEST(TrainFlags, DefaultsConfigFileAndOverrides) {
  EXPECT_EQ(vicreg::to_json(vicreg::cli::parse_train_config({})), vicreg::to_json(TrainConfig{}));
  const TrainConfig c =
      vicreg::cli::parse_train_config({"--epochs", "3", "--epochs", "5", "--no-sync-bn",
                                       "--dataset=cifar10", "--arch-b", "resnet18"});
  EXPECT_EQ(c.optim.epochs, 5);  // the last one wins
  EXPECT_FALSE(c.distributed.sync_bn);
  EXPECT_EQ(c.data.dataset, vicreg::DatasetKind::Cifar10);
  EXPECT_EQ(c.model.arch_b, "resnet18");
  EXPECT_THROW(vicreg::cli::parse_train_config({"--arch", "vgg"}), CLI::ValidationError);
  EXPECT_THROW(vicreg::cli::parse_train_config({"--frobnicate"}), CLI::ParseError);
  EXPECT_THROW(vicreg::cli::parse_train_config({"--epochs", "x"}), CLI::ParseError);
  EXPECT_THROW(vicreg::cli::parse_train_config({"--config", "/nonexistent.json"}),
               vicreg::FormatError);
}

}  // namespace
