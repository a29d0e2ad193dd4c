// sdk-baseline: the official Python SDK's documented policy (segmind-v2.md), for
// the benchmark to compare klingd with on the same workload: per job, submit;
// poll status every 1.0 s (2.0 s for video; times scaled like the emulator's)
// until COMPLETED or FAILED; fetch the result; no retries: a 429, a 5xx, a 404
// or a network error aborts that job; nothing is persisted. Jobs run
// concurrently (one coroutine each, as one thread per job would).
//   sdk-baseline --base-url URL --ca-file PEM --jobs JOBS.json [--scale 0.1] [--deadline-s 600]
// JOBS.json: [{"model": "...", "params": {...}}, ...]. Prints a JSON summary.
#include "core/api_answer.hpp"
#include "core/url.hpp"
#include "daemon/http_client.hpp"
#include "runtime/tls.hpp"

#include <CLI/CLI.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>
#include <cstdio>
#include <fmt/format.h>
#include <fstream>
#include <map>
#include <sstream>

namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace json = boost::json;
using klingd::core::http_outcome;

struct outcome_counts {
    std::map<std::string, int> by_outcome; // completed, failed, aborted_429, aborted_5xx, ...
};

asio::awaitable<void> run_job(asio::io_context& io, klingd::daemon::http_client& client,
                              std::string base, std::string key, std::string model,
                              std::string params, double scale, double deadline_s,
                              outcome_counts& counts) {
    auto finish = [&](const std::string& how) {
        ++counts.by_outcome[how];
    };
    auto abort_for = [&](const http_outcome& o) {
        if (o.how != http_outcome::transport::ok)
            return finish("aborted_network");
        if (o.status == 429)
            return finish("aborted_429");
        if (o.status >= 500)
            return finish("aborted_5xx");
        return finish(fmt::format("aborted_{}", o.status));
    };
    klingd::daemon::header_list headers{{"x-api-key", key}};
    auto submit_url = klingd::core::http_url::parse(base + "/v2/" + model);
    auto sub = co_await client.request(http::verb::post, *submit_url, params, headers, 8u << 20);
    if (sub.how != http_outcome::transport::ok || sub.status != 200) {
        abort_for(sub);
        co_return;
    }
    auto fields = klingd::core::parse_submit(sub.body, base);
    if (!fields) {
        finish("aborted_bad_answer");
        co_return;
    }
    double interval = (model == "kling-o1-video-to-video-edit" ? 2.0 : 1.0) * scale;
    auto status_url = *klingd::core::http_url::parse(fields->status_url);
    auto response_url = *klingd::core::http_url::parse(fields->response_url);
    auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(deadline_s * scale);
    asio::steady_timer t(io);
    while (std::chrono::steady_clock::now() < deadline) {
        t.expires_after(std::chrono::duration_cast<std::chrono::nanoseconds>(
            std::chrono::duration<double>(interval)));
        boost::system::error_code ec;
        co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        auto st =
            co_await client.request(http::verb::get, status_url, std::string(), headers, 8u << 20);
        if (st.how == http_outcome::transport::ok && st.status == 422) {
            finish("failed");
            co_return;
        }
        if (st.how != http_outcome::transport::ok || st.status != 200) {
            abort_for(st);
            co_return;
        }
        auto s = klingd::core::parse_status(st.body);
        if (s == klingd::core::remote_status::completed) {
            auto res = co_await client.request(http::verb::get, response_url, std::string(),
                                               headers, 8u << 20);
            if (res.how != http_outcome::transport::ok || res.status != 200)
                abort_for(res);
            else
                finish("completed");
            co_return;
        }
        if (s == klingd::core::remote_status::failed) {
            finish("failed");
            co_return;
        }
    }
    finish("timed_out");
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"sdk-baseline: the Segmind Python SDK's polling policy, for benchmarks"};
    std::string base, ca, jobs_file;
    double scale = 1, deadline = 600;
    int connections = 64;
    app.add_option("--base-url", base)->required();
    app.add_option("--ca-file", ca);
    app.add_option("--jobs", jobs_file)->required();
    app.add_option("--scale", scale);
    app.add_option("--deadline-s", deadline, "API seconds a wait may take (the SDK's 600)");
    app.add_option("--connections", connections, "keep-alive connections kept per host");
    CLI11_PARSE(app, argc, argv);
    const char* key = std::getenv("SEGMIND_API_KEY");
    if (!key) {
        std::fputs("sdk-baseline: set SEGMIND_API_KEY\n", stderr);
        return 2;
    }
    std::ifstream in(jobs_file);
    std::stringstream text;
    text << in.rdbuf();
    auto jobs = json::parse(text.str()).as_array();

    asio::io_context io(1);
    auto tls = klingd::tls::make_client_context(ca);
    klingd::daemon::client_options opts;
    opts.max_idle_per_origin = static_cast<std::size_t>(connections);
    klingd::daemon::http_client client(io.get_executor(), tls, opts);
    outcome_counts counts;
    for (auto& j : jobs) {
        asio::co_spawn(io,
                       run_job(io, client, base, key, std::string(j.at("model").as_string()),
                               json::serialize(j.at("params")), scale, deadline, counts),
                       asio::detached);
    }
    io.run();
    json::object out;
    for (auto& [k, v] : counts.by_outcome)
        out[k] = v;
    std::puts(json::serialize(out).c_str());
    return 0;
}
