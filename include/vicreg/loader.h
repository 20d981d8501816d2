// The two-view loader: worker threads turn samples into batches of two augmented views ahead of
// the training loop, through a bounded prefetch window.
//
// Batches are a pure function of (seed, epoch, batch index): the epoch's permutation comes from
// (seed, epoch) and each sample's augmentation from sample_seed(seed, epoch, position), so the
// output is the same whatever the number of workers, and a resumed run sees the same data as an
// uninterrupted one.
#pragma once

#include "vicreg/augment.h"
#include "vicreg/data.h"
#include "vicreg/error.h"

#include <torch/types.h>

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace vicreg {

/// Turns sample i of a data set into two views written to out_a and out_b.
class TwoViewTransform {
 public:
  virtual ~TwoViewTransform() = default;
  /// Shape of one view of one sample: [C, H, W] or [F].
  virtual std::vector<int64_t> view_shape(const Dataset& data) const = 0;
  virtual void apply(const Dataset& data, int64_t index, Rng& rng, float* out_a,
                     float* out_b) const = 0;
  /// Whether apply() writes [H, W, C] for a [C, H, W] view: the batch is then channels_last.
  virtual bool channels_last() const { return false; }
};

/// Images: one decode (or view) per sample, then the recipe's two views.
class ImageTwoViewTransform : public TwoViewTransform {
 public:
  /// channels_last: write each view as [H, W, C], so that batches come in channels_last memory
  /// format with no copy (precision.h).
  explicit ImageTwoViewTransform(Recipe recipe, bool channels_last = false)
      : recipe_(std::move(recipe)), channels_last_(channels_last) {}
  std::vector<int64_t> view_shape(const Dataset& data) const override;
  void apply(const Dataset& data, int64_t index, Rng& rng, float* out_a,
             float* out_b) const override;
  bool channels_last() const override { return channels_last_; }
  const Recipe& recipe() const { return recipe_; }

 private:
  Recipe recipe_;
  bool channels_last_;
};

/// Vectors: two independent draws of VectorAugment (mixing partners drawn from the data set).
class VectorTwoViewTransform : public TwoViewTransform {
 public:
  explicit VectorTwoViewTransform(VectorAugment augment) : augment_(augment) {}
  std::vector<int64_t> view_shape(const Dataset& data) const override;
  void apply(const Dataset& data, int64_t index, Rng& rng, float* out_a,
             float* out_b) const override;

 private:
  VectorAugment augment_;
};

struct LoaderOptions {
  int64_t batch_size = 256;
  /// Worker threads (>= 1).
  int workers = 2;
  /// Batches prepared ahead of the consumer, at most.
  int prefetch = 4;
  uint64_t seed = 0;
  bool shuffle = true;
  /// Distributed training: this process is shard `shard_rank` of `shard_count` and gets rows
  /// [rank * B / W, (rank + 1) * B / W) of every global batch of B = batch_size rows, with the
  /// augmentations those rows get in a single process (the shards never overlap, and W processes
  /// together see exactly what one would). batch_size must be divisible by shard_count.
  int shard_rank = 0;
  int shard_count = 1;
  /// An image file that cannot be read (undecodable, vanished) is skipped: its place in the batch
  /// goes to the next readable sample of the data set (deterministically) and the batch lists it
  /// in `skipped`. Without it such a file stops the stream with an error naming it.
  bool skip_bad_images = false;
};

struct TwoViewBatch {
  /// [B / W, ...] float32 (this shard's rows); images in channels_last memory format when the
  /// transform writes them so.
  torch::Tensor view_a, view_b;
  torch::Tensor labels;   ///< [B] int64 (undefined when the data have none)
  torch::Tensor indices;  ///< [B] int64: which samples
  int64_t epoch = 0;
  int64_t index = 0;  ///< batch index within the epoch
  /// With skip_bad_images: the errors of the files skipped in this batch (each names its file).
  std::vector<std::string> skipped;
};

/// An endless stream of batches: batch g of the stream is batch g % batches_per_epoch() of epoch
/// g / batches_per_epoch(). The last partial batch of each epoch is dropped.
class TwoViewLoader {
 public:
  /// Throws std::invalid_argument if batch_size < 2, batch_size > data size, workers < 1,
  /// prefetch < 1, or batch_size not divisible by shard_count.
  TwoViewLoader(std::shared_ptr<const Dataset> data,
                std::shared_ptr<const TwoViewTransform> transform, LoaderOptions options);
  ~TwoViewLoader();
  TwoViewLoader(const TwoViewLoader&) = delete;
  TwoViewLoader& operator=(const TwoViewLoader&) = delete;

  int64_t batches_per_epoch() const { return batches_per_epoch_; }
  /// (Re)starts the stream at global batch `first` (epoch * batches_per_epoch() + index).
  void start(int64_t first = 0);
  /// The next batch; blocks until a worker has made it. Rethrows a worker's error (e.g. an image
  /// that cannot be decoded).
  TwoViewBatch next();
  /// Seconds next() spent waiting for workers since start().
  double wait_seconds() const { return wait_seconds_; }

  /// The sample order of an epoch (a permutation of the data set, or 0..N-1 without shuffling).
  torch::Tensor epoch_order(int64_t epoch) const;

 private:
  void stop();
  void worker_loop();
  TwoViewBatch make_batch(int64_t global) const;

  std::shared_ptr<const Dataset> data_;
  std::shared_ptr<const TwoViewTransform> transform_;
  LoaderOptions options_;
  int64_t batches_per_epoch_ = 0;
  std::vector<int64_t> view_shape_;

  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::thread> threads_;
  bool stopping_ = false;
  int64_t next_to_claim_ = 0;   // next global batch a worker takes
  int64_t next_to_return_ = 0;  // next global batch next() hands out
  std::map<int64_t, TwoViewBatch> ready_;
  std::exception_ptr error_;
  double wait_seconds_ = 0.0;
  /// Files found unreadable (skip_bad_images), by sample, with the error: skipped again without
  /// being decoded (a decoder's own complaint on stderr comes once).
  mutable std::mutex bad_mutex_;
  mutable std::unordered_map<int64_t, std::string> bad_;
  mutable std::mutex order_mutex_;
  mutable std::map<int64_t, torch::Tensor> orders_;
};

}  // namespace vicreg
