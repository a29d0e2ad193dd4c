#pragma once
// Reading what GET /metrics answers, in the tests.

#include <optional>
#include <string>

namespace klingd::test {

// A strict reading of the Prometheus text format (0.0.4): every line is a comment (HELP,
// TYPE) or a sample of a declared family with valid labels and value (gtest failures).
void expect_prometheus(const std::string& text);

// The value of the sample whose name and labels are exactly `sample` (as written, e.g.
// `klingd_cluster_nodes{state="gone"}`), or nothing when there is no such line.
std::optional<double> metric_value(const std::string& text, const std::string& sample);

} // namespace klingd::test
