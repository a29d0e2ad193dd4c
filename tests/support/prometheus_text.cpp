// Reading what GET /metrics answers, in the tests.
#include "tests/support/prometheus_text.hpp"

#include "tests/support/child_process.hpp"

#include <gtest/gtest.h>
#include <map>
#include <regex>
#include <set>
#include <sstream>

namespace klingd::test {

// A strict reading of the Prometheus text format (0.0.4): every line is a
// comment (HELP, TYPE) or a sample of a declared family with valid labels and value.
void expect_prometheus(const std::string& text) {
    static const std::regex help(R"(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .+)");
    static const std::regex type(
        R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|summary|histogram|untyped))");
    static const std::regex sample(
        R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*")(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*")*\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf))");
    std::map<std::string, std::string> types;
    std::set<std::string> seen_samples;
    std::istringstream in(text);
    std::string line;
    int samples = 0;
    while (std::getline(in, line)) {
        std::smatch m;
        if (std::regex_match(line, m, help))
            continue;
        if (std::regex_match(line, m, type)) {
            EXPECT_FALSE(types.count(m[1])) << "TYPE twice: " << line;
            types[m[1]] = m[2];
            continue;
        }
        ASSERT_TRUE(std::regex_match(line, m, sample)) << "not a valid sample line: " << line;
        std::string name = m[1];
        std::string family = name;
        for (auto suffix : {"_sum", "_count", "_bucket"})
            if (!types.count(family) && family.ends_with(suffix))
                family = family.substr(0, family.size() - std::string(suffix).size());
        EXPECT_TRUE(types.count(family)) << "sample without TYPE: " << line;
        EXPECT_TRUE(seen_samples.insert(name + std::string(m[2])).second)
            << "duplicate sample: " << line;
        std::stod(m[7]);
        ++samples;
    }
    EXPECT_GT(samples, 10);
    EXPECT_EQ(text.back(), '\n');
}

std::optional<double> metric_value(const std::string& text, const std::string& sample) {
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
        if (line.size() > sample.size() && line.compare(0, sample.size(), sample) == 0 &&
            line[sample.size()] == ' ')
            return std::stod(line.substr(sample.size() + 1));
    return std::nullopt;
}

namespace {
// Runs a shell command line; its exit status and output (stdout then stderr).
std::pair<int, std::string> shell(const std::string& line) {
    child_process p("/bin/sh", {"-c", line}, {}, "");
    auto rc = p.wait(std::chrono::seconds(60));
    return {rc.value_or(-1), p.stdout_text() + p.stderr_text()};
}
} // namespace

void expect_promtool_clean(const std::string& text) {
    temp_dir dir("promtool");
    write_file(dir / "metrics.txt", text);
    auto [rc, out] = shell("promtool check metrics < '" + (dir / "metrics.txt") + "'");
    EXPECT_EQ(rc, 0) << "promtool check metrics: " << out
                     << "(is promtool installed? scripts/install-deps.sh installs it)";
    EXPECT_EQ(out, "") << "promtool check metrics has something to say";
}

void expect_ops_kit_covered_by(const std::string& text) {
    static const std::regex type(R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) ([a-z]+))");
    std::set<std::string> exported;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        std::smatch m;
        if (!std::regex_match(line, m, type))
            continue;
        exported.insert(m[1]);
        if (m[2] == "summary" || m[2] == "histogram") {
            exported.insert(m[1].str() + "_sum");
            exported.insert(m[1].str() + "_count");
        }
        if (m[2] == "histogram")
            exported.insert(m[1].str() + "_bucket");
    }
    static const std::regex used(R"(klingd_[a-z0-9_]+)");
    for (auto file : {"ops/grafana/klingd-dashboard.json", "ops/prometheus/klingd-alerts.yml"}) {
        auto path = std::string(KLINGD_SOURCE_DIR) + "/" + file;
        auto content = read_file(path);
        std::set<std::string> names;
        for (std::sregex_iterator it(content.begin(), content.end(), used), end; it != end; ++it)
            names.insert(it->str());
        EXPECT_GT(names.size(), 5u) << file << ": no metric found in it";
        for (auto& n : names)
            EXPECT_TRUE(exported.count(n))
                << file << " uses " << n << ", which klingd does not export";
    }
    auto [rc, out] = shell("promtool check rules '" + std::string(KLINGD_SOURCE_DIR) +
                           "/ops/prometheus/klingd-alerts.yml'");
    EXPECT_EQ(rc, 0) << "promtool check rules: " << out;
}

} // namespace klingd::test
