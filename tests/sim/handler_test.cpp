// Unit tests of the HTTP request handler: routing, headers, control endpoints,
// statistics by endpoint and the transport faults it asks for. No sockets.
#include "sim/handler.hpp"

#include <boost/beast/http/serializer.hpp>
#include <boost/json.hpp>
#include <gtest/gtest.h>

namespace klingd::sim {
namespace {
namespace http = boost::beast::http;
namespace json = boost::json;

const time_point t0 = time_point(std::chrono::seconds(1767225600));
const std::string image_body = R"({"prompt":"a @Image1","image_urls":["https://x/1.png"]})";

settings fixed_settings() {
    settings s;
    s.public_url = "https://sim.test";
    s.spread = 0;
    s.queue_s = 0;
    s.seed = 1;
    return s;
}

http_request make(http::verb method, const std::string& target, const std::string& body = {},
                  std::initializer_list<std::pair<const char*, const char*>> headers = {
                      {"x-api-key", "sim-key"}, {"content-type", "application/json"}}) {
    http_request req{method, target, 11};
    for (auto [n, v] : headers)
        req.set(n, v);
    req.body() = body;
    req.prepare_payload();
    return req;
}

json::value body_json(const reply& r) {
    return json::parse(r.response.body().text);
}

// The bytes the writer of a body produces.
std::string written(const http_response& res) {
    payload_body::writer w(res.base(), res.body());
    boost::system::error_code ec;
    w.init(ec);
    std::string out;
    while (auto chunk = w.get(ec)) {
        out.append(static_cast<const char*>(chunk->first.data()), chunk->first.size());
        if (!chunk->second)
            break;
    }
    return out;
}

TEST(handler, bearer_token_alone_is_401) {
    service svc(fixed_settings());
    auto r = handle_request(
        make(http::verb::post, "/v2/kling-o1", image_body,
             {{"authorization", "Bearer sim-key"}, {"content-type", "application/json"}}),
        svc, t0);
    EXPECT_EQ(r.response.result_int(), 401u);
    EXPECT_EQ(r.response[http::field::content_type], "application/json");
    EXPECT_TRUE(body_json(r).as_object().contains("error"));
}

TEST(handler, routes_submit_status_result_and_media) {
    service svc(fixed_settings());
    auto sub = handle_request(make(http::verb::post, "/v2/kling-o1", image_body), svc, t0);
    ASSERT_EQ(sub.response.result_int(), 200u);
    EXPECT_EQ(sub.kind, endpoint::submit);
    std::string id(body_json(sub).at("request_id").as_string());

    auto later = t0 + std::chrono::seconds(60);
    auto st = handle_request(make(http::verb::get, "/v2/requests/" + id + "/status"), svc, later);
    EXPECT_EQ(st.kind, endpoint::status);
    EXPECT_EQ(body_json(st).at("status").as_string(), "COMPLETED");
    auto res = handle_request(make(http::verb::get, "/v2/requests/" + id + "?x=1"), svc, later);
    EXPECT_EQ(res.kind, endpoint::result);
    EXPECT_EQ(body_json(res).at("output").as_string(), "https://sim.test/media/" + id + ".png");

    auto media = handle_request(make(http::verb::get, "/media/" + id + ".png", {}, {}), svc, later);
    EXPECT_EQ(media.kind, endpoint::media);
    EXPECT_EQ(media.response.result_int(), 200u);
    EXPECT_EQ(media.response[http::field::content_type], "image/png");
    EXPECT_EQ(media.response[http::field::content_length], "65536");
    auto bytes = written(media.response);
    ASSERT_EQ(bytes.size(), 65536u);
    EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));

    auto wrong_ext =
        handle_request(make(http::verb::get, "/media/" + id + ".jpg", {}, {}), svc, later);
    EXPECT_EQ(wrong_ext.response.result_int(), 404u);
    auto early = handle_request(make(http::verb::get, "/media/" + id + ".png", {}, {}), svc, t0);
    EXPECT_EQ(early.response.result_int(), 404u);
    // Media URLs are public: a request that carries the key is refused (a leak to count).
    auto keyed = handle_request(make(http::verb::get, "/media/" + id + ".png"), svc, later);
    EXPECT_EQ(keyed.response.result_int(), 403u);
}

TEST(handler, other_paths_are_404_and_counted_as_other) {
    service svc(fixed_settings());
    EXPECT_EQ(handle_request(make(http::verb::get, "/v2/kling-o1"), svc, t0).response.result_int(),
              404u);
    EXPECT_EQ(handle_request(make(http::verb::get, "/v2/requests/"), svc, t0).response.result_int(),
              404u);
    EXPECT_EQ(handle_request(make(http::verb::get, "/"), svc, t0).response.result_int(), 404u);
    auto noauth = handle_request(make(http::verb::get, "/v2/what", {}, {}), svc, t0);
    EXPECT_EQ(noauth.response.result_int(), 401u);
    auto st = json::parse(svc.stats_json(false, t0));
    EXPECT_EQ(st.at("other").at("404").to_number<std::uint64_t>(), 3u);
    EXPECT_EQ(st.at("other").at("401").to_number<std::uint64_t>(), 1u);
}

