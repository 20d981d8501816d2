#include "vicreg/augment.h"

#include <gtest/gtest.h>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include <cmath>
#include <set>
#include <stdexcept>

namespace {

using vicreg::Rng;

cv::Mat constant(int h, int w, cv::Scalar v, int type = CV_8UC3) { return cv::Mat(h, w, type, v); }

cv::Mat noise_image(int h, int w, int type, uint64_t seed) {
  cv::Mat m(h, w, type);
  cv::RNG rng(seed);
  rng.fill(m, cv::RNG::UNIFORM, 0, 256);
  return m;
}

bool same(const cv::Mat& a, const cv::Mat& b) {
  return a.size() == b.size() && a.type() == b.type() && cv::norm(a, b, cv::NORM_INF) == 0;
}

TEST(Augment, BrightnessScalesAndSaturates) {
  cv::Mat m = constant(4, 4, {100, 200, 20});
  vicreg::adjust_brightness(m, 0.5);
  EXPECT_EQ(m.at<cv::Vec3b>(0, 0), cv::Vec3b(50, 100, 10));
  vicreg::adjust_brightness(m, 3.0);
  EXPECT_EQ(m.at<cv::Vec3b>(3, 3), cv::Vec3b(150, 255, 30));
}

TEST(Augment, ContrastBlendsWithTheGrayMean) {
  cv::Mat m(2, 1, CV_8UC1);
  m.at<uint8_t>(0) = 0;
  m.at<uint8_t>(1) = 200;
  cv::Mat flat = m.clone();
  vicreg::adjust_contrast(flat, 0.0);
  EXPECT_EQ(flat.at<uint8_t>(0), 100);
  EXPECT_EQ(flat.at<uint8_t>(1), 100);
  cv::Mat same_m = m.clone();
  vicreg::adjust_contrast(same_m, 1.0);
  EXPECT_TRUE(same(m, same_m));
  vicreg::adjust_contrast(m, 1.5);  // 1.5 x - 50
  EXPECT_EQ(m.at<uint8_t>(0), 0);
  EXPECT_EQ(m.at<uint8_t>(1), 250);
}

TEST(Augment, SaturationZeroIsGrayscaleAndOneIsIdentity) {
  const cv::Mat img = noise_image(8, 8, CV_8UC3, 1);
  cv::Mat gray = img.clone(), keep = img.clone(), g2 = img.clone();
  vicreg::adjust_saturation(gray, 0.0);
  vicreg::to_grayscale(g2);
  EXPECT_LE(cv::norm(gray, g2, cv::NORM_INF), 1);
  vicreg::adjust_saturation(keep, 1.0);
  EXPECT_TRUE(same(img, keep));
  const cv::Vec3b p = img.at<cv::Vec3b>(2, 5), q = g2.at<cv::Vec3b>(2, 5);
  EXPECT_NEAR(q[0], 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2], 1.0);
  EXPECT_EQ(q[0], q[1]);
  EXPECT_EQ(q[1], q[2]);
  cv::Mat one = noise_image(4, 4, CV_8UC1, 2), one_copy = one.clone();
  vicreg::adjust_saturation(one, 0.0);  // no-op for one channel
  EXPECT_TRUE(same(one, one_copy));
}

TEST(Augment, HueRotation) {
  cv::Mat red = constant(2, 2, {255, 0, 0});
  vicreg::adjust_hue(red, 0.5);  // half a turn: red -> cyan
  const cv::Vec3b c = red.at<cv::Vec3b>(0, 0);
  EXPECT_LE(c[0], 8);
  EXPECT_GE(c[1], 247);
  EXPECT_GE(c[2], 247);
  const cv::Mat img = noise_image(8, 8, CV_8UC3, 3);
  cv::Mat zero = img.clone();
  vicreg::adjust_hue(zero, 0.0);
  EXPECT_LE(cv::norm(img, zero, cv::NORM_INF), 8);  // HSV round trip in 8 bits
  EXPECT_THROW(vicreg::adjust_hue(zero, 0.7), vicreg::UsageError);
}

