// The one atomic writer (io/files.h): the file appears whole or not at all, the temporary never
// outlives a failure, and format sniffing.
#include "vicreg/io/files.h"

#include "vicreg/error.h"

#include "support/temp_dir.h"

#include <gtest/gtest.h>

#include <sys/stat.h>

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
  EXPECT_EQ(vicreg::sniff_format("\x93NUMPY\x01\x00"), FileFormat::Npy);
  EXPECT_EQ(vicreg::sniff_format("\x1f\x8b\x08"), FileFormat::Gzip);
  EXPECT_EQ(vicreg::sniff_format("hello"), FileFormat::Unknown);
  EXPECT_EQ(vicreg::sniff_format(""), FileFormat::Unknown);
}

}  // namespace
