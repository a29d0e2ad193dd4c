// Unit tests of the emulated service with a manual clock: no sockets, no sleeps.
#include "sim/service.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <vector>

namespace klingd::sim {
namespace {
namespace json = boost::json;
using namespace std::chrono_literals;

// 2026-01-01T00:00:00Z: a whole minute, so rate windows start here.
const time_point t0 = time_point(std::chrono::seconds(1767225600));

time_point at(double seconds) {
    return t0 +
           std::chrono::duration_cast<time_point::duration>(std::chrono::duration<double>(seconds));
}

const std::string image_body =
    R"({"prompt":"Merge @Image1 into @Image2","image_urls":["https://x/1.png","https://x/2.png"]})";
const std::string video_body = R"({"prompt":"swap @image1","video_url":"https://x/v.mp4"})";

settings fixed_settings() {
    settings s;
    s.public_url = "https://sim.test";
    s.spread = 0;  // runs take exactly the median
    s.queue_s = 0; // PROCESSING at once
    s.seed = 42;
    return s;
}

json::object parse(const api_answer& a) {
    return json::parse(a.body).as_object();
}

std::string header(const api_answer& a, std::string_view name) {
    for (auto& [n, v] : a.headers) {
        if (n == name)
            return v;
    }
    return {};
}

// Submits body to model at time t and returns the request id (empty on failure).
std::string submit(service& svc, std::string_view model, const std::string& body, time_point t) {
    auto a = svc.submit(model, "sim-key", "application/json", body, t);
    if (a.status != 200)
        return {};
    return std::string(parse(a).at("request_id").as_string());
}

json::object stats(const service& svc, time_point t) {
    return json::parse(svc.stats_json(true, t)).as_object();
}

TEST(service, missing_or_wrong_key_is_401) {
    service svc(fixed_settings());
    auto missing = svc.submit("kling-o1", "", "application/json", image_body, t0);
    EXPECT_EQ(missing.status, 401u);
    EXPECT_TRUE(parse(missing).at("error").is_string());
    EXPECT_EQ(svc.status("x", "wrong", t0).status, 401u);
    EXPECT_EQ(svc.result("x", "", t0).status, 401u);
    EXPECT_EQ(stats(svc, t0).at("submissions").to_number<std::uint64_t>(), 0u);
}

// An upload body holding data_urls.
std::string upload_body(std::initializer_list<std::string> data_urls) {
    json::array a;
    for (auto& d : data_urls)
        a.emplace_back(d);
    return json::serialize(json::object{{"data_urls", std::move(a)}});
}

api_answer upload(service& svc, const std::string& body, std::string_view key = "sim-key") {
    return svc.upload(key, "application/json", body, t0);
}

// The name under /files/ of a hosted URL of the fixed settings.
std::string file_name(std::string_view url) {
    constexpr std::string_view base = "https://sim.test/files/";
    return url.starts_with(base) ? std::string(url.substr(base.size())) : std::string();
}

// Uploads: the bytes kept as sent, under a new id each, served back by name, listed in the
// statistics with their SHA-256.
TEST(service, uploads_keep_the_bytes_and_answer_the_hosted_urls) {
    service svc(fixed_settings());
    auto a = upload(
        svc, upload_body({"data:image/png;base64,iVBORw0KGgo=", "data:image/jpeg;base64,YWJj"}));
    ASSERT_EQ(a.status, 200u) << a.body;
    EXPECT_EQ(a.content_type, "application/json");
    auto out = parse(a);
    EXPECT_FALSE(out.contains("urls"));
    auto& urls = out.at("file_urls").as_array();
    ASSERT_EQ(urls.size(), 2u);
    auto png = file_name(urls[0].as_string());
    auto jpg = file_name(urls[1].as_string());
    ASSERT_FALSE(png.empty()) << urls[0];
    EXPECT_TRUE(png.ends_with(".png")) << png;
    EXPECT_TRUE(jpg.ends_with(".jpg")) << jpg;
    EXPECT_EQ(png.size(), 36u + 4u) << "a uuid and the extension";
    EXPECT_NE(png.substr(0, 36), jpg.substr(0, 36));

    auto* f = svc.hosted(png);
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f->bytes, std::string("\x89PNG\r\n\x1a\n", 8));
    EXPECT_EQ(f->mime, "image/png");
    ASSERT_NE(svc.hosted(jpg), nullptr);
    EXPECT_EQ(svc.hosted(jpg)->bytes, "abc");
    EXPECT_EQ(svc.hosted(jpg)->mime, "image/jpeg");
    EXPECT_EQ(svc.hosted("nothing.png"), nullptr);
    EXPECT_EQ(svc.hosted(png.substr(0, 36) + ".jpg"), nullptr) << "the extension is the name's";

