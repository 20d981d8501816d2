// The one atomic writer (io/files.h): the file appears whole or not at all, the temporary never
// outlives a failure, and format sniffing.
#include "vicreg/io/files.h"
#include "vicreg/io/tensorboard.h"
#include "vicreg/run/progress.h"

#include "vicreg/error.h"

#include "support/temp_dir.h"

#include <gtest/gtest.h>

#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace {

namespace fs = std::filesystem;

class Files : public vicreg::testing::TempDirTest {
 protected:
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_)) out.push_back(e.path().filename());
    return out;
  }
};

TEST_F(Files, WritesAndReplacesWhole) {
  vicreg::write_file_atomically(path("a.txt"), std::string("first"));
  EXPECT_EQ(vicreg::read_file(path("a.txt"), "file"), "first");
  vicreg::write_file_atomically(path("a.txt"), std::string("second, longer"));
  EXPECT_EQ(vicreg::read_file(path("a.txt"), "file"), "second, longer");
  EXPECT_EQ(entries(), std::vector<std::string>{"a.txt"});  // no temporary left
  struct stat st {};
  ASSERT_EQ(::stat(path("a.txt").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
}

TEST_F(Files, AFailedWriteLeavesTheOldFileAndNoTemporary) {
  vicreg::write_file_atomically(path("keep.pt"), std::string("good"));
  try {
    vicreg::write_file_atomically(path("keep.pt"), [](const std::string& tmp) {
      std::ofstream(tmp) << "half";
      throw std::runtime_error("disk full");
    });
    FAIL() << "expected an error";
  } catch (const vicreg::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot write '" + path("keep.pt") + "': disk full"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(vicreg::read_file(path("keep.pt"), "file"), "good");
  EXPECT_EQ(entries(), std::vector<std::string>{"keep.pt"});
}

TEST_F(Files, AMissingFolderIsNamed) {
  try {
    vicreg::write_file_atomically(path("no/such/dir/x"), std::string("x"));
    FAIL() << "expected an error";
  } catch (const vicreg::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("does its folder exist"), std::string::npos) << e.what();
  }
}

TEST_F(Files, ReadingIsBounded) {
  vicreg::write_file_atomically(path("big"), std::string(100, 'x'));
  EXPECT_EQ(vicreg::read_file(path("big"), "file", 100).size(), 100u);
  EXPECT_THROW(vicreg::read_file(path("big"), "file", 99), vicreg::FormatError);
  EXPECT_EQ(vicreg::read_file_head(path("big"), "file", 4), "xxxx");
  EXPECT_THROW(vicreg::read_file(path("none"), "file"), vicreg::FormatError);
  EXPECT_THROW(vicreg::read_file(dir_.string(), "file"), vicreg::FormatError);  // a folder
}

TEST(Sniff, TellsFormatsFromTheirFirstBytes) {
  using vicreg::FileFormat;
  EXPECT_EQ(vicreg::sniff_format(std::string("PK\x03\x04rest", 8)), FileFormat::Zip);
  EXPECT_EQ(vicreg::sniff_format("\x80\x02}q"), FileFormat::LegacyPickle);
  EXPECT_EQ(vicreg::sniff_format(std::string("\x10\0\0\0\0\0\0\0{\"a\"", 12)),
            FileFormat::Safetensors);
  // A header of 0x0280 or 0x0a80 bytes starts with 0x80, as a pickle does.
  EXPECT_EQ(vicreg::sniff_format(std::string("\x80\x02\0\0\0\0\0\0{\"a\"", 12)),
            FileFormat::Safetensors);
  EXPECT_EQ(vicreg::sniff_format(std::string("\x80\x0a\0\0\0\0\0\0{\"a\"", 12)),
            FileFormat::Safetensors);
  // A legacy torch.save file: protocol 2, then the magic number 0x1950a86a20f9469cfc6c as a long.
  EXPECT_EQ(vicreg::sniff_format(std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a", 11)),
            FileFormat::LegacyPickle);
  EXPECT_EQ(vicreg::sniff_format("\x93NUMPY\x01\x00"), FileFormat::Npy);
  EXPECT_EQ(vicreg::sniff_format("\x1f\x8b\x08"), FileFormat::Gzip);
  EXPECT_EQ(vicreg::sniff_format("hello"), FileFormat::Unknown);
  EXPECT_EQ(vicreg::sniff_format(""), FileFormat::Unknown);
}

// ---------------------------------------------------------------------------------------------
// TensorBoard event files (io/tensorboard.h); tests/python/test_tensorboard.py reads them back
// with Python's protobuf and crc32c.

TEST(Crc32c, MatchesThePublishedCheckValues) {
  EXPECT_EQ(vicreg::crc32c("123456789"), 0xE3069283u);            // the CRC catalogue's check value
  EXPECT_EQ(vicreg::crc32c(std::string(32, '\0')), 0x8A9136AAu);  // RFC 3720, B.4
  EXPECT_EQ(vicreg::crc32c(std::string(32, '\xff')), 0x62A8AB43u);  // RFC 3720, B.4
  EXPECT_EQ(vicreg::crc32c(""), 0u);
  // Continuing equals computing at once.
  EXPECT_EQ(vicreg::crc32c("56789", vicreg::crc32c("1234")), 0xE3069283u);
  const uint32_t c = 0xE3069283u;
  EXPECT_EQ(vicreg::masked_crc32c("123456789"), ((c >> 15) | (c << 17)) + 0xa282ead8u);
}

TEST(EventRecords, FramesAndReadsBackAndStopsAtATornOrDamagedRecord) {
  const std::string a = vicreg::frame_record("first"), b = vicreg::frame_record(""),
                    c = vicreg::frame_record(std::string(1000, 'z'));
  ASSERT_EQ(a.size(), 16u + 5u);
  EXPECT_EQ(a.substr(0, 8), std::string("\x05\0\0\0\0\0\0\0", 8));  // little-endian length
  const std::string all = a + b + c;
  vicreg::EventRecords r = vicreg::parse_records(all);
  EXPECT_FALSE(r.damaged);
  EXPECT_EQ(r.records, (std::vector<std::string>{"first", "", std::string(1000, 'z')}));
  EXPECT_EQ(r.valid_bytes, all.size());
  // A writer killed in the middle of the last record: the whole ones before it.
  for (size_t cut = 1; cut < c.size(); cut += 97) {
    r = vicreg::parse_records(std::string_view(all).substr(0, all.size() - cut));
    EXPECT_TRUE(r.damaged) << cut;
    EXPECT_EQ(r.records.size(), 2u) << cut;
    EXPECT_EQ(r.valid_bytes, a.size() + b.size()) << cut;
  }
  // One flipped bit in the data, in the length, or in a CRC.
  for (const size_t at : {a.size() + b.size() + 3, a.size() + b.size() + 200, all.size() - 2}) {
    std::string bad = all;
    bad[at] = static_cast<char>(bad[at] ^ 0x10);
    r = vicreg::parse_records(bad);
    EXPECT_TRUE(r.damaged) << at;
    EXPECT_EQ(r.records.size(), 2u) << at;
  }
  // A length of 2^60 whose CRC is right: damaged, nothing allocated for it.
  std::string huge("\0\0\0\0\0\0\0\x10", 8);
  const uint32_t m = vicreg::masked_crc32c(huge);
  for (int i = 0; i < 4; ++i) huge.push_back(static_cast<char>((m >> (8 * i)) & 0xFF));
  r = vicreg::parse_records(huge + "xxxx");
  EXPECT_TRUE(r.damaged);
  EXPECT_TRUE(r.records.empty());
}

class EventFiles : public vicreg::testing::TempDirTest {};

TEST_F(EventFiles, ScalarsReadBackInOrderAndEachWriterGetsAFileThatSortsLast) {
  std::string first;
  {
    vicreg::EventFileWriter w(dir_.string());
    first = w.path();
    EXPECT_EQ(fs::path(first).filename().string().rfind("events.out.tfevents.", 0), 0u) << first;
    w.add_scalars(1, {{"train/loss", 2.5}, {"train/lr", 0.125}}, 1000.5);
    w.add_scalars(2, {{"train/loss", 1.25}});
  }
  const std::vector<vicreg::ScalarEvent> e = vicreg::read_scalar_events(first);
  ASSERT_EQ(e.size(), 3u);
  EXPECT_EQ(e[0].step, 1);
  EXPECT_EQ(e[0].tag, "train/loss");
  EXPECT_EQ(e[0].value, 2.5f);
  EXPECT_EQ(e[0].wall_time, 1000.5);
  EXPECT_EQ(e[1].tag, "train/lr");
  EXPECT_EQ(e[2].step, 2);
  EXPECT_GT(e[2].wall_time, 1.6e9);  // now
  // Three more in the same second: each a new file, in the order they were made.
  std::vector<std::string> made = {first};
  for (int i = 0; i < 3; ++i) made.push_back(vicreg::EventFileWriter(dir_.string()).path());
  EXPECT_EQ(vicreg::event_files(dir_.string()), made);
}

TEST_F(EventFiles, CutBackToAStepDropsLaterEventsTornTailsAndEmptiedFiles) {
  std::string old_file, new_file;
  {
    vicreg::EventFileWriter w(dir_.string());
    old_file = w.path();
    for (int64_t s = 1; s <= 6; ++s) w.add_scalars(s, {{"train/loss", static_cast<double>(s)}});
  }
  {
    vicreg::EventFileWriter w(dir_.string());
    new_file = w.path();
    w.add_scalars(7, {{"train/loss", 7.0}});
  }
  // The second writer was killed in the middle of a record.
  std::ofstream(new_file, std::ios::app | std::ios::binary)
      << vicreg::frame_record("xyz").substr(0, 9);
  EXPECT_EQ(vicreg::cut_event_files(dir_.string(), 4), 3);  // steps 5, 6 and 7
  EXPECT_EQ(vicreg::event_files(dir_.string()), std::vector<std::string>{old_file});
  std::vector<int64_t> steps;
  for (const auto& e : vicreg::read_scalar_events(old_file)) steps.push_back(e.step);
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(vicreg::cut_event_files(dir_.string(), 4), 0);  // nothing left to cut
  EXPECT_EQ(vicreg::cut_event_files(dir_.string(), 0), 4);  // from scratch: nothing kept
  EXPECT_TRUE(vicreg::event_files(dir_.string()).empty());
  // Not an Event at all, in a valid record: named.
  std::ofstream(dir_ / "events.out.tfevents.1.x", std::ios::binary)
      << vicreg::frame_record("\xff\xff\xff");
  try {
    vicreg::read_scalar_events((dir_ / "events.out.tfevents.1.x").string());
    FAIL() << "expected an error";
  } catch (const vicreg::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("not a TensorBoard Event"), std::string::npos) << e.what();
  }
}

TEST(TensorBoardScalars, TagsEveryNumberOfAMetricsLineBySection) {
  using Scalars = std::vector<std::pair<std::string, double>>;
  const nlohmann::json interval = {
      {"step", 5},       {"epoch", 0.5},          {"loss", 2.5}, {"lr", 0.1},   {"rankme_y", 3.0},
      {"bad_images", 2}, {"loss_scale", nullptr}, {"note", "x"}, {"flag", true}};
  EXPECT_EQ(vicreg::tensorboard_scalars(interval), (Scalars{{"train/bad_images", 2},
                                                            {"train/epoch", 0.5},
                                                            {"train/loss", 2.5},
                                                            {"train/lr", 0.1},
                                                            {"train/rankme_y", 3.0}}));
  const nlohmann::json knn = {
      {"event", "knn"}, {"step", 8}, {"knn_top1", 80.5}, {"knn_top5", 99}, {"bank", 100}};
  EXPECT_EQ(vicreg::tensorboard_scalars(knn),
            (Scalars{{"knn/bank", 100}, {"knn/top1", 80.5}, {"knn/top5", 99}}));
}

class MetricsLogTest : public vicreg::testing::TempDirTest {};

TEST_F(MetricsLogTest, WritesTheSameNumbersToAnEventFileMadeAtTheFirstLine) {
  const std::string metrics = (dir_ / "metrics.jsonl").string();
  {
    vicreg::MetricsLog log(metrics, 0, /*tensorboard=*/true);
    EXPECT_TRUE(vicreg::event_files(dir_.string()).empty());  // nothing written yet
    log.write({{"step", 3}, {"loss", 1.5}});
    log.write({{"event", "knn"}, {"step", 3}, {"knn_top1", 50.0}});
    EXPECT_EQ(vicreg::event_files(dir_.string()), std::vector<std::string>{log.event_file()});
  }
  const auto e = vicreg::read_scalar_events(vicreg::event_files(dir_.string())[0]);
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[0].tag, "train/loss");
  EXPECT_EQ(e[1].tag, "knn/top1");
  EXPECT_EQ(e[1].step, 3);
  // Resumed at step 2: the events of step 3 go with metrics.jsonl's line; off writes no file.
  {
    vicreg::MetricsLog log(metrics, 2, /*tensorboard=*/false);
    log.write({{"step", 4}});
  }
  EXPECT_TRUE(vicreg::event_files(dir_.string()).empty());
}

}  // namespace
