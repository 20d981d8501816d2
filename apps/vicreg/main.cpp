// vicreg: the command-line front end. Parses arguments, calls the library, turns errors into
// messages and exit codes; nothing else.
//
//   vicreg bench-loss [--shapes NxD,...] [--threads N] [--device cpu|cuda] [--dtype float|...]
//                     [--preset official|paper] [--min-time S] [--no-reference] [--json FILE]
#include "vicreg/loss.h"
#include "vicreg/profile.h"
#include "vicreg/runtime.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/cuda.h>
#include <torch/version.h>

#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

namespace {

using Shape = std::pair<int64_t, int64_t>;

struct BenchLossArgs {
  std::vector<std::string> shapes = {"256x2048", "512x8192", "2048x8192", "2048x512", "4096x256"};
  int threads = 0;
  std::string device = "cpu";
  std::string dtype = "float";
  std::string preset = "official";
  double min_time = 1.0;
  bool no_reference = false;
  std::string json;
};

Shape parse_shape(const std::string& text) {
  const auto x = text.find('x');
  size_t used_n = 0, used_d = 0;
  long long n = 0, d = 0;
  try {
    if (x == std::string::npos) throw std::invalid_argument("no x");
    n = std::stoll(text.substr(0, x), &used_n);
    d = std::stoll(text.substr(x + 1), &used_d);
  } catch (const std::exception&) {
    used_n = 0;
  }
  if (used_n == 0 || used_n != x || used_d != text.size() - x - 1 || n < 2 || d < 1) {
    throw std::invalid_argument("--shapes: '" + text +
                                "' is not NxD with N >= 2 rows and D >= 1 columns, e.g. 512x8192");
  }
  return {n, d};
}

torch::Dtype parse_dtype(const std::string& name) {
  static const std::map<std::string, torch::Dtype> kDtypes = {{"float", torch::kFloat},
                                                             {"double", torch::kDouble},
                                                             {"half", torch::kHalf},
                                                             {"bfloat16", torch::kBFloat16}};
  return kDtypes.at(name);  // CLI11 has already restricted the choices
}

torch::Device parse_device(const std::string& name) {
  const torch::Device device(name);
  if (device.is_cuda() && !torch::cuda::is_available()) {
    throw std::invalid_argument("--device " + name +
                                ": no CUDA device is available to this LibTorch build (use "
                                "--device cpu, or build against a CUDA LibTorch)");
  }
  return device;
}

int run_bench_loss(const BenchLossArgs& args) {
  std::vector<Shape> shapes;
  for (const auto& s : args.shapes) shapes.push_back(parse_shape(s));
  const torch::Device device = parse_device(args.device);
  const torch::Dtype dtype = parse_dtype(args.dtype);
  const vicreg::LossPreset preset = vicreg::loss_preset_from_string(args.preset);
  if (device.is_cpu() && (dtype == torch::kHalf || dtype == torch::kBFloat16) &&
      !args.no_reference) {
    throw std::invalid_argument(
        "--dtype " + args.dtype + " on cpu: the reference formulation computes in the input "
        "dtype, and LibTorch lacks " + args.dtype + " CPU kernels for it; add --no-reference to "
        "time the fused loss alone (it accumulates in float)");
  }
  vicreg::set_threads(args.threads);
  std::printf("%s\n", vicreg::describe_runtime().c_str());
  std::printf("forward + backward of the VICReg loss, %s preset, %s on %s; reference: d x d "
              "covariance, off-diagonal by masking\n\n",
              args.preset.c_str(), args.dtype.c_str(), device.str().c_str());
  std::printf("%6s %6s %12s %12s %9s %12s %12s %12s %12s\n", "n", "d", "fused ms", "ref ms",
              "speed-up", "fused GF/s", "ref GF/s", "fused MB", "ref MB");

  nlohmann::json results = nlohmann::json::array();
  std::vector<vicreg::LossImplementation> impls = {vicreg::LossImplementation::Fused};
  if (!args.no_reference) impls.push_back(vicreg::LossImplementation::Reference);
  for (const auto& [n, d] : shapes) {
    nlohmann::json row = {{"n", n}, {"d", d}};
    std::map<vicreg::LossImplementation, std::pair<double, double>> measured;  // s, bytes
    for (auto impl : impls) {
      auto w = vicreg::make_loss_workload(n, d, impl, device, dtype);
      w.options.preset(preset);
      const double peak = static_cast<double>(vicreg::loss_step_peak_bytes(w));
      const auto timing = vicreg::time_loss_steps(w, 3, args.min_time);
      measured[impl] = {timing.median_seconds, peak};
      row[vicreg::to_string(impl)] = {{"median_ms", timing.median_seconds * 1e3},
                                      {"min_ms", timing.min_seconds * 1e3},
                                      {"iterations", timing.iterations},
                                      {"gflops", vicreg::loss_step_flops(w) /
                                                     timing.median_seconds / 1e9},
                                      {"peak_bytes", peak}};
    }
    const auto& f = row["fused"];
    if (args.no_reference) {
      std::printf("%6lld %6lld %12.2f %12s %9s %12.1f %12s %12.1f %12s\n",
                  static_cast<long long>(n), static_cast<long long>(d),
                  f["median_ms"].get<double>(), "-", "-", f["gflops"].get<double>(), "-",
                  f["peak_bytes"].get<double>() / 1e6, "-");
    } else {
      const auto& r = row["reference"];
      const double speedup = r["median_ms"].get<double>() / f["median_ms"].get<double>();
      row["speedup"] = speedup;
      row["peak_ratio"] = f["peak_bytes"].get<double>() / r["peak_bytes"].get<double>();
      std::printf("%6lld %6lld %12.2f %12.2f %8.1fx %12.1f %12.1f %12.1f %12.1f\n",
                  static_cast<long long>(n), static_cast<long long>(d),
                  f["median_ms"].get<double>(), r["median_ms"].get<double>(), speedup,
                  f["gflops"].get<double>(), r["gflops"].get<double>(),
                  f["peak_bytes"].get<double>() / 1e6, r["peak_bytes"].get<double>() / 1e6);
    }
    std::fflush(stdout);
    results.push_back(row);
  }
  if (!args.json.empty()) {
    const nlohmann::json doc = {{"command", "bench-loss"},
                                {"runtime", vicreg::describe_runtime()},
                                {"device", device.str()},
                                {"dtype", args.dtype},
                                {"preset", args.preset},
                                {"results", results}};
    std::ofstream out(args.json);
    if (!out || !(out << doc.dump(2) << "\n")) {
      throw std::runtime_error("--json: cannot write '" + args.json +
                               "' (does its directory exist and is it writable?)");
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vicreg: self-supervised representation learning with VICReg (Bardes, Ponce & "
               "LeCun, 2022), on LibTorch"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("vicreg ") + VICREG_VERSION + " (LibTorch " +
                                        TORCH_VERSION + ")");

  BenchLossArgs bench;
  CLI::App* bench_cmd = app.add_subcommand(
      "bench-loss",
      "Time forward + backward of the fused VICReg loss against the reference formulation "
      "(d x d covariance, off-diagonal by masking), with GFLOP/s and peak memory");
  bench_cmd->add_option("--shapes", bench.shapes, "Shapes NxD (batch x embedding dimension)")
      ->delimiter(',')
      ->capture_default_str();
  bench_cmd->add_option("--threads", bench.threads, "Intra-op threads (0: one per core)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  bench_cmd->add_option("--device", bench.device, "Device: cpu, cuda or cuda:N")
      ->capture_default_str();
  bench_cmd->add_option("--dtype", bench.dtype, "Embedding dtype")
      ->check(CLI::IsMember({"float", "double", "half", "bfloat16"}))
      ->capture_default_str();
  bench_cmd->add_option("--preset", bench.preset, "Loss preset")
      ->check(CLI::IsMember({"official", "paper"}))
      ->capture_default_str();
  bench_cmd->add_option("--min-time", bench.min_time,
                        "Seconds to time each case at least (after 3 steps and one warm-up)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  bench_cmd->add_flag("--no-reference", bench.no_reference, "Time the fused loss only");
  bench_cmd->add_option("--json", bench.json, "Also write the results to this JSON file");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (bench_cmd->parsed()) return run_bench_loss(bench);
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "vicreg: error: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vicreg: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
