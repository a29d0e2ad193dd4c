// segmind-sim's entry point: the command line, then the server on one
// io_context thread until SIGTERM or SIGINT.
#include "runtime/log.hpp"
#include "runtime/tls.hpp"
#include "sim/server.hpp"
#include "sim/service.hpp"

#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>

namespace {
namespace asio = boost::asio;
using asio::ip::tcp;

struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// "127.0.0.1:8443", "[::1]:0", "localhost:0". Throws usage_error when text is none of those.
tcp::endpoint parse_listen(const std::string& text) {
    auto colon = text.rfind(':');
    if (colon == std::string::npos || colon == 0)
        throw usage_error("--listen must be ADDRESS:PORT, not \"" + text + "\"");
    std::string host = text.substr(0, colon);
    std::string port = text.substr(colon + 1);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
    if (host == "localhost")
        host = "127.0.0.1";
    boost::system::error_code ec;
    auto address = asio::ip::make_address(host, ec);
    if (ec)
        throw usage_error("--listen: \"" + host + "\" is not an IP address");
    char* end = nullptr;
    unsigned long p = std::strtoul(port.c_str(), &end, 10);
    if (port.empty() || *end || p > 65535)
        throw usage_error("--listen: \"" + port + "\" is not a port number");
    return {address, static_cast<unsigned short>(p)};
}

std::string url_of(bool tls, const tcp::endpoint& ep) {
    auto host = ep.address().to_string();
    if (ep.address().is_v6())
        host = "[" + host + "]";
    return std::string(tls ? "https://" : "http://") + host + ":" + std::to_string(ep.port());
}

// Throws usage_error when the option is not MODEL=SECONDS for a known model.
void apply_median(klingd::sim::settings& s, const std::string& text) {
    auto eq = text.find('=');
    std::string model = text.substr(0, eq);
    if (eq == std::string::npos || !s.medians.count(model))
        throw usage_error("--median must be MODEL=SECONDS with MODEL kling-o1 or "
                          "kling-o1-video-to-video-edit, not \"" +
                          text + "\"");
    try {
        std::size_t used = 0;
        s.medians[model] = std::stod(text.substr(eq + 1), &used);
        if (used != text.size() - eq - 1)
            throw std::invalid_argument("trailing text");
    } catch (const std::logic_error&) {
        throw usage_error("--median " + model + ": \"" + text.substr(eq + 1) +
                          "\" is not a number");
    }
}

// Throws std::runtime_error when the file cannot be written.
void write_port_file(const std::string& path, unsigned short port) {
    std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp, std::ios::trunc);
        out << port << "\n";
        if (!out.flush())
            throw std::runtime_error("cannot write " + tmp);
    }
    std::filesystem::rename(tmp, path);
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"segmind-sim: an emulator of Segmind's v2 asynchronous API for tests and "
                 "benchmarks.\nAPI durations are in API seconds and are multiplied by "
                 "--time-scale; --slow-s is real seconds."};
    klingd::sim::settings s;
    std::string listen = "127.0.0.1:0", port_file, tls_cert, tls_key, reset_format = "iso-frac",
                limiter = "fixed";
    std::vector<std::string> medians;
    std::optional<std::uint64_t> seed;
    bool plain = false, log_requests = false;
    if (const char* k = std::getenv("SEGMIND_SIM_API_KEY"); k && *k)
        s.api_key = k;

    app.add_option("--listen", listen, "ADDRESS:PORT to listen on; port 0 picks a free port")
        ->capture_default_str();
    app.add_option("--port-file", port_file,
                   "write the port number here (atomically) once listening");
    auto* cert = app.add_option("--tls-cert", tls_cert, "server certificate chain (PEM)");
    auto* key = app.add_option("--tls-key", tls_key, "server private key (PEM)");
    auto* plain_flag = app.add_flag("--plain", plain, "serve plain HTTP instead of TLS");
    plain_flag->excludes(cert)->excludes(key);
    app.add_option("--public-url", s.public_url,
                   "base of the URLs handed out (default: the scheme://host:port listened on)");
    app.add_option("--api-key", s.api_key,
                   "the accepted x-api-key (default: $SEGMIND_SIM_API_KEY, else sim-key)");
    app.add_option("--time-scale", s.time_scale, "real seconds per API second")
        ->capture_default_str();
    app.add_option("--spread", s.spread, "sigma of the lognormal run times")->capture_default_str();
    app.add_option("--median", medians, "MODEL=SECONDS: median run time of a model (repeatable)");
    app.add_option("--queue-s", s.queue_s, "mean API seconds in QUEUED")->capture_default_str();
    app.add_option("--retention-s", s.retention_s, "API seconds a request is kept after submission")
        ->capture_default_str();
    app.add_option("--rpm", s.rpm, "requests per minute for all API calls, 0 = unlimited")
        ->capture_default_str();
    app.add_option("--limiter", limiter,
                   "how --rpm is counted: fixed (windows of a minute), sliding (any minute), "
                   "bucket (a token bucket holding 5 s of budget)")
        ->capture_default_str();
    app.add_flag("--retry-after", s.retry_after, "send Retry-After on 429 too");
    app.add_flag("--echo-key", s.echo_key,
                 "a careless API: a 401 repeats the wrong key it was sent");
    app.add_option("--reset-header-format", reset_format,
                   "x-rate-limit-reset-at-utc format: iso, iso-frac or epoch")
        ->capture_default_str();
    app.add_option("--credits", s.credits, "submits allowed, -1 = unlimited")
        ->capture_default_str();
    app.add_option("--fail-rate", s.fail_rate, "share of jobs that end FAILED");
    app.add_option("--error-rate", s.error_rate,
                   "share of API requests answered 500/502/504 before any state change");
    app.add_option("--reset-rate", s.reset_rate,
                   "share of requests whose connection is reset without an answer (half of them "
                   "after the request was processed)");
    app.add_option("--truncate-rate", s.truncate_rate,
                   "share of answers cut short: full Content-Length, half the body, then close");
    app.add_option("--slow-rate", s.slow_rate, "share of answers delayed by --slow-s");
    app.add_option("--slow-s", s.slow_s, "real seconds a slow answer is delayed");
    app.add_option("--trickle-rate", s.trickle_rate,
                   "share of media downloads sent at 1 KiB/s (512 bytes each half second)");
    app.add_option("--media-bytes-image", s.media_bytes_image, "size of image outputs")
        ->capture_default_str();
    app.add_option("--media-bytes-video", s.media_bytes_video, "size of video outputs")
        ->capture_default_str();
    app.add_option("--result-padding", s.result_padding,
                   "bytes of filler in a completed result's body (to test size limits)")
        ->capture_default_str();
    app.add_option("--upload-max-bytes", s.upload_max_bytes,
                   "largest decoded file POST /upload-asset takes (413 above)")
        ->capture_default_str();
    app.add_option("--upload-answer-key", s.upload_answer_key,
                   "where an upload's answer lists the hosted URLs: file_urls or urls")
        ->capture_default_str();
    app.add_option("--seed", seed, "seed of the random generator (default: random, logged)");
    app.add_flag("--log-requests", log_requests, "log one line per request");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : 2;
    }

    tcp::endpoint listen_ep;
    try {
        listen_ep = parse_listen(listen);
        for (auto& m : medians)
            apply_median(s, m);
        if (!klingd::sim::parse_reset_format(reset_format, s.reset_header))
            throw usage_error("--reset-header-format must be iso, iso-frac or epoch, not \"" +
                              reset_format + "\"");
        if (auto k = klingd::sim::limiter_kind_named(limiter))
            s.limiter = *k;
        else
            throw usage_error("--limiter must be fixed, sliding or bucket, not \"" + limiter +
                              "\"");
        if (!plain && (tls_cert.empty() || tls_key.empty()))
            throw usage_error("give --tls-cert and --tls-key, or --plain");
        if (auto problem = klingd::sim::check_settings(s); !problem.empty())
            throw usage_error(problem);
        if (!s.public_url.empty()) {
            while (s.public_url.ends_with('/'))
                s.public_url.pop_back();
            if (!s.public_url.starts_with("http://") && !s.public_url.starts_with("https://"))
                throw usage_error("--public-url must start with http:// or https://");
        }
    } catch (const usage_error& e) {
        std::fprintf(stderr, "segmind-sim: %s\n", e.what());
        return 2;
    }
    s.seed = seed ? *seed : std::random_device{}();

    try {
        std::optional<asio::ssl::context> tls;
        if (!plain)
            tls.emplace(klingd::tls::make_server_context(tls_cert, tls_key));
        asio::io_context ioc(1);
        klingd::sim::service svc(s);
        klingd::sim::server srv(ioc, listen_ep, tls ? &*tls : nullptr, svc, log_requests);
        auto local = srv.local_endpoint();
        if (s.public_url.empty())
            svc.set_public_url(url_of(!plain, local));
        asio::signal_set signals(ioc, SIGINT, SIGTERM);
        signals.async_wait([&](const boost::system::error_code& ec, int sig) {
            if (ec)
                return;
            klingd::log::notice("segmind-sim: signal {}, stopping", sig);
            srv.stop();
            ioc.stop();
        });
        srv.start();
        if (!port_file.empty())
            write_port_file(port_file, local.port());
        klingd::log::notice("segmind-sim: seed {}, public URL {}", s.seed,
                            svc.current().public_url);
        std::printf("segmind-sim listening on %s\n", url_of(!plain, local).c_str());
        std::fflush(stdout);
        ioc.run();
        return 0;
    } catch (const std::exception& e) {
        klingd::log::error("segmind-sim: {}", e.what());
        return 1;
    }
}