TEST(Augment, SolarizeFlipsPixelsAtOrAboveTheThreshold) {
  cv::Mat m(1, 4, CV_8UC1);
  const uint8_t in[4] = {0, 127, 128, 255};
  for (int i = 0; i < 4; ++i) m.at<uint8_t>(i) = in[i];
  vicreg::solarize(m, 128);
  EXPECT_EQ(m.at<uint8_t>(0), 0);
  EXPECT_EQ(m.at<uint8_t>(1), 127);
  EXPECT_EQ(m.at<uint8_t>(2), 127);
  EXPECT_EQ(m.at<uint8_t>(3), 0);
}

TEST(Augment, BlurKeepsTheMeanAndSmooths) {
  const cv::Mat img = noise_image(64, 64, CV_8UC1, 4);
  cv::Mat b = img.clone();
  vicreg::gaussian_blur(b, 2.0);
  cv::Scalar m0, s0, m1, s1;
  cv::meanStdDev(img, m0, s0);
  cv::meanStdDev(b, m1, s1);
  EXPECT_NEAR(m0[0], m1[0], 2.0);
  EXPECT_LT(s1[0], s0[0] / 4);
  cv::Mat c = constant(9, 9, {77}, CV_8UC1);
  vicreg::gaussian_blur(c, 0.5);
  EXPECT_EQ(cv::norm(c, constant(9, 9, {77}, CV_8UC1), cv::NORM_INF), 0);
  EXPECT_THROW(vicreg::gaussian_blur(c, 0.0), vicreg::UsageError);
}

TEST(Augment, FlipAndNormalize) {
  cv::Mat m(1, 3, CV_8UC3);
  for (int x = 0; x < 3; ++x) m.at<cv::Vec3b>(0, x) = cv::Vec3b(x, 10 * x, 255);
  vicreg::hflip(m);
  EXPECT_EQ(m.at<cv::Vec3b>(0, 0), cv::Vec3b(2, 20, 255));
  float out[9];
  vicreg::normalize_into(m, {0.f, 0.5f, 1.f}, {1.f, 0.5f, 2.f}, out);
  // CHW: channel 0 then 1 then 2.
  EXPECT_FLOAT_EQ(out[0], 2 / 255.f);
  EXPECT_FLOAT_EQ(out[3 + 1], (10 / 255.f - 0.5f) / 0.5f);
  EXPECT_FLOAT_EQ(out[6 + 2], 0.f);
  EXPECT_THROW(vicreg::normalize_into(m, {0.f}, {1.f}, out), vicreg::UsageError);
  cv::Mat f(2, 2, CV_32FC1);
  EXPECT_THROW(vicreg::hflip(f), vicreg::UsageError);
}

TEST(Augment, RandomResizedCropStaysInBoundsAndRespectsScaleAndRatio) {
  vicreg::RandomResizedCrop crop;
  crop.scale_min = 0.2;
  crop.scale_max = 0.6;
  Rng rng(5);
  double area_sum = 0;
  const int trials = 2000;
  for (int t = 0; t < trials; ++t) {
    const cv::Rect r = crop.sample(300, 400, rng);
    ASSERT_GE(r.x, 0);
    ASSERT_GE(r.y, 0);
    ASSERT_LE(r.x + r.width, 400);
    ASSERT_LE(r.y + r.height, 300);
    const double frac = static_cast<double>(r.area()) / (300 * 400);
    EXPECT_GT(frac, 0.18);
    EXPECT_LT(frac, 0.62);
    const double ratio = static_cast<double>(r.width) / r.height;
    EXPECT_GT(ratio, 0.7);
    EXPECT_LT(ratio, 1.4);
    area_sum += frac;
  }
  EXPECT_NEAR(area_sum / trials, 0.4, 0.02);  // uniform in (0.2, 0.6)
  // An extreme aspect ratio never fits: the centre crop at the allowed limit.
  const cv::Rect f = crop.sample(10, 1000, rng);
  EXPECT_EQ(f.height, 10);
  EXPECT_EQ(f.width, 13);
  EXPECT_EQ(f.x, (1000 - 13) / 2);
  crop.size = 17;
  const cv::Mat out = crop(noise_image(50, 60, CV_8UC3, 6), rng);
  EXPECT_EQ(out.rows, 17);
  EXPECT_EQ(out.cols, 17);
  EXPECT_EQ(out.channels(), 3);
}

