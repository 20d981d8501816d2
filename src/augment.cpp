#include "vicreg/augment.h"

#include "vicreg/error.h"

#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <stdexcept>

namespace vicreg {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

double uniform(Rng& rng, double lo, double hi) {
  return std::uniform_real_distribution<double>(lo, hi)(rng);
}

bool coin(Rng& rng, double p) {
  // Draw even when p is 0 or 1, so that the random stream does not depend on the settings.
  const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
  return u < p;
}

void check_image(const cv::Mat& img, const char* op) {
  if (img.depth() != CV_8U || (img.channels() != 1 && img.channels() != 3) || img.empty()) {
    throw UsageError(std::string(op) + ": expected a non-empty uint8 image with 1 or 3 channels");
  }
}

void apply_lut(cv::Mat& img, const std::array<uint8_t, 256>& table) {
  const cv::Mat lut(1, 256, CV_8U, const_cast<uint8_t*>(table.data()));
  cv::LUT(img, lut, img);
}

/// 0.299 R + 0.587 G + 0.114 B as float, like torchvision's rgb_to_grayscale.
double gray_mean(const cv::Mat& img) {
  const cv::Scalar m = cv::mean(img);
  return img.channels() == 1 ? m[0] : 0.299 * m[0] + 0.587 * m[1] + 0.114 * m[2];
}

void check_prob(double p, const char* name) {
  if (!(p >= 0.0 && p <= 1.0)) {
    throw UsageError(std::string(name) + " must be a probability in [0, 1], got " +
                     std::to_string(p));
  }
}

void check_range(double lo, double hi, const char* name, double min_lo) {
  if (!(lo >= min_lo && lo <= hi && std::isfinite(hi))) {
    throw UsageError(std::string(name) +
                     " must be an ordered range with lower end >= " + std::to_string(min_lo) +
                     ", got (" + std::to_string(lo) + ", " + std::to_string(hi) + ")");
  }
}

}  // namespace

uint64_t sample_seed(uint64_t seed, int64_t epoch, int64_t index) {
  return splitmix64(splitmix64(splitmix64(seed) ^ static_cast<uint64_t>(epoch)) ^
                    static_cast<uint64_t>(index));
}

int interpolation_from_string(const std::string& name) {
  if (name == "nearest") return cv::INTER_NEAREST;
  if (name == "bilinear") return cv::INTER_LINEAR;
  if (name == "bicubic") return cv::INTER_CUBIC;
  if (name == "area") return cv::INTER_AREA;
  throw UsageError("unknown interpolation '" + name + "': use nearest, bilinear, bicubic or area");
}

// ---------------------------------------------------------------------------------------------
// Deterministic ops

void adjust_brightness(cv::Mat& img, double factor) {
  check_image(img, "adjust_brightness");
  img.convertTo(img, -1, factor, 0.0);  // saturating
}

void adjust_contrast(cv::Mat& img, double factor) {
  check_image(img, "adjust_contrast");
  img.convertTo(img, -1, factor, (1.0 - factor) * gray_mean(img));
}

void adjust_saturation(cv::Mat& img, double factor) {
  check_image(img, "adjust_saturation");
  if (img.channels() == 1) return;
  cv::Mat gray, gray3;
  cv::cvtColor(img, gray, cv::COLOR_RGB2GRAY);
  cv::cvtColor(gray, gray3, cv::COLOR_GRAY2RGB);
  cv::addWeighted(img, factor, gray3, 1.0 - factor, 0.0, img);
}

void adjust_hue(cv::Mat& img, double shift) {
  check_image(img, "adjust_hue");
  if (!(shift >= -0.5 && shift <= 0.5)) {
    throw UsageError("adjust_hue: shift must be in [-0.5, 0.5], got " + std::to_string(shift));
  }
  if (img.channels() == 1) return;
  // HSV_FULL maps the hue circle onto 0..255, so a rotation is an addition modulo 256.
  cv::Mat hsv;
  cv::cvtColor(img, hsv, cv::COLOR_RGB2HSV_FULL);
  const int delta = static_cast<int>(std::lround(shift * 256.0));
  std::array<uint8_t, 256> table{};
  for (int i = 0; i < 256; ++i) table[i] = static_cast<uint8_t>((i + delta + 256) & 255);
  const cv::Mat lut(1, 256, CV_8U, table.data());
  cv::Mat channels[3];
  cv::split(hsv, channels);
  cv::LUT(channels[0], lut, channels[0]);
  cv::merge(channels, 3, hsv);
  cv::cvtColor(hsv, img, cv::COLOR_HSV2RGB_FULL);
}

