// Reading what GET /metrics answers, in the tests.
#include "tests/support/prometheus_text.hpp"

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

} // namespace klingd::test
