// End-to-end tests: the real segmind-sim program as a child process, spoken to
// over real TLS (verified against the test CA) or plain HTTP.
#include "core/time_text.hpp"
#include "sim/media.hpp"
#include "tests/support/https_client.hpp"
#include "tests/support/sim_process.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/json.hpp>
#include <chrono>
#include <csignal>
#include <ctime>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <regex>
#include <thread>

namespace klingd::test {
namespace {
namespace json = boost::json;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

const std::map<std::string, std::string> key{{"x-api-key", "sim-key"}};
const std::string image_body =
    R"({"prompt":"Merge @Image1 into @Image2","image_urls":["https://x/1.png","https://x/2.png"],"output_format":"jpg"})";
const std::string video_body = R"({"prompt":"swap @image1","video_url":"https://x/v.mp4"})";

json::object parse(const http_reply& r) {
    boost::system::error_code ec;
    auto v = json::parse(r.body, ec);
    if (ec || !v.is_object())
        ADD_FAILURE() << "not a JSON object: status " << r.status << " " << r.body << r.error;
    return ec || !v.is_object() ? json::object() : v.as_object();
}

std::string sha256_hex(const std::string& data) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr);
    std::string out;
    for (unsigned i = 0; i < n; ++i) {
        char hex[3];
        std::snprintf(hex, sizeof hex, "%02x", md[i]);
        out += hex;
    }
    return out;
}

std::string expected_media(sim::media_kind kind, const std::string& id, std::uint64_t size) {
    std::string out(size, '\0');
    sim::fill_media({kind, sim::media_seed(id), size}, 0, out);
    return out;
}

// Polls status_url until a terminal answer; returns it (status 0 after 10 s).
http_reply poll_until_done(http_client& client, const std::string& status_url) {
    auto end = steady::now() + 10s;
    while (steady::now() < end) {
        auto r = client.request("GET", status_url, {}, key);
        if (r.status != 200 || parse(r).at("status") == "COMPLETED")
            return r;
        std::this_thread::sleep_for(50ms);
    }
    return {};
}

json::object stats(const sim_process& sim, bool with_requests = true) {
    return parse(https_request("GET",
                               sim.base_url() + "/sim/stats" + (with_requests ? "" : "?requests=0"),
                               {}, {}, sim.ca_file()));
}

TEST(sim_e2e, submit_poll_result_media_over_tls) {
    sim_process sim({"--time-scale", "0.01", "--seed", "5"});
    http_client client(sim.base_url(), sim.ca_file());

    auto image = client.request("POST", "/v2/kling-o1", image_body, key);
    ASSERT_EQ(image.status, 200) << image.body;
    auto video = client.request("POST", "/v2/kling-o1-video-to-video-edit", video_body, key);
    ASSERT_EQ(video.status, 200) << video.body;

    for (auto [answer, kind, size] : {std::tuple{&image, sim::media_kind::jpg, 65536u},
                                      {&video, sim::media_kind::mp4, 1048576u}}) {
        auto sub = parse(*answer);
        std::string id(sub.at("request_id").as_string());
        std::string status_url(sub.at("status_url").as_string());
        EXPECT_EQ(status_url, sim.base_url() + "/v2/requests/" + id + "/status");
        EXPECT_EQ(sub.at("status").as_string(), "QUEUED");

        auto done = poll_until_done(client, status_url);
        ASSERT_EQ(done.status, 200) << done.body << done.error;
        EXPECT_FALSE(parse(done).contains("output"));

        auto result =
            client.request("GET", std::string(sub.at("response_url").as_string()), {}, key);
        ASSERT_EQ(result.status, 200);
        auto out = parse(result);
        EXPECT_EQ(out.at("status").as_string(), "COMPLETED");
        EXPECT_GT(out.at("metrics").at("inference_time").to_number<double>(), 1.0);
        std::string url(out.at("output").as_string());
        EXPECT_EQ(url, sim.base_url() + "/media/" + id + "." + std::string(sim::extension(kind)));

        auto media = https_request("GET", url, {}, {}, sim.ca_file()); // no key needed
        ASSERT_EQ(media.status, 200) << media.error;
        EXPECT_EQ(media.headers["content-type"], sim::content_type(kind));
        EXPECT_EQ(media.body.size(), size);
        EXPECT_TRUE(media.body == expected_media(kind, id, size));
    }
}

