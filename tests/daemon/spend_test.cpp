// Spend limits end to end, on a single host (SQLite) and on a cluster node (PostgreSQL):
// the submissions a limit allows go out, the next waits in pending (held, with the limit
// and the time it lifts, said once in the log), nothing fails, and a reload that raises
// the limit lets the rest go at once. Prices add up exactly (3 x 0.35 is 1.05).
#include "tests/daemon/daemon_env.hpp"
#include "tests/support/pg_server.hpp"
#include "tests/support/prometheus_text.hpp"

#include <csignal>
#include <fmt/format.h>
#include <gtest/gtest.h>

namespace {

using namespace klingd::test;
namespace json = boost::json;
using namespace std::chrono_literals;

// A JSON number as the test writes it.
double num(const json::value& v) {
    return v.is_null() ? -1 : v.to_number<double>();
}

std::size_t count_of(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
        ++n;
    return n;
}

// A klingd (not started) whose kling-o1 costs `price`, with the [spend] lines given.
std::unique_ptr<daemon_env> priced(daemon_options o, const std::string& price,
                                   const std::string& spend) {
    o.extra_toml = "[spend]\n" + spend + "\n";
    auto env = std::make_unique<daemon_env>(o);
    auto cfg = read_file(env->config_path());
    cfg.replace(cfg.find("[models.\"kling-o1\"]\n"), 19,
                "[models.\"kling-o1\"]\nprice = " + price + "\n");
    write_file(env->config_path(), cfg);
    return env;
}

void set_limit(daemon_env& env, const std::string& value) {
    auto cfg = read_file(env.config_path());
    auto at = cfg.find("daily_limit = ");
    cfg.replace(at, cfg.find('\n', at) - at, "daily_limit = " + value);
    write_file(env.config_path(), cfg);
}

void spend_limit_holds_then_a_reload_lets_the_rest_go(daemon_options o) {
    auto owned = priced(o, "0.35", "daily_limit = 1.05");
    auto& env = *owned;
    env.start();
    std::vector<std::string> ids;
    for (int i = 0; i < 6; ++i) {
        ids.push_back(fmt::format("p{}", i));
        env.drop(ids.back() + ".json", image_job(ids.back()));
    }
    // Three fit in 1.05; the other three wait, held, and nothing fails.
    auto held = [&] {
        int done = 0, waiting = 0;
        for (auto& j : env.jobs()) {
            auto st = str(j, "state");
            done += st == "completed";
            waiting += st == "pending" && j.as_object().contains("held");
            EXPECT_NE(st, "failed") << str(j, "error");
        }
        return done == 3 && waiting == 3;
    };
    ASSERT_TRUE(eventually(held, 60s)) << env.log();
    int submitted = 0;
    for (auto& [marker, n] : submissions_by_marker(env.sim_stats())) {
        EXPECT_EQ(n, 1) << marker;
        submitted += n;
    }
    EXPECT_EQ(submitted, 3);
    for (auto& j : env.jobs())
        if (str(j, "state") == "pending") {
            auto& h = j.at("held");
            EXPECT_EQ(str(h, "limit"), "spend.daily_limit");
            EXPECT_EQ(num(h.at("value")), 1.05);
            EXPECT_EQ(str(h, "until").size(), 20u) << str(h, "until"); // next UTC midnight
            EXPECT_NE(str(h, "until").find("T00:00:00Z"), std::string::npos) << str(h, "until");
        }
    auto stats = env.api("GET", "/v1/stats");
    ASSERT_EQ(stats.status, 200);
    auto& spend = stats.body.at("spend");
    EXPECT_EQ(num(spend.at("today")), 1.05) << stats.text;
    EXPECT_EQ(num(spend.at("daily_limit")), 1.05);
    EXPECT_EQ(str(spend.at("held"), "limit"), "spend.daily_limit");
    auto health = env.api("GET", "/v1/health");
    EXPECT_EQ(health.status, 200) << "a limit is not a fault";
    EXPECT_EQ(str(health.body.at("held"), "limit"), "spend.daily_limit") << health.text;
    auto metrics = env.api("GET", "/metrics");
    expect_prometheus(metrics.text);
    EXPECT_EQ(metric_value(metrics.text, "klingd_spend_total{model=\"kling-o1\"}"), 1.05);
    EXPECT_EQ(metric_value(metrics.text, "klingd_spend_held"), 1);
    child_process list(KLINGCTL_PATH, {"--socket", env.socket(), "list"});
    ASSERT_EQ(list.wait(20s), 0) << list.stderr_text();
    EXPECT_NE(list.stdout_text().find("held by spend.daily_limit until"), std::string::npos)
        << list.stdout_text();
    child_process st(KLINGCTL_PATH, {"--socket", env.socket(), "stats"});
    ASSERT_EQ(st.wait(20s), 0) << st.stderr_text();
    EXPECT_NE(st.stdout_text().find("spend: 1.05 today (limit 1.05)"), std::string::npos)
        << st.stdout_text();
    // Said once for the hold, not once per job.
    EXPECT_EQ(count_of(env.log(), "spend.daily_limit (1.05) reached"), 1u) << env.log();
    // A reload that raises the limit: the rest go at once, each submitted once.
    set_limit(env, "10");
    env.signal(SIGHUP);
    ASSERT_TRUE(env.wait_terminal(ids, 60s)) << env.log();
    for (auto& id : ids)
        EXPECT_EQ(env.state(id), "completed") << str(env.job(id), "error");
    for (auto& [marker, n] : submissions_by_marker(env.sim_stats()))
        EXPECT_EQ(n, 1) << marker;
    auto after = env.api("GET", "/v1/stats");
    EXPECT_EQ(num(after.body.at("spend").at("today")), 2.1) << after.text;
    EXPECT_TRUE(after.body.at("spend").at("held").is_null());
    EXPECT_EQ(env.stop(), 0);
}

TEST(spend, a_daily_limit_holds_submissions_on_one_host_and_a_reload_lifts_it) {
    spend_limit_holds_then_a_reload_lets_the_rest_go({});
}

TEST(spend, a_daily_limit_holds_submissions_on_a_cluster_node_and_a_reload_lifts_it) {
    daemon_options o;
    o.postgresql = fresh_pg_database();
    o.node = "spender";
    spend_limit_holds_then_a_reload_lets_the_rest_go(o);
}

// A submission that provably created nothing (here a 401) is taken back: it is not spent.
TEST(spend, a_submit_refused_by_the_api_is_taken_back) {
    daemon_options o;
    auto owned = priced(o, "0.35", "daily_limit = 1.05");
    auto& env = *owned;
    env.start();
    env.sim_config(R"({"api_key":"another-key"})");
    env.drop("r0.json", image_job("r0"));
    ASSERT_TRUE(eventually(
        [&] { return count_of(env.log(), "submissions stop until this is fixed") > 0; }, 30s))
        << env.log();
    auto stats = env.api("GET", "/v1/stats");
    EXPECT_EQ(num(stats.body.at("spend").at("today")), 0) << stats.text;
    auto metrics = env.api("GET", "/metrics");
    EXPECT_FALSE(metric_value(metrics.text, "klingd_spend_total{model=\"kling-o1\"}"))
        << metrics.text;
    // The key works again: it goes, and counts once.
    env.sim_config(R"({"api_key":"test-key-1"})");
    env.signal(SIGHUP); // a reload probes the key at once
    ASSERT_TRUE(env.wait_terminal({"r0"}, 60s)) << env.log();
    EXPECT_EQ(env.state("r0"), "completed");
    EXPECT_EQ(num(env.api("GET", "/v1/stats").body.at("spend").at("today")), 0.35);
    EXPECT_EQ(env.stop(), 0);
}

// A price above a limit can never go out: refused at --check-config, with where and why.
TEST(spend, a_price_above_a_limit_is_a_configuration_error) {
    auto owned = priced({}, "0.75", "monthly_limit = 0.5");
    auto& env = *owned;
    child_process check(KLINGD_PATH, {"--config", env.config_path(), "--check-config"},
                        {{"SEGMIND_API_KEY", "k"}});
    EXPECT_NE(check.wait(20s).value_or(-1), 0);
    EXPECT_NE(check.stderr_text().find("models.\"kling-o1\".price"), std::string::npos)
        << check.stderr_text();
    EXPECT_NE(check.stderr_text().find("0.75 is above spend.monthly_limit (0.5)"),
              std::string::npos)
        << check.stderr_text();
}

} // namespace
