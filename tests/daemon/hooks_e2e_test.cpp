// Completion hooks end to end, on a single host (SQLite) and a cluster node (PostgreSQL):
// every arrival at a final state is told to the command (job JSON on stdin, its
// environment) and to the webhook (signed, Standard Webhooks headers), once each when
// they succeed; a webhook that fails is retried with the same webhook-id, then given up
// and counted; and a kill -9 between the final state and the delivery still delivers
// after the restart.
#include "tests/daemon/daemon_env.hpp"
#include "tests/support/digest.hpp"
#include "tests/support/pg_server.hpp"
#include "tests/support/webhook_receiver.hpp"

#include <csignal>
#include <filesystem>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

namespace {

using namespace klingd::test;
namespace json = boost::json;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

const std::string secret_b64 = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

// The Standard Webhooks signature, computed here on its own (the daemon's is checked
// against the specification's vector in test_daemon_parts).
std::string expected_signature(const std::string& key, const std::string& id, long long ts,
                               const std::string& body) {
    std::string msg = id + "." + std::to_string(ts) + "." + body;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
         reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), mac, &len);
    std::string b64(64, '\0');
    int n =
        EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()), mac, static_cast<int>(len));
    b64.resize(static_cast<std::size_t>(n));
    return "v1," + b64;
}

// A hook script that appends "<id> <state> <output dir>" and the job JSON it read to
// DIR/events; while DIR/block exists it first says so (DIR/started, its pid) and hangs.
std::string write_hook_script(daemon_env& env) {
    auto path = env.dir() + "/hook.sh";
    write_file(path, fmt::format(R"(#!/bin/sh
if [ -e {0}/block ]; then echo $$ > {0}/hook.pid; touch {0}/started; sleep 60; fi
job=$(cat)
echo "$KLINGD_JOB_ID $KLINGD_JOB_STATE $KLINGD_OUTPUT_DIR $PATH $job" >> {0}/events
)",
                                 env.dir()));
    fs::permissions(path, fs::perms::owner_all);
    return path;
}

std::unique_ptr<daemon_env> with_hooks(daemon_options o, const std::string& hooks_toml) {
    auto env = std::make_unique<daemon_env>(o);
    auto script = write_hook_script(*env);
    write_file(env->dir() + "/whsec", "whsec_" + secret_b64 + "\n");
    fs::permissions(env->dir() + "/whsec", fs::perms::owner_read | fs::perms::owner_write);
    auto cfg = read_file(env->config_path());
    cfg += fmt::format("[hooks]\ncommand = [\"{}\"]\nwebhook_secret_file = \"{}/whsec\"\n{}\n",
                       script, env->dir(), hooks_toml);
    write_file(env->config_path(), cfg);
    return env;
}

std::vector<std::string> lines_of(const std::string& path) {
    std::vector<std::string> out;
    if (!fs::exists(path))
        return out;
    auto text = read_file(path);
    for (std::size_t at = 0; at < text.size();) {
        auto nl = text.find('\n', at);
        out.push_back(text.substr(at, nl - at));
        at = nl == std::string::npos ? text.size() : nl + 1;
    }
    return out;
}