TEST(sim_e2e, plain_http_mode) {
    sim_process sim({"--plain", "--time-scale", "0.01"});
    EXPECT_TRUE(sim.base_url().starts_with("http://"));
    auto health = https_request("GET", sim.base_url() + "/sim/health");
    EXPECT_EQ(health.status, 200);
    EXPECT_EQ(parse(health).at("status").as_string(), "ok");
    auto sub = https_request("POST", sim.base_url() + "/v2/kling-o1", image_body, key);
    ASSERT_EQ(sub.status, 200) << sub.error;
    EXPECT_TRUE(parse(sub).at("status_url").as_string().starts_with("http://127.0.0.1:"));
    EXPECT_TRUE(sim.process().stdout_text().starts_with(
        "segmind-sim listening on http://127.0.0.1:" + std::to_string(sim.port())));
}

TEST(sim_e2e, prints_the_https_url_it_listens_on) {
    sim_process sim;
    EXPECT_TRUE(eventually([&] { return !sim.process().stdout_text().empty(); }, 2s));
    EXPECT_EQ(sim.process().stdout_text(),
              "segmind-sim listening on https://127.0.0.1:" + std::to_string(sim.port()) + "\n");
}

TEST(sim_e2e, error_rate_one_answers_only_5xx_and_creates_nothing) {
    sim_process sim({"--error-rate", "1"});
    http_client client(sim.base_url(), sim.ca_file());
    for (int i = 0; i < 12; ++i) {
        auto r = i % 3 == 0   ? client.request("POST", "/v2/kling-o1", image_body, key)
                 : i % 3 == 1 ? client.request("GET", "/v2/requests/x/status", {}, key)
                              : client.request("GET", "/v2/requests/x", {}, key);
        EXPECT_TRUE(r.status == 500 || r.status == 502 || r.status == 504) << r.status << r.error;
    }
    auto st = stats(sim);
    EXPECT_EQ(st.at("submissions").to_number<std::uint64_t>(), 0u);
    EXPECT_EQ(st.at("faults").at("error").to_number<std::uint64_t>(), 12u);
}

TEST(sim_e2e, reset_rate_one_gives_connection_errors) {
    sim_process sim({"--reset-rate", "1"});
    for (int i = 0; i < 4; ++i) {
        auto r =
            https_request("GET", sim.base_url() + "/v2/requests/x/status", {}, key, sim.ca_file());
        EXPECT_EQ(r.status, 0);
        EXPECT_FALSE(r.error.empty());
    }
    EXPECT_EQ(stats(sim).at("status").at("reset").to_number<std::uint64_t>(), 4u);
}

TEST(sim_e2e, truncated_answers_announce_more_than_they_send) {
    sim_process sim({"--plain", "--truncate-rate", "1"});
    auto via_client = https_request("POST", sim.base_url() + "/v2/kling-o1", image_body, key);
    EXPECT_EQ(via_client.status, 0);
    EXPECT_FALSE(via_client.error.empty());

    namespace asio = boost::asio;
    asio::io_context ioc;
    asio::ip::tcp::socket socket(ioc);
    socket.connect({asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(sim.port())});
    std::string req = "GET /v2/requests/x/status HTTP/1.1\r\nHost: x\r\nx-api-key: sim-key\r\n\r\n";
    asio::write(socket, asio::buffer(req));
    std::string raw;
    boost::system::error_code ec;
    asio::read(socket, asio::dynamic_buffer(raw), ec);
    EXPECT_EQ(ec, asio::error::eof);
    auto head_end = raw.find("\r\n\r\n");
    ASSERT_NE(head_end, std::string::npos) << raw;
    std::smatch m;
    std::string head = raw.substr(0, head_end);
    ASSERT_TRUE(
        std::regex_search(head, m, std::regex("Content-Length: (\\d+)", std::regex::icase)));
    auto announced = std::stoul(m[1]);
    EXPECT_GT(announced, 10u);
    EXPECT_EQ(raw.size() - head_end - 4, announced / 2);
}

TEST(sim_e2e, slow_answers_are_delayed_but_control_is_not) {
    sim_process sim({"--slow-rate", "1", "--slow-s", "0.4"});
    http_client client(sim.base_url(), sim.ca_file());
    client.request("GET", "/sim/health"); // connect and handshake first
    auto start = steady::now();
    auto r = client.request("GET", "/v2/requests/x/status", {}, key);
    auto slow = steady::now() - start;
    EXPECT_EQ(r.status, 404);
    EXPECT_GE(slow, 400ms);
    start = steady::now();
    EXPECT_EQ(client.request("GET", "/sim/health").status, 200);
    EXPECT_LT(steady::now() - start, 300ms);
}

