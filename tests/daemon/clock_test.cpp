// The wall clock stepped while klingd runs, as NTP or an administrator does: the
// monotonic clock goes on, only the wall clock jumps. libfaketime (Debian's faketime)
// shifts klingd's wall clock alone, by an offset the test writes to a file; the
// certificates are valid from two days back (scripts/make-test-certs.sh), so TLS
// still works when klingd's clock is an hour behind.
#include "core/time_text.hpp"
#include "tests/daemon/daemon_env.hpp"

#include <filesystem>
#include <gtest/gtest.h>

namespace {

using namespace klingd::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

const char* const libfaketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

class clock_step : public ::testing::Test {
protected:
    void SetUp() override {
        if (!fs::exists(libfaketime))
            GTEST_SKIP() << "faketime is not installed (scripts/install-deps.sh installs it)";
    }
    // klingd's environment: its wall clock shifted by the seconds in the offset file.
    std::map<std::string, std::string> shifted(const daemon_env& env) {
        offset_file = env.dir() + "/wall-offset";
        if (!fs::exists(offset_file))
            step(env, 0);
        return {{"LD_PRELOAD", libfaketime},
                {"FAKETIME_TIMESTAMP_FILE", offset_file},
                {"FAKETIME_NO_CACHE", "1"},
                {"FAKETIME_DONT_FAKE_MONOTONIC", "1"},
                // Under KLINGD_SANITIZE=1: ASan wants to come first, and here it cannot.
                {"ASAN_OPTIONS", "verify_asan_link_order=0"}};
    }
    // Sets klingd's wall clock to seconds away from the real one (whole file at once).
    void step(const daemon_env& env, long seconds) {
        std::string tmp = env.dir() + "/.wall-offset.tmp";
        write_file(tmp, (seconds < 0 ? "" : "+") + std::to_string(seconds) + "\n");
        fs::rename(tmp, env.dir() + "/wall-offset");
    }
    // Waits until every job has a request id (submitted and answered).
    bool all_submitted(daemon_env& env, const std::vector<std::string>& ids) {
        return eventually(
            [&] {
                for (auto& id : ids)
                    if (str(env.job(id), "request_id").empty())
                        return false;
                return true;
            },
            30s);
    }
    // How far klingd's clock was from the real one when it wrote the job's field: the
    // proof that the step took effect.
    static std::chrono::seconds skew(daemon_env& env, const std::string& id,
                                     const std::string& field) {
        auto t = klingd::core::parse_rfc3339(str(env.job(id), field));
        if (!t)
            return std::chrono::seconds::max();
        return std::chrono::round<std::chrono::seconds>(*t - std::chrono::system_clock::now());
    }
    std::string offset_file;
};

// Stepped back an hour: polls of the jobs already submitted and submits of new ones go
// on at once (pacing on the wall clock would send nothing for an hour).
TEST_F(clock_step, back_by_an_hour_polls_and_submits_go_on) {
    daemon_options o;
    o.sim_args = {"--median", "kling-o1=150"}; // 3 s of real time: still running at the step
    daemon_env env(o);
    env.start(shifted(env));
    auto ids = drop_image_jobs(env, "before", 4);
    ASSERT_TRUE(all_submitted(env, ids)) << env.log();
    step(env, -3600);
    auto more = drop_image_jobs(env, "after", 4);
    ids.insert(ids.end(), more.begin(), more.end());
    ASSERT_TRUE(env.wait_terminal(ids, 30s)) << env.log();
    EXPECT_LT(skew(env, "after0", "created_at"), -3500s) << "the step did not take effect";
    for (auto& id : ids)
        expect_completed_with_exact_media(env, id);
    for (auto& [marker, n] : submissions_by_marker(env.sim_stats()))
        EXPECT_EQ(n, 1) << marker;
    EXPECT_EQ(env.stop(), 0);
}

// Stepped forward two hours, past the API's retention (72 s at the tests' scale): no
// running job expires; each is followed to its result.
TEST_F(clock_step, forward_past_the_retention_expires_no_running_job) {
    daemon_options o;
    o.sim_args = {"--median", "kling-o1=150"}; // 3 s of real time: still running at the step
    daemon_env env(o);
    env.start(shifted(env));
    auto ids = drop_image_jobs(env, "run", 4);
    ASSERT_TRUE(all_submitted(env, ids)) << env.log();
    step(env, 7200);
    ASSERT_TRUE(env.wait_terminal(ids, 60s)) << env.log();
    for (auto& id : ids)
        expect_completed_with_exact_media(env, id);
    EXPECT_GT(skew(env, "run0", "finished_at"), 7100s) << "the step did not take effect";
    EXPECT_EQ(env.stop(), 0);
}

// Across a restart the wall clock measures the downtime: jobs submitted before a stop
// whose retention has passed by the start expire without a request.
TEST_F(clock_step, across_a_restart_the_wall_clock_measures_the_downtime) {
    daemon_options o;
    o.sim_args = {"--median", "kling-o1=10000000"}; // never done
    daemon_env env(o);
    env.start(shifted(env));
    auto ids = drop_image_jobs(env, "down", 3);
    ASSERT_TRUE(all_submitted(env, ids)) << env.log();
    ASSERT_EQ(env.stop(), 0);
    auto polls = [&] {
        std::int64_t n = 0;
        auto stats = env.sim_stats();
        for (auto& r : stats.at("requests").as_array())
            n += r.at("status_polls").as_int64() + r.at("result_fetches").as_int64();
        return n;
    };
    auto before = polls();
    step(env, 7200); // two hours down, by the wall clock
    env.start(shifted(env));
    ASSERT_TRUE(env.wait_terminal(ids, 30s)) << env.log();
    for (auto& id : ids)
        EXPECT_EQ(str(env.job(id), "state"), "expired") << id;
    EXPECT_GT(skew(env, "down0", "updated_at"), 7100s) << "the step did not take effect";
    EXPECT_EQ(polls(), before) << "an expired job was polled";
    EXPECT_EQ(env.stop(), 0);
}

} // namespace
