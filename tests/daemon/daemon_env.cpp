// The end-to-end environment: processes, configuration and socket calls.
#include "tests/daemon/daemon_env.hpp"

#include "client/control_client.hpp"

#include <boost/beast/http/verb.hpp>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <stdexcept>

namespace klingd::test {

namespace http = boost::beast::http;
namespace json = boost::json;

reply_json unix_request(const std::string& socket, const std::string& method,
                        const std::string& target, const std::string& body) {
    client::control_client c(socket);
    auto r = c.call(http::string_to_verb(method), target, body);
    if (!r)
        return {};
    return {r->status, std::move(r->body), std::move(r->text)};
}

daemon_env::daemon_env(daemon_options o) : opts_(std::move(o)), dir_("klingd") {
    std::vector<std::string> args{"--time-scale", fmt::format("{}", opts_.scale), "--api-key",
                                  opts_.api_key};
    args.insert(args.end(), opts_.sim_args.begin(), opts_.sim_args.end());
    if (opts_.shared_sim) {
        sim_ = opts_.shared_sim;
    } else {
        own_sim_ = std::make_unique<sim_process>(args);
        sim_ = own_sim_.get();
    }
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
        R"(log_level = "{}"
[api]
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
        opts_.log_level, sim_->base_url(), sim_->ca_file(), rpm, dir_ / "klingd.db", dir_ / "spool",
        dir_ / "output", socket(), 58 * s, 223 * s,
        opts_.retention_s > 0 ? opts_.retention_s : 3600 * s, 1 * s, 60 * s,
        opts_.resubmit_unknown ? "true" : "false", opts_.max_in_flight, opts_.extra_toml);
    if (!opts_.postgresql.empty()) {
        toml.replace(toml.find("[storage]\n"), 10,
                     fmt::format("[storage]\npostgresql = \"{}\"\n", opts_.postgresql));
        toml += fmt::format("[cluster]\nnode = \"{}\"\ntakeover_s = {}\n", opts_.node,
                            opts_.takeover_s);
    }
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
int daemon_env::pid() {
    return running() ? static_cast<int>(klingd_->pid()) : -1;
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
    // As a careful user writes it, whatever the umask the tests run under.
    std::filesystem::permissions(tmp, std::filesystem::perms(0644));
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
            std::vector<json::value> all;
            try {
                all = jobs();
            } catch (const std::runtime_error&) {
                return false; // the daemon could not answer now (its database restarts)
            }
            for (auto& j : all)
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

int env_int(const char* name, int fallback) {
    const char* v = std::getenv(name);
    return v && *v ? std::atoi(v) : fallback;
}

std::string image_job(const std::string& marker, const std::string& extra_params) {
    return fmt::format(
        R"({{"model":"kling-o1","params":{{"prompt":"{} merge @Image1 into @Image2",)"
        R"("image_urls":["https://in.example/a.png","https://in.example/b.png"]{}}}}})",
        marker, extra_params);
}

std::vector<std::string> drop_image_jobs(daemon_env& env, const std::string& prefix, int n) {
    std::vector<std::string> ids;
    for (int i = 0; i < n; ++i) {
        ids.push_back(prefix + std::to_string(i));
        env.drop(ids.back() + ".json", image_job(ids.back()));
    }
    return ids;
}

std::string video_job(const std::string& marker) {
    return fmt::format(
        R"({{"model":"kling-o1-video-to-video-edit","params":{{"prompt":"{} use @image1",)"
        R"("video_url":"https://in.example/v.mp4","image_urls":["https://in.example/a.png"]}}}})",
        marker);
}

std::string str(const json::value& v, std::string_view key) {
    return client::field(v, key);
}

std::map<std::string, int> submissions_by_marker(const json::value& stats) {
    std::map<std::string, int> out;
    for (auto& r : stats.at("requests").as_array()) {
        std::string prompt(r.at("prompt").as_string());
        out[prompt.substr(0, prompt.find(' '))]++;
    }
    return out;
}

std::uint64_t count(const json::value& stats, std::string_view endpoint, std::string_view code) {
    std::uint64_t n = 0;
    for (auto& [c, v] : stats.at(endpoint).as_object())
        if (code.empty() || c == code)
            n += v.as_int64();
    return n;
}

std::uint64_t api_requests(const json::value& stats) {
    return count(stats, "submit") + count(stats, "status") + count(stats, "result");
}

std::uint64_t answers_429(const json::value& stats) {
    return count(stats, "submit", "429") + count(stats, "status", "429") +
           count(stats, "result", "429");
}

void expect_completed_with_exact_media(daemon_env& env, const std::string& id) {
    auto j = env.job(id);
    ASSERT_TRUE(j.is_object()) << id;
    ASSERT_EQ(str(j, "state"), "completed") << id << ": " << str(j, "error");
    auto& outputs = j.at("outputs").as_array();
    ASSERT_EQ(outputs.size(), 2u) << id;
    std::string result_path(outputs[0].as_string());
    EXPECT_EQ(result_path, env.output() + "/" + id + "/result.json");
    ASSERT_TRUE(std::filesystem::exists(result_path)) << id << ": " << result_path << " is missing";
    boost::system::error_code ec;
    auto result = json::parse(read_file(result_path), ec);
    ASSERT_FALSE(ec) << id << ": " << result_path << " is not whole JSON: " << ec.message();
    std::string url(result.at("output").as_string());
    auto media = https_request("GET", url, "", {}, env.sim().ca_file());
    for (int hop = 0; hop < 10 && media.status == 302; ++hop) // the sim's media redirects
        media = https_request("GET", media.headers["location"], "", {}, env.sim().ca_file());
    ASSERT_EQ(media.status, 200) << media.error;
    std::string media_path(outputs[1].as_string());
    EXPECT_EQ(media_path.rfind(env.output() + "/" + id + "/output.", 0), 0u) << media_path;
    EXPECT_TRUE(read_file(media_path) == media.body)
        << id << ": media differ from what the sim serves";
}

} // namespace klingd::test
