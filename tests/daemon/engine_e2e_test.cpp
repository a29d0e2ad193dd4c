// klingd end to end against segmind-sim over TLS: jobs in, results out, through
// kill -9, rate limits, expiry, bad files and every class of API answer. The
// emulator's statistics are the judge of what klingd sent.
#include "client/control_client.hpp"
#include "tests/daemon/daemon_env.hpp"

#include <filesystem>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <random>
#include <thread>

namespace {

using namespace klingd::test;
namespace json = boost::json;
using namespace std::chrono_literals;

TEST(engine_e2e, thirty_jobs_of_both_models_complete_once_with_byte_exact_media) {
    daemon_env env;
    env.start();
    std::vector<std::string> ids;
    for (int i = 0; i < 30; ++i) {
        std::string id = fmt::format("job{:02}", i);
        env.drop(id + ".json", i % 3 == 2 ? video_job(id) : image_job(id));
        ids.push_back(id);
    }
    ASSERT_TRUE(env.wait_terminal(ids, 90s)) << env.log();
    for (auto& id : ids)
        expect_completed_with_exact_media(env, id);
    auto stats = env.sim_stats();
    EXPECT_EQ(stats.at("submissions").as_int64(), 30);
    auto by_marker = submissions_by_marker(stats);
    for (auto& id : ids)
        EXPECT_EQ(by_marker[id], 1) << id << " submitted " << by_marker[id] << " times";
    EXPECT_TRUE(std::filesystem::is_empty(env.incoming()));
    EXPECT_EQ(env.stop(), 0);
}

TEST(engine_e2e, kill_9_at_several_moments_loses_no_job_and_submits_none_twice) {
    daemon_env env;
    env.start();
    std::vector<std::string> ids;
    for (int i = 0; i < 50; ++i) {
        std::string id = fmt::format("k{:02}", i);
        env.drop(id + ".json", i % 4 == 3 ? video_job(id) : image_job(id));
        ids.push_back(id);
    }
    std::mt19937 rng(12345);
    for (int k = 0; k < 6; ++k) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200 + rng() % 700));
        env.kill9();
        env.start();
    }
    ASSERT_TRUE(env.wait_terminal(ids, 120s)) << env.log();
    auto all = env.jobs();
    EXPECT_EQ(all.size(), 50u);
    int completed = 0;
    for (auto& id : ids) {
        auto j = env.job(id);
        if (str(j, "state") == "completed") {
            ++completed;
            EXPECT_EQ(j.at("outputs").as_array().size(), 2u);
        } else {
            // The only acceptable other end: caught in "submitting" by a kill, reported as such.
            EXPECT_EQ(str(j, "state"), "failed") << id;
            EXPECT_NE(str(j, "error").find("resubmit_unknown = false"), std::string::npos)
                << str(j, "error");
        }
    }
    EXPECT_GE(completed, 45);
    for (auto& [marker, n] : submissions_by_marker(env.sim_stats()))
        EXPECT_EQ(n, 1) << marker << " was submitted " << n << " times";
}

// Slow answers keep the POST in flight long enough to kill klingd while it waits.
class in_flight_submit : public ::testing::TestWithParam<bool> {};

TEST_P(in_flight_submit, follows_resubmit_unknown_and_says_so) {
    bool resubmit = GetParam();
    daemon_options o;
    o.resubmit_unknown = resubmit;
    o.sim_args = {"--slow-rate", "1", "--slow-s", "1.5"};
    daemon_env env(o);
    env.start();
    env.drop("slow.json", image_job("slow"));
    ASSERT_TRUE(eventually([&] { return env.state("slow") == "submitting"; }, 10s)) << env.log();
    // The sim has created the request and holds back its answer: kill klingd now.
    ASSERT_TRUE(
        eventually([&] { return env.sim_stats(false).at("submissions").as_int64() == 1; }, 10s))
        << json::serialize(env.sim_stats(false)) << env.log();
    env.kill9();
    env.sim_config(R"({"slow_rate": 0})");
    env.start();
    if (!resubmit) {
        ASSERT_TRUE(eventually([&] { return env.state("slow") == "failed"; }, 10s));
        auto j = env.job("slow");
        EXPECT_NE(str(j, "error").find("may or may not exist"), std::string::npos)
            << str(j, "error");
        EXPECT_NE(str(j, "error").find("klingctl retry slow"), std::string::npos);
        EXPECT_EQ(env.sim_stats(false).at("submissions").as_int64(), 1); // not sent again
        auto r = env.api("POST", "/v1/jobs/slow/retry");
        EXPECT_EQ(r.status, 200) << r.text;
    }
    ASSERT_TRUE(env.wait_terminal({"slow"}, 30s));
    auto j = env.job("slow");
    EXPECT_EQ(str(j, "state"), "completed") << str(j, "error");
    EXPECT_EQ(env.sim_stats(false).at("submissions").as_int64(), 2);
    std::string notes;
    for (auto& h : j.at("history").as_array())
        notes += str(h, "note") + "\n";
    EXPECT_NE(notes.find(resubmit ? "resubmit_unknown = true" : "retry requested"),
              std::string::npos)
        << notes;
}