TEST(Augment, ViewsAreAFunctionOfTheSeed) {
  const vicreg::Recipe r = vicreg::make_recipe("imagenet", 3, 64);
  const cv::Mat img = noise_image(80, 100, CV_8UC3, 7);
  std::vector<float> a(3 * 64 * 64), b(a.size()), c(a.size());
  Rng r1(vicreg::sample_seed(1, 0, 5)), r2(vicreg::sample_seed(1, 0, 5)),
      r3(vicreg::sample_seed(1, 0, 6));
  r.view_a.apply(img, r1, a.data());
  r.view_a.apply(img, r2, b.data());
  r.view_a.apply(img, r3, c.data());
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  std::set<uint64_t> seeds;
  for (int e = 0; e < 10; ++e)
    for (int i = 0; i < 100; ++i) seeds.insert(vicreg::sample_seed(3, e, i));
  EXPECT_EQ(seeds.size(), 1000u);
}

TEST(Augment, ViewWithEveryOpOffIsCropAndNormalize) {
  vicreg::ViewConfig v;
  v.crop.size = 16;
  v.crop.scale_min = v.crop.scale_max = 1.0;
  v.crop.ratio_min = v.crop.ratio_max = 1.0;
  v.flip_p = v.jitter_p = v.grayscale_p = v.blur_p = v.solarize_p = 0.0;
  const cv::Mat img = noise_image(16, 16, CV_8UC3, 8);
  std::vector<float> got(3 * 16 * 16), want(got.size());
  Rng rng(0);
  v.apply(img, rng, got.data());
  vicreg::normalize_into(img, v.mean, v.std, want.data());
  EXPECT_EQ(got, want);
}

TEST(Augment, OpProbabilitiesHoldStatistically) {
  vicreg::ViewConfig v;
  v.crop.size = 8;
  v.crop.scale_min = v.crop.scale_max = 1.0;
  v.crop.ratio_min = v.crop.ratio_max = 1.0;
  v.jitter_p = v.grayscale_p = v.blur_p = v.solarize_p = 0.0;
  v.flip_p = 0.3;
  v.mean = {0.f};
  v.std = {1.f};
  cv::Mat img = constant(8, 8, {0}, CV_8UC1);
  img.col(0).setTo(255);  // flipped views have the bright column on the right
  int flipped = 0;
  const int trials = 4000;
  std::vector<float> out(64);
  for (int t = 0; t < trials; ++t) {
    Rng rng(vicreg::sample_seed(9, 0, t));
    v.apply(img, rng, out.data());
    flipped += out[7] > 0.5f;
  }
  EXPECT_NEAR(static_cast<double>(flipped) / trials, 0.3, 0.03);
}

TEST(Augment, JitterIsDeterministicAndChangesTheImage) {
  const cv::Mat img = noise_image(16, 16, CV_8UC3, 10);
  vicreg::ColorJitter j;
  cv::Mat a = img.clone(), b = img.clone();
  Rng r1(4), r2(4);
  j(a, r1);
  j(b, r2);
  EXPECT_TRUE(same(a, b));
  EXPECT_FALSE(same(a, img));
}

