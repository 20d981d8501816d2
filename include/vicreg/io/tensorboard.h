// TensorBoard event files: what `tensorboard --logdir runs/` reads. Each file is a sequence of
// records, each framed as TensorFlow's TFRecord:
//
//   uint64 length (little-endian) | uint32 masked CRC32C of the length's 8 bytes |
//   length bytes of data          | uint32 masked CRC32C of the data
//
// and each record's data is an Event message (src/io/tensorboard.proto: TensorBoard's field
// numbers), serialised by Protocol Buffers. The first event of a file names the format
// ("brain.Event:2"); vicreg's other events hold a Summary of scalars at one step.
//
// A run writes one new file per process start (names sort in the order they were made, which is
// the order TensorBoard reads them in) and, on resume, first cuts the files already there back to
// the checkpoint's step (cut_event_files), as metrics.jsonl is cut: TensorBoard then shows one
// continuous run, with no step twice and none missing.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace vicreg {

/// CRC-32C (Castagnoli, polynomial 0x1EDC6F41 reflected), continuing from `crc` (0 to start):
/// crc32c("123456789") == 0xE3069283.
uint32_t crc32c(std::string_view data, uint32_t crc = 0);

/// TFRecord's masked CRC: ((c >> 15) | (c << 17)) + 0xa282ead8 of c = crc32c(data).
uint32_t masked_crc32c(std::string_view data);

/// One record: `data` framed with its length and both masked CRCs.
std::string frame_record(std::string_view data);

/// The records of an event file's bytes, up to the first incomplete or damaged one (a file whose
/// writer was killed ends in a torn record).
struct EventRecords {
  std::vector<std::string> records;  ///< each record's data (a serialised Event)
  uint64_t valid_bytes = 0;          ///< bytes the records take, framing included
  bool damaged = false;              ///< something followed them that is not a whole record
};
EventRecords parse_records(std::string_view bytes);

/// One scalar of an event file.
struct ScalarEvent {
  int64_t step = 0;
  double wall_time = 0;
  std::string tag;
  float value = 0;
};

/// Every scalar of an event file, in file order. Throws FormatError naming the file when it cannot
/// be read, or holds a record that is not an Event.
std::vector<ScalarEvent> read_scalar_events(const std::string& path);

/// The event files of `dir` ("events.out.tfevents.*"), sorted by name: the order TensorBoard
/// reads them in.
std::vector<std::string> event_files(const std::string& dir);

/// Cuts every event file of `dir` back to `step`: events of later steps and a torn or damaged
/// tail are dropped, a file left with nothing but its version event is removed, and a file that
/// changes is rewritten atomically. Returns the number of events dropped.
int64_t cut_event_files(const std::string& dir, int64_t step);

/// A new event file in an existing directory, written as it goes: each call appends whole
/// records, so a killed writer loses at most the event it was writing. Throws FormatError naming
/// the file when it cannot be made or written (a full disk).
class EventFileWriter {
 public:
  /// Makes "events.out.tfevents.SECONDS.HOST.PID.N" in `dir`, its name sorting after every event
  /// file already there, and writes the version event.
  explicit EventFileWriter(const std::string& dir);
  ~EventFileWriter();
  EventFileWriter(const EventFileWriter&) = delete;
  EventFileWriter& operator=(const EventFileWriter&) = delete;

  /// Scalars at `step`, as one event (one Summary), `wall_time` in seconds since the epoch (< 0:
  /// now).
  void add_scalars(int64_t step, const std::vector<std::pair<std::string, double>>& scalars,
                   double wall_time = -1);
  const std::string& path() const { return path_; }

 private:
  void append(const std::string& event);
  std::string path_;
  int fd_ = -1;
};

}  // namespace vicreg