    auto st = stats(svc, t0);
    EXPECT_EQ(st.at("uploads").to_number<int>(), 2);
    auto& up = st.at("uploaded").as_array();
    ASSERT_EQ(up.size(), 2u);
    EXPECT_EQ(up[0].at("bytes").to_number<int>(), 8);
    EXPECT_EQ(up[0].at("mime").as_string(), "image/png");
    EXPECT_EQ(up[0].at("url"), urls[0]);
    // The FIPS 180-2 test vector of "abc".
    EXPECT_EQ(up[1].at("sha256").as_string(),
              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    EXPECT_EQ(up[1].at("bytes").to_number<int>(), 3);
    auto brief = json::parse(svc.stats_json(false, t0)).as_object();
    EXPECT_EQ(brief.at("uploads").to_number<int>(), 2);
    EXPECT_FALSE(brief.contains("uploaded"));
}

TEST(service, the_upload_answer_key_is_file_urls_or_urls) {
    const std::string body = upload_body({"data:image/png;base64,YWJj"});
    auto s = fixed_settings();
    s.upload_answer_key = "urls";
    service at_start(s);
    auto a = upload(at_start, body);
    ASSERT_EQ(a.status, 200u) << a.body;
    EXPECT_EQ(parse(a).at("urls").as_array().size(), 1u);
    EXPECT_FALSE(parse(a).contains("file_urls"));

    service svc(fixed_settings());
    EXPECT_TRUE(parse(upload(svc, body)).contains("file_urls"));
    auto cfg = svc.configure(R"({"upload_answer_key":"urls"})");
    ASSERT_EQ(cfg.status, 200u) << cfg.body;
    EXPECT_EQ(parse(cfg).at("upload_answer_key").as_string(), "urls");
    EXPECT_TRUE(parse(upload(svc, body)).contains("urls"));
    EXPECT_EQ(svc.configure(R"({"upload_answer_key":"file_urls"})").status, 200u);
    EXPECT_TRUE(parse(upload(svc, body)).contains("file_urls"));

    auto bad = svc.configure(R"({"upload_answer_key":"links"})");
    EXPECT_EQ(bad.status, 400u);
    EXPECT_NE(parse(bad).at("error").as_string().find("upload_answer_key"), json::string::npos);
    EXPECT_EQ(svc.configure(R"({"upload_answer_key":1})").status, 400u);
    EXPECT_EQ(json::parse(svc.config_json()).at("upload_answer_key").as_string(), "file_urls");
}

TEST(service, hosted_files_are_named_by_media_type) {
    service svc(fixed_settings());
    for (auto [mime, ext] : {std::pair{"image/png", ".png"},
                             {"image/jpeg", ".jpg"},
                             {"image/webp", ".webp"},
                             {"image/gif", ".gif"},
                             {"video/mp4", ".mp4"},
                             {"video/quicktime", ".mov"},
                             {"video/webm", ".webm"},
                             {"IMAGE/PNG", ".png"},
                             {"application/pdf", ".bin"},
                             {"image/x-icon", ".bin"}}) {
        auto a = upload(svc, upload_body({fmt::format("data:{};base64,YWJj", mime)}));
        ASSERT_EQ(a.status, 200u) << mime << ": " << a.body;
        auto name = file_name(parse(a).at("file_urls").at(0).as_string());
        EXPECT_TRUE(name.ends_with(ext)) << mime << " -> " << name;
        ASSERT_NE(svc.hosted(name), nullptr);
        EXPECT_EQ(svc.hosted(name)->mime, mime) << "served with the type it was sent with";
    }
}

TEST(service, bad_uploads_are_400_with_the_reason_and_store_nothing) {
    service svc(fixed_settings());
    const std::string ok = "data:image/png;base64,YWJj";
    std::vector<std::string> eleven(11, ok);
    json::array many;
    for (auto& d : eleven)
        many.emplace_back(d);
    for (const std::string& body : std::initializer_list<std::string>{
             "not json",
             "[]",
             R"("data:image/png;base64,YWJj")",
             "{}",
             R"({"data_urls":null})",
             R"({"data_urls":"data:image/png;base64,YWJj"})",
             R"({"data_urls":[]})",
             R"({"data_urls":[1]})",
             R"({"data_urls":["data:image/png;base64,YWJj",{"url":"x"}]})",
             json::serialize(json::object{{"data_urls", many}}),
             upload_body({"https://x/a.png"}),
             upload_body({"data:image/png,YWJj"}),
             upload_body({"data:image/png;base64"}),
             upload_body({"image/png;base64,YWJj"}),
             upload_body({"data:;base64,YWJj"}),
             upload_body({"data:png;base64,YWJj"}),
             upload_body({"data:image/;base64,YWJj"}),
             upload_body({"data:/png;base64,YWJj"}),
             upload_body({"data:image/png;charset=x;base64,YWJj"}),
             upload_body({"data:image/png;base64,"}),
             upload_body({"data:image/png;base64,A*AA"}),
             upload_body({"data:image/png;base64,YWJ"}),
             upload_body({"data:image/png;base64,YW Jj"}),
             upload_body({"data:image/png;base64,YWJj\n"}),
             upload_body({"data:image/png;base64,YW=j"}),
             upload_body({"data:image/png;base64,Y==="}),
             upload_body({"data:image/png;base64,YWI-"}),
             upload_body({"data:image/png;base64,YWJ="}),     // unused bits not zero
             upload_body({"data:image/png;base64,YR=="}),     // unused bits not zero
             upload_body({ok, "data:image/png;base64,%%%%"}), // one bad entry: none kept
         }) {
        auto a = upload(svc, body);
        EXPECT_EQ(a.status, 400u) << body << " -> " << a.body;
        ASSERT_EQ(a.content_type, "application/json") << body;
        auto e = parse(a);
        ASSERT_TRUE(e.contains("error") && e.at("error").is_string()) << a.body;
        EXPECT_FALSE(e.at("error").as_string().empty());
    }
    EXPECT_EQ(stats(svc, t0).at("uploads").to_number<int>(), 0);
    // Padding that leaves the unused bits zero is fine: "YQ==" is "a", "YWI=" is "ab".
    auto a = upload(svc, upload_body({"data:image/png;base64,YQ==", "data:image/png;base64,YWI="}));
    ASSERT_EQ(a.status, 200u) << a.body;
    auto urls = parse(a).at("file_urls").as_array();
    EXPECT_EQ(svc.hosted(file_name(urls[0].as_string()))->bytes, "a");
    EXPECT_EQ(svc.hosted(file_name(urls[1].as_string()))->bytes, "ab");
    EXPECT_EQ(upload(svc, json::serialize(json::object{
                              {"data_urls", json::array(eleven.begin(), eleven.end() - 1)}}))
                  .status,
              200u)
        << "ten are allowed";
}

TEST(service, an_upload_that_is_not_json_is_406) {
    service svc(fixed_settings());
    auto body = upload_body({"data:image/png;base64,YWJj"});
    auto a = svc.upload("sim-key", "multipart/form-data; boundary=x", body, t0);
    EXPECT_EQ(a.status, 406u);
    EXPECT_TRUE(parse(a).at("error").is_string());
    EXPECT_EQ(svc.upload("sim-key", "", body, t0).status, 406u);
    EXPECT_EQ(svc.upload("sim-key", "Application/JSON; charset=utf-8", body, t0).status, 200u);
}

TEST(service, a_file_above_upload_max_bytes_is_413) {
    auto s = fixed_settings();
    s.upload_max_bytes = 4;
    service svc(s);
    auto exact = upload(svc, upload_body({"data:image/png;base64,YWJjZA=="}));
    EXPECT_EQ(exact.status, 200u) << "4 bytes: " << exact.body;
    for (auto data : {"YWJjZGU=", "YWJjZGVm", "YWJjZGVmZ2hpamts"}) {
        auto a = upload(svc, upload_body({fmt::format("data:image/png;base64,{}", data)}));
        EXPECT_EQ(a.status, 413u) << data << " -> " << a.body;
        EXPECT_NE(parse(a).at("error").as_string().find("4 bytes"), json::string::npos) << a.body;
    }
    // Too large is told before bad base64 when the length alone shows it.
    EXPECT_EQ(upload(svc, upload_body({"data:image/png;base64,YWJjZGVm*mhpamts"})).status, 413u);
    EXPECT_EQ(stats(svc, t0).at("uploads").to_number<int>(), 1);

    auto cfg = svc.configure(R"({"upload_max_bytes":6})");
    ASSERT_EQ(cfg.status, 200u) << cfg.body;
    EXPECT_EQ(parse(cfg).at("upload_max_bytes").to_number<int>(), 6);
    EXPECT_EQ(upload(svc, upload_body({"data:image/png;base64,YWJjZGVm"})).status, 200u);
    for (auto bad : {R"({"upload_max_bytes":0})", R"({"upload_max_bytes":-1})",
                     R"({"upload_max_bytes":1.5})", R"({"upload_max_bytes":"1"})"})
        EXPECT_EQ(svc.configure(bad).status, 400u) << bad;
    EXPECT_EQ(json::parse(svc.config_json()).at("upload_max_bytes").to_number<int>(), 6);
    EXPECT_EQ(json::parse(service(fixed_settings()).config_json())
                  .at("upload_max_bytes")
                  .to_number<std::uint64_t>(),
              104857600u);
}

TEST(service, uploads_pass_the_gate_of_every_call) {
    auto s = fixed_settings();
    s.rpm = 3;
    s.retry_after = true;
    service svc(s);
    auto body = upload_body({"data:image/png;base64,YWJj"});
    auto missing = upload(svc, body, "");
    EXPECT_EQ(missing.status, 401u);
    EXPECT_TRUE(parse(missing).at("error").is_string());
    EXPECT_EQ(upload(svc, body, "wrong").status, 401u);
    // One budget for uploads and the other calls.
    EXPECT_EQ(upload(svc, body).status, 200u);
    EXPECT_FALSE(submit(svc, "kling-o1", image_body, t0).empty());
    EXPECT_EQ(upload(svc, body).status, 200u);
    auto limited = upload(svc, body);
    EXPECT_EQ(limited.status, 429u);
    EXPECT_TRUE(parse(limited).at("error").is_string());
    EXPECT_EQ(header(limited, "x-rate-limit-reset-at-utc"), "2026-01-01T00:01:00.000Z");
    EXPECT_EQ(header(limited, "Retry-After"), "60");
    EXPECT_EQ(svc.submit("kling-o1", "sim-key", "application/json", image_body, t0).status, 429u);
    auto st = stats(svc, t0);
    EXPECT_EQ(st.at("rate_limited").to_number<int>(), 2);
    EXPECT_EQ(st.at("uploads").to_number<int>(), 2);
    // The next window.
    EXPECT_EQ(svc.upload("sim-key", "application/json", body, at(60)).status, 200u);

    auto faulty = fixed_settings();
    faulty.error_rate = 1;
    service broken(faulty);
    auto a = upload(broken, body);
    EXPECT_TRUE(a.status == 500u || a.status == 502u || a.status == 504u) << a.status;
    EXPECT_EQ(stats(broken, t0).at("uploads").to_number<int>(), 0);
    EXPECT_EQ(stats(broken, t0).at("faults").at("error").to_number<int>(), 1);
}

TEST(service, upload_settings_are_checked) {
    auto s = fixed_settings();
    EXPECT_EQ(check_settings(s), "");
    s.upload_max_bytes = 0;
    EXPECT_NE(check_settings(s).find("--upload-max-bytes"), std::string::npos);
    s = fixed_settings();
    s.upload_answer_key = "links";
    EXPECT_NE(check_settings(s).find("--upload-answer-key"), std::string::npos);
    s.upload_answer_key = "urls";
    EXPECT_EQ(check_settings(s), "");
}

// Each submit lists the URLs its params carry, so a test can tell a hosted URL was sent.
TEST(service, submits_record_the_urls_in_their_params) {
    service svc(fixed_settings());
    ASSERT_FALSE(submit(svc, "kling-o1", image_body, t0).empty());
    const std::string video =
        R"({"prompt":"@Element1 in @image1","video_url":"https://x/v.mp4",)"
        R"("image_urls":["https://x/i.png"],"elements":[{"frontal_image_url":"https://x/f.png",)"
        R"("reference_image_urls":["https://x/r1.png","https://x/r2.png"]}],"keep_audio":true})";
    ASSERT_FALSE(submit(svc, "kling-o1-video-to-video-edit", video, t0).empty());
    ASSERT_FALSE(submit(svc, "kling-o1-video-to-video-edit", video_body, t0).empty());
    auto st = stats(svc, t0);
    auto& reqs = st.at("requests").as_array();
    ASSERT_EQ(reqs.size(), 3u);
    EXPECT_EQ(reqs[0].at("input_urls"), json::parse(R"(["https://x/1.png","https://x/2.png"])"));
    std::vector<std::string> got;
    for (auto& u : reqs[1].at("input_urls").as_array())
        got.emplace_back(u.as_string());
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got,
              (std::vector<std::string>{"https://x/f.png", "https://x/i.png", "https://x/r1.png",
                                        "https://x/r2.png", "https://x/v.mp4"}));
    EXPECT_EQ(reqs[2].at("input_urls"), json::parse(R"(["https://x/v.mp4"])"));
}

TEST(service, unknown_model_is_404) {
    service svc(fixed_settings());
    auto a = svc.submit("kling-o2", "sim-key", "application/json", image_body, t0);
    EXPECT_EQ(a.status, 404u);
    EXPECT_EQ(parse(a).at("error").as_string(), "Model not found");
}

TEST(service, content_type_other_than_json_is_406) {
    service svc(fixed_settings());
    EXPECT_EQ(svc.submit("kling-o1", "sim-key", "text/plain", image_body, t0).status, 406u);
    EXPECT_EQ(svc.submit("kling-o1", "sim-key", "", image_body, t0).status, 406u);
    EXPECT_EQ(
        svc.submit("kling-o1", "sim-key", "Application/JSON; charset=utf-8", image_body, t0).status,
        200u);
}

TEST(service, kling_o1_bad_bodies_are_400) {
    service svc(fixed_settings());
    const std::pair<std::string, std::string> cases[] = {
        {"not json", "JSON object"},
        {R"(["prompt"])", "JSON object"},
        {R"({"image_urls":["https://x/1.png"]})", "prompt is required"},
        {R"({"prompt":7,"image_urls":["https://x/1.png"]})", "prompt must be a string"},
        {R"({"prompt":"a"})", "image_urls is required"},
        {R"({"prompt":"a","image_urls":"https://x/1.png"})", "image_urls must be an array"},
        {R"({"prompt":"a","image_urls":[]})", "image_urls must not be empty"},
        {R"({"prompt":"a","image_urls":["https://x/1.png",3]})", "image_urls[1]"},
        {R"({"prompt":"a","image_urls":["ftp://x"]})", "image_urls[0]"},
        {R"({"prompt":"a","image_urls":["https://x"],"aspect_ratio":"4:3"})", "aspect_ratio"},
        {R"({"prompt":"a","image_urls":["https://x"],"output_format":"gif"})", "output_format"},
        {R"({"prompt":"a","image_urls":["https://x"],"resolution":"2K"})", "resolution"},
        {R"({"prompt":"a","image_urls":["https://x"],"resolution":1})", "resolution"},
    };
    for (auto& [body, expected] : cases) {
        auto a = svc.submit("kling-o1", "sim-key", "application/json", body, t0);
        EXPECT_EQ(a.status, 400u) << body;
        std::string error(parse(a).at("error").as_string());
        EXPECT_NE(error.find(expected), std::string::npos) << body << " -> " << error;
    }
    EXPECT_EQ(stats(svc, t0).at("submissions").to_number<std::uint64_t>(), 0u);
    auto fine = svc.submit(
        "kling-o1", "sim-key", "application/json",
        R"({"prompt":"a","image_urls":["https://x/1.png"],"aspect_ratio":"9:16","output_format":"jpg","resolution":"1K","extra":1})",
        t0);
    EXPECT_EQ(fine.status, 200u) << fine.body;
}

TEST(service, submit_answer_has_absolute_urls_and_a_v4_uuid) {
    service svc(fixed_settings());
    auto a = svc.submit("kling-o1", "sim-key", "application/json", image_body, t0);
    ASSERT_EQ(a.status, 200u);
    auto o = parse(a);
    std::string id(o.at("request_id").as_string());
    ASSERT_EQ(id.size(), 36u);
    EXPECT_EQ(id[14], '4');
    EXPECT_NE(std::string("89ab").find(id[19]), std::string::npos);
    EXPECT_EQ(o.at("status").as_string(), "QUEUED");
    EXPECT_EQ(o.at("status_url").as_string(), "https://sim.test/v2/requests/" + id + "/status");
    EXPECT_EQ(o.at("poll_url").as_string(), o.at("status_url").as_string());
    EXPECT_EQ(o.at("response_url").as_string(), "https://sim.test/v2/requests/" + id);
    EXPECT_NE(submit(svc, "kling-o1", image_body, t0), id);
}

TEST(service, states_progress_queued_processing_completed) {
    auto s = fixed_settings();
    s.queue_s = 5;
    service svc(s);
    auto id = submit(svc, "kling-o1", image_body, t0);
    ASSERT_FALSE(id.empty());
    double queue = stats(svc, t0).at("requests").as_array()[0].at("queue_time").as_double();
    ASSERT_GT(queue, 0.01);

    auto status_at = [&](double secs) {
        auto a = svc.status(id, "sim-key", at(secs));
        EXPECT_EQ(a.status, 200u);
        return std::string(parse(a).at("status").as_string());
    };
    EXPECT_EQ(status_at(0), "QUEUED");
    EXPECT_EQ(status_at(queue - 0.005), "QUEUED");
    EXPECT_EQ(status_at(queue + 0.005), "PROCESSING");
    EXPECT_EQ(status_at(queue + 57.99), "PROCESSING");
    EXPECT_EQ(parse(svc.result(id, "sim-key", at(queue + 1))).at("status").as_string(),
              "PROCESSING");
    EXPECT_FALSE(parse(svc.result(id, "sim-key", at(queue + 1))).contains("output"));

    auto done = parse(svc.status(id, "sim-key", at(queue + 58.01)));
    EXPECT_EQ(done.at("status").as_string(), "COMPLETED");
    EXPECT_FALSE(done.contains("output"));
    EXPECT_DOUBLE_EQ(done.at("metrics").at("inference_time").as_double(), 58.0);

    auto result = parse(svc.result(id, "sim-key", at(queue + 60)));
    EXPECT_EQ(result.at("status").as_string(), "COMPLETED");
    EXPECT_EQ(result.at("output").as_string(), "https://sim.test/media/" + id + ".png");
    EXPECT_DOUBLE_EQ(result.at("metrics").at("inference_time").as_double(), 58.0);
}

TEST(service, output_extension_follows_format_and_model) {
    service svc(fixed_settings());
    auto jpg =
        submit(svc, "kling-o1",
               R"({"prompt":"a","image_urls":["https://x/1.png"],"output_format":"jpg"})", t0);
    auto mp4 = submit(svc, "kling-o1-video-to-video-edit", video_body, t0);
    auto r1 = parse(svc.result(jpg, "sim-key", at(100)));
    auto r2 = parse(svc.result(mp4, "sim-key", at(300)));
    EXPECT_EQ(r1.at("output").as_string(), "https://sim.test/media/" + jpg + ".jpg");
    EXPECT_EQ(r2.at("output").as_string(), "https://sim.test/media/" + mp4 + ".mp4");
    EXPECT_FALSE(svc.media(jpg, "png", at(100)));
    auto file = svc.media(jpg, "jpg", at(100));
    ASSERT_TRUE(file);
    EXPECT_EQ(file->size, 65536u);
    EXPECT_EQ(svc.media(mp4, "mp4", at(300))->size, 1048576u);
}

TEST(service, video_edit_bad_body_is_accepted_then_failed) {
    service svc(fixed_settings());
    auto a = svc.submit("kling-o1-video-to-video-edit", "sim-key", "application/json",
                        R"({"prompt":"edit it","keep_audio":"yes"})", t0);
    ASSERT_EQ(a.status, 200u) << a.body;
    std::string id(parse(a).at("request_id").as_string());
    EXPECT_EQ(svc.status(id, "sim-key", t0).status, 200u);

    for (auto answer : {svc.status(id, "sim-key", at(5)), svc.result(id, "sim-key", at(5))}) {
        EXPECT_EQ(answer.status, 422u);
        auto o = parse(answer);
        EXPECT_EQ(o.at("status").as_string(), "FAILED");
        EXPECT_EQ(o.at("request_id").as_string(), id);
        EXPECT_TRUE(o.at("metrics").is_object());
        EXPECT_NE(std::string(o.at("error").as_string()).find("video_url is required"),
                  std::string::npos);
    }
    EXPECT_FALSE(svc.media(id, "mp4", at(5)));
    // A valid body is not failed.
    auto good = submit(svc, "kling-o1-video-to-video-edit", video_body, t0);
    EXPECT_EQ(svc.status(good, "sim-key", at(300)).status, 200u);
}

TEST(service, sim_fail_prompt_ends_failed_with_422) {
    service svc(fixed_settings());
    auto id = submit(svc, "kling-o1",
                     R"({"prompt":"please SIM_FAIL now","image_urls":["https://x/1.png"]})", t0);
    ASSERT_FALSE(id.empty());
    EXPECT_EQ(svc.status(id, "sim-key", at(10)).status, 200u);
    auto failed = svc.status(id, "sim-key", at(59));
    EXPECT_EQ(failed.status, 422u);
    EXPECT_NE(std::string(parse(failed).at("error").as_string()).find("SIM_FAIL"),
              std::string::npos);
    auto entry = stats(svc, at(59)).at("requests").as_array()[0].as_object();
    EXPECT_EQ(entry.at("outcome").as_string(), "FAILED");
    EXPECT_EQ(entry.at("completed_at_ms").as_int64(), unix_ms(at(58)));
}

TEST(service, fail_rate_one_fails_every_job) {
    auto s = fixed_settings();
    s.fail_rate = 1;
    service svc(s);
    for (int i = 0; i < 5; ++i) {
        auto id = submit(svc, "kling-o1", image_body, t0);
        EXPECT_EQ(svc.result(id, "sim-key", at(100)).status, 422u);
    }
}

TEST(service, request_is_gone_after_retention) {
    auto s = fixed_settings();
    s.retention_s = 3600;
    service svc(s);
    auto id = submit(svc, "kling-o1", image_body, t0);
    EXPECT_EQ(svc.status(id, "sim-key", at(3599.9)).status, 200u);
    auto gone = svc.status(id, "sim-key", at(3600));
    EXPECT_EQ(gone.status, 404u);
    EXPECT_EQ(parse(gone).at("error").as_string(), "Request " + id + " not found");
    EXPECT_EQ(svc.result(id, "sim-key", at(3700)).status, 404u);
    EXPECT_EQ(svc.status("no-such-id", "sim-key", t0).status, 404u);
    // The media lives on (7 days after completion), then goes too.
    EXPECT_TRUE(svc.media(id, "png", at(3700)));
    EXPECT_FALSE(svc.media(id, "png", at(58 + 7 * 86400)));
}

TEST(service, rate_limit_answers_429_with_reset_time_then_recovers) {
    auto s = fixed_settings();
    s.rpm = 3;
    s.retry_after = true;
    service svc(s);
    auto id = submit(svc, "kling-o1", image_body, at(1));
    EXPECT_EQ(svc.status(id, "sim-key", at(2)).status, 200u);
    EXPECT_EQ(svc.result(id, "sim-key", at(3)).status, 200u);
    auto limited = svc.status(id, "sim-key", at(10.5));
    EXPECT_EQ(limited.status, 429u);
    EXPECT_EQ(parse(limited).at("error").as_string(), "Rate limit exceeded");
    EXPECT_EQ(header(limited, "x-rate-limit-reset-at-utc"), "2026-01-01T00:01:00.000Z");
    EXPECT_EQ(header(limited, "Retry-After"), "50");
    EXPECT_EQ(header(svc.status(id, "sim-key", at(59.9)), "Retry-After"), "1");
    EXPECT_EQ(svc.submit("kling-o1", "sim-key", "application/json", image_body, at(30)).status,
              429u);
    EXPECT_EQ(svc.status(id, "sim-key", at(60)).status, 200u);
    auto st = stats(svc, at(60));
    EXPECT_EQ(st.at("rate_limited").to_number<std::uint64_t>(), 3u);
    EXPECT_EQ(st.at("submissions").to_number<std::uint64_t>(), 1u);
}

TEST(service, refused_calls_use_no_budget) {
    auto s = fixed_settings();
    s.rpm = 2;
    service svc(s);
    for (int i = 0; i < 5; ++i)
        EXPECT_EQ(svc.status("x", "bad-key", at(1)).status, 401u);
    EXPECT_EQ(svc.status("x", "sim-key", at(2)).status, 404u); // counts: authenticated
    EXPECT_EQ(svc.status("x", "sim-key", at(3)).status, 404u);
    for (int i = 0; i < 10; ++i)
        EXPECT_EQ(svc.status("x", "sim-key", at(4)).status, 429u);
    // The next window has its full budget, whatever the 429s before.
    EXPECT_EQ(svc.status("x", "sim-key", at(61)).status, 404u);
    EXPECT_EQ(svc.status("x", "sim-key", at(62)).status, 404u);
    EXPECT_EQ(svc.status("x", "sim-key", at(63)).status, 429u);
}

TEST(service, reset_header_formats_and_no_retry_after_by_default) {
    for (auto [format, expected] : {std::pair{reset_format::iso, "2026-01-01T00:01:00Z"},
                                    {reset_format::iso_frac, "2026-01-01T00:01:00.000Z"},
                                    {reset_format::epoch, "1767225660"}}) {
        auto s = fixed_settings();
        s.rpm = 1;
        s.reset_header = format;
        service svc(s);
        svc.status("x", "sim-key", at(1));
        auto limited = svc.status("x", "sim-key", at(1));
        EXPECT_EQ(limited.status, 429u);
        EXPECT_EQ(header(limited, "x-rate-limit-reset-at-utc"), expected);
        EXPECT_EQ(header(limited, "Retry-After"), "");
    }
}

TEST(service, credits_run_out_with_406) {
    auto s = fixed_settings();
    s.credits = 2;
    service svc(s);
    EXPECT_FALSE(submit(svc, "kling-o1", image_body, t0).empty());
    // A rejected body costs nothing.
    EXPECT_EQ(svc.submit("kling-o1", "sim-key", "application/json", "{}", t0).status, 400u);
    auto last = submit(svc, "kling-o1", image_body, t0);
    EXPECT_FALSE(last.empty());
    auto broke = svc.submit("kling-o1", "sim-key", "application/json", image_body, t0);
    EXPECT_EQ(broke.status, 406u);
    EXPECT_EQ(parse(broke).at("error").as_string(), "Insufficient credits");
    EXPECT_EQ(svc.status(last, "sim-key", t0).status, 200u); // polls need no credit
    EXPECT_EQ(stats(svc, t0).at("submissions").to_number<std::uint64_t>(), 2u);
}

TEST(service, injected_server_errors_change_nothing) {
    auto s = fixed_settings();
    s.error_rate = 1;
    s.credits = 5;
    service svc(s);
    for (int i = 0; i < 20; ++i) {
        auto a = svc.submit("kling-o1", "sim-key", "application/json", image_body, t0);
        EXPECT_TRUE(a.status == 500 || a.status == 502 || a.status == 504) << a.status;
    }
    auto st = stats(svc, t0);
    EXPECT_EQ(st.at("submissions").to_number<std::uint64_t>(), 0u);
    EXPECT_EQ(st.at("credits").as_int64(), 5);
    EXPECT_EQ(st.at("faults").at("error").to_number<std::uint64_t>(), 20u);
}

TEST(service, first_seen_is_set_by_the_first_delivered_terminal_answer) {
    service svc(fixed_settings());
    auto id = submit(svc, "kling-o1", image_body, t0);
    auto entry = [&](time_point t) {
        return stats(svc, t).at("requests").as_array()[0].as_object();
    };

    svc.status(id, "sim-key", at(10));
    EXPECT_TRUE(entry(at(10)).at("first_seen_at").is_null());
    EXPECT_TRUE(entry(at(10)).at("completed_at").is_null());
    svc.status(id, "sim-key", at(60), std::nullopt); // terminal, but the answer was lost
    EXPECT_TRUE(entry(at(60)).at("first_seen_at").is_null());
    svc.result(id, "sim-key", at(61), at(61.5)); // terminal, delivered after a delay
    svc.status(id, "sim-key", at(70));
    svc.result(id, "sim-key", at(71));

    auto e = entry(at(72));
    EXPECT_EQ(e.at("first_seen_at_ms").as_int64(), unix_ms(at(61.5)));
    EXPECT_EQ(e.at("first_seen_at").as_string(), "2026-01-01T00:01:01.500Z");
    EXPECT_EQ(e.at("completed_at_ms").as_int64(), unix_ms(at(58)));
    EXPECT_EQ(e.at("submitted_at").as_string(), "2026-01-01T00:00:00.000Z");
    EXPECT_EQ(e.at("status_polls").to_number<std::uint64_t>(), 3u);
    EXPECT_EQ(e.at("result_fetches").to_number<std::uint64_t>(), 2u);
    EXPECT_EQ(e.at("model").as_string(), "kling-o1");
    EXPECT_EQ(e.at("prompt").as_string(), "Merge @Image1 into @Image2");
    EXPECT_EQ(e.at("body_sha256").as_string().size(), 64u);
    EXPECT_EQ(e.at("outcome").as_string(), "COMPLETED");
}

TEST(service, stats_keep_the_first_200_characters_of_the_prompt) {
    service svc(fixed_settings());
    std::string prompt;
    for (int i = 0; i < 300; ++i)
        prompt += "\xc3\xa9"; // é: two bytes, one character
    submit(svc, "kling-o1", R"({"prompt":")" + prompt + R"(","image_urls":["https://x/1.png"]})",
           t0);
    auto kept = stats(svc, t0).at("requests").as_array()[0].at("prompt").as_string();
    EXPECT_EQ(kept.size(), 400u);
    EXPECT_FALSE(json::parse(svc.stats_json(false, t0)).as_object().contains("requests"));
}

TEST(service, time_scale_shrinks_every_api_duration) {
    auto s = fixed_settings();
    s.time_scale = 0.01;
    s.rpm = 1;
    service svc(s);
    auto id = submit(svc, "kling-o1-video-to-video-edit", video_body, at(0.01));
    ASSERT_FALSE(id.empty());
    EXPECT_EQ(svc.status(id, "sim-key", at(0.5)).status, 429u); // window is 0.6 s
    auto running = svc.status(id, "sim-key", at(1.7));
    EXPECT_EQ(parse(running).at("status").as_string(), "PROCESSING");
    auto done = parse(svc.result(id, "sim-key", at(2.25)));
    EXPECT_EQ(done.at("status").as_string(), "COMPLETED");
    EXPECT_DOUBLE_EQ(done.at("metrics").at("inference_time").as_double(), 223.0);
    EXPECT_EQ(svc.status(id, "sim-key", at(36.1)).status, 404u); // retention 36 s
}

TEST(service, run_times_follow_a_lognormal_around_the_median) {
    auto s = fixed_settings();
    s.spread = 0.25;
    s.medians["kling-o1"] = 100;
    service svc(s);
    for (int i = 0; i < 1001; ++i)
        submit(svc, "kling-o1", image_body, t0);
    std::vector<double> runs;
    auto all = stats(svc, t0);
    for (auto& r : all.at("requests").as_array())
        runs.push_back(r.at("inference_time").as_double());
    std::sort(runs.begin(), runs.end());
    EXPECT_NEAR(runs[500], 100, 4);
    EXPECT_NEAR(runs[841], 100 * std::exp(0.25), 6); // one sigma above
    EXPECT_LT(runs.front(), 70);
    EXPECT_GT(runs.back(), 140);
}

TEST(service, same_seed_same_requests) {
    auto s = fixed_settings();
    s.spread = 0.3;
    s.queue_s = 2;
    service a(s), b(s);
    auto id_a = submit(a, "kling-o1", image_body, t0);
    auto id_b = submit(b, "kling-o1", image_body, t0);
    EXPECT_EQ(id_a, id_b);
    auto ra = stats(a, t0).at("requests").as_array()[0];
    auto rb = stats(b, t0).at("requests").as_array()[0];
    EXPECT_EQ(ra.at("inference_time"), rb.at("inference_time"));
    EXPECT_EQ(ra.at("queue_time"), rb.at("queue_time"));
}

TEST(service, configure_changes_values_or_nothing) {
    service svc(fixed_settings());
    auto ok = svc.configure(
        R"({"rpm":1,"api_key":"new","retry_after":true,"error_rate":0,"credits":3,"slow_s":0.5})");
    ASSERT_EQ(ok.status, 200u) << ok.body;
    auto eff = parse(ok);
    EXPECT_EQ(eff.at("rpm").as_int64(), 1);
    EXPECT_EQ(eff.at("credits").as_int64(), 3);
    EXPECT_EQ(eff.at("api_key").as_string(), "new");
    EXPECT_TRUE(eff.at("retry_after").as_bool());
    EXPECT_EQ(svc.status("x", "sim-key", t0).status, 401u);
    EXPECT_EQ(svc.status("x", "new", t0).status, 404u);
    EXPECT_EQ(svc.status("x", "new", t0).status, 429u);

    for (auto bad : {R"({"nope":1})", R"({"rpm":-1})", R"({"rpm":1.5})", R"({"fail_rate":2})",
                     R"({"retry_after":1})", R"({"rpm":18446744073709551615})",
                     R"({"credits":1e3})", R"({"api_key":""})", R"([])", R"({"rpm":5,"x":1})"}) {
        auto a = svc.configure(bad);
        EXPECT_EQ(a.status, 400u) << bad;
        EXPECT_TRUE(parse(a).contains("error")) << bad;
    }
    EXPECT_EQ(json::parse(svc.config_json()).at("rpm").as_int64(), 1); // unchanged
}

TEST(service, delivery_faults_follow_their_rates) {
    auto s = fixed_settings();
    s.reset_rate = 1;
    service resets(s);
    int before = 0, after = 0;
    for (int i = 0; i < 200; ++i) {
        auto d = resets.draw_delivery(sim::endpoint::status);
        EXPECT_TRUE(d.reset_before != d.reset_after);
        before += d.reset_before;
        after += d.reset_after;
    }
    EXPECT_GT(before, 50);
    EXPECT_GT(after, 50);

    s = fixed_settings();
    s.truncate_rate = 1;
    s.slow_rate = 1;
    s.slow_s = 2.5;
    service cut(s);
    auto d = cut.draw_delivery(sim::endpoint::status);
    EXPECT_TRUE(d.truncate);
    EXPECT_EQ(d.delay_s, 2.5);
    EXPECT_FALSE(d.reset_before || d.reset_after);

    s = fixed_settings();
    s.trickle_rate = 1;
    service slow_media(s);
    EXPECT_TRUE(slow_media.draw_delivery(sim::endpoint::media).trickle);
    EXPECT_FALSE(slow_media.draw_delivery(sim::endpoint::status).trickle) << "media only";

    service clean(fixed_settings());
    auto none = clean.draw_delivery(sim::endpoint::status);
    EXPECT_FALSE(none.reset_before || none.reset_after || none.truncate);
    EXPECT_EQ(none.delay_s, 0);
}

} // namespace
} // namespace klingd::sim