TEST(sim_e2e, rate_limit_429_carries_retry_after_and_reset_time) {
    // Windows of 3 s; 5 quick calls span at most two windows, so one is refused.
    sim_process sim(
        {"--rpm", "2", "--time-scale", "0.05", "--retry-after", "--reset-header-format", "iso"});
    http_client client(sim.base_url(), sim.ca_file());
    http_reply limited;
    for (int i = 0; i < 5 && limited.status != 429; ++i)
        limited = client.request("GET", "/v2/requests/x/status", {}, key);
    ASSERT_EQ(limited.status, 429);
    EXPECT_EQ(parse(limited).at("error").as_string(), "Rate limit exceeded");
    int retry_after = std::stoi(limited.headers.at("retry-after"));
    EXPECT_GE(retry_after, 1);
    EXPECT_LE(retry_after, 3);
    std::string reset = limited.headers.at("x-rate-limit-reset-at-utc");
    ASSERT_TRUE(std::regex_match(reset, std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"))) << reset;
    auto parsed = klingd::core::parse_rfc3339(reset);
    ASSERT_TRUE(parsed) << reset;
    std::chrono::system_clock::time_point reset_at = *parsed;
    auto now = std::chrono::system_clock::now();
    EXPECT_GT(reset_at, now - 1s);
    EXPECT_LT(reset_at, now + 4s);

    std::this_thread::sleep_until(reset_at + 50ms);
    EXPECT_EQ(client.request("GET", "/v2/requests/x/status", {}, key).status, 404);
    EXPECT_GE(stats(sim).at("rate_limited").to_number<std::uint64_t>(), 1u);
}

TEST(sim_e2e, sim_config_changes_behaviour) {
    sim_process sim;
    http_client client(sim.base_url(), sim.ca_file());
    auto set = client.request("POST", "/sim/config", R"({"api_key":"rotated","rpm":1})");
    ASSERT_EQ(set.status, 200) << set.body;
    EXPECT_EQ(parse(set).at("api_key").as_string(), "rotated");
    EXPECT_EQ(client.request("GET", "/v2/requests/x", {}, key).status, 401);
    EXPECT_EQ(client.request("GET", "/v2/requests/x", {}, {{"x-api-key", "rotated"}}).status, 404);
    EXPECT_EQ(client.request("GET", "/v2/requests/x", {}, {{"x-api-key", "rotated"}}).status, 429);
    auto bad = client.request("POST", "/sim/config", R"({"rpm":1,"warp":9})");
    EXPECT_EQ(bad.status, 400);
    EXPECT_NE(bad.body.find("warp"), std::string::npos);
    auto now = client.request("GET", "/sim/config");
    EXPECT_EQ(parse(now).at("rpm").as_int64(), 1);
}

TEST(sim_e2e, api_key_from_environment) {
    sim_process sim({}, {{"SEGMIND_SIM_API_KEY", "from-env"}});
    http_client client(sim.base_url(), sim.ca_file());
    EXPECT_EQ(client.request("GET", "/v2/requests/x", {}, key).status, 401);
    EXPECT_EQ(client.request("GET", "/v2/requests/x", {}, {{"x-api-key", "from-env"}}).status, 404);
}

TEST(sim_e2e, stats_count_what_the_test_did) {
    sim_process sim({"--time-scale", "0.01"});
    http_client client(sim.base_url(), sim.ca_file());
    std::string second_body = R"({"prompt":"two","image_urls":["https://x/3.png"]})";
    auto a = parse(client.request("POST", "/v2/kling-o1", image_body, key));
    auto b = parse(client.request("POST", "/v2/kling-o1", second_body, key));
    EXPECT_EQ(client.request("POST", "/v2/kling-o1", R"({"prompt":"x"})", key).status, 400);
    EXPECT_EQ(client.request("POST", "/v2/kling-o1", image_body, {{"x-api-key", "nope"}}).status,
              401);
    std::string id_a(a.at("request_id").as_string());
    for (int i = 0; i < 3; ++i)
        client.request("GET", "/v2/requests/" + id_a + "/status", {}, key);
    client.request("GET", "/v2/requests/" + id_a, {}, key);
    client.request("GET", "/media/" + id_a + ".jpg");
    client.request("GET", "/nowhere");

    auto st = stats(sim);
    EXPECT_EQ(st.at("submit"), json::parse(R"({"200":2,"400":1,"401":1})"));
    EXPECT_EQ(st.at("status"), json::parse(R"({"200":3})"));
    EXPECT_EQ(st.at("result"), json::parse(R"({"200":1})"));
    EXPECT_EQ(st.at("media"), json::parse(R"({"404":1})"));
    EXPECT_EQ(st.at("other"), json::parse(R"({"404":1})"));
    EXPECT_EQ(st.at("submissions").to_number<std::uint64_t>(), 2u);
    EXPECT_EQ(st.at("rate_limited").to_number<std::uint64_t>(), 0u);
    auto& list = st.at("requests").as_array();
    ASSERT_EQ(list.size(), 2u);
    EXPECT_EQ(list[0].at("request_id"), a.at("request_id"));
    EXPECT_EQ(list[0].at("status_polls").to_number<std::uint64_t>(), 3u);
    EXPECT_EQ(list[0].at("result_fetches").to_number<std::uint64_t>(), 1u);
    EXPECT_EQ(list[0].at("body_sha256").as_string(), sha256_hex(image_body));
    EXPECT_EQ(list[1].at("request_id"), b.at("request_id"));
    EXPECT_EQ(list[1].at("prompt").as_string(), "two");
    EXPECT_EQ(list[1].at("body_sha256").as_string(), sha256_hex(second_body));
    EXPECT_EQ(list[1].at("status_polls").to_number<std::uint64_t>(), 0u);
    EXPECT_FALSE(stats(sim, false).contains("requests"));
}

TEST(sim_e2e, keep_alive_and_concurrent_connections) {
    sim_process sim;
    http_client one(sim.base_url(), sim.ca_file());
    for (int i = 0; i < 100; ++i)
        ASSERT_EQ(one.request("GET", "/v2/requests/x/status", {}, key).status, 404);
    EXPECT_EQ(one.connections_opened(), 1);

    constexpr int clients = 16, each = 25;
    std::atomic<int> ok{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < clients; ++t) {
        threads.emplace_back([&] {
            http_client c(sim.base_url(), sim.ca_file());
            for (int i = 0; i < each; ++i)
                ok += c.request("GET", "/v2/requests/y", {}, key).status == 404;
        });
    }
    for (auto& t : threads)
        t.join();
    EXPECT_EQ(ok.load(), clients * each);
    auto st = stats(sim, false);
    EXPECT_EQ(st.at("status").at("404").to_number<std::uint64_t>(), 100u);
    EXPECT_EQ(st.at("result").at("404").to_number<std::uint64_t>(),
              static_cast<std::uint64_t>(clients * each));
}

TEST(sim_e2e, sigterm_stops_cleanly) {
    sim_process sim;
    ASSERT_EQ(https_request("GET", sim.base_url() + "/sim/health", {}, {}, sim.ca_file()).status,
              200);
    sim.process().signal(SIGTERM);
    EXPECT_EQ(sim.process().wait(5s), 0);
}

TEST(sim_e2e, bad_options_exit_2_with_a_reason) {
    const std::pair<std::vector<std::string>, std::string> cases[] = {
        {{"--plain", "--time-scale", "0"}, "--time-scale"},
        {{"--plain", "--rpm", "-1"}, "--rpm"},
        {{"--plain", "--error-rate", "1.5"}, "--error-rate"},
        {{"--plain", "--median", "kling-o2=3"}, "--median"},
        {{"--plain", "--median", "kling-o1=abc"}, "--median"},
        {{"--plain", "--reset-header-format", "rfc"}, "--reset-header-format"},
        {{"--plain", "--listen", "nowhere"}, "--listen"},
        {{"--plain", "--public-url", "ftp://x"}, "--public-url"},
        {{}, "--tls-cert"},
        {{"--plain", "--credits", "-2"}, "--credits"},
    };
    for (auto& [args, reason] : cases) {
        child_process p(SEGMIND_SIM_PATH, args);
        EXPECT_EQ(p.wait(5s), 2) << reason;
        EXPECT_NE(p.stderr_text().find(reason), std::string::npos) << p.stderr_text();
    }
}

} // namespace
} // namespace klingd::test
