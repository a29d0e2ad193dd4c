// The control API's route table in-process: each route and each error, through
// route_request with a real engine on a real SQLite database (never started, so
// nothing is sent to any API).
#include "config/settings.hpp"
#include "daemon/control_api.hpp"
#include "daemon/engine.hpp"
#include "daemon/http_client.hpp"
#include "runtime/log.hpp"
#include "storage/sqlite_repository.hpp"
#include "tests/support/await.hpp"
#include "tests/support/child_process.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/json.hpp>
#include <gtest/gtest.h>
#include <optional>
#include <sqlite3.h>

namespace {

using namespace klingd;
namespace http = boost::beast::http;
namespace json = boost::json;

class control_api : public ::testing::Test {
protected:
    test::temp_dir dir{"control-api"};
    config::settings settings;
    boost::asio::io_context io{1};
    boost::asio::ssl::context tls{boost::asio::ssl::context::tls_client};
    std::optional<daemon::http_client> client;
    std::optional<storage::sqlite_repository> store;
    daemon::manual_clock clock{core::time_point{core::milliseconds(1'800'000'000'000)}};
    std::optional<daemon::engine> engine;

    void SetUp() override {
        log::set_level(log::level::error);
        settings.api.base_url = "https://127.0.0.1:1";
        settings.api_key = config::secret(std::string("route-test-key"));
        settings.storage.database = dir / "klingd.db";
        settings.output.directory = dir / "output";
        client.emplace(io.get_executor(), tls, daemon::client_options{});
        // A short wait for a lock: one test locks the database.
        store.emplace(settings.storage.database,
                      storage::sqlite_tuning{.busy_timeout = std::chrono::milliseconds(50)});
        engine.emplace(io, settings, *store, *client, clock);
    }

    daemon::control_outcome call(http::verb method, const std::string& target,
                                 const std::string& body = {}) {
        daemon::control_request req{method, target, 11};
        req.body() = body;
        req.prepare_payload();
        return test::await(io, daemon::route_request(req, *engine, daemon::peer_info{1, 2, 3}));
    }
    // The answer; a failure when the request was taken as an event stream.
    daemon::control_response answer(http::verb method, const std::string& target,
                                    const std::string& body = {}) {
        auto out = call(method, target, body);
        EXPECT_TRUE(std::holds_alternative<daemon::control_response>(out)) << target;
        return std::holds_alternative<daemon::control_response>(out)
                   ? std::get<daemon::control_response>(out)
                   : daemon::control_response{};
    }
    json::value body_of(const daemon::control_response& r) { return json::parse(r.body()); }
    std::string error_of(const daemon::control_response& r) {
        auto v = body_of(r);
        return std::string(v.at("error").as_string());
    }
    void add(const std::string& id) {
        auto r = answer(http::verb::post, "/v1/jobs", job(id));
        ASSERT_EQ(r.result_int(), 201u) << r.body();
    }
    static std::string job(const std::string& id, const std::string& prompt = "a cat") {
        return R"({"id":")" + id + R"(","model":"kling-o1","params":{"prompt":")" + prompt +
               R"(","image_urls":["https://a.example/1.png"]}})";
    }
};

// Every error answer: its status, and a part of its {"error": ...} text.
struct error_case {
    http::verb method;
    const char* target;
    const char* body;
    unsigned status;
    const char* text;
};

TEST_F(control_api, each_error_has_its_status_and_says_what) {
    add("known");
    const std::string other_content = job("known", "other content");
    const error_case cases[] = {
        {http::verb::get, "/nope", "", 404, "no endpoint /nope"},
        {http::verb::get, "/v1/jobs/none", "", 404, "no job \"none\""},
        {http::verb::get, "/v1/jobs/a%2Fb", "", 404, "no job \"a/b\""},
        {http::verb::get, "/v1/jobs/%zz", "", 400, "malformed request target"},
        {http::verb::get, "/v1/jobs?state=bogus", "", 400, "pending, submitting, queued"},
        {http::verb::get, "/v1/jobs?limit=0", "", 400, "limit must be an integer from 1 to 10000"},
        {http::verb::get, "/v1/jobs?limit=x", "", 400, "limit must be"},
        {http::verb::get, "/v1/jobs?colour=red", "", 400, "unknown query parameter \"colour\""},
        {http::verb::post, "/v1/jobs", "{", 400, "not valid JSON"},
        {http::verb::post, "/v1/jobs", R"({"id":"x","model":"kling-o1","params":{}})", 400,
         "params.prompt"},
        {http::verb::post, "/v1/jobs", other_content.c_str(), 409,
         "taken by a job with other content"},
        {http::verb::post, "/v1/jobs/none/cancel", "", 404, "no job \"none\""},
        {http::verb::post, "/v1/jobs/none/retry", "", 404, "no job \"none\""},
        {http::verb::post, "/v1/jobs/known/retry", "", 409,
         "only failed or expired jobs can be retried"},
        {http::verb::get, "/v1/jobs?state=cancelled+", "", 400, "state \"cancelled \" is not"},
        {http::verb::get, "/v1/events?id=", "", 400, "id must name a job"},
        {http::verb::delete_, "/v1/jobs", "", 405,
         "DELETE is not allowed here (allowed: GET, POST)"},
        {http::verb::post, "/v1/health", "", 405, "allowed: GET"},
        {http::verb::post, "/v1/events", "", 405, "allowed: GET"},
        {http::verb::get, "/v1/events?xid=known", "", 400, "unknown query parameter \"xid\""},
        {http::verb::get, "/v1/jobs/known/cancel", "", 405, "allowed: POST"},
    };
    for (const auto& c : cases) {
        auto r = answer(c.method, c.target, c.body);
        EXPECT_EQ(r.result_int(), c.status) << c.target << ": " << r.body();
        EXPECT_EQ(r[http::field::content_type], "application/json") << c.target;
        EXPECT_NE(error_of(r).find(c.text), std::string::npos) << c.target << ": " << r.body();
    }
    auto r = answer(http::verb::delete_, "/v1/jobs");
    EXPECT_EQ(r[http::field::allow], "GET, POST");
}