INSTANTIATE_TEST_SUITE_P(both, in_flight_submit, ::testing::Bool(), [](const auto& info) {
    return info.param ? "resubmit_true" : "resubmit_false";
});

void run_budget_case(double daemon_rpm_per_api_minute, double max_requests_per_job,
                     double max_429_share) {
    daemon_options o;
    o.scale = 0.05;
    o.requests_per_minute = daemon_rpm_per_api_minute / o.scale;
    o.sim_args = {"--rpm", "30"};
    daemon_env env(o);
    env.start();
    std::vector<std::string> ids;
    for (int i = 0; i < 100; ++i) {
        std::string id = fmt::format("b{:03}", i);
        env.drop(id + ".json", image_job(id));
        ids.push_back(id);
    }
    ASSERT_TRUE(env.wait_terminal(ids, 300s)) << env.log();
    for (auto& id : ids)
        ASSERT_EQ(env.state(id), "completed") << id << ": " << str(env.job(id), "error");
    auto stats = env.sim_stats(false);
    double per_job = static_cast<double>(api_requests(stats)) / 100;
    double share_429 =
        static_cast<double>(answers_429(stats)) / static_cast<double>(api_requests(stats));
    std::printf(
        "budget case %g/min against 30/min: %.2f API requests per job, %.2f%% answered 429\n",
        daemon_rpm_per_api_minute, per_job, share_429 * 100);
    EXPECT_LE(per_job, max_requests_per_job);
    EXPECT_LT(share_429, max_429_share);
}

TEST(engine_e2e, a_30_rpm_limit_costs_at_most_3_6_requests_per_job_and_few_429s) {
    run_budget_case(30, 3.6, 0.03);
}

TEST(engine_e2e, configured_at_120_rpm_against_30_rpm_all_complete_with_under_10_percent_429) {
    run_budget_case(120, 4.5, 0.10);
}

TEST(engine_e2e, jobs_whose_daemon_was_down_past_retention_expire_and_are_not_polled_again) {
    daemon_options o;
    o.scale = 0.01;
    // The API forgets requests 200 API seconds (2 s here) after submission; jobs run far longer.
    o.sim_args = {"--retention-s", "200", "--median", "kling-o1=100000"};
    o.extra_toml = "";
    daemon_env env(o);
    // klingd must know the same retention: replace the generated value.
    std::string cfg = read_file(env.config_path());
    auto at = cfg.find("result_retention_s = ");
    cfg.replace(at, cfg.find('\n', at) - at, "result_retention_s = 2");
    at = cfg.find("request_timeout_s = ");
    cfg.replace(at, cfg.find('\n', at) - at, "request_timeout_s = 0.5");
    write_file(env.config_path(), cfg);
    env.start();
    for (auto id : {"e1", "e2", "e3"})
        env.drop(std::string(id) + ".json", image_job(id));
    ASSERT_TRUE(eventually(
        [&] { return env.state("e1") == "queued" && env.state("e3") == "queued"; }, 10s));
    env.kill9();
    std::this_thread::sleep_for(2500ms);
    auto before = env.sim_stats(false);
    env.start();
    ASSERT_TRUE(env.wait_terminal({"e1", "e2", "e3"}, 10s));
    for (auto id : {"e1", "e2", "e3"}) {
        auto j = env.job(id);
        EXPECT_EQ(str(j, "state"), "expired");
        EXPECT_NE(str(j, "error").find("down past the API's retention"), std::string::npos)
            << str(j, "error");
    }
    std::this_thread::sleep_for(1s);
    auto after = env.sim_stats(false);
    EXPECT_EQ(count(after, "status"), count(before, "status")) << "expired jobs were polled again";
}