void every_final_state_is_told_once_to_each_target(daemon_options o) {
    webhook_receiver receiver;
    auto owned = with_hooks(o, fmt::format("webhook_url = \"{}\"\nretry_s = 0.2", receiver.url()));
    auto& env = *owned;
    env.start();
    env.drop("done.json", image_job("done"));
    env.drop("bad.json", image_job("SIM_FAIL"));
    env.api("POST", "/v1/pause");
    env.drop("gone.json", image_job("gone"));
    ASSERT_TRUE(eventually([&] { return env.state("gone") == "pending"; }, 30s));
    env.api("POST", "/v1/jobs/gone/cancel");
    env.api("POST", "/v1/resume");
    ASSERT_TRUE(env.wait_terminal({"done", "bad", "gone"}, 60s)) << env.log();
    ASSERT_EQ(env.state("done"), "completed");
    ASSERT_EQ(env.state("bad"), "failed");
    ASSERT_EQ(env.state("gone"), "cancelled");

    auto events = env.dir() + "/events";
    ASSERT_TRUE(eventually(
        [&] { return lines_of(events).size() >= 3 && receiver.posts().size() >= 3; }, 30s))
        << env.log();
    auto lines = lines_of(events);
    ASSERT_EQ(lines.size(), 3u);
    std::map<std::string, std::string> by_id;
    for (auto& l : lines)
        by_id[l.substr(0, l.find(' '))] = l;
    EXPECT_EQ(by_id["done"].rfind(
                  "done completed " + env.output() + "/done /usr/local/bin:/usr/bin:/bin {", 0),
              0u)
        << by_id["done"];
    // On stdin: the job object itself (not the event around it).
    auto stdin_json = json::parse(by_id["done"].substr(by_id["done"].find('{')));
    EXPECT_EQ(str(stdin_json, "id"), "done");
    EXPECT_EQ(str(stdin_json, "state"), "completed");
    EXPECT_FALSE(stdin_json.as_object().contains("data")) << by_id["done"];
    EXPECT_EQ(by_id["bad"].rfind("bad failed  ", 0), 0u) << by_id["bad"];
    EXPECT_EQ(by_id["gone"].rfind("gone cancelled  ", 0), 0u) << by_id["gone"];

    auto key = base64_decode(secret_b64);
    auto posts = receiver.posts();
    ASSERT_EQ(posts.size(), 3u);
    std::set<std::string> ids;
    for (auto& p : posts) {
        auto id = p.headers["webhook-id"];
        ids.insert(id);
        auto ts = std::stoll(p.headers["webhook-timestamp"]);
        EXPECT_NEAR(static_cast<double>(ts), static_cast<double>(std::time(nullptr)), 120);
        EXPECT_EQ(p.headers["webhook-signature"], expected_signature(key, id, ts, p.body));
        auto ev = json::parse(p.body);
        auto job = ev.at("data");
        EXPECT_EQ(id, fmt::format("{}-1-{}", str(job, "id"), str(job, "state")));
        EXPECT_EQ(str(ev, "type"), "job." + str(job, "state"));
        EXPECT_FALSE(str(ev, "timestamp").empty());
    }
    EXPECT_EQ(ids, (std::set<std::string>{"done-1-completed", "bad-1-failed", "gone-1-cancelled"}));

    // The outcome on the job, and counted.
    ASSERT_TRUE(eventually(
        [&] {
            auto h = env.job("done").at("hooks").as_array();
            return h.size() == 2 && str(h[0], "outcome") == "delivered" &&
                   str(h[1], "outcome") == "delivered";
        },
        10s))
        << json::serialize(env.job("done"));
    // Every outcome is written after its receiver answered: wait for the last one.
    json::value hooks;
    EXPECT_TRUE(eventually(
        [&] {
            hooks = env.api("GET", "/v1/stats").body.at("hooks");
            return hooks.at("delivered").to_number<int>() == 6 &&
                   hooks.at("pending").to_number<int>() == 0;
        },
        10s))
        << json::serialize(hooks);

    // Retried after failing: a second event with its own id.
    env.api("POST", "/v1/jobs/bad/retry");
    ASSERT_TRUE(eventually([&] { return lines_of(events).size() >= 4; }, 60s)) << env.log();
    EXPECT_EQ(lines_of(events)[3].rfind("bad failed", 0), 0u);
    ASSERT_TRUE(eventually([&] { return receiver.posts().size() >= 4; }, 30s));
    EXPECT_EQ(receiver.posts()[3].headers["webhook-id"], "bad-2-failed");
}

TEST(hooks, every_final_state_is_told_once_to_each_target_on_sqlite) {
    every_final_state_is_told_once_to_each_target({});
}

TEST(hooks, every_final_state_is_told_once_to_each_target_on_a_cluster_node) {
    daemon_options o;
    o.postgresql = fresh_pg_database();
    o.node = "n1";
    every_final_state_is_told_once_to_each_target(o);
}

