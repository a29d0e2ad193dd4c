// klingctl against a real klingd: list, show, wait with their --json forms and
// the contract's exit codes (0, 1, 2, 3, 4); and klingd's TLS refusal seen through it.
#include "client/control_client.hpp"
#include "tests/daemon/daemon_env.hpp"

#include <gtest/gtest.h>

namespace {

using namespace klingd::test;
namespace json = boost::json;
using namespace std::chrono_literals;

struct run_result {
    int rc;
    std::string out, err;
};

run_result klingctl(const std::vector<std::string>& args,
                    const std::map<std::string, std::string>& env = {}) {
    child_process p(KLINGCTL_PATH, args, env, "klingctl");
    auto rc = p.wait(60s);
    return {rc.value_or(-1), p.stdout_text(), p.stderr_text()};
}

class klingctl_test : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        env_ = new daemon_env();
        env_->start();
        env_->drop("done.json", image_job("done"));
        env_->drop("broken.json",
                   image_job("broken").replace(image_job("x").find("merge"), 5, "SIM_FAIL"));
        ASSERT_TRUE(env_->wait_terminal({"done", "broken"}, 60s)) << env_->log();
    }
    static void TearDownTestSuite() {
        delete env_;
        env_ = nullptr;
    }
    std::vector<std::string> with_socket(std::vector<std::string> args) {
        args.insert(args.begin(), {"--socket", env_->socket()});
        return args;
    }
    static daemon_env* env_;
};
daemon_env* klingctl_test::env_ = nullptr;

TEST_F(klingctl_test, list_prints_an_aligned_table_and_json) {
    auto r = klingctl(with_socket({"list"}));
    EXPECT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(r.out.rfind("ID ", 0), 0u) << r.out;
    EXPECT_NE(r.out.find("done "), std::string::npos);
    EXPECT_NE(r.out.find("completed"), std::string::npos);
    EXPECT_EQ(r.out.find("\033["), std::string::npos) << "no colours when not on a terminal";
    auto j = klingctl(with_socket({"list", "--json"}));
    ASSERT_EQ(j.rc, 0);
    auto a = json::parse(j.out).as_array();
    EXPECT_EQ(a.size(), 2u);
    auto failed = klingctl(with_socket({"list", "--state", "failed", "--json"}));
    auto fa = json::parse(failed.out).as_array();
    ASSERT_EQ(fa.size(), 1u);
    EXPECT_EQ(fa[0].at("id").as_string(), "broken");
}

TEST_F(klingctl_test, list_with_a_bad_state_is_a_usage_error) {
    auto r = klingctl(with_socket({"list", "--state", "sleeping"}));
    EXPECT_EQ(r.rc, 2);
    EXPECT_NE(r.err.find("not a job state"), std::string::npos) << r.err;
}

TEST_F(klingctl_test, show_prints_fields_and_history_or_json) {
    auto r = klingctl(with_socket({"show", "done"}));
    EXPECT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.out.find("state:        completed"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("history:"), std::string::npos);
    EXPECT_NE(r.out.find("submitting -> queued"), std::string::npos);
    auto j = klingctl(with_socket({"show", "done", "--json"}));
    ASSERT_EQ(j.rc, 0);
    auto o = json::parse(j.out).as_object();
    for (auto key : {"id", "model", "state", "request_id", "error", "outputs", "priority",
                     "created_at", "updated_at", "attempts", "polls", "history"})
        EXPECT_TRUE(o.contains(key)) << key;
    EXPECT_EQ(klingctl(with_socket({"show", "nope"})).rc, 1);
}

TEST_F(klingctl_test, wait_exit_codes) {
    EXPECT_EQ(klingctl(with_socket({"wait", "done"})).rc, 0);
    auto f = klingctl(with_socket({"wait", "done", "broken"}));
    EXPECT_EQ(f.rc, 1);
    EXPECT_NE(f.out.find("broken: failed"), std::string::npos) << f.out;
    EXPECT_EQ(klingctl(with_socket({"wait", "missing"})).rc, 1);
    // a job held pending by a pause, waited for with a tiny timeout
    env_->api("POST", "/v1/pause");
    env_->drop("held.json", image_job("held"));
    ASSERT_TRUE(eventually([&] { return env_->state("held") == "pending"; }, 5s));
    auto t = klingctl(with_socket({"wait", "held", "--timeout", "0.3"}));
    EXPECT_EQ(t.rc, 4);
    EXPECT_NE(t.out.find("held: still running"), std::string::npos);
    env_->api("POST", "/v1/resume");
}

// Every event stream klingd keeps is taken: wait reads the states instead, and still
// ends when the job does.
TEST_F(klingctl_test, wait_reads_the_states_when_klingd_has_no_event_stream_to_spare) {
    std::vector<klingd::client::event_subscription> taken;
    while (true) {
        auto s = klingd::client::event_subscription::open(env_->socket(), "");
        if (!s) {
            ASSERT_EQ(s.error(), klingd::core::errc::streams_full) << s.error().message();
            break;
        }
        taken.push_back(std::move(*s));
        ASSERT_LT(taken.size(), 1000u) << "klingd keeps no limit on event streams";
    }
    env_->drop("late.json", image_job("late"));
    auto r = klingctl(with_socket({"wait", "late", "--timeout", "50"}));
    EXPECT_EQ(r.rc, 0) << r.out << r.err;
    EXPECT_NE(r.out.find("late: completed"), std::string::npos) << r.out;
    EXPECT_NE(r.err.find("no event stream to spare"), std::string::npos) << r.err;
}

TEST_F(klingctl_test, usage_errors_exit_2_and_an_absent_daemon_exits_3) {
    EXPECT_EQ(klingctl(with_socket({"frobnicate"})).rc, 2);
    EXPECT_EQ(klingctl({"--socket", env_->socket()}).rc, 2);
    auto r = klingctl({"--socket", env_->dir() + "/no.sock", "list"});
    EXPECT_EQ(r.rc, 3);
    EXPECT_NE(r.err.find("is klingd running?"), std::string::npos) << r.err;
    auto e = klingctl({"list"}, {{"KLINGD_SOCKET", env_->dir() + "/nothing.sock"}});
    EXPECT_EQ(e.rc, 3);
    EXPECT_NE(e.err.find("nothing.sock"), std::string::npos);
}

TEST(klingd_tls, an_untrusted_server_gets_nothing_and_the_job_says_why) {
    daemon_env env;
    // Trust a CA that did not sign the sim's certificate.
    std::string cfg = read_file(env.config_path());
    auto at = cfg.find("/ca.pem");
    cfg.replace(at, 7, "/other-ca.pem");
    write_file(env.config_path(), cfg);
    env.start();
    env.drop("tls.json", image_job("tls"));
    ASSERT_TRUE(eventually(
        [&] {
            auto j = env.job("tls");
            return j.is_object() && !j.at("error").is_null();
        },
        10s))
        << env.log();
    auto j = env.job("tls");
    // Waiting to be sent again (or being retried right now), never further.
    std::string state(j.at("state").as_string());
    EXPECT_TRUE(state == "pending" || state == "submitting") << state;
    std::string err(j.at("error").as_string());
    EXPECT_NE(err.find("certificate not trusted"), std::string::npos) << err;
    EXPECT_EQ(env.sim_stats(false).at("submissions").as_int64(), 0);
    EXPECT_EQ(env.sim_stats(false).at("submit").as_object().size(), 0u)
        << "no request reached the server";
}

} // namespace