TEST(engine_e2e, a_poll_answered_404_ends_expired) {
    daemon_options o;
    o.scale = 0.01;
    o.sim_args = {"--retention-s", "300", "--median", "kling-o1=100000"};
    daemon_env env(o);
    env.start();
    env.drop("gone.json", image_job("gone"));
    // klingd believes the API keeps results 36 s; the sim forgets after 3 s and answers 404.
    ASSERT_TRUE(env.wait_terminal({"gone"}, 20s)) << env.log();
    auto j = env.job("gone");
    EXPECT_EQ(str(j, "state"), "expired");
    EXPECT_NE(str(j, "error").find("404"), std::string::npos) << str(j, "error");
}

TEST(engine_e2e, malformed_job_files_are_rejected_with_a_reason_while_a_good_job_completes) {
    daemon_env env;
    env.start();
    struct bad {
        std::string name, content, expect;
    };
    std::vector<bad> cases = {
        {"invalid.json", "{\"model\": \"kling-o1\", \"params\": {", "not valid JSON"},
        {"empty.json", "", "the job is empty"},
        {"array.json", "[1, 2, 3]", "must be a JSON object"},
        {"no-model.json", R"({"params": {}})", "model is required"},
        {"model-type.json", R"({"model": 5, "params": {}})", "model must be a string"},
        {"params-type.json", R"({"model": "kling-o1", "params": []})", "params must be an object"},
        {"aspect.json", image_job("x", R"(,"aspect_ratio":"4:3")"),
         "params.aspect_ratio is \"4:3\": allowed values"},
        {"not-url.json",
         R"({"model":"kling-o1","params":{"prompt":"p","image_urls":["not-a-url"]}})",
         "params.image_urls[0] \"not-a-url\" is not an absolute http"},
        {"dotdot.json",
         R"({"model":"kling-o1","id":"../escape","params":{"prompt":"p","image_urls":["https://x/a"]}})",
         "id \"../escape\" starts with '.'"},
        {"nul.json", std::string("{\"model\":\"kling-o1\",\0\"params\":{}}", 32), "NUL byte"},
        {"huge.json", std::string(20u << 20, ' '), "spool.max_file_bytes allows 1048576"},
        {"garbage.json", std::string("\x89PNG\r\n\x1a\n\0\0\0\rIHDR\xff\xfe", 18), "NUL byte"},
        {"garbage2.json", std::string("\xff\xfe\xfd binary", 10), "not valid JSON"},
        {"notes.txt", "hello", "only *.json files are taken"},
    };
    for (auto& c : cases)
        env.drop(c.name, c.content);
    env.drop("good.json", image_job("good"));
    ASSERT_TRUE(env.wait_terminal({"good"}, 30s)) << env.log();
    expect_completed_with_exact_media(env, "good");
    std::string rejected = env.dir() + "/spool/rejected/";
    for (auto& c : cases) {
        ASSERT_TRUE(
            eventually([&] { return std::filesystem::exists(rejected + c.name + ".error"); }, 5s))
            << c.name;
        EXPECT_TRUE(std::filesystem::exists(rejected + c.name)) << c.name;
        std::string err = read_file(rejected + c.name + ".error");
        EXPECT_NE(err.find(c.expect), std::string::npos) << c.name << ": " << err;
        EXPECT_EQ(err.find('\n'), err.size() - 1) << c.name << ": one line";
    }
    EXPECT_TRUE(std::filesystem::is_empty(env.incoming()));
    EXPECT_FALSE(std::filesystem::exists(env.dir() + "/escape"));
    EXPECT_EQ(env.sim_stats(false).at("submissions").as_int64(), 1);
}

TEST(engine_e2e, the_same_file_again_is_a_no_op_and_other_content_under_the_same_id_is_rejected) {
    daemon_env env;
    env.start();
    env.drop("twice.json", image_job("twice"));
    ASSERT_TRUE(env.wait_terminal({"twice"}, 30s));
    env.drop("twice.json", image_job("twice"));
    env.drop("other.json", R"({"id":"twice",)" + image_job("different").substr(1));
    ASSERT_TRUE(eventually(
        [&] { return std::filesystem::exists(env.dir() + "/spool/rejected/other.json.error"); },
        5s));
    EXPECT_NE(read_file(env.dir() + "/spool/rejected/other.json.error")
                  .find("is taken by a job with other content"),
              std::string::npos);
    ASSERT_TRUE(eventually([&] { return std::filesystem::is_empty(env.incoming()); }, 5s));
    EXPECT_TRUE(std::filesystem::exists(env.dir() + "/spool/accepted/twice.json.1"));
    EXPECT_EQ(env.sim_stats(false).at("submissions").as_int64(), 1);
}