TEST(hooks, a_failing_webhook_is_retried_with_the_same_id_then_given_up_and_counted) {
    webhook_receiver receiver;
    receiver.fail_first = 2;
    auto owned = with_hooks(
        {}, fmt::format("webhook_url = \"{}\"\nretry_s = 0.2\nmax_attempts = 3", receiver.url()));
    auto& env = *owned;
    env.start();
    env.drop("a.json", image_job("a"));
    ASSERT_TRUE(eventually([&] { return receiver.posts().size() >= 3; }, 60s)) << env.log();
    auto posts = receiver.posts();
    EXPECT_EQ(posts[0].headers["webhook-id"], "a-1-completed");
    EXPECT_EQ(posts[1].headers["webhook-id"], "a-1-completed");
    EXPECT_EQ(posts[2].headers["webhook-id"], "a-1-completed") << "the same id on every attempt";
    ASSERT_TRUE(eventually(
        [&] {
            auto hooks = env.job("a").at("hooks").as_array();
            for (auto& h : hooks)
                if (str(h, "target") == "webhook")
                    return str(h, "outcome") == "delivered" &&
                           h.at("attempts").to_number<int>() == 3;
            return false;
        },
        10s))
        << json::serialize(env.job("a"));

    // Always refused: given up after max_attempts, logged and counted.
    receiver.status = 503;
    env.drop("b.json", image_job("b"));
    ASSERT_TRUE(eventually(
        [&] {
            auto hooks = env.job("b").at("hooks").as_array();
            for (auto& h : hooks)
                if (str(h, "target") == "webhook")
                    return str(h, "outcome") == "given_up";
            return false;
        },
        60s))
        << env.log();
    auto b_hooks = env.job("b").at("hooks").as_array();
    for (auto& h : b_hooks)
        if (str(h, "target") == "webhook") {
            EXPECT_EQ(h.at("attempts").to_number<int>(), 3);
            EXPECT_EQ(str(h, "last_error").rfind("HTTP 503", 0), 0u) << str(h, "last_error");
        }
    EXPECT_NE(env.log().find("hook b-1-completed: webhook given up after 3 attempts"),
              std::string::npos);
    EXPECT_EQ(env.api("GET", "/v1/stats").body.at("hooks").at("given_up").to_number<int>(), 1);
    auto metrics = unix_request(env.socket(), "GET", "/metrics").text;
    EXPECT_NE(
        metrics.find(R"(klingd_hook_deliveries_total{target="webhook",outcome="given_up"} 1)"),
        std::string::npos)
        << metrics;
}

// The final state is committed with its delivery; klingd is killed while the hook runs;
// after the restart the delivery still happens.
TEST(hooks, a_kill_9_between_the_final_state_and_the_delivery_still_delivers) {
    auto owned = with_hooks({}, "timeout_s = 120");
    auto& env = *owned;
    write_file(env.dir() + "/block", "");
    env.start();
    env.drop("k.json", image_job("k"));
    ASSERT_TRUE(eventually([&] { return fs::exists(env.dir() + "/started"); }, 60s)) << env.log();
    EXPECT_EQ(env.state("k"), "completed");
    env.kill9();
    // The hook klingd started is still hanging: end it, and let the next run through.
    ::kill(-std::stoi(read_file(env.dir() + "/hook.pid")), SIGKILL);
    fs::remove(env.dir() + "/block");
    EXPECT_TRUE(lines_of(env.dir() + "/events").empty());
    env.start();
    ASSERT_TRUE(eventually([&] { return !lines_of(env.dir() + "/events").empty(); }, 30s))
        << env.log();
    EXPECT_EQ(lines_of(env.dir() + "/events")[0].rfind("k completed ", 0), 0u);
    ASSERT_TRUE(eventually(
        [&] {
            auto h = env.job("k").at("hooks").as_array();
            return h.size() == 1 && str(h[0], "outcome") == "delivered";
        },
        10s))
        << json::serialize(env.job("k"));
}

} // namespace
