// View transforms: augmentations of uint8 images with OpenCV (the reference's torchvision/PIL
// pipeline, op by op), the named recipes, and augmentations of vectors.
//
// Images are cv::Mat of CV_8UC1 (grayscale) or CV_8UC3 in RGB order. Every random op draws from
// the Rng it is given and from nothing else, so a view is a pure function of (image, seed).
#pragma once

#include "vicreg/error.h"

#include <opencv2/core/mat.hpp>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace vicreg {

using Rng = std::mt19937_64;

/// A seed for sample `index` of `epoch` under the run's `seed` (splitmix64 of the three):
/// independent of which thread produces the sample.
uint64_t sample_seed(uint64_t seed, int64_t epoch, int64_t index);

// ---------------------------------------------------------------------------------------------
// Deterministic building blocks (each as torchvision's functional op of the same name)

/// "nearest", "bilinear", "bicubic", "area" -> cv::INTER_*; throws std::invalid_argument else.
int interpolation_from_string(const std::string& name);

/// out = clamp(img * factor)
void adjust_brightness(cv::Mat& img, double factor);
/// out = clamp(factor * img + (1 - factor) * mean(grayscale(img)))
void adjust_contrast(cv::Mat& img, double factor);
/// out = clamp(factor * img + (1 - factor) * grayscale(img)); no-op on 1-channel images.
void adjust_saturation(cv::Mat& img, double factor);
/// Rotates the hue by shift turns, shift in [-0.5, 0.5]; no-op on 1-channel images.
void adjust_hue(cv::Mat& img, double shift);
/// Luma (ITU-R 601) copied into every channel.
void to_grayscale(cv::Mat& img);
/// Pixels >= threshold become 255 - pixel.
void solarize(cv::Mat& img, int threshold = 128);
/// Gaussian blur with standard deviation sigma (kernel 2 * ceil(3 sigma) + 1).
void gaussian_blur(cv::Mat& img, double sigma);
/// Mirror left-right.
void hflip(cv::Mat& img);
/// uint8 HWC -> float, (x / 255 - mean[c]) / std[c]. mean and std have one entry per channel.
/// out: [C, H, W] float32, contiguous; with `hwc`, [H, W, C] (the bytes of a channels_last
/// [C, H, W] tensor).
void normalize_into(const cv::Mat& img, const std::vector<float>& mean,
                    const std::vector<float>& std, float* out, bool hwc = false);

// ---------------------------------------------------------------------------------------------
// Random ops

/// torchvision's RandomResizedCrop: up to 10 tries at an area fraction in `scale` and a log-uniform
/// aspect ratio in `ratio`, else a centre crop clamped to `ratio`; then a resize to size x size.
struct RandomResizedCrop {
  int size = 224;
  double scale_min = 0.08, scale_max = 1.0;
  double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;
  int interpolation = 2;  // cv::INTER_CUBIC

  /// The crop rectangle for an image of height x width.
  cv::Rect sample(int height, int width, Rng& rng) const;
  cv::Mat operator()(const cv::Mat& img, Rng& rng) const;
};

/// torchvision's ColorJitter: factors drawn from [max(0, 1 - b), 1 + b] (brightness, contrast,
/// saturation) and [-hue, hue], applied in a random order.
struct ColorJitter {
  double brightness = 0.4, contrast = 0.4, saturation = 0.2, hue = 0.1;
  void operator()(cv::Mat& img, Rng& rng) const;
};

/// One view: crop, then each op with its probability, then normalisation to float CHW.
struct ViewConfig {
  RandomResizedCrop crop;
  double flip_p = 0.5;
  ColorJitter jitter;
  double jitter_p = 0.8;
  double grayscale_p = 0.2;
  double blur_p = 1.0;
  double blur_sigma_min = 0.1, blur_sigma_max = 2.0;
  double solarize_p = 0.0;
  int solarize_threshold = 128;
  std::vector<float> mean = {0.485f, 0.456f, 0.406f};
  std::vector<float> std = {0.229f, 0.224f, 0.225f};

  /// Throws std::invalid_argument naming the field unless every probability is in [0, 1], the
  /// ranges are ordered and positive, and mean/std match `channels` (std > 0).
  void validate(int channels) const;
  /// img: uint8 [H, W] or [H, W, 3]; out: [C, size, size] float32 ([size, size, C] with `hwc`).
  void apply(const cv::Mat& img, Rng& rng, float* out, bool hwc = false) const;
};

/// The two views' settings: asymmetric probabilities as in the reference.
struct Recipe {
  std::string name;
  ViewConfig view_a, view_b;
};

/// "imagenet" (the reference, 224 px), "cifar" (solo-learn's, 32 px), "fashion-mnist" (28 px
/// grayscale). `channels` picks the normalisation statistics' length (grayscale data gets the
/// mean of the RGB statistics for the RGB recipes); `size` > 0 overrides the crop size, and
/// `overrides` (override_recipe) any of the views' settings. Throws UsageError for an unknown
/// name or an override that is malformed or out of range.
Recipe make_recipe(const std::string& name, int channels, int size = 0,
                   const std::string& overrides = "");
/// Sets views' settings from "key=value" items separated by commas or spaces, e.g.
/// "crop_scale=0.4, solarize=0/0.2": one value sets both views, "a/b" the first and the second.
/// Keys (recipe_override_keys()): crop_scale (the smallest crop's fraction of the image's area),
/// brightness, contrast, saturation, hue (colour jitter strengths), and the probabilities flip,
/// jitter, grayscale, blur, solarize. Throws UsageError naming a malformed item; the values'
/// ranges are checked by ViewConfig::validate.
void override_recipe(Recipe& recipe, const std::string& spec);
const std::vector<std::string>& recipe_override_keys();
/// The spec that sets every key of recipe_override_keys() to `recipe`'s values ("a/b" where the
/// views differ). A run records it, so that it resumes with the views it was trained on whatever
/// a recipe's defaults become.
std::string recipe_override_spec(const Recipe& recipe);
const std::vector<std::string>& recipe_names();

// ---------------------------------------------------------------------------------------------
// Vector data

/// Augmentations for rows of a feature matrix, applied in this order: mixing with another row
/// (x = (1 - w) x + w other, w ~ U(0, mix_max), with probability mix_p), feature masking (each
/// feature zeroed with probability mask_p), Gaussian noise (std noise_std, in feature units).
struct VectorAugment {
  double mix_p = 0.5, mix_max = 0.3;
  double mask_p = 0.2;
  double noise_std = 0.1;

  void validate() const;
  /// x, other, out: [features] float32 (out may alias x).
  void apply(const float* x, const float* other, int64_t features, Rng& rng, float* out) const;
};

}  // namespace vicreg