TEST(engine_e2e, a_401_stops_submissions_until_the_key_works_and_keeps_jobs_pending) {
    daemon_env env;
    env.sim_config(R"({"api_key": "another-key"})");
    env.start();
    env.drop("a.json", image_job("a"));
    env.drop("b.json", image_job("b"));
    ASSERT_TRUE(eventually(
        [&] { return env.log().find("submissions stopped") != std::string::npos; }, 10s));
    auto j = env.job("a");
    EXPECT_EQ(str(j, "state"), "pending");
    EXPECT_EQ(str(j, "attempts"), "0");
    EXPECT_NE(str(j, "blocked").find("submissions stopped"), std::string::npos)
        << json::serialize(j);
    // Probes, not a storm: two more refused submits take two probe intervals (1.2 s here).
    auto stopped_at = std::chrono::steady_clock::now();
    auto refused_at_stop = count(env.sim_stats(false), "submit", "401");
    EXPECT_GE(refused_at_stop, 1u);
    ASSERT_TRUE(eventually(
        [&] { return count(env.sim_stats(false), "submit", "401") >= refused_at_stop + 2; }, 20s))
        << env.log();
    EXPECT_GE(std::chrono::steady_clock::now() - stopped_at, 2 * 1200ms - 300ms);
    env.sim_config(R"({"api_key": "test-key-1"})");
    ASSERT_TRUE(env.wait_terminal({"a", "b"}, 30s)) << env.log();
    EXPECT_EQ(env.state("a"), "completed");
    EXPECT_EQ(env.state("b"), "completed");
    EXPECT_NE(env.log().find("submissions resume"), std::string::npos);
    EXPECT_EQ(env.log().find("test-key-1"), std::string::npos) << "the key is never logged";
}

TEST(engine_e2e, a_406_stops_submissions_until_credits_return) {
    daemon_options o;
    o.sim_args = {"--credits", "0"};
    daemon_env env(o);
    env.start();
    env.drop("c.json", image_job("c"));
    ASSERT_TRUE(eventually(
        [&] { return str(env.job("c"), "blocked").find("HTTP 406") != std::string::npos; }, 10s))
        << env.log();
    EXPECT_EQ(env.state("c"), "pending");
    env.sim_config(R"({"credits": 5})");
    ASSERT_TRUE(env.wait_terminal({"c"}, 30s)) << env.log();
    EXPECT_EQ(env.state("c"), "completed");
}

TEST(engine_e2e, a_failed_request_ends_failed_with_the_api_detail) {
    daemon_env env;
    env.start();
    env.drop("f.json", image_job("f", "").replace(image_job("f").find("merge"), 5, "SIM_FAIL"));
    ASSERT_TRUE(env.wait_terminal({"f"}, 30s)) << env.log();
    auto j = env.job("f");
    EXPECT_EQ(str(j, "state"), "failed");
    EXPECT_NE(str(j, "error").find("HTTP 422"), std::string::npos) << str(j, "error");
    EXPECT_TRUE(j.at("outputs").as_array().empty());
}

TEST(engine_e2e, bursts_of_5xx_are_retried_and_nothing_is_submitted_twice) {
    daemon_options o;
    o.sim_args = {"--error-rate", "0.3"};
    daemon_env env(o);
    env.start();
    std::vector<std::string> ids;
    for (int i = 0; i < 10; ++i) {
        ids.push_back(fmt::format("e{}", i));
        env.drop(ids.back() + ".json", i % 2 ? video_job(ids.back()) : image_job(ids.back()));
    }
    ASSERT_TRUE(env.wait_terminal(ids, 60s)) << env.log();
    for (auto& id : ids)
        expect_completed_with_exact_media(env, id);
    auto stats = env.sim_stats();
    EXPECT_GT(stats.at("faults").at("error").as_int64(), 0);
    for (auto& [marker, n] : submissions_by_marker(stats))
        EXPECT_EQ(n, 1) << marker;
}