TEST(Augment, Recipes) {
  for (const auto& name : vicreg::recipe_names()) {
    for (int ch : {1, 3}) {
      const auto r = vicreg::make_recipe(name, ch);
      EXPECT_EQ(r.view_a.mean.size(), static_cast<size_t>(ch)) << name;
      EXPECT_EQ(r.view_b.std.size(), static_cast<size_t>(ch)) << name;
    }
  }
  const auto in = vicreg::make_recipe("imagenet", 3);
  EXPECT_EQ(in.view_a.crop.size, 224);
  EXPECT_EQ(in.view_a.blur_p, 1.0);
  EXPECT_EQ(in.view_b.blur_p, 0.1);
  EXPECT_EQ(in.view_a.solarize_p, 0.0);
  EXPECT_EQ(in.view_b.solarize_p, 0.2);
  EXPECT_EQ(in.view_a.crop.interpolation, cv::INTER_CUBIC);
  const auto ci = vicreg::make_recipe("cifar", 3);
  EXPECT_EQ(ci.view_a.crop.scale_min, 0.2);
  EXPECT_EQ(ci.view_b.solarize_p, 0.1);
  const auto fm = vicreg::make_recipe("fashion-mnist", 1);
  EXPECT_EQ(fm.view_a.crop.size, 28);
  EXPECT_EQ(fm.view_a.crop.scale_min, 0.5);
  EXPECT_EQ(fm.view_a.jitter.brightness, 1.5);
  EXPECT_EQ(fm.view_b.jitter.contrast, 1.5);
  EXPECT_EQ(fm.view_a.solarize_p, 0.1);
  EXPECT_EQ(fm.view_b.solarize_p, 0.2);
  EXPECT_EQ(fm.view_a.blur_p, 0.0);
  EXPECT_EQ(vicreg::make_recipe("cifar", 3, 40).view_b.crop.size, 40);
  EXPECT_THROW(vicreg::make_recipe("simclr", 3), vicreg::UsageError);
  EXPECT_THROW(vicreg::make_recipe("cifar", 2), vicreg::UsageError);
  vicreg::ViewConfig bad;
  bad.flip_p = 1.5;
  EXPECT_THROW(bad.validate(3), vicreg::UsageError);
  bad.flip_p = 0.5;
  bad.crop.scale_min = 0.9;
  bad.crop.scale_max = 0.5;
  EXPECT_THROW(bad.validate(3), vicreg::UsageError);
  EXPECT_EQ(vicreg::interpolation_from_string("bilinear"), cv::INTER_LINEAR);
  EXPECT_THROW(vicreg::interpolation_from_string("lanczos9"), vicreg::UsageError);
}