void to_grayscale(cv::Mat& img) {
  check_image(img, "to_grayscale");
  if (img.channels() == 1) return;
  cv::Mat gray;
  cv::cvtColor(img, gray, cv::COLOR_RGB2GRAY);
  cv::cvtColor(gray, img, cv::COLOR_GRAY2RGB);
}

void solarize(cv::Mat& img, int threshold) {
  check_image(img, "solarize");
  std::array<uint8_t, 256> table{};
  for (int i = 0; i < 256; ++i) table[i] = static_cast<uint8_t>(i >= threshold ? 255 - i : i);
  apply_lut(img, table);
}

void gaussian_blur(cv::Mat& img, double sigma) {
  check_image(img, "gaussian_blur");
  if (!(sigma > 0.0)) throw UsageError("gaussian_blur: sigma must be > 0");
  const int k = 2 * static_cast<int>(std::ceil(3.0 * sigma)) + 1;
  cv::GaussianBlur(img, img, cv::Size(k, k), sigma, sigma, cv::BORDER_REFLECT_101);
}

void hflip(cv::Mat& img) {
  check_image(img, "hflip");
  cv::flip(img, img, 1);
}

void normalize_into(const cv::Mat& img, const std::vector<float>& mean,
                    const std::vector<float>& std, float* out, bool hwc) {
  check_image(img, "normalize");
  const int c = img.channels();
  if (static_cast<int>(mean.size()) != c || static_cast<int>(std.size()) != c) {
    throw UsageError("normalize: " + std::to_string(c) + "-channel image but mean/std have " +
                     std::to_string(mean.size()) + "/" + std::to_string(std.size()) + " entries");
  }
  // One table per channel: 256 values, so the per-pixel work is a lookup.
  std::vector<std::array<float, 256>> table(c);
  for (int ch = 0; ch < c; ++ch) {
    for (int v = 0; v < 256; ++v) table[ch][v] = (v / 255.0f - mean[ch]) / std[ch];
  }
  const int h = img.rows, w = img.cols;
  const int64_t plane = static_cast<int64_t>(h) * w;
  if (hwc || c == 1) {  // the image's own layout: one pass, row by row
    for (int y = 0; y < h; ++y) {
      const uint8_t* row = img.ptr<uint8_t>(y);
      float* dst = out + static_cast<int64_t>(y) * w * c;
      for (int x = 0; x < w; ++x) {
        for (int ch = 0; ch < c; ++ch) dst[x * c + ch] = table[ch][row[x * c + ch]];
      }
    }
    return;
  }
  for (int y = 0; y < h; ++y) {
    const uint8_t* row = img.ptr<uint8_t>(y);
    for (int ch = 0; ch < c; ++ch) {
      float* dst = out + ch * plane + static_cast<int64_t>(y) * w;
      const auto& t = table[ch];
      for (int x = 0; x < w; ++x) dst[x] = t[row[x * c + ch]];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Random ops

cv::Rect RandomResizedCrop::sample(int height, int width, Rng& rng) const {
  const double area = static_cast<double>(height) * width;
  const double log_lo = std::log(ratio_min), log_hi = std::log(ratio_max);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target = area * uniform(rng, scale_min, scale_max);
    const double aspect = std::exp(uniform(rng, log_lo, log_hi));
    const int w = static_cast<int>(std::lround(std::sqrt(target * aspect)));
    const int h = static_cast<int>(std::lround(std::sqrt(target / aspect)));
    if (w > 0 && h > 0 && w <= width && h <= height) {
      const int top = std::uniform_int_distribution<int>(0, height - h)(rng);
      const int left = std::uniform_int_distribution<int>(0, width - w)(rng);
      return {left, top, w, h};
    }
  }
  // Fallback: the whole image, cropped to the nearest allowed aspect ratio, centred.
  const double in_ratio = static_cast<double>(width) / height;
  int w = width, h = height;
  if (in_ratio < ratio_min) {
    h = static_cast<int>(std::lround(w / ratio_min));
  } else if (in_ratio > ratio_max) {
    w = static_cast<int>(std::lround(h * ratio_max));
  }
  return {(width - w) / 2, (height - h) / 2, w, h};
}

cv::Mat RandomResizedCrop::operator()(const cv::Mat& img, Rng& rng) const {
  check_image(img, "RandomResizedCrop");
  const cv::Rect r = sample(img.rows, img.cols, rng);
  cv::Mat out;
  if (r.width == size && r.height == size) {
    img(r).copyTo(out);
  } else {
    cv::resize(img(r), out, cv::Size(size, size), 0, 0, interpolation);
  }
  return out;
}

void ColorJitter::operator()(cv::Mat& img, Rng& rng) const {
  std::array<int, 4> order = {0, 1, 2, 3};
  std::shuffle(order.begin(), order.end(), rng);
  const double b = uniform(rng, std::max(0.0, 1.0 - brightness), 1.0 + brightness);
  const double c = uniform(rng, std::max(0.0, 1.0 - contrast), 1.0 + contrast);
  const double s = uniform(rng, std::max(0.0, 1.0 - saturation), 1.0 + saturation);
  const double h = uniform(rng, -hue, hue);
  for (const int op : order) {
    switch (op) {
      case 0:
        if (brightness > 0) adjust_brightness(img, b);
        break;
      case 1:
        if (contrast > 0) adjust_contrast(img, c);
        break;
      case 2:
        if (saturation > 0) adjust_saturation(img, s);
        break;
      default:
        if (hue > 0) adjust_hue(img, h);
        break;
    }
  }
}

void ViewConfig::validate(int channels) const {
  if (crop.size < 1) throw UsageError("crop size must be >= 1");
  check_range(crop.scale_min, crop.scale_max, "crop scale", 1e-6);
  if (crop.scale_max > 1.0) throw UsageError("crop scale must not exceed 1");
  check_range(crop.ratio_min, crop.ratio_max, "crop ratio", 1e-6);
  check_prob(flip_p, "flip probability");
  check_prob(jitter_p, "color jitter probability");
  check_prob(grayscale_p, "grayscale probability");
  check_prob(blur_p, "blur probability");
  check_prob(solarize_p, "solarize probability");
  check_range(blur_sigma_min, blur_sigma_max, "blur sigma", 1e-6);
  if (jitter.brightness < 0 || jitter.contrast < 0 || jitter.saturation < 0 || jitter.hue < 0 ||
      jitter.hue > 0.5) {
    throw UsageError("color jitter strengths must be >= 0 (hue <= 0.5)");
  }
  if (static_cast<int>(mean.size()) != channels || static_cast<int>(std.size()) != channels ||
      std::any_of(std.begin(), std.end(), [](float s) { return !(s > 0); })) {
    throw UsageError("normalisation needs " + std::to_string(channels) + " means and " +
                     std::to_string(channels) + " positive stds");
  }
}

void ViewConfig::apply(const cv::Mat& img, Rng& rng, float* out, bool hwc) const {
  cv::Mat v = crop(img, rng);
  // Every coin is drawn whatever the outcome, so the stream is the same for every setting.
  if (coin(rng, flip_p)) hflip(v);
  const bool do_jitter = coin(rng, jitter_p);
  if (do_jitter) jitter(v, rng);
  if (coin(rng, grayscale_p)) to_grayscale(v);
  const bool do_blur = coin(rng, blur_p);
  const double sigma = uniform(rng, blur_sigma_min, blur_sigma_max);
  if (do_blur) gaussian_blur(v, sigma);
  if (coin(rng, solarize_p)) solarize(v, solarize_threshold);
  normalize_into(v, mean, std, out, hwc);
}

namespace {

ViewConfig with_channels(ViewConfig v, int channels) {
  if (channels == 1 && v.mean.size() == 3) {
    v.mean = {std::accumulate(v.mean.begin(), v.mean.end(), 0.0f) / 3.0f};
    v.std = {std::accumulate(v.std.begin(), v.std.end(), 0.0f) / 3.0f};
  }
  return v;
}

/// The field of a view that an override key names.
double* override_field(ViewConfig& v, const std::string& key) {
  if (key == "crop_scale") return &v.crop.scale_min;
  if (key == "flip") return &v.flip_p;
  if (key == "jitter") return &v.jitter_p;
  if (key == "brightness") return &v.jitter.brightness;
  if (key == "contrast") return &v.jitter.contrast;
  if (key == "saturation") return &v.jitter.saturation;
  if (key == "hue") return &v.jitter.hue;
  if (key == "grayscale") return &v.grayscale_p;
  if (key == "blur") return &v.blur_p;
  if (key == "solarize") return &v.solarize_p;
  return nullptr;
}

double parse_override_number(const std::string& text, const std::string& item) {
  char* end = nullptr;
  const double x = text.empty() ? NAN : std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(x)) {
    throw UsageError("recipe_overrides '" + item + "': '" + text +
                         "' is not a number (give one value for both views, or two as a/b)",
                     {"recipe_overrides"});
  }
  return x;
}

}  // namespace

const std::vector<std::string>& recipe_override_keys() {
  static const std::vector<std::string> kKeys = {"crop_scale", "flip",       "jitter", "brightness",
                                                 "contrast",   "saturation", "hue",    "grayscale",
                                                 "blur",       "solarize"};
  return kKeys;
}

void override_recipe(Recipe& recipe, const std::string& spec) {
  const auto apply = [&recipe](const std::string& item) {
    const size_t eq = item.find('=');
    const std::string key = item.substr(0, eq);
    if (eq == std::string::npos || override_field(recipe.view_a, key) == nullptr) {
      std::string keys;
      for (const auto& k : recipe_override_keys()) keys += (keys.empty() ? "" : ", ") + k;
      throw UsageError("recipe_overrides '" + item + "': expected key=value with a key among " +
                           keys + " (e.g. recipe_overrides crop_scale=0.4,solarize=0/0.2)",
                       {"recipe_overrides"});
    }
    const std::string value = item.substr(eq + 1);
    const size_t slash = value.find('/');
    const double a = parse_override_number(value.substr(0, slash), item);
    const double b =
        slash == std::string::npos ? a : parse_override_number(value.substr(slash + 1), item);
    *override_field(recipe.view_a, key) = a;
    *override_field(recipe.view_b, key) = b;
  };
  std::string current;
  for (const char ch : spec + ",") {
    if (ch == ',' || std::isspace(static_cast<unsigned char>(ch))) {
      if (!current.empty()) apply(current);
      current.clear();
    } else {
      current += ch;
    }
  }
}

std::string recipe_override_spec(const Recipe& recipe) {
  const auto text = [](double x) {
    char buf[32];
    const auto r = std::to_chars(buf, buf + sizeof buf, x);  // shortest exact form
    return std::string(buf, r.ptr);
  };
  Recipe r = recipe;
  std::string spec;
  for (const auto& key : recipe_override_keys()) {
    const double a = *override_field(r.view_a, key), b = *override_field(r.view_b, key);
    spec += (spec.empty() ? "" : ",") + key + "=" + text(a) + (a == b ? "" : "/" + text(b));
  }
  return spec;
}

Recipe make_recipe(const std::string& name, int channels, int size, const std::string& overrides) {
  if (channels != 1 && channels != 3) {
    throw UsageError("image recipes need 1 or 3 channels, got " + std::to_string(channels));
  }
  Recipe r;
  r.name = name;
  ViewConfig a;  // defaults: the reference's first view
  if (name == "imagenet") {
    // docs/training.md: view 1 blur 1.0 / solarize 0.0, view 2 blur 0.1 / solarize 0.2.
    a.crop.size = 224;
    ViewConfig b = a;
    b.blur_p = 0.1;
    b.solarize_p = 0.2;
    r.view_a = a;
    r.view_b = b;
  } else if (name == "cifar") {
    // solo-learn's VICReg CIFAR recipe: crop scale (0.2, 1), no blur, solarize 0.1 on both views.
    a.crop.size = 32;
    a.crop.scale_min = 0.2;
    a.blur_p = 0.0;
    a.solarize_p = 0.1;
    a.mean = {0.4914f, 0.4822f, 0.4465f};
    a.std = {0.2470f, 0.2435f, 0.2616f};
    r.view_a = r.view_b = a;
  } else if (name == "fashion-mnist") {
    // 28x28 grayscale: crops of at least half the image (smaller ones upsample a few pixels into
    // blobs; at equal budget 0.4 beat 0.25 by 0.7 points of kNN and 0.35 of linear accuracy, and
    // 0.5 beat 0.4: docs/results.md), flips (garments are left-right symmetric), strong
    // brightness/contrast jitter 1.5 (saturation and hue do not exist in one channel; 0.6 beat 0.4
    // by 0.6 points of kNN and 0.2 lost 3.3; over the full default run 1.0 beat 0.6 by 0.6 points
    // of kNN at the same linear accuracy, and with the ConvNet's 1x1 conv 1.5 beat 1.0 by 0.4), no
    // grayscale op (already gray), no blur (a sigma of 1-2 px erases most of a 28-px image's
    // detail), and solarisation on both views, 0.1 / 0.2 (the reference has 0 / 0.2). Statistics of
    // the Fashion-MNIST training set.
    a.crop.size = 28;
    a.crop.scale_min = 0.5;
    a.crop.interpolation = cv::INTER_LINEAR;
    a.jitter = {1.5, 1.5, 0.0, 0.0};
    a.grayscale_p = 0.0;
    a.blur_p = 0.0;
    a.mean = {0.2860f};
    a.std = {0.3530f};
    a.solarize_p = 0.1;
    ViewConfig b = a;
    b.solarize_p = 0.2;
    r.view_a = a;
    r.view_b = b;
  } else {
    throw UsageError("unknown recipe '" + name + "': use imagenet, cifar or fashion-mnist",
                     {"recipe"});
  }
  if (channels == 3 && r.view_a.mean.size() == 1) {
    for (ViewConfig* v : {&r.view_a, &r.view_b}) {
      v->mean.assign(3, v->mean[0]);
      v->std.assign(3, v->std[0]);
    }
  }
  r.view_a = with_channels(r.view_a, channels);
  r.view_b = with_channels(r.view_b, channels);
  if (size > 0) r.view_a.crop.size = r.view_b.crop.size = size;
  override_recipe(r, overrides);
  r.view_a.validate(channels);
  r.view_b.validate(channels);
  return r;
}

const std::vector<std::string>& recipe_names() {
  static const std::vector<std::string> kNames = {"imagenet", "cifar", "fashion-mnist"};
  return kNames;
}

// ---------------------------------------------------------------------------------------------
// Vectors

void VectorAugment::validate() const {
  check_prob(mix_p, "vector mix probability");
  check_prob(mix_max, "vector mix weight");
  check_prob(mask_p, "vector mask probability");
  if (!(noise_std >= 0.0 && std::isfinite(noise_std))) {
    throw UsageError("vector noise std must be >= 0");
  }
}

void VectorAugment::apply(const float* x, const float* other, int64_t features, Rng& rng,
                          float* out) const {
  const bool mix = coin(rng, mix_p);
  const float w = static_cast<float>(uniform(rng, 0.0, mix_max > 0 ? mix_max : 1e-12));
  std::uniform_real_distribution<float> u01(0.0f, 1.0f);
  std::normal_distribution<float> noise(0.0f, static_cast<float>(noise_std));
  for (int64_t j = 0; j < features; ++j) {
    float v = mix ? (1.0f - w) * x[j] + w * other[j] : x[j];
    if (u01(rng) < mask_p) v = 0.0f;
    if (noise_std > 0) v += noise(rng);
    out[j] = v;
  }
}

}  // namespace vicreg