TEST(handler, control_endpoints_are_not_counted_nor_faulted) {
    auto s = fixed_settings();
    s.reset_rate = 1;
    s.error_rate = 1;
    service svc(s);
    auto health = handle_request(make(http::verb::get, "/sim/health"), svc, t0);
    EXPECT_TRUE(health.control);
    EXPECT_FALSE(health.reset);
    EXPECT_EQ(body_json(health).at("status").as_string(), "ok");
    auto cfg =
        handle_request(make(http::verb::post, "/sim/config", R"({"reset_rate":0})"), svc, t0);
    EXPECT_EQ(cfg.response.result_int(), 200u);
    EXPECT_EQ(body_json(cfg).at("reset_rate").as_double(), 0.0);
    auto bad = handle_request(make(http::verb::post, "/sim/config", R"({"colour":1})"), svc, t0);
    EXPECT_EQ(bad.response.result_int(), 400u);
    auto stats = handle_request(make(http::verb::get, "/sim/stats?requests=0"), svc, t0);
    auto st = body_json(stats).as_object();
    EXPECT_FALSE(st.contains("requests"));
    for (auto name : {"submit", "status", "result", "media", "other"})
        EXPECT_TRUE(st.at(name).as_object().empty()) << name;
    EXPECT_TRUE(body_json(handle_request(make(http::verb::get, "/sim/stats"), svc, t0))
                    .as_object()
                    .contains("requests"));
}

TEST(handler, counts_answers_by_endpoint_and_code) {
    auto s = fixed_settings();
    s.rpm = 3;
    service svc(s);
    handle_request(make(http::verb::post, "/v2/kling-o1", image_body), svc, t0);
    handle_request(make(http::verb::post, "/v2/kling-o1", "{}"), svc, t0);
    handle_request(make(http::verb::get, "/v2/requests/nope/status"), svc, t0);
    handle_request(make(http::verb::get, "/v2/requests/nope"), svc, t0);
    handle_request(make(http::verb::get, "/media/nope.png", {}, {}), svc, t0);
    auto st = json::parse(svc.stats_json(false, t0));
    EXPECT_EQ(st.at("submit"), json::parse(R"({"200":1,"400":1})"));
    EXPECT_EQ(st.at("status"), json::parse(R"({"404":1})"));
    EXPECT_EQ(st.at("result"), json::parse(R"({"429":1})"));
    EXPECT_EQ(st.at("media"), json::parse(R"({"404":1})"));
    EXPECT_EQ(st.at("rate_limited").to_number<std::uint64_t>(), 1u);
}

TEST(handler, truncated_answers_announce_the_full_length_and_send_half) {
    auto s = fixed_settings();
    s.truncate_rate = 1;
    service svc(s);
    auto r = handle_request(make(http::verb::post, "/v2/kling-o1", image_body), svc, t0);
    EXPECT_TRUE(r.truncate);
    EXPECT_FALSE(r.response.keep_alive());
    auto full = r.response.body().text.size();
    EXPECT_EQ(r.response[http::field::content_length], std::to_string(full));
    EXPECT_EQ(written(r.response), r.response.body().text.substr(0, full / 2));
    // The request was still made: only its answer is cut.
    EXPECT_EQ(json::parse(svc.stats_json(false, t0)).at("submissions").to_number<std::uint64_t>(),
              1u);
}

TEST(handler, resets_are_counted_and_send_nothing) {
    auto s = fixed_settings();
    s.reset_rate = 1;
    service svc(s);
    for (int i = 0; i < 40; ++i) {
        auto r = handle_request(make(http::verb::post, "/v2/kling-o1", image_body), svc, t0);
        EXPECT_TRUE(r.reset);
    }
    auto st = json::parse(svc.stats_json(false, t0));
    EXPECT_EQ(st.at("submit").at("reset").to_number<std::uint64_t>(), 40u);
    auto made = st.at("submissions").to_number<std::uint64_t>();
    // About half are reset after the request was processed.
    EXPECT_GT(made, 5u);
    EXPECT_LT(made, 35u);
}

TEST(handler, slow_answers_carry_their_delay) {
    auto s = fixed_settings();
    s.slow_rate = 1;
    s.slow_s = 1.5;
    service svc(s);
    auto r = handle_request(make(http::verb::get, "/v2/requests/x/status"), svc, t0);
    EXPECT_EQ(r.delay_s, 1.5);
    EXPECT_FALSE(r.reset || r.truncate);
    EXPECT_EQ(handle_request(make(http::verb::get, "/sim/health"), svc, t0).delay_s, 0);
}

TEST(handler, keep_alive_follows_the_request) {
    service svc(fixed_settings());
    auto req = make(http::verb::get, "/sim/health");
    EXPECT_TRUE(handle_request(req, svc, t0).response.keep_alive());
    req.keep_alive(false);
    EXPECT_FALSE(handle_request(req, svc, t0).response.keep_alive());
}

} // namespace
} // namespace klingd::sim
