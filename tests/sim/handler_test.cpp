// Unit tests of the HTTP request handler: routing, headers, control endpoints,
// statistics by endpoint and the transport faults it asks for. No sockets.
#include "sim/handler.hpp"

#include <boost/beast/http/serializer.hpp>
#include <boost/json.hpp>
#include <gtest/gtest.h>
#include <vector>

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
    for (auto name : {"submit", "status", "result", "media", "other", "upload", "files"})
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

// RFC 4648 base64, padded.
std::string base64(std::string_view in) {
    static constexpr char abc[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (std::size_t i = 0; i < in.size(); i += 3) {
        unsigned n = static_cast<unsigned char>(in[i]) << 16;
        if (i + 1 < in.size())
            n |= static_cast<unsigned char>(in[i + 1]) << 8;
        if (i + 2 < in.size())
            n |= static_cast<unsigned char>(in[i + 2]);
        out += abc[n >> 18];
        out += abc[(n >> 12) & 63];
        out += i + 1 < in.size() ? abc[(n >> 6) & 63] : '=';
        out += i + 2 < in.size() ? abc[n & 63] : '=';
    }
    return out;
}

std::string upload_body(const std::vector<std::pair<std::string, std::string>>& files) {
    json::array a;
    for (auto& [mime, bytes] : files)
        a.emplace_back("data:" + mime + ";base64," + base64(bytes));
    return json::serialize(json::object{{"data_urls", std::move(a)}});
}

// The path of a hosted URL of the fixed settings ("/files/<name>").
std::string path_of(const json::value& url) {
    std::string_view u = url.as_string();
    return std::string(u.substr(std::string_view("https://sim.test").size()));
}

// The bytes of every value, twice over, and some text: what goes up comes back the same.
TEST(handler, uploaded_files_are_served_back_unchanged_without_a_key) {
    service svc(fixed_settings());
    std::string binary;
    for (int round = 0; round < 2; ++round)
        for (int b = 0; b < 256; ++b)
            binary += static_cast<char>(b);
    binary.append("\r\n\0tail", 7);
    auto up = handle_request(make(http::verb::post, "/upload-asset",
                                  upload_body({{"video/mp4", binary}, {"image/webp", "RIFF"}})),
                             svc, t0);
    EXPECT_EQ(up.kind, endpoint::upload);
    ASSERT_EQ(up.response.result_int(), 200u) << up.response.body().text;
    EXPECT_EQ(up.response[http::field::content_type], "application/json");
    auto urls = body_json(up).at("file_urls").as_array();
    ASSERT_EQ(urls.size(), 2u);
    EXPECT_TRUE(path_of(urls[0]).ends_with(".mp4"));
    EXPECT_TRUE(path_of(urls[1]).ends_with(".webp"));

    // Public: no key needed, and one sent is not refused.
    auto got = handle_request(make(http::verb::get, path_of(urls[0]), {}, {}), svc, t0);
    EXPECT_EQ(got.kind, endpoint::files);
    ASSERT_EQ(got.response.result_int(), 200u);
    EXPECT_EQ(got.response[http::field::content_type], "video/mp4");
    EXPECT_EQ(got.response[http::field::content_length], std::to_string(binary.size()));
    EXPECT_EQ(written(got.response), binary);
    auto keyed = handle_request(make(http::verb::get, path_of(urls[1]) + "?x=1"), svc, t0);
    ASSERT_EQ(keyed.response.result_int(), 200u);
    EXPECT_EQ(keyed.response[http::field::content_type], "image/webp");
    EXPECT_EQ(written(keyed.response), "RIFF");

    auto unknown = handle_request(make(http::verb::get, "/files/nothing.png", {}, {}), svc, t0);
    EXPECT_EQ(unknown.response.result_int(), 404u);
    EXPECT_EQ(unknown.response[http::field::content_type], "application/json");
    EXPECT_TRUE(body_json(unknown).as_object().contains("error"));
    auto other_ext = path_of(urls[0]);
    other_ext.replace(other_ext.size() - 3, 3, "png");
    EXPECT_EQ(
        handle_request(make(http::verb::get, other_ext, {}, {}), svc, t0).response.result_int(),
        404u);

    auto st = json::parse(svc.stats_json(true, t0));
    EXPECT_EQ(st.at("upload"), json::parse(R"({"200":1})"));
    EXPECT_EQ(st.at("files"), json::parse(R"({"200":2,"404":2})"));
    EXPECT_EQ(st.at("uploads").to_number<int>(), 2);
    EXPECT_EQ(st.at("uploaded").at(0).at("bytes").to_number<std::size_t>(), binary.size());
    EXPECT_EQ(st.at("uploaded").at(0).at("url"), urls[0]);
    EXPECT_EQ(st.at("uploaded").at(0).at("mime").as_string(), "video/mp4");
    EXPECT_EQ(st.at("uploaded").at(0).at("sha256").as_string().size(), 64u);
}

TEST(handler, upload_answers_follow_the_configured_key) {
    service svc(fixed_settings());
    auto body = upload_body({{"image/png", "abc"}});
    auto cfg = handle_request(
        make(http::verb::post, "/sim/config", R"({"upload_answer_key":"urls"})"), svc, t0);
    ASSERT_EQ(cfg.response.result_int(), 200u);
    auto up = handle_request(make(http::verb::post, "/upload-asset", body), svc, t0);
    ASSERT_EQ(up.response.result_int(), 200u);
    auto urls = body_json(up).at("urls").as_array();
    ASSERT_EQ(urls.size(), 1u);
    EXPECT_FALSE(body_json(up).as_object().contains("file_urls"));
    EXPECT_EQ(
        written(handle_request(make(http::verb::get, path_of(urls[0]), {}, {}), svc, t0).response),
        "abc");
    auto shown = body_json(handle_request(make(http::verb::get, "/sim/config"), svc, t0));
    EXPECT_EQ(shown.at("upload_answer_key").as_string(), "urls");
    EXPECT_EQ(shown.at("upload_max_bytes").to_number<std::uint64_t>(), 104857600u);
}

TEST(handler, upload_refusals_are_counted_as_upload) {
    auto s = fixed_settings();
    s.upload_max_bytes = 2;
    s.rpm = 3;
    service svc(s);
    auto body = upload_body({{"image/png", "ab"}});
    auto post = [&](const std::string& b,
                    std::initializer_list<std::pair<const char*, const char*>> headers = {
                        {"x-api-key", "sim-key"}, {"content-type", "application/json"}}) {
        auto r = handle_request(make(http::verb::post, "/upload-asset", b, headers), svc, t0);
        EXPECT_EQ(r.kind, endpoint::upload);
        return r.response.result_int();
    };
    EXPECT_EQ(post(body, {{"content-type", "application/json"}}), 401u);
    EXPECT_EQ(post(R"({"data_urls":["data:image/png;base64,@@@@"]})"), 400u);
    EXPECT_EQ(post(upload_body({{"image/png", "abc"}})), 413u);
    EXPECT_EQ(post(body, {{"x-api-key", "sim-key"}, {"content-type", "text/plain"}}), 406u);
    EXPECT_EQ(post(body), 429u) << "the three calls past the key check spent the budget";
    // Not an upload: another method, or under /v2/.
    EXPECT_EQ(handle_request(make(http::verb::get, "/upload-asset"), svc, t0).kind,
              endpoint::other);
    auto st = json::parse(svc.stats_json(false, t0));
    EXPECT_EQ(st.at("upload"), json::parse(R"({"400":1,"401":1,"406":1,"413":1,"429":1})"));
    EXPECT_EQ(st.at("uploads").to_number<int>(), 0);
}

// GETs of hosted files are neither faulted nor counted against the rate budget; uploads are.
TEST(handler, hosted_files_escape_the_budget_and_the_faults) {
    auto s = fixed_settings();
    s.rpm = 1;
    service svc(s);
    auto up = handle_request(
        make(http::verb::post, "/upload-asset", upload_body({{"image/gif", "GIF89a"}})), svc, t0);
    ASSERT_EQ(up.response.result_int(), 200u);
    auto path = path_of(body_json(up).at("file_urls").at(0));
    EXPECT_TRUE(path.ends_with(".gif"));
    EXPECT_EQ(handle_request(
                  make(http::verb::post, "/upload-asset", upload_body({{"image/gif", "GIF89a"}})),
                  svc, t0)
                  .response.result_int(),
              429u);
    for (int i = 0; i < 5; ++i)
        EXPECT_EQ(
            handle_request(make(http::verb::get, path, {}, {}), svc, t0).response.result_int(),
            200u);

    ASSERT_EQ(svc.configure(R"({"reset_rate":1,"rpm":0})").status, 200u);
    auto reset = handle_request(
        make(http::verb::post, "/upload-asset", upload_body({{"image/gif", "GIF89a"}})), svc, t0);
    EXPECT_TRUE(reset.reset);
    auto file = handle_request(make(http::verb::get, path, {}, {}), svc, t0);
    EXPECT_FALSE(file.reset || file.truncate || file.delay_s > 0);
    EXPECT_EQ(written(file.response), "GIF89a");
    auto st = json::parse(svc.stats_json(false, t0));
    EXPECT_EQ(st.at("files"), json::parse(R"({"200":6})"));
    EXPECT_EQ(st.at("upload").at("reset").to_number<int>(), 1);
    EXPECT_EQ(st.at("rate_limited").to_number<int>(), 1);
}

// A submit that sends a hosted URL: the statistics show it arrived.
TEST(handler, a_submit_carrying_a_hosted_url_lists_it) {
    service svc(fixed_settings());
    auto up = handle_request(
        make(http::verb::post, "/upload-asset", upload_body({{"image/png", "\x89PNG"}})), svc, t0);
    ASSERT_EQ(up.response.result_int(), 200u);
    auto url = body_json(up).at("file_urls").at(0);
    auto sub = handle_request(make(http::verb::post, "/v2/kling-o1",
                                   json::serialize(json::object{{"prompt", "a @Image1"},
                                                                {"image_urls", json::array{url}}})),
                              svc, t0);
    ASSERT_EQ(sub.response.result_int(), 200u) << sub.response.body().text;
    auto st = json::parse(svc.stats_json(true, t0));
    EXPECT_EQ(st.at("requests").at(0).at("input_urls"), json::value(json::array{url}));
    EXPECT_EQ(st.at("uploaded").at(0).at("url"), url);
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
