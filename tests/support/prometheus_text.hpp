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

// `promtool check metrics` passes on text, with nothing to say (Debian's prometheus package
// has promtool; scripts/install-deps.sh installs it).
void expect_promtool_clean(const std::string& text);

// The operations kit (ops/grafana/klingd-dashboard.json, ops/prometheus/klingd-alerts.yml)
// uses only metric families text declares (a scrape of a cluster node, which has them all),
// and promtool passes the rules.
void expect_ops_kit_covered_by(const std::string& text);

} // namespace klingd::test