TEST(Augment, RecipeOverridesSetBothViewsOrEachAndNameBadItems) {
  const auto base = vicreg::make_recipe("fashion-mnist", 1);
  const auto r = vicreg::make_recipe("fashion-mnist", 1, 0,
                                     " crop_scale=0.3, solarize=0/0.4 brightness=0.8,hue=0.05,"
                                     "jitter=1,flip=0.25/0.75, grayscale=0.1,blur=0.5,"
                                     "contrast=0.7,saturation=0.3");
  EXPECT_EQ(r.view_a.crop.scale_min, 0.3);
  EXPECT_EQ(r.view_b.crop.scale_min, 0.3);
  EXPECT_EQ(r.view_a.crop.scale_max, base.view_a.crop.scale_max);  // untouched
  EXPECT_EQ(r.view_a.solarize_p, 0.0);
  EXPECT_EQ(r.view_b.solarize_p, 0.4);
  EXPECT_EQ(r.view_a.flip_p, 0.25);
  EXPECT_EQ(r.view_b.flip_p, 0.75);
  for (const auto* v : {&r.view_a, &r.view_b}) {
    EXPECT_EQ(v->jitter.brightness, 0.8);
    EXPECT_EQ(v->jitter.contrast, 0.7);
    EXPECT_EQ(v->jitter.saturation, 0.3);
    EXPECT_EQ(v->jitter.hue, 0.05);
    EXPECT_EQ(v->jitter_p, 1.0);
    EXPECT_EQ(v->grayscale_p, 0.1);
    EXPECT_EQ(v->blur_p, 0.5);
    EXPECT_EQ(v->crop.size, base.view_a.crop.size);
    EXPECT_EQ(v->mean, base.view_a.mean);
  }
  EXPECT_EQ(vicreg::recipe_override_keys().size(), 10u);
  // Every key sets the field it names in both views (one distinct value per key).
  for (const auto& key : vicreg::recipe_override_keys()) {
    const auto one = vicreg::make_recipe("imagenet", 3, 0, key + "=0.0625");
    const auto count = [](const vicreg::ViewConfig& v) {
      int n = 0;
      for (double x :
           {v.crop.scale_min, v.flip_p, v.jitter_p, v.jitter.brightness, v.jitter.contrast,
            v.jitter.saturation, v.jitter.hue, v.grayscale_p, v.blur_p, v.solarize_p}) {
        n += x == 0.0625;
      }
      return n;
    };
    EXPECT_EQ(count(one.view_a), 1) << key;
    EXPECT_EQ(count(one.view_b), 1) << key;
  }
  // recipe_override_spec: every key, "a/b" where the views differ, and it sets them back exactly.
  EXPECT_EQ(vicreg::recipe_override_spec(base),
            "crop_scale=0.5,flip=0.5,jitter=0.8,brightness=1.5,contrast=1.5,saturation=0,hue=0,"
            "grayscale=0,blur=0,solarize=0.1/0.2");
  for (const auto& name : vicreg::recipe_names()) {
    const auto odd = vicreg::make_recipe(name, 3, 0, "crop_scale=0.123456789,hue=0.1/0.3");
    auto back = vicreg::make_recipe(name, 3);
    vicreg::override_recipe(back, vicreg::recipe_override_spec(odd));
    EXPECT_EQ(vicreg::recipe_override_spec(back), vicreg::recipe_override_spec(odd)) << name;
    EXPECT_EQ(back.view_a.crop.scale_min, 0.123456789);
    EXPECT_EQ(back.view_b.jitter.hue, 0.3);
  }
  // An empty spec is the recipe.
  EXPECT_EQ(vicreg::make_recipe("cifar", 3, 0, " , ").view_b.solarize_p,
            vicreg::make_recipe("cifar", 3).view_b.solarize_p);
  const auto message = [](const std::string& spec) {
    try {
      vicreg::make_recipe("fashion-mnist", 1, 0, spec);
    } catch (const vicreg::UsageError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(message("crops=0.3")
                .find("'crops=0.3': expected key=value with a key among "
                      "crop_scale, flip"),
            std::string::npos);
  EXPECT_NE(message("flip").find("expected key=value"), std::string::npos);
  EXPECT_NE(message("flip=").find("'' is not a number"), std::string::npos);
  EXPECT_NE(message("flip=0.5/").find("'' is not a number"), std::string::npos);
  EXPECT_NE(message("flip=0.5x").find("'0.5x' is not a number"), std::string::npos);
  EXPECT_NE(message("flip=nan").find("'nan' is not a number"), std::string::npos);
  EXPECT_NE(message("flip=0.1/0.2/0.3").find("'0.2/0.3' is not a number"), std::string::npos);
  EXPECT_NE(message("solarize=0/1.5").find("solarize probability must be a probability"),
            std::string::npos);
  EXPECT_NE(message("crop_scale=0").find("crop scale"), std::string::npos);
  EXPECT_NE(message("hue=0.6").find("hue <= 0.5"), std::string::npos);
  EXPECT_NE(message("brightness=-1").find("jitter strengths must be >= 0"), std::string::npos);
}

TEST(Augment, VectorAugmentations) {
  const int64_t f = 20000;
  std::vector<float> x(f, 1.0f), other(f, 3.0f), out(f);
  vicreg::VectorAugment none{0.0, 0.0, 0.0, 0.0};
  Rng rng(1);
  none.apply(x.data(), other.data(), f, rng, out.data());
  EXPECT_EQ(out, x);

  vicreg::VectorAugment mask{0.0, 0.0, 0.25, 0.0};
  mask.apply(x.data(), other.data(), f, rng, out.data());
  const double zeros = std::count(out.begin(), out.end(), 0.0f) / static_cast<double>(f);
  EXPECT_NEAR(zeros, 0.25, 0.02);

  vicreg::VectorAugment noise{0.0, 0.0, 0.0, 0.5};
  noise.apply(x.data(), other.data(), f, rng, out.data());
  double mean = 0, sq = 0;
  for (float v : out) mean += v - 1.0;
  mean /= f;
  for (float v : out) sq += (v - 1.0 - mean) * (v - 1.0 - mean);
  EXPECT_NEAR(mean, 0.0, 0.02);
  EXPECT_NEAR(std::sqrt(sq / f), 0.5, 0.02);

  vicreg::VectorAugment mix{1.0, 0.3, 0.0, 0.0};
  mix.apply(x.data(), other.data(), f, rng, out.data());
  EXPECT_GT(out[0], 1.0f);
  EXPECT_LE(out[0], 1.6f + 1e-6f);  // (1 - w) 1 + w 3 with w <= 0.3
  EXPECT_EQ(out[0], out[f - 1]);    // one weight per row
  EXPECT_THROW((vicreg::VectorAugment{0.5, 0.3, 1.2, 0.0}.validate()), vicreg::UsageError);
}

}  // namespace
