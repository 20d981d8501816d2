#include "vicreg/loader.h"

#include "vicreg/error.h"

#include <opencv2/core/base.hpp>
#include <opencv2/core/utility.hpp>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <stdexcept>

namespace vicreg {

// ---------------------------------------------------------------------------------------------
// Transforms

std::vector<int64_t> ImageTwoViewTransform::view_shape(const Dataset& data) const {
  if (data.is_vector()) {
    throw UsageError("image recipe '" + recipe_.name + "' given vector data ('" + data.name +
                     "'): vectors need the vector augmentations");
  }
  const int64_t size = recipe_.view_a.crop.size;
  if (recipe_.view_b.crop.size != size) {
    throw UsageError("both views of a recipe must have the same crop size");
  }
  recipe_.view_a.validate(static_cast<int>(data.channels));
  recipe_.view_b.validate(static_cast<int>(data.channels));
  return {data.channels, size, size};
}

void ImageTwoViewTransform::apply(const Dataset& data, int64_t index, Rng& rng, float* out_a,
                                  float* out_b) const {
  const cv::Mat img = data.image(index);
  recipe_.view_a.apply(img, rng, out_a, channels_last_);
  recipe_.view_b.apply(img, rng, out_b, channels_last_);
}

std::vector<int64_t> VectorTwoViewTransform::view_shape(const Dataset& data) const {
  if (!data.is_vector()) {
    throw UsageError("vector augmentations given image data ('" + data.name + "')");
  }
  augment_.validate();
  return {data.features()};
}

void VectorTwoViewTransform::apply(const Dataset& data, int64_t index, Rng& rng, float* out_a,
                                   float* out_b) const {
  const int64_t f = data.features();
  const float* base = data.vectors.data_ptr<float>();
  std::uniform_int_distribution<int64_t> pick(0, data.size() - 1);
  const float* x = base + index * f;
  const int64_t partner_a = pick(rng), partner_b = pick(rng);
  augment_.apply(x, base + partner_a * f, f, rng, out_a);
  augment_.apply(x, base + partner_b * f, f, rng, out_b);
}

// ---------------------------------------------------------------------------------------------
// Loader

TwoViewLoader::TwoViewLoader(std::shared_ptr<const Dataset> data,
                             std::shared_ptr<const TwoViewTransform> transform,
                             LoaderOptions options)
    : data_(std::move(data)), transform_(std::move(transform)), options_(options) {
  TORCH_CHECK(data_ && transform_, "TwoViewLoader: data and transform must be set");
  const int64_t n = data_->size();
  if (options_.batch_size < 2) {
    throw UsageError(
        "batch_size must be at least 2 (the variance and covariance "
        "need two samples), got " +
            std::to_string(options_.batch_size),
        {"batch_size"});
  }
  if (options_.batch_size > n) {
    throw UsageError("batch_size " + std::to_string(options_.batch_size) +
                         " is larger than the data set ('" + data_->name + "', " +
                         std::to_string(n) + " samples)",
                     {"batch_size"});
  }
  if (options_.workers < 1) throw UsageError("workers must be at least 1", {"workers"});
  if (options_.shard_count < 1 || options_.shard_rank < 0 ||
      options_.shard_rank >= options_.shard_count) {
    throw UsageError("loader shard " + std::to_string(options_.shard_rank) + " of " +
                     std::to_string(options_.shard_count) + " is impossible");
  }
  if (options_.batch_size % options_.shard_count != 0) {
    throw UsageError("batch_size " + std::to_string(options_.batch_size) +
                         " is not divisible by the " + std::to_string(options_.shard_count) +
                         " processes (WORLD_SIZE): the global batch is "
                         "split evenly over them; use a multiple of " +
                         std::to_string(options_.shard_count),
                     {"batch_size"});
  }
  if (options_.prefetch < 1) throw UsageError("prefetch must be at least 1");
  batches_per_epoch_ = n / options_.batch_size;
  view_shape_ = transform_->view_shape(*data_);
  // The workers are the parallelism; OpenCV's own thread pool would only oversubscribe the cores.
  cv::setNumThreads(0);
}

TwoViewLoader::~TwoViewLoader() { stop(); }

torch::Tensor TwoViewLoader::epoch_order(int64_t epoch) const {
  std::lock_guard<std::mutex> lock(order_mutex_);
  auto it = orders_.find(epoch);
  if (it != orders_.end()) return it->second;
  const int64_t n = data_->size();
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  if (options_.shuffle) {
    Rng rng(sample_seed(options_.seed, epoch, -1));
    std::shuffle(order.begin(), order.end(), rng);
  }
  torch::Tensor t = torch::tensor(order, torch::kLong);
  // Keep the current and next epochs only.
  while (orders_.size() >= 2) orders_.erase(orders_.begin());
  orders_.emplace(epoch, t);
  return t;
}

TwoViewBatch TwoViewLoader::make_batch(int64_t global) const {
  TwoViewBatch batch;
  batch.epoch = global / batches_per_epoch_;
  batch.index = global % batches_per_epoch_;
  const int64_t global_b = options_.batch_size;
  const int64_t b = global_b / options_.shard_count;                       // this shard's rows
  const int64_t first = batch.index * global_b + options_.shard_rank * b;  // in the epoch order
  batch.indices = epoch_order(batch.epoch).narrow(0, first, b).clone();
  std::vector<int64_t> shape = {b};
  shape.insert(shape.end(), view_shape_.begin(), view_shape_.end());
  if (transform_->channels_last() && shape.size() == 4) {
    // [B, C, H, W] with channels_last strides: the views are written as [H, W, C].
    const auto format = at::MemoryFormat::ChannelsLast;
    batch.view_a = torch::empty(shape, torch::TensorOptions(torch::kFloat).memory_format(format));
    batch.view_b = torch::empty(shape, torch::TensorOptions(torch::kFloat).memory_format(format));
  } else {
    batch.view_a = torch::empty(shape, torch::kFloat);
    batch.view_b = torch::empty(shape, torch::kFloat);
  }
  const int64_t per_sample = batch.view_a.numel() / b;
  float* a = batch.view_a.data_ptr<float>();
  float* v = batch.view_b.data_ptr<float>();
  int64_t* idx = batch.indices.data_ptr<int64_t>();
  const bool files = !data_->files.empty();
  const int64_t n = data_->size();
  for (int64_t i = 0; i < b; ++i) {
    // An unreadable file: an error naming it, or (skip_bad_images) the next sample in its place.
    for (int64_t attempt = 0;; ++attempt) {
      std::string error;
      if (files && options_.skip_bad_images) {
        std::lock_guard<std::mutex> lock(bad_mutex_);
        const auto known = bad_.find(idx[i]);
        if (known != bad_.end()) error = known->second;
      }
      if (error.empty()) {
        try {
          Rng rng(sample_seed(options_.seed, batch.epoch, first + i));
          transform_->apply(*data_, idx[i], rng, a + i * per_sample, v + i * per_sample);
          break;
        } catch (const std::exception& e) {
          const bool unreadable = dynamic_cast<const FormatError*>(&e) != nullptr ||
                                  dynamic_cast<const cv::Exception*>(&e);
          if (!files || !unreadable) throw;
          if (!options_.skip_bad_images) {
            throw FormatError(std::string(e.what()) +
                                  "; remove or replace it, or set skip_bad_images to skip such "
                                  "files (counted in metrics.jsonl)",
                              {"skip_bad_images"});
          }
          error = e.what();
          std::lock_guard<std::mutex> lock(bad_mutex_);
          bad_.emplace(idx[i], error);
        }
      }
      batch.skipped.push_back(error);
      if (attempt >= 1000) {
        throw FormatError("more than 1000 unreadable images in a row in '" + data_->source +
                          "' (the last: " + error + "): is the data set readable at all?");
      }
      idx[i] = (idx[i] + 1) % n;
    }
  }
  if (data_->labels.defined()) batch.labels = data_->labels.index_select(0, batch.indices);
  return batch;
}

void TwoViewLoader::worker_loop() {
  for (;;) {
    int64_t global = 0;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [this] {
        return stopping_ || (!error_ && next_to_claim_ < next_to_return_ + options_.prefetch);
      });
      if (stopping_) return;
      global = next_to_claim_++;
    }
    try {
      TwoViewBatch batch = make_batch(global);
      std::lock_guard<std::mutex> lock(mutex_);
      ready_.emplace(global, std::move(batch));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
    cv_.notify_all();
  }
}

void TwoViewLoader::start(int64_t first) {
  TORCH_CHECK(first >= 0, "TwoViewLoader::start: negative batch ", first);
  stop();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = false;
    error_ = nullptr;
    ready_.clear();
    next_to_claim_ = next_to_return_ = first;
    wait_seconds_ = 0.0;
  }
  for (int w = 0; w < options_.workers; ++w) threads_.emplace_back([this] { worker_loop(); });
}

void TwoViewLoader::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

TwoViewBatch TwoViewLoader::next() {
  TORCH_CHECK(!threads_.empty(), "TwoViewLoader::next() before start()");
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait(lock, [this] { return error_ || ready_.count(next_to_return_) > 0; });
  wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (error_) std::rethrow_exception(error_);
  auto it = ready_.find(next_to_return_);
  TwoViewBatch batch = std::move(it->second);
  ready_.erase(it);
  ++next_to_return_;
  lock.unlock();
  cv_.notify_all();
  return batch;
}

}  // namespace vicreg
