// The end-to-end environment: processes, configuration and socket calls.
#include "tests/daemon/daemon_env.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <csignal>
#include <filesystem>
#include <fmt/format.h>
#include <stdexcept>

namespace klingd::test {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using local = asio::local::stream_protocol;

reply_json unix_request(const std::string& socket, const std::string& method,
                        const std::string& target, const std::string& body) {
    reply_json r;
    asio::io_context io;
    beast::basic_stream<local> stream(io);
    boost::system::error_code ec;
    stream.socket().connect(local::endpoint(socket), ec);
    if (ec)
        return r;
    http::request<http::string_body> req{http::string_to_verb(method), target, 11};
    req.set(http::field::host, "localhost");
    if (!body.empty()) {
        req.set(http::field::content_type, "application/json");
        req.body() = body;
    }
    req.prepare_payload();
    stream.expires_after(std::chrono::seconds(30));
    http::write(stream, req, ec);
    beast::flat_buffer buf;
    http::response_parser<http::string_body> p;
    p.body_limit(512u << 20);
    if (!ec)
        http::read(stream, buf, p, ec);
    if (ec)
        return r;
    r.status = static_cast<int>(p.get().result_int());
    r.text = p.get().body();
    r.body = json::parse(r.text, ec);
    return r;
}

daemon_env::daemon_env(daemon_options o) : opts_(std::move(o)), dir_("klingd") {
    std::vector<std::string> args{"--time-scale", fmt::format("{}", opts_.scale), "--api-key",
                                  opts_.api_key};
    args.insert(args.end(), opts_.sim_args.begin(), opts_.sim_args.end());
    sim_ = std::make_unique<sim_process>(args);
    std::filesystem::create_directories(dir_ / "spool/incoming");
    write_config();
}

daemon_env::~daemon_env() {
    if (klingd_ && klingd_->running())
        kill9();
}

void daemon_env::write_config() {
    double s = opts_.scale;
    double rpm = opts_.requests_per_minute > 0 ? opts_.requests_per_minute : 60 / s;
    std::string toml = fmt::format(
        R"([api]
base_url = "{}"
ca_file = "{}"
requests_per_minute = {}
request_timeout_s = 10
[storage]
database = "{}"
[spool]
directory = "{}"
[output]
directory = "{}"
[control]
socket = "{}"
[models."kling-o1"]
expected_duration_s = {}
[models."kling-o1-video-to-video-edit"]
expected_duration_s = {}
[jobs]
result_retention_s = {}
min_poll_interval_s = {}
max_poll_interval_s = {}
resubmit_unknown = {}
max_in_flight = {}
{}
)",
        sim_->base_url(), sim_->ca_file(), rpm, dir_ / "klingd.db", dir_ / "spool", dir_ / "output",
        socket(), 58 * s, 223 * s, 3600 * s, 1 * s, 60 * s,
        opts_.resubmit_unknown ? "true" : "false", opts_.max_in_flight, opts_.extra_toml);
    write_file(config_path(), toml);
}

void daemon_env::start(std::map<std::string, std::string> extra_env) {
    if (klingd_)
        old_logs_.push_back(klingd_->stderr_text());
    extra_env["SEGMIND_API_KEY"] = opts_.api_key;
    klingd_ = std::make_unique<child_process>(
        KLINGD_PATH, std::vector<std::string>{"--config", config_path()}, std::move(extra_env),
        "klingd" + std::to_string(generation_++));
    bool up = eventually(
        [&] {
            return !klingd_->running() || unix_request(socket(), "GET", "/v1/health").status == 200;
        },
        std::chrono::seconds(20));
    if (!up || !klingd_->running())
        throw std::runtime_error("klingd did not start: " + klingd_->stderr_text());
}

int daemon_env::stop() {
    klingd_->signal(SIGTERM);
    return klingd_->wait(std::chrono::seconds(20)).value_or(-1);
}

void daemon_env::kill9() {
    klingd_->kill_hard();
}
void daemon_env::signal(int sig) {
    klingd_->signal(sig);
}
bool daemon_env::running() {
    return klingd_ && klingd_->running();
}

std::string daemon_env::log() const {
    std::string all;
    for (auto& l : old_logs_)
        all += l;
    if (klingd_)
        all += klingd_->stderr_text();
    return all;
}

void daemon_env::drop(const std::string& name, const std::string& content) {
    std::string tmp = incoming() + "/." + name + ".tmp";
    write_file(tmp, content);
    std::filesystem::rename(tmp, incoming() + "/" + name);
}

reply_json daemon_env::api(const std::string& method, const std::string& target,
                           const std::string& body) {
    return unix_request(socket(), method, target, body);
}

json::value daemon_env::job(const std::string& id) {
    auto r = api("GET", "/v1/jobs/" + id);
    return r.status == 200 ? r.body : json::value(nullptr);
}

std::string daemon_env::state(const std::string& id) {
    auto j = job(id);
    return j.is_object() ? std::string(j.at("state").as_string()) : "";
}

std::vector<json::value> daemon_env::jobs() {
    std::vector<json::value> all;
    std::string after;
    for (;;) {
        auto r = api("GET", "/v1/jobs?limit=500" + (after.empty() ? "" : "&after=" + after));
        if (r.status != 200)
            throw std::runtime_error("GET /v1/jobs: " + r.text);
        for (auto& j : r.body.at("jobs").as_array())
            all.push_back(j);
        if (r.body.at("next").is_null())
            break;
        after = std::string(r.body.at("next").as_string());
    }
    return all;
}

bool daemon_env::wait_terminal(const std::vector<std::string>& ids, std::chrono::seconds timeout) {
    return eventually(
        [&] {
            std::map<std::string, std::string> states;
            for (auto& j : jobs())
                states[std::string(j.at("id").as_string())] =
                    std::string(j.at("state").as_string());
            for (auto& id : ids) {
                auto s = states[id];
                if (s != "completed" && s != "failed" && s != "expired" && s != "cancelled")
                    return false;
            }
            return true;
        },
        timeout, std::chrono::milliseconds(200));
}

json::value daemon_env::sim_stats(bool with_requests) {
    auto r = https_request(
        "GET", sim_->base_url() + (with_requests ? "/sim/stats" : "/sim/stats?requests=0"), "", {},
        sim_->ca_file());
    if (r.status != 200)
        throw std::runtime_error("sim stats: " + r.error);
    return json::parse(r.body);
}

void daemon_env::sim_config(const std::string& body) {
    auto r = https_request("POST", sim_->base_url() + "/sim/config", body, {}, sim_->ca_file());
    if (r.status != 200)
        throw std::runtime_error("sim config: " + r.body + r.error);
}

std::string image_job(const std::string& marker, const std::string& extra_params) {
    return fmt::format(
        R"({{"model":"kling-o1","params":{{"prompt":"{} merge @Image1 into @Image2",)"
        R"("image_urls":["https://in.example/a.png","https://in.example/b.png"]{}}}}})",
        marker, extra_params);
}

std::string video_job(const std::string& marker) {
    return fmt::format(
        R"({{"model":"kling-o1-video-to-video-edit","params":{{"prompt":"{} use @image1",)"
        R"("video_url":"https://in.example/v.mp4","image_urls":["https://in.example/a.png"]}}}})",
        marker);
}

} // namespace klingd::test