TEST_F(control_api, jobs_are_added_found_listed_and_cancelled) {
    auto created = answer(http::verb::post, "/v1/jobs", job("j1"));
    EXPECT_EQ(created.result_int(), 201u);
    EXPECT_EQ(body_of(created).at("state").as_string(), "pending");
    EXPECT_EQ(answer(http::verb::post, "/v1/jobs", job("j1")).result_int(), 200u); // same content
    add("j2");

    auto one = body_of(answer(http::verb::get, "/v1/jobs/j1"));
    EXPECT_EQ(one.at("id").as_string(), "j1");
    EXPECT_EQ(one.at("history").as_array().size(), 1u);

    auto page = body_of(answer(http::verb::get, "/v1/jobs?limit=1"));
    ASSERT_EQ(page.at("jobs").as_array().size(), 1u);
    EXPECT_EQ(page.at("next").as_string(), "j1");
    auto rest = body_of(answer(http::verb::get, "/v1/jobs?limit=1&after=j1"));
    EXPECT_EQ(rest.at("jobs").as_array().at(0).at("id").as_string(), "j2");

    auto cancelled = answer(http::verb::post, "/v1/jobs/j1/cancel");
    EXPECT_EQ(cancelled.result_int(), 200u);
    EXPECT_EQ(body_of(cancelled).at("state").as_string(), "cancelled");
    EXPECT_EQ(answer(http::verb::post, "/v1/jobs/j1/cancel").result_int(), 409u);
    auto by_state = body_of(answer(http::verb::get, "/v1/jobs?state=cancelled&model=kling-o1"));
    ASSERT_EQ(by_state.at("jobs").as_array().size(), 1u);
    EXPECT_EQ(by_state.at("jobs").as_array().at(0).at("id").as_string(), "j1");
    // The query is percent-decoded: %2D is '-'.
    auto decoded = body_of(answer(http::verb::get, "/v1/jobs?model=kling%2Do1&state=cancelled"));
    ASSERT_EQ(decoded.at("jobs").as_array().size(), 1u);
}

TEST_F(control_api, pause_resume_stats_health_and_metrics) {
    add("s1");
    EXPECT_EQ(body_of(answer(http::verb::post, "/v1/pause")).at("paused").as_bool(), true);
    auto stats = body_of(answer(http::verb::get, "/v1/stats"));
    EXPECT_EQ(stats.at("paused").as_bool(), true);
    EXPECT_EQ(stats.at("jobs").at("pending").as_int64(), 1);
    EXPECT_EQ(stats.at("jobs").at("cancelled").as_int64(), 0);
    EXPECT_EQ(body_of(answer(http::verb::get, "/v1/jobs/s1")).at("blocked").as_string(),
              "submissions are paused (klingctl resume)");
    EXPECT_EQ(body_of(answer(http::verb::post, "/v1/resume")).at("paused").as_bool(), false);
    EXPECT_EQ(body_of(answer(http::verb::get, "/v1/health")).at("status").as_string(), "ok");
    auto m = answer(http::verb::get, "/metrics");
    EXPECT_EQ(m.result_int(), 200u);
    EXPECT_EQ(m[http::field::content_type], "text/plain; version=0.0.4; charset=utf-8");
    EXPECT_NE(m.body().find("klingd_jobs{state=\"pending\",model=\"kling-o1\"} 1"),
              std::string::npos);
}

TEST_F(control_api, the_event_stream_is_a_route_with_a_decoded_filter) {
    auto all = call(http::verb::get, "/v1/events");
    ASSERT_TRUE(std::holds_alternative<daemon::event_stream>(all));
    EXPECT_EQ(std::get<daemon::event_stream>(all).job_filter, "");
    auto one = call(http::verb::get, "/v1/events?id=a%20b");
    ASSERT_TRUE(std::holds_alternative<daemon::event_stream>(one));
    EXPECT_EQ(std::get<daemon::event_stream>(one).job_filter, "a b");
    EXPECT_TRUE(std::holds_alternative<daemon::control_response>(
        call(http::verb::get, "/v1/events?xid=a")));
}

} // namespace

namespace {

// A cancel whose write failed (the database locked by another process) is still the
// job's state for the next request: a second cancel says "cancelled", not "pending".
TEST_F(control_api, a_job_whose_last_write_failed_is_answered_from_the_journal) {
    add("locked");
    sqlite3* other = nullptr;
    ASSERT_EQ(sqlite3_open(settings.storage.database.c_str(), &other), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(other, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK);
    auto first = answer(http::verb::post, "/v1/jobs/locked/cancel");
    EXPECT_EQ(first.result_int(), 200u) << first.body();
    EXPECT_EQ(body_of(first).at("state").as_string(), "cancelled");
    EXPECT_EQ(body_of(answer(http::verb::get, "/v1/jobs/locked")).at("state").as_string(),
              "cancelled")
        << "read from the journal while the database is locked";
    auto again = answer(http::verb::post, "/v1/jobs/locked/cancel");
    EXPECT_EQ(again.result_int(), 409u);
    EXPECT_NE(error_of(again).find("cancelled"), std::string::npos) << again.body();
    sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr);
    sqlite3_close(other);
}

} // namespace
