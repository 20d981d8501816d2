// The report's SVG module (ticks, coordinates, escaping, empty and degenerate data), base64, and
// write_report on a hand-written experiment directory.
#include "vicreg/report.h"

#include "support/temp_dir.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <limits>
#include <regex>
#include <sstream>

namespace {

namespace fs = std::filesystem;
using namespace vicreg;

int count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

/// The (x, y) pixel pairs of the polyline of `series`.
std::vector<std::pair<double, double>> polyline(const std::string& svg, const std::string& series) {
  const std::regex re("data-series=\"" + series + "\"[^>]*points=\"([^\"]*)\"");
  std::smatch m;
  EXPECT_TRUE(std::regex_search(svg, m, re)) << series;
  std::vector<std::pair<double, double>> out;
  std::istringstream in(m[1].str());
  std::string pair;
  while (in >> pair) {
    const auto comma = pair.find(',');
    out.emplace_back(std::stod(pair.substr(0, comma)), std::stod(pair.substr(comma + 1)));
  }
  return out;
}

TEST(Svg, NiceTicksCoverTheRangeInRoundSteps) {
  EXPECT_EQ(svg::nice_ticks(0, 10, 5), (std::vector<double>{0, 2, 4, 6, 8, 10}));
  const auto t = svg::nice_ticks(0.013, 0.87, 5);
  ASSERT_GE(t.size(), 3u);
  EXPECT_LE(t.front(), 0.013);
  EXPECT_GE(t.back(), 0.87);
  const double step = t[1] - t[0];
  EXPECT_NEAR(step, 0.2, 1e-12);
  for (size_t i = 1; i < t.size(); ++i) EXPECT_NEAR(t[i] - t[i - 1], step, 1e-12);
  // Negative ranges, a single value, reversed bounds.
  const auto neg = svg::nice_ticks(-37, -3, 4);
  EXPECT_LE(neg.front(), -37);
  EXPECT_GE(neg.back(), -3);
  const auto one = svg::nice_ticks(5, 5);
  EXPECT_LT(one.front(), 5);
  EXPECT_GT(one.back(), 5);
  EXPECT_EQ(svg::nice_ticks(10, 0, 5), svg::nice_ticks(0, 10, 5));
  EXPECT_TRUE(svg::nice_ticks(0, std::nan(""), 5).empty());
}

TEST(Svg, FormatAndEscape) {
  EXPECT_EQ(svg::format_number(0), "0");
  EXPECT_EQ(svg::format_number(0.5), "0.5");
  EXPECT_EQ(svg::format_number(1234.5678), "1235");
  EXPECT_EQ(svg::format_number(2.5e-6), "2.5e-06");
  EXPECT_EQ(svg::format_number(std::nan("")), "NaN");
  EXPECT_EQ(svg::escape("a<b & \"c\" 'd'>"), "a&lt;b &amp; &quot;c&quot; &#39;d&#39;&gt;");
}

TEST(Svg, LineChartMapsPointsIntoThePlotArea) {
  svg::LineChart c;
  c.id = "c1";
  c.title = "Loss <total>";
  c.width = 400;
  c.height = 200;
  c.series = {{"a", {0, 1, 2, 3}, {10, 5, 2.5, 0}},
              {"b&c", {0, 3}, {1, std::numeric_limits<double>::quiet_NaN()}}};
  const std::string s = svg::line_chart(c);
  EXPECT_EQ(s.rfind("<svg class=\"chart\" id=\"c1\"", 0), 0u) << s.substr(0, 80);
  EXPECT_NE(s.find("Loss &lt;total&gt;"), std::string::npos);
  EXPECT_EQ(count(s, "class=\"series\""), 2);
  EXPECT_NE(s.find("data-series=\"b&amp;c\" data-points=\"1\""), std::string::npos);
  EXPECT_NE(s.find("class=\"dot\""), std::string::npos);  // the lone point shows
  const auto a = polyline(s, "a");
  ASSERT_EQ(a.size(), 4u);
  // x from left to right at even spacing, y decreasing values going down the page (larger y).
  for (size_t i = 1; i < a.size(); ++i) {
    EXPECT_GT(a[i].first, a[i - 1].first);
    EXPECT_GT(a[i].second, a[i - 1].second);
    EXPECT_NEAR(a[i].first - a[i - 1].first, a[1].first - a[0].first, 0.2);
  }
  for (const auto& [x, y] : a) {
    EXPECT_GE(x, 0);
    EXPECT_LE(x, 400);
    EXPECT_GE(y, 0);
    EXPECT_LE(y, 200);
  }
  // Equal steps in value are equal steps in pixels.
  EXPECT_NEAR((a[0].second - a[1].second) / (a[1].second - a[2].second), 2.0, 0.05);

  // Mismatched lengths are an error; no points at all say so.
  c.series = {{"x", {0, 1}, {1}}};
  EXPECT_THROW(svg::line_chart(c), vicreg::UsageError);
  c.series = {{"x", {}, {}}};
  const std::string empty = svg::line_chart(c);
  EXPECT_NE(empty.find("no data"), std::string::npos);
  EXPECT_EQ(count(empty, "class=\"series\""), 0);
}

TEST(Svg, LogAxisDropsNonPositiveValues) {
  svg::LineChart c;
  c.id = "log";
  c.log_y = true;
  c.series = {{"t", {0, 1, 2, 3}, {100, 10, 0, 1}}};
  const std::string s = svg::line_chart(c);
  EXPECT_NE(s.find("data-points=\"3\""), std::string::npos);
  const auto p = polyline(s, "t");
  ASSERT_EQ(p.size(), 3u);
  // Decades are equally spaced on a log axis.
  EXPECT_NEAR(p[1].second - p[0].second, p[2].second - p[1].second, 0.2);
  EXPECT_NE(s.find("(log)"), std::string::npos);
}

TEST(Svg, HistogramCountsEveryValueOnce) {
  EXPECT_EQ(svg::bin_counts({0, 0.1, 0.5, 0.99, 1.0, 2.0, std::nan("")}, 2, 0, 1),
            (std::vector<int64_t>{2, 3}));
  svg::Histogram h;
  h.id = "h";
  h.bins = 10;
  for (int i = 0; i < 1000; ++i) h.values.push_back(std::sin(i * 0.37));
  const std::string s = svg::histogram(h);
  EXPECT_EQ(count(s, "class=\"bar\""), 10);
  int64_t total = 0;
  const std::regex re("data-count=\"(\\d+)\"");
  for (auto it = std::sregex_iterator(s.begin(), s.end(), re); it != std::sregex_iterator(); ++it) {
    total += std::stoll((*it)[1].str());
  }
  EXPECT_EQ(total, 1000);
  // All values equal: one full bin, no division by zero.
  h.values.assign(7, 0.25);
  const std::string same = svg::histogram(h);
  EXPECT_EQ(count(same, "data-count=\"7\""), 1);
  EXPECT_EQ(same.find("nan"), std::string::npos);
  h.values.clear();
  EXPECT_NE(svg::histogram(h).find("no data"), std::string::npos);
}

TEST(Svg, ScatterDrawsOnePointPerFinitePointColouredByGroup) {
  svg::ScatterChart c;
  c.id = "map";
  c.x = {0, 1, 2, std::nan(""), 4};
  c.y = {0, 1, 4, 9, 16};
  c.group = {0, 1, 1, 0, 2};
  c.group_names = {"cat", "dog"};
  const std::string s = svg::scatter_chart(c);
  EXPECT_EQ(count(s, "class=\"point\""), 4);  // the NaN one left out
  EXPECT_EQ(count(s, "data-group=\"1\""), 2);
  EXPECT_EQ(count(s, "data-group=\"1\" cx"), 2);
  EXPECT_NE(s.find(">cat<"), std::string::npos);
  EXPECT_NE(s.find(">2<"), std::string::npos);  // a group without a name: its number
  // Inside the plot area: x grows to the right, y upwards.
  const std::regex re("cx=\"([0-9.]+)\" cy=\"([0-9.]+)\"");
  std::vector<std::pair<double, double>> px;
  for (auto it = std::sregex_iterator(s.begin(), s.end(), re); it != std::sregex_iterator(); ++it) {
    px.emplace_back(std::stod((*it)[1].str()), std::stod((*it)[2].str()));
  }
  ASSERT_EQ(px.size(), 7u);  // 3 legend dots, then 4 points
  EXPECT_LT(px[3].first, px[4].first);
  EXPECT_GT(px[3].second, px[4].second);
  for (size_t i = 3; i < px.size(); ++i) {
    EXPECT_GT(px[i].first, 0);
    EXPECT_LT(px[i].first, c.width);
    EXPECT_LT(px[i].second, c.height);
  }
  c.group.pop_back();
  EXPECT_THROW(svg::scatter_chart(c), vicreg::UsageError);
  EXPECT_NE(svg::scatter_chart(svg::ScatterChart{}).find("no data"), std::string::npos);
}

TEST(Report, Base64MatchesRfc4648) {
  EXPECT_EQ(base64(""), "");
  EXPECT_EQ(base64("f"), "Zg==");
  EXPECT_EQ(base64("fo"), "Zm8=");
  EXPECT_EQ(base64("foo"), "Zm9v");
  EXPECT_EQ(base64("foobar"), "Zm9vYmFy");
  EXPECT_EQ(base64(std::string("\xff\x00\x10", 3)), "/wAQ");
}

class ReportDir : public vicreg::testing::TempDirTest {};

TEST_F(ReportDir, CurvesAndResultsWithoutACheckpoint) {
  {
    std::ofstream m(dir_ / "metrics.jsonl");
    for (int s = 1; s <= 5; ++s) {
      m << nlohmann::json{{"step", s},           {"epoch", s / 5.0},    {"loss", 20.0 / s},
                          {"invariance", 0.1},   {"variance", 1.0 / s}, {"covariance", 0.5},
                          {"lr", 0.001 * s},     {"std_z", 0.2 * s},    {"std_z_min", 0.1 * s},
                          {"rankme_y", 3.0 * s}, {"rankme_z", 4.0 * s}, {"images_per_s", 1000},
                          {"elapsed_s", 6.0 * s}}
               .dump()
        << "\n";
    }
    m << nlohmann::json{{"event", "knn"},
                        {"step", 5},
                        {"epoch", 1.0},
                        {"knn_top1", 0.5},
                        {"knn_top5", 0.9}}
             .dump()
      << "\n";
    m << "{\"step\": 6, \"epo";  // a run killed mid-line
    std::ofstream(dir_ / "knn.json")
        << nlohmann::json{{"protocol", "knn"}, {"top1", 0.8}, {"top5", 0.97}}.dump();
    std::ofstream(dir_ / "config.json") << nlohmann::json{{"dataset", "mnist"}}.dump();
  }
  ReportOptions o;
  o.exp_dir = dir_.string();
  const ReportSummary r = write_report(o);
  EXPECT_EQ(r.path, (dir_ / "report.html").string());
  EXPECT_EQ(r.metrics_lines, 5);
  EXPECT_EQ(r.knn_points, 1);
  EXPECT_EQ(r.skipped_lines, 1);
  EXPECT_EQ(r.eval_results, 1);
  EXPECT_FALSE(r.model);
  std::ifstream in(r.path);
  const std::string html((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const char* series : {"loss", "invariance", "variance", "covariance", "lr", "mean", "min",
                             "representation Y", "embedding Z", "top-1", "top-5"}) {
    EXPECT_NE(html.find(std::string("data-series=\"") + series + "\""), std::string::npos)
        << series;
  }
  EXPECT_NE(html.find("No checkpoint.pt"), std::string::npos);
  EXPECT_NE(html.find("1 unreadable line"), std::string::npos);
  EXPECT_NE(html.find("<td>80</td>"), std::string::npos);  // knn top-1 in %
  std::ifstream md(r.results_path);
  const std::string table((std::istreambuf_iterator<char>(md)), std::istreambuf_iterator<char>());
  EXPECT_NE(table.find("| knn | knn | representation | 80.00 | 97.00 |"), std::string::npos)
      << table;
  // No network: nothing is fetched from anywhere.
  EXPECT_EQ(html.find("http://"), html.find("http://www.w3.org/2000/svg"));
  EXPECT_EQ(html.find("https://"), std::string::npos);
  EXPECT_EQ(html.find("src=\"http"), std::string::npos);

  o.exp_dir = (dir_ / "nothing").string();
  try {
    write_report(o);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("holds no metrics.jsonl"), std::string::npos) << e.what();
  }
}

TEST_F(ReportDir, RunsSideBySideOverlayTheirCurvesAndTabulateTheirResults) {
  for (const char* run : {"a", "b"}) {
    fs::create_directories(dir_ / run);
    std::ofstream m(dir_ / run / "metrics.jsonl");
    const double k = run[0] == 'a' ? 1.0 : 2.0;
    for (int s = 1; s <= 4; ++s) {
      m << nlohmann::json{{"step", s},        {"epoch", s / 2.0},    {"loss", 10 * k / s},
                          {"std_z", 0.1 * s}, {"rankme_y", 2.0 * s}, {"images_per_s", 100 * k}}
               .dump()
        << "\n";
    }
    m << nlohmann::json{{"event", "knn"}, {"step", 4}, {"epoch", 2.0}, {"knn_top1", 0.4 * k}}.dump()
      << "\n";
    m << nlohmann::json{{"event", "online_probe"}, {"step", 4}, {"epoch", 2.0}, {"top1", 0.3 * k}}
             .dump()
      << "\n";
  }
  std::ofstream(dir_ / "b" / "linear.json")
      << nlohmann::json{{"protocol", "linear"}, {"top1", 0.9125}, {"top5", 0.99}}.dump();
  ComparisonOptions o;
  o.exp_dirs = {(dir_ / "a").string(), (dir_ / "b").string() + "/"};
  const ComparisonSummary r = write_comparison(o);
  EXPECT_EQ(r.path, (dir_ / "compare.html").string());
  EXPECT_EQ(r.runs, 2);
  EXPECT_EQ(r.eval_results, 1);
  std::ifstream in(r.path);
  const std::string html((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Every chart has one series per run.
  for (const std::string& label : o.exp_dirs) {
    EXPECT_EQ(count(html, "data-series=\"" + label + "\""), 6) << label;
  }
  EXPECT_EQ(count(html, "<tr class=\"run\">"), 2);
  EXPECT_NE(html.find("<th>linear top-1 %</th>"), std::string::npos);
  EXPECT_NE(html.find("<td>91.25</td>"), std::string::npos);
  EXPECT_NE(html.find("<td>80</td>"), std::string::npos);  // b's last kNN probe, in %
  EXPECT_NE(html.find("<td>60</td>"), std::string::npos);  // b's online probe
  // The loss chart: b's curve above a's.
  const auto pa = polyline(html, o.exp_dirs[0]), pb = polyline(html, o.exp_dirs[1]);
  ASSERT_EQ(pa.size(), pb.size());
  EXPECT_LT(pb.front().second, pa.front().second);  // higher loss, smaller pixel y
  o.exp_dirs = {(dir_ / "a").string()};
  EXPECT_THROW(write_comparison(o), UsageError);
  o.exp_dirs = {(dir_ / "a").string(), (dir_ / "none").string()};
  EXPECT_THROW(write_comparison(o), FormatError);
}

}  // namespace
