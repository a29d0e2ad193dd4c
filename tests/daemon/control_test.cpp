// The control socket of a real klingd: every endpoint's success and error
// answers, Prometheus text checked strictly, the event stream, hostile clients,
// and a scripted klingctl session with its exit codes.
#include "client/control_client.hpp"
#include "core/job_spec.hpp"
#include "core/time_text.hpp"
#include "tests/daemon/daemon_env.hpp"
#include "tests/support/prometheus_text.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <csignal>
#include <filesystem>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <regex>
#include <set>
#include <sys/stat.h>
#include <thread>

namespace {

using namespace klingd::test;
namespace json = boost::json;
namespace asio = boost::asio;
using local = asio::local::stream_protocol;
using namespace std::chrono_literals;

struct run_result {
    int rc;
    std::string out, err;
};

run_result klingctl(const std::string& socket, std::vector<std::string> args) {
    args.insert(args.begin(), {"--socket", socket});
    child_process p(KLINGCTL_PATH, args, {}, "klingctl");
    auto rc = p.wait(60s);
    return {rc.value_or(-1), p.stdout_text(), p.stderr_text()};
}

class control_test : public ::testing::Test {
protected:
    daemon_env env;
    void SetUp() override { env.start(); }
};

// Event streams stay open, so they are capped apart from request connections: 32 of
// them at most (the next is answered 503, saying so), and with every slot for streams
// taken, requests are still answered.
TEST_F(control_test, watchers_cannot_take_the_connections_requests_need) {
    std::vector<klingd::client::event_subscription> open;
    int refused = 0;
    std::string why;
    for (int i = 0; i < 70; ++i) {
        auto s = klingd::client::event_subscription::open(env.socket(), {}, 5s);
        if (s)
            open.push_back(std::move(*s));
        else {
            ++refused;
            why = s.error().message();
        }
    }
    EXPECT_EQ(open.size(), 32u);
    EXPECT_EQ(refused, 38);
    EXPECT_NE(why.find("event streams are open"), std::string::npos) << why;
    for (int i = 0; i < 5; ++i)
        EXPECT_EQ(env.api("GET", "/v1/health").status, 200);
    open.pop_back(); // one closed: a new stream may open
    ASSERT_TRUE(eventually(
        [&] {
            auto s = klingd::client::event_subscription::open(env.socket(), {}, 5s);
            if (s)
                open.push_back(std::move(*s));
            return bool(s);
        },
        10s));
}

TEST_F(control_test, health_and_the_socket_mode) {
    auto r = env.api("GET", "/v1/health");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(str(r.body, "status"), "ok");
    struct stat st {};
    ASSERT_EQ(::stat(env.socket().c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0660u);
}

TEST(control_socket, a_folder_it_creates_is_closed_to_others) {
    daemon_env env;
    std::string cfg = read_file(env.config_path());
    auto at = cfg.find("klingd.sock");
    cfg.replace(at, 11, "run/sub/klingd.sock");
    write_file(env.config_path(), cfg);
    child_process k(KLINGD_PATH, {"--config", env.config_path()},
                    {{"SEGMIND_API_KEY", "test-key-1"}}, "klingd");
    std::string sock = env.dir() + "/run/sub/klingd.sock";
    ASSERT_TRUE(
        eventually([&] { return unix_request(sock, "GET", "/v1/health").status == 200; }, 10s))
        << k.stderr_text();
    struct stat st {};
    ASSERT_EQ(::stat((env.dir() + "/run/sub").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0750u);
    k.signal(SIGTERM);
    EXPECT_EQ(k.wait(10s).value_or(-1), 0);
    EXPECT_FALSE(std::filesystem::exists(sock)) << "the socket is removed on exit";
}

TEST_F(control_test, curl_over_the_unix_socket_works) {
    child_process curl("/usr/bin/curl",
                       {"-s", "--unix-socket", env.socket(), "http://localhost/v1/jobs"}, {},
                       "curl");
    ASSERT_EQ(curl.wait(10s).value_or(-1), 0) << curl.stderr_text();
    auto v = json::parse(curl.stdout_text());
    EXPECT_TRUE(v.at("jobs").is_array());
}

TEST_F(control_test, post_jobs_201_200_409_400_and_413) {
    std::string job = R"({"id":"p1",)" + image_job("p1").substr(1);
    auto r = env.api("POST", "/v1/jobs", job);
    EXPECT_EQ(r.status, 201) << r.text;
    EXPECT_EQ(str(r.body, "id"), "p1");
    EXPECT_EQ(str(r.body, "state"), "pending");
    auto again = env.api("POST", "/v1/jobs", job);
    EXPECT_EQ(again.status, 200) << "the same id and content is a no-op";
    auto other = env.api("POST", "/v1/jobs", R"({"id":"p1",)" + image_job("different").substr(1));
    EXPECT_EQ(other.status, 409);
    EXPECT_NE(str(other.body, "error").find("taken"), std::string::npos);
    auto bad =
        env.api("POST", "/v1/jobs", R"({"id":"p2","model":"kling-o1","params":{"prompt":"p"}})");
    EXPECT_EQ(bad.status, 400);
    EXPECT_EQ(str(bad.body, "error"), "params.image_urls is required");
    auto no_id = env.api("POST", "/v1/jobs", image_job("x"));
    EXPECT_EQ(no_id.status, 400);
    EXPECT_NE(str(no_id.body, "error").find("id is required"), std::string::npos);
    // A body over the limit (a job file's size): the answer comes once the headers are read.
    asio::io_context io;
    local::socket s(io);
    s.connect(local::endpoint(env.socket()));
    asio::write(
        s, asio::buffer("POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 3145728\r\n\r\n" +
                        std::string(64 * 1024, ' ')));
    std::string answer;
    boost::system::error_code ec;
    char buf[1024];
    while (!ec) {
        std::size_t n = s.read_some(asio::buffer(buf), ec);
        answer.append(buf, n);
    }
    EXPECT_EQ(answer.rfind("HTTP/1.1 413", 0), 0u) << answer.substr(0, 80);
    EXPECT_EQ(env.api("GET", "/v1/health").status, 200);
}

TEST_F(control_test, get_job_200_with_history_and_404) {
    env.api("POST", "/v1/jobs", R"({"id":"g1",)" + image_job("g1").substr(1));
    auto r = env.api("GET", "/v1/jobs/g1");
    ASSERT_EQ(r.status, 200);
    for (auto key : {"id", "model", "state", "request_id", "error", "outputs", "priority",
                     "created_at", "updated_at", "attempts", "polls", "history"})
        EXPECT_TRUE(r.body.as_object().contains(key)) << key;
    EXPECT_TRUE(std::regex_match(str(r.body, "created_at"),
                                 std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")));
    auto missing = env.api("GET", "/v1/jobs/nope");
    EXPECT_EQ(missing.status, 404);
    EXPECT_EQ(str(missing.body, "error"), "no job \"nope\"");
}

TEST_F(control_test, list_filters_limits_and_a_cursor) {
    env.api("POST", "/v1/pause");
    for (int i = 0; i < 5; ++i)
        env.api("POST", "/v1/jobs", fmt::format(R"({{"id":"l{}",)", i) + image_job("l").substr(1));
    env.api("POST", "/v1/jobs", R"({"id":"v0",)" + video_job("v").substr(1));
    auto page = env.api("GET", "/v1/jobs?limit=2");
    ASSERT_EQ(page.status, 200);
    ASSERT_EQ(page.body.at("jobs").as_array().size(), 2u);
    EXPECT_EQ(str(page.body, "next"), "l1");
    auto page2 = env.api("GET", "/v1/jobs?limit=2&after=l1");
    EXPECT_EQ(str(page2.body.at("jobs").as_array()[0], "id"), "l2");
    auto videos = env.api("GET", "/v1/jobs?model=kling-o1-video-to-video-edit");
    ASSERT_EQ(videos.body.at("jobs").as_array().size(), 1u);
    EXPECT_EQ(env.api("GET", "/v1/jobs?state=pending").body.at("jobs").as_array().size(), 6u);
    EXPECT_EQ(env.api("GET", "/v1/jobs?state=completed").body.at("jobs").as_array().size(), 0u);
    EXPECT_TRUE(env.api("GET", "/v1/jobs?state=pending&limit=100").body.at("next").is_null());
    EXPECT_EQ(str(env.api("GET", "/v1/jobs").body.at("jobs").as_array()[0], "blocked"),
              "submissions are paused (klingctl resume)");
    EXPECT_EQ(env.api("GET", "/v1/jobs?state=asleep").status, 400);
    for (auto bad : {"0", "10001", "x", "-1"})
        EXPECT_EQ(env.api("GET", std::string("/v1/jobs?limit=") + bad).status, 400) << bad;
    EXPECT_EQ(env.api("GET", "/v1/jobs?colour=red").status, 400);
    EXPECT_EQ(env.api("GET", "/v1/jobs?state=%zz").status, 400);
}

TEST_F(control_test, cancel_and_retry_answers) {
    env.api("POST", "/v1/pause");
    env.api("POST", "/v1/jobs", R"({"id":"c1",)" + image_job("c1").substr(1));
    auto c = env.api("POST", "/v1/jobs/c1/cancel");
    EXPECT_EQ(c.status, 200) << c.text;
    EXPECT_EQ(str(c.body, "state"), "cancelled");
    auto again = env.api("POST", "/v1/jobs/c1/cancel");
    EXPECT_EQ(again.status, 409);
    EXPECT_NE(str(again.body, "error").find("already cancelled"), std::string::npos);
    EXPECT_EQ(env.api("POST", "/v1/jobs/none/cancel").status, 404);
    EXPECT_EQ(env.api("POST", "/v1/jobs/none/retry").status, 404);
    auto retry_pending = env.api("POST", "/v1/jobs/c1/retry");
    EXPECT_EQ(retry_pending.status, 409);
    EXPECT_NE(str(retry_pending.body, "error").find("only failed or expired"), std::string::npos);

    env.api("POST", "/v1/resume");
    env.drop("f1.json", image_job("f1").replace(image_job("x").find("merge"), 5, "SIM_FAIL"));
    env.drop("q1.json", video_job("q1"));
    ASSERT_TRUE(eventually(
        [&] { return env.state("q1") == "queued" || env.state("q1") == "processing"; }, 10s));
    auto sent = env.api("POST", "/v1/jobs/q1/cancel");
    EXPECT_EQ(sent.status, 409);
    EXPECT_NE(str(sent.body, "error").find("no cancel endpoint"), std::string::npos);
    ASSERT_TRUE(env.wait_terminal({"f1"}, 30s));
    EXPECT_EQ(env.state("f1"), "failed");
    auto r = env.api("POST", "/v1/jobs/f1/retry");
    EXPECT_EQ(r.status, 200) << r.text;
    EXPECT_EQ(str(r.body, "state"), "pending");
    EXPECT_TRUE(r.body.at("request_id").is_null());
    EXPECT_NE(env.log().find("cancel requested by pid"), std::string::npos)
        << "peer credentials are logged";
}

TEST_F(control_test, pause_survives_a_restart_and_resume_submits) {
    auto p = env.api("POST", "/v1/pause");
    EXPECT_EQ(p.status, 200);
    EXPECT_EQ(p.body.at("paused").as_bool(), true);
    env.drop("z.json", image_job("z"));
    ASSERT_TRUE(eventually([&] { return env.state("z") == "pending"; }, 5s));
    EXPECT_EQ(env.stop(), 0);
    env.start();
    // The engine has loaded the paused state and its jobs before it says so.
    ASSERT_TRUE(eventually(
        [&] { return env.log().find("submissions are paused") != std::string::npos; }, 10s))
        << env.log();
    EXPECT_EQ(env.state("z"), "pending");
    EXPECT_EQ(env.api("GET", "/v1/stats").body.at("paused").as_bool(), true);
    EXPECT_EQ(env.sim_stats(false).at("submissions").as_int64(), 0);
    EXPECT_EQ(env.api("POST", "/v1/resume").status, 200);
    ASSERT_TRUE(env.wait_terminal({"z"}, 30s));
    EXPECT_EQ(env.state("z"), "completed");
}

TEST_F(control_test, stats_counts_jobs_requests_and_budget) {
    env.drop("s.json", image_job("s"));
    ASSERT_TRUE(env.wait_terminal({"s"}, 30s));
    auto r = env.api("GET", "/v1/stats");
    ASSERT_EQ(r.status, 200);
    EXPECT_EQ(r.body.at("jobs").at("completed").as_int64(), 1);
    EXPECT_EQ(r.body.at("requests").at("submit").at("200").as_int64(), 1);
    EXPECT_EQ(r.body.at("requests").at("result").at("200").as_int64(), 1);
    EXPECT_GE(r.body.at("requests").at("status").at("200").as_int64(), 1);
    EXPECT_EQ(r.body.at("rate_limited").as_int64(), 0);
    EXPECT_GT(r.body.at("budget").at("used_last_minute").as_int64(), 2);
    EXPECT_EQ(r.body.at("budget").at("configured_rpm").as_int64(), 3000);
    EXPECT_TRUE(r.body.at("submissions_blocked").is_null());
}

TEST_F(control_test, wrong_methods_and_unknown_endpoints) {
    auto r = env.api("DELETE", "/v1/jobs");
    EXPECT_EQ(r.status, 405);
    EXPECT_NE(str(r.body, "error").find("allowed: GET, POST"), std::string::npos) << r.text;
    EXPECT_EQ(env.api("GET", "/v1/pause").status, 405);
    EXPECT_EQ(env.api("GET", "/v2/anything").status, 404);
    EXPECT_EQ(env.api("GET", "/").status, 404);
}

TEST_F(control_test, metrics_is_strict_prometheus_text) {
    env.drop("m.json", image_job("m"));
    env.drop("bad.json", "{");
    ASSERT_TRUE(env.wait_terminal({"m"}, 30s));
    // A file that does not parse is read again a second later before it is rejected: the
    // job may end first.
    ASSERT_TRUE(eventually(
        [&] { return std::filesystem::exists(env.dir() + "/spool/rejected/bad.json.error"); }, 30s))
        << env.log();
    child_process curl("/usr/bin/curl",
                       {"-s", "-i", "--unix-socket", env.socket(), "http://localhost/metrics"}, {},
                       "curl");
    ASSERT_EQ(curl.wait(10s).value_or(-1), 0);
    std::string all = curl.stdout_text();
    auto split = all.find("\r\n\r\n");
    ASSERT_NE(split, std::string::npos);
    EXPECT_NE(all.substr(0, split).find("text/plain; version=0.0.4"), std::string::npos);
    std::string text = all.substr(split + 4);
    expect_prometheus(text);
    expect_promtool_clean(text);
    EXPECT_NE(text.find("klingd_jobs{state=\"completed\",model=\"kling-o1\"} 1"), std::string::npos)
        << text;
    EXPECT_NE(text.find("klingd_api_requests_total{kind=\"submit\",code=\"200\"} 1"),
              std::string::npos);
    EXPECT_NE(text.find("klingd_intake_total{outcome=\"invalid\"} 1"), std::string::npos);
    EXPECT_NE(text.find("klingd_detection_delay_seconds_count 1"), std::string::npos);
}

// A subscriber of /v1/events (client::event_subscription): open() returns once the
// answer's header has arrived, so every change after that is in its stream.
class event_reader {
public:
    explicit event_reader(const std::string& socket) {
        auto s = klingd::client::event_subscription::open(socket);
        if (!s)
            throw std::runtime_error(s.error().message());
        sub_.emplace(std::move(*s));
    }
    // Reads lines until one of type "job" has the state, or the deadline passes; false then.
    bool read_until_state(const std::string& state, std::chrono::seconds timeout) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            auto ev = sub_->next(std::chrono::ceil<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now()));
            if (!ev)
                return false;
            if (!*ev)
                continue;
            lines_.push_back(**ev);
            if (str(**ev, "type") == "job" && str(**ev, "state") == state)
                return true;
        }
        return false;
    }
    const std::vector<json::value>& lines() const { return lines_; }

private:
    std::optional<klingd::client::event_subscription> sub_;
    std::vector<json::value> lines_;
};

TEST_F(control_test, the_event_stream_shows_each_change_as_it_happens) {
    {
        // The header as a client sees it.
        asio::io_context io;
        local::socket raw(io);
        raw.connect(local::endpoint(env.socket()));
        asio::write(raw, asio::buffer(std::string("GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")));
        timeval tv{10, 0};
        ::setsockopt(raw.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        std::string head;
        char buf[1024];
        boost::system::error_code ec;
        while (!ec && head.find("\r\n\r\n") == std::string::npos)
            head.append(buf, raw.read_some(asio::buffer(buf), ec));
        EXPECT_EQ(head.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << head;
        EXPECT_NE(head.find("Content-Type: application/x-ndjson"), std::string::npos) << head;
        EXPECT_NE(head.find("Connection: close"), std::string::npos) << head;
    }
    event_reader events(env.socket());
    env.drop("ev.json", image_job("ev"));
    ASSERT_TRUE(events.read_until_state("completed", 30s));
    std::vector<std::string> states;
    for (auto& line : events.lines())
        if (str(line, "type") == "job")
            states.push_back(str(line, "state"));
    std::vector<std::string> expected{"pending", "submitting", "queued"};
    ASSERT_GE(states.size(), 4u);
    EXPECT_EQ(std::vector<std::string>(states.begin(), states.begin() + 3), expected);
    EXPECT_EQ(states.back(), "completed");
}

// Every timestamp the socket gives is UTC, also on a host whose zone is nine hours east.
TEST(control_socket, timestamps_are_utc_on_a_host_in_tokyo) {
    daemon_env env;
    env.start({{"TZ", "Asia/Tokyo"}});
    event_reader events(env.socket());
    auto before = std::chrono::system_clock::now();
    env.drop("tz.json", image_job("tz"));
    ASSERT_TRUE(events.read_until_state("completed", 30s)) << env.log();
    auto after = std::chrono::system_clock::now();
    std::vector<std::string> stamps;
    for (auto& line : events.lines())
        if (str(line, "type") == "job")
            stamps.push_back(str(line, "at"));
    auto j = env.job("tz");
    for (auto key : {"created_at", "updated_at", "submitted_at", "finished_at"})
        stamps.push_back(str(j, key));
    for (auto& h : j.at("history").as_array())
        stamps.push_back(str(h, "at"));
    ASSERT_GE(stamps.size(), 12u);
    for (auto& s : stamps) {
        auto t = klingd::core::parse_rfc3339(s);
        ASSERT_TRUE(t) << s;
        EXPECT_TRUE(s.ends_with("Z")) << s;
        EXPECT_GE(*t, std::chrono::floor<std::chrono::milliseconds>(before) - 2s) << s;
        EXPECT_LE(*t, after + 2s) << s;
    }
}

// Hostile clients: the daemon answers others within a second throughout, and stays up.
class hostile_client : public control_test {
protected:
    void expect_responsive() {
        auto t0 = std::chrono::steady_clock::now();
        auto r = env.api("GET", "/v1/health");
        EXPECT_EQ(r.status, 200);
        EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
    }
    std::string send_raw(const std::string& bytes, bool read_answer = true) {
        asio::io_context io;
        local::socket s(io);
        s.connect(local::endpoint(env.socket()));
        boost::system::error_code ec;
        // The daemon may answer and stop reading before all is sent: the write may fail,
        // and the answer is read all the same.
        asio::write(s, asio::buffer(bytes), ec);
        ec = {};
        timeval tv{10, 0}; // a daemon that never answers fails the test, not hangs it
        ::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        std::string answer;
        if (read_answer) {
            char buf[4096];
            while (!ec) {
                std::size_t n = s.read_some(asio::buffer(buf), ec);
                answer.append(buf, n);
            }
        }
        return answer;
    }
};

TEST_F(hostile_client, garbage_bytes_get_400) {
    std::string garbage;
    for (int i = 0; i < 5000; ++i)
        garbage += static_cast<char>((i * 7919) % 256);
    std::string a = send_raw(garbage + "\r\n\r\n");
    EXPECT_EQ(a.rfind("HTTP/1.1 400", 0), 0u) << a.substr(0, 100);
    expect_responsive();
}

TEST_F(hostile_client, a_100_kb_request_line_gets_431) {
    std::string a =
        send_raw("GET /" + std::string(100 * 1024, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(a.rfind("HTTP/1.1 431", 0), 0u) << a.substr(0, 100);
    expect_responsive();
}

TEST_F(hostile_client, a_body_announced_at_1_gb_gets_413_at_once) {
    auto t0 = std::chrono::steady_clock::now();
    std::string a =
        send_raw("POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n{");
    EXPECT_EQ(a.rfind("HTTP/1.1 413", 0), 0u) << a.substr(0, 100);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
    expect_responsive();
}

TEST_F(hostile_client, half_a_request_does_not_hold_the_daemon) {
    asio::io_context io;
    std::vector<std::unique_ptr<local::socket>> idle;
    for (int i = 0; i < 20; ++i) {
        idle.push_back(std::make_unique<local::socket>(io));
        idle.back()->connect(local::endpoint(env.socket()));
        asio::write(*idle.back(), asio::buffer(std::string(
                                      "POST /v1/jobs HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")));
    }
    for (int i = 0; i < 5; ++i)
        expect_responsive();
    env.drop("alive.json", image_job("alive"));
    ASSERT_TRUE(env.wait_terminal({"alive"}, 30s));
    EXPECT_TRUE(env.running());
}

// klingctl submit sends a job file as written (it no longer parses and rewrites it):
// a file without "id" gets its name through ?id=, and the API receives the params
// exactly as klingd reads them from the file itself.
TEST_F(control_test, klingctl_submit_sends_the_file_as_written) {
    std::string file =
        R"({"model": "kling-o1", "params": {"prompt": "caf\u00e9 merge @Image1 into @Image2",)"
        R"(  "image_urls": ["https://in.example/a.png", "https://in.example/b.png"]}})";
    std::string path = env.dir() + "/exact.json";
    write_file(path, file);
    auto r = klingctl(env.socket(), {"submit", path});
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(r.out, "exact\n");
    ASSERT_TRUE(env.wait_terminal({"exact"}, 30s)) << env.log();
    auto spec = klingd::core::parse_job_spec(file, "exact");
    ASSERT_TRUE(spec);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(spec->params.data(), spec->params.size(), md, &n, EVP_sha256(), nullptr);
    std::string want;
    for (unsigned i = 0; i < n; ++i)
        want += fmt::format("{:02x}", md[i]);
    auto stats = env.sim_stats();
    ASSERT_EQ(stats.at("requests").as_array().size(), 1u);
    EXPECT_EQ(str(stats.at("requests").as_array()[0], "body_sha256"), want)
        << "the params did not reach the API as klingd reads the file";
    // ?id= is checked like any query parameter.
    EXPECT_EQ(env.api("POST", "/v1/jobs?id=", image_job("x")).status, 400);
    EXPECT_EQ(env.api("POST", "/v1/jobs?name=x", image_job("x")).status, 400);
    auto named = env.api("POST", "/v1/jobs?id=given", image_job("given"));
    EXPECT_EQ(named.status, 201);
    EXPECT_EQ(str(named.body, "id"), "given");
}

TEST_F(control_test, a_scripted_klingctl_session) {
    auto sock = env.socket();
    std::string dir = env.dir();
    write_file(dir + "/one.json", image_job("one"));
    write_file(dir + "/two.json", image_job("two"));
    write_file(dir + "/broken.json",
               image_job("broken").replace(image_job("x").find("merge"), 5, "SIM_FAIL"));
    write_file(dir + "/invalid.json", R"({"model":"kling-o1","params":{}})");

    EXPECT_EQ(klingctl(sock, {"pause"}).rc, 0);
    auto s = klingctl(sock, {"submit", dir + "/one.json", dir + "/two.json", dir + "/broken.json"});
    EXPECT_EQ(s.rc, 0) << s.err;
    EXPECT_EQ(s.out, "one\ntwo\nbroken\n");
    auto inv = klingctl(sock, {"submit", dir + "/invalid.json"});
    EXPECT_EQ(inv.rc, 1);
    EXPECT_NE(inv.err.find("params.prompt is required"), std::string::npos) << inv.err;

    auto c = klingctl(sock, {"cancel", "two"});
    EXPECT_EQ(c.rc, 0);
    EXPECT_EQ(c.out, "two: cancelled\n");
    EXPECT_EQ(klingctl(sock, {"cancel", "two"}).rc, 1);
    EXPECT_EQ(klingctl(sock, {"cancel", "ghost"}).rc, 1);
    auto pending = klingctl(sock, {"list", "--state", "pending", "--json"});
    EXPECT_EQ(json::parse(pending.out).as_array().size(), 2u);
    EXPECT_EQ(klingctl(sock, {"wait", "one", "--timeout", "0.5"}).rc, 4);

    EXPECT_EQ(klingctl(sock, {"resume"}).rc, 0);
    auto w = klingctl(sock, {"wait", "one", "broken", "--timeout", "60"});
    EXPECT_EQ(w.rc, 1) << w.out;
    EXPECT_NE(w.out.find("one: completed"), std::string::npos);
    EXPECT_NE(w.out.find("broken: failed"), std::string::npos);
    EXPECT_EQ(klingctl(sock, {"wait", "two"}).rc, 1) << "cancelled counts as not completed";
    EXPECT_EQ(klingctl(sock, {"retry", "one"}).rc, 1) << "completed jobs are not retried";
    auto r = klingctl(sock, {"retry", "broken"});
    EXPECT_EQ(r.rc, 0);
    EXPECT_EQ(r.out, "broken: pending\n");
    EXPECT_EQ(klingctl(sock, {"wait", "broken", "--timeout", "60"}).rc, 1); // fails again: SIM_FAIL
    auto st = klingctl(sock, {"stats", "--json"});
    EXPECT_EQ(st.rc, 0);
    EXPECT_EQ(json::parse(st.out).at("jobs").at("cancelled").as_int64(), 1);
    auto human = klingctl(sock, {"stats"});
    EXPECT_NE(human.out.find("completed   1"), std::string::npos) << human.out;
    auto watch = klingctl(sock, {"watch", "one"});
    EXPECT_EQ(watch.rc, 0);
    EXPECT_EQ(watch.out, "one: completed\n");
    auto help = klingctl(sock, {"wait", "--help"});
    EXPECT_EQ(help.rc, 0);
    EXPECT_NE(help.out.find("--timeout"), std::string::npos);
}

TEST_F(control_test, klingctl_watch_follows_changes_until_the_jobs_finish) {
    env.api("POST", "/v1/pause");
    env.drop("w.json", image_job("w"));
    ASSERT_TRUE(eventually([&] { return env.state("w") == "pending"; }, 5s));
    child_process watch(KLINGCTL_PATH, {"--socket", env.socket(), "watch", "w"}, {}, "watch");
    // Its first line comes once it has subscribed: every change after it is in its stream.
    ASSERT_TRUE(eventually([&] { return watch.stdout_text().starts_with("w: pending\n"); }, 10s))
        << watch.stdout_text() << watch.stderr_text();
    env.api("POST", "/v1/resume");
    ASSERT_EQ(watch.wait(30s).value_or(-1), 0) << watch.stderr_text();
    std::string out = watch.stdout_text();
    for (auto s : {"submitting", "queued", "completed"})
        EXPECT_NE(out.find(s), std::string::npos) << out;
}

} // namespace

namespace {

// curl's answer to one request: the status line's code and the body.
std::pair<int, std::string> curl_http(const std::string& method, const std::string& url) {
    child_process curl("/usr/bin/curl",
                       {"-s", "--path-as-is", "-X", method, "-o", "-", "-w", "\n%{http_code}",
                        "--max-time", "10", url},
                       {}, "curl");
    EXPECT_EQ(curl.wait(20s).value_or(-1), 0) << curl.stderr_text();
    auto out = curl.stdout_text();
    auto nl = out.rfind('\n');
    return {std::atoi(out.c_str() + nl + 1), out.substr(0, nl)};
}

TEST(metrics_listener, serves_metrics_and_health_over_tcp_and_nothing_else) {
    daemon_options o;
    o.extra_toml = "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
    daemon_env env(o);
    env.start();
    // The port taken, from the log line that says where it listens.
    std::string at;
    ASSERT_TRUE(eventually(
        [&] {
            auto log = env.log();
            auto p = log.find("metrics: serving GET /metrics and /v1/health on ");
            if (p == std::string::npos)
                return false;
            auto from = p + std::string("metrics: serving GET /metrics and /v1/health on ").size();
            at = log.substr(from, log.find('\n', from) - from);
            return true;
        },
        10s))
        << env.log();
    ASSERT_EQ(at.rfind("127.0.0.1:", 0), 0u) << at;
    env.drop("m.json", image_job("m"));
    ASSERT_TRUE(env.wait_terminal({"m"}, 30s));
    auto [status, body] = curl_http("GET", "http://" + at + "/metrics");
    EXPECT_EQ(status, 200);
    expect_prometheus(body);
    EXPECT_NE(body.find("klingd_jobs{state=\"completed\",model=\"kling-o1\"} 1"), std::string::npos)
        << body;
    EXPECT_NE(body.find("klingd_jobs_finished_total{state=\"completed\"} 1\n"), std::string::npos)
        << body;
    EXPECT_EQ(curl_http("GET", "http://" + at + "/v1/health").first, 200);
    // The control API is not there: no list, no pause, no job.
    auto jobs = curl_http("GET", "http://" + at + "/v1/jobs");
    EXPECT_EQ(jobs.first, 404);
    EXPECT_NE(jobs.second.find("Unix socket"), std::string::npos) << jobs.second;
    EXPECT_EQ(curl_http("POST", "http://" + at + "/v1/pause").first, 404);
    EXPECT_EQ(curl_http("POST", "http://" + at + "/metrics").first, 405);
    // Nor by a path that walks back into it (sent as written: --path-as-is).
    EXPECT_EQ(curl_http("GET", "http://" + at + "/metrics/../v1/jobs").first, 404);
    EXPECT_EQ(curl_http("POST", "http://" + at + "/v1/health/../pause").first, 404);
    EXPECT_EQ(curl_http("GET", "http://" + at + "/metrics?x=1").first, 200);
    EXPECT_EQ(env.api("GET", "/v1/stats").body.at("paused"), false);
}

TEST(metrics_listener, a_taken_port_stops_the_start_saying_which) {
    // Hold a port, then ask klingd for it.
    child_process holder("/usr/bin/python3",
                         {"-c", "import socket,sys,time\ns=socket.socket()\n"
                                "s.bind(('127.0.0.1',0))\ns.listen()\n"
                                "print(s.getsockname()[1],flush=True)\ntime.sleep(600)"},
                         {}, "holder");
    std::string port;
    ASSERT_TRUE(eventually(
        [&] {
            port = holder.stdout_text();
            return !port.empty() && port.back() == '\n';
        },
        10s));
    port.pop_back();
    daemon_options o;
    o.extra_toml = "\n[metrics]\nlisten = \"127.0.0.1:" + port + "\"\n";
    daemon_env env(o);
    child_process klingd(KLINGD_PATH, {"--config", env.config_path()},
                         {{"SEGMIND_API_KEY", "test-key-1"}}, "klingd");
    EXPECT_EQ(klingd.wait(30s).value_or(-1), 1);
    EXPECT_NE(klingd.stderr_text().find("cannot listen on metrics.listen \"127.0.0.1:" + port),
              std::string::npos)
        << klingd.stderr_text();
}

} // namespace