TEST(engine_e2e, a_429_storm_never_fails_a_job_and_the_daemon_slows_down) {
    daemon_options o;
    o.requests_per_minute = 6000; // far above what the sim allows
    o.sim_args = {"--rpm", "10", "--retry-after"};
    daemon_env env(o);
    env.start();
    auto ids = drop_image_jobs(env, "r", 8);
    ASSERT_TRUE(env.wait_terminal(ids, 90s)) << env.log();
    for (auto& id : ids) {
        auto j = env.job(id);
        EXPECT_EQ(str(j, "state"), "completed") << str(j, "error");
        EXPECT_EQ(str(j, "attempts"), "1") << "a 429 is never an attempt";
    }
    auto stats = env.sim_stats(false);
    EXPECT_GT(answers_429(stats), 0u);
    auto r = env.api("GET", "/v1/stats");
    ASSERT_EQ(r.status, 200);
    EXPECT_LT(r.body.at("budget").at("allowed_rpm").to_number<double>(), 6000);
    EXPECT_GT(r.body.at("rate_limited").as_int64(), 0);
}

TEST(engine_e2e, sigterm_exits_0_and_the_next_start_resumes) {
    daemon_env env;
    env.start();
    for (int i = 0; i < 6; ++i)
        env.drop(fmt::format("t{}.json", i), video_job(fmt::format("t{}", i)));
    ASSERT_TRUE(eventually(
        [&] { return env.state("t5") == "queued" || env.state("t5") == "processing"; }, 10s));
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(env.stop(), 0);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
    env.start();
    std::vector<std::string> ids;
    for (int i = 0; i < 6; ++i)
        ids.push_back(fmt::format("t{}", i));
    ASSERT_TRUE(env.wait_terminal(ids, 60s)) << env.log();
    for (auto& id : ids)
        EXPECT_EQ(env.state(id), "completed");
    EXPECT_EQ(env.sim_stats(false).at("submissions").as_int64(), 6);
}

} // namespace

namespace {

// "The request id is committed the moment the answer arrives": klingd is killed the
// moment its event stream shows the job queued (the change is published only once it
// is in the database); after the restart the job has that request id, is not failed
// as an unknown outcome, and completes without a second submit. A batched write of the
// request id would leave the job "submitting" in the database at the kill.
TEST(engine_e2e, a_kill_the_moment_a_job_is_queued_keeps_its_request_id) {
    daemon_env env;
    env.start();
    auto sub = klingd::client::event_subscription::open(env.socket(), "rid");
    ASSERT_TRUE(sub) << sub.error().message();
    env.drop("rid.json", image_job("rid"));
    std::string request_id;
    auto deadline = std::chrono::steady_clock::now() + 20s;
    while (request_id.empty() && std::chrono::steady_clock::now() < deadline) {
        auto ev = sub->next(2s);
        ASSERT_TRUE(ev) << ev.error().message();
        if (*ev && str(**ev, "type") == "job" && str(**ev, "state") == "queued")
            request_id = str(**ev, "request_id");
    }
    ASSERT_FALSE(request_id.empty()) << env.log();
    env.kill9();
    env.start();
    auto j = env.job("rid");
    EXPECT_EQ(str(j, "request_id"), request_id);
    EXPECT_NE(str(j, "state"), "failed") << str(j, "error");
    ASSERT_TRUE(env.wait_terminal({"rid"}, 30s)) << env.log();
    expect_completed_with_exact_media(env, "rid");
    EXPECT_EQ(env.sim_stats(false).at("submissions").as_int64(), 1);
    EXPECT_EQ(env.stop(), 0);
}

} // namespace

namespace {

// A submit answer cut short (half its body) still names the request when the cut
// comes after the request id: klingd follows it instead of failing the job as an
// unknown outcome, and sends nothing twice.
TEST(engine_e2e, a_submit_answer_cut_after_its_request_id_is_followed) {
    daemon_env env;
    env.start();
    env.sim_config(R"({"truncate_rate": 1})"); // every answer: half its body, then closed
    env.drop("cut.json", image_job("cut"));
    ASSERT_TRUE(eventually([&] { return !str(env.job("cut"), "request_id").empty(); }, 20s))
        << env.log();
    env.sim_config(R"({"truncate_rate": 0})");
    ASSERT_TRUE(env.wait_terminal({"cut"}, 30s)) << env.log();
    expect_completed_with_exact_media(env, "cut");
    EXPECT_EQ(env.sim_stats(false).at("submissions").as_int64(), 1);
    EXPECT_NE(env.log().find("cut short after its request id"), std::string::npos) << env.log();
    EXPECT_EQ(env.stop(), 0);
}

} // namespace
