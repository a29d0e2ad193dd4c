// Fuzz target: the control socket's request handling. The input is what a
// client writes to the socket: raw HTTP/1.1 bytes, parsed with Beast's request
// parser under the server's header and body limits (control_server.cpp), each
// complete request handed to daemon::route_request with a real engine on a real
// SQLite database. Up to eight pipelined requests per input, as on a keep-alive
// connection, so that a POST /v1/jobs can be followed by a GET, cancel or retry.
//
// The engine is built once, on a database in a private temporary folder, with
// base_url https://127.0.0.1:1; it is never started, so nothing is sent. It is
// rebuilt on a fresh database every 200 accepted jobs to keep runs fast.
//
// Every answer must be a complete HTTP response whose JSON parses, errors being
// {"error": "non-empty"}; an accepted job must then be found; the API key never
// appears in an answer. KLINGD_FUZZ_VERBOSE=1 prints each request and answer.
//
// Finding fixed, now seeds (fuzz/corpus/fuzz_control_request/finding-*): error
// messages quoted the request's bytes and cut job file values at a byte count, so
// an answer could carry invalid UTF-8. Answers are parsed as strict JSON.
#include "config/settings.hpp"
#include "daemon/control_api.hpp"
#include "daemon/engine.hpp"
#include "daemon/http_client.hpp"
#include "daemon/job_json.hpp"
#include "runtime/log.hpp"
#include "storage/sqlite_repository.hpp"
#include "tests/support/await.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json.hpp>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <unistd.h>

namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace json = boost::json;
namespace fs = std::filesystem;
using namespace klingd;

constexpr std::string_view api_key = "fuzz-control-key-8d2e61f0b7";
constexpr std::uint64_t jobs_per_database = 200;
constexpr int requests_per_input = 8;

[[noreturn]] void violated(const char* what, std::string_view detail = {}) {
    std::fprintf(stderr, "fuzz_control_request: invariant violated: %s\n%.*s\n", what,
                 static_cast<int>(detail.size()), detail.data());
    __builtin_trap();
}

void check(bool ok, const char* what, std::string_view detail = {}) {
    if (!ok)
        violated(what, detail);
}

// One daemon's worth of state, minus the sockets: settings, database, engine.
struct world {
    std::string dir;
    config::settings settings;
    asio::io_context io{1};
    asio::ssl::context tls{asio::ssl::context::tls_client};
    std::optional<daemon::http_client> client;
    std::optional<storage::sqlite_repository> store;
    daemon::system_clock clock;
    std::optional<daemon::engine> engine;
    std::uint64_t events = 0;

    world() {
        log::set_level(log::level::error); // the log would drown the fuzzer's own output
        std::string tmpl = (fs::temp_directory_path() / "klingd-fuzz-control.XXXXXX").string();
        if (!::mkdtemp(tmpl.data()))
            std::abort();
        dir = tmpl;
        settings.source_path = dir + "/klingd.toml";
        settings.api.base_url = "https://127.0.0.1:1";
        settings.api.scheme = "https";
        settings.api.host = "127.0.0.1";
        settings.api.port = 1;
        settings.api_key = config::secret(std::string(api_key));
        settings.api_key_source = "$SEGMIND_API_KEY";
        settings.storage.database = dir + "/klingd.db";
        settings.spool.directory = dir + "/spool";
        settings.output.directory = dir + "/output";
        settings.control.socket = dir + "/klingd.sock";
        daemon::client_options opts;
        opts.timeout = std::chrono::milliseconds(1000);
        client.emplace(io.get_executor(), tls, opts);
        open();
    }
    ~world() {
        close();
        std::error_code ec;
        fs::remove_all(dir, ec);
    }

    void open() {
        // Durability is not under test here; fsync per commit would be most of the run time.
        store.emplace(settings.storage.database, storage::sqlite_tuning{.fsync = false});
        engine.emplace(io, settings, *store, *client, clock);
        engine->on_change = [this](const core::job& j, const std::string& note) {
            events += daemon::event_line(j, note, j.updated_at).size();
        };
    }
    void close() {
        engine.reset();
        store.reset();
        for (auto suffix : {"", "-wal", "-shm"})
            ::unlink((settings.storage.database + suffix).c_str());
    }
    void renew_if_full() {
        if (engine->stats().intake_accepted >= jobs_per_database) {
            close();
            open();
        }
    }
};

// Built at the first input; removed (folder and database) at exit.
world& the_world() {
    static world w;
    return w;
}

std::string serialize(const daemon::control_response& res) {
    std::ostringstream out;
    out << res;
    return out.str();
}

std::optional<json::value> parse_json(std::string_view body) {
    boost::system::error_code ec;
    json::parse_options opts;
    opts.max_depth = 64;
    json::value v = json::parse(body, ec, {}, opts);
    if (ec)
        return std::nullopt;
    return v;
}

std::string string_field(const json::value& v, std::string_view key) {
    if (!v.is_object())
        return {};
    auto it = v.as_object().find(key);
    if (it == v.as_object().end() || !it->value().is_string())
        return {};
    return std::string(it->value().as_string());
}

void check_response(const daemon::control_request& req, const daemon::control_response& res,
                    daemon::engine& e, std::string_view input) {
    unsigned code = res.result_int();
    check(code >= 200 && code <= 599, "the status is 2xx to 5xx");
    check(res.version() == req.version(), "the answer has the request's HTTP version");
    auto length = res[http::field::content_length];
    check(length == std::to_string(res.body().size()), "Content-Length is the body's size", length);
    check(!res.body().empty(), "every answer has a body");
    std::string wire = serialize(res);
    check(wire.size() > res.body().size(), "the answer serializes");
    if (input.find(api_key) == std::string_view::npos)
        check(wire.find(api_key) == std::string::npos, "an answer never shows the API key", wire);

    std::string_view type = res[http::field::content_type];
    if (type != "application/json") {
        check(code == 200 && type.starts_with("text/plain"),
              "only /metrics answers in something other than JSON", type);
        return;
    }
    auto body = parse_json(res.body());
    check(body.has_value(), "a JSON answer parses", res.body());
    if (code >= 400) {
        check(!string_field(*body, "error").empty(), "an error answer is {\"error\": \"...\"}",
              res.body());
        return;
    }
    // A job that was accepted (201) or already there (200) is found under its id.
    if (req.method() == http::verb::post && std::string_view(req.target()) == "/v1/jobs") {
        std::string id = string_field(*body, "id");
        check(!id.empty(), "POST /v1/jobs answers with the job", res.body());
        auto found = test::await(the_world().io, e.find(id));
        check(found && *found, "an accepted job is found", id);
    }
}

// Feeds bytes to the parser as the server's read loop does; returns the bytes
// used. ec is set when the request is malformed or over a limit.
std::size_t feed(http::request_parser<http::string_body>& p, std::string_view bytes,
                 boost::system::error_code& ec) {
    std::size_t used = 0;
    while (!p.is_done() && used < bytes.size()) {
        std::size_t n = p.put(asio::buffer(bytes.data() + used, bytes.size() - used), ec);
        if (ec == http::error::need_more) {
            ec = {};
            break; // the server would wait for more bytes, then time out
        }
        if (ec)
            return used;
        used += n;
        if (n == 0)
            break;
    }
    return used;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    world& w = the_world();
    w.renew_if_full();
    daemon::engine& e = *w.engine;
    // The server's limits: control_limits' header size, and main.cpp's body size.
    const std::uint32_t header_limit = 16 * 1024;
    const std::uint64_t body_limit = w.settings.spool.max_file_bytes + 4096;
    if (size > header_limit + body_limit + 4096)
        return 0;
    std::string_view input(reinterpret_cast<const char*>(data), size);
    daemon::peer_info peer{4242, 1000, 1000};
    static const bool verbose = std::getenv("KLINGD_FUZZ_VERBOSE") != nullptr;

    std::string_view rest = input;
    for (int i = 0; i < requests_per_input && !rest.empty(); ++i) {
        http::request_parser<http::string_body> parser;
        parser.header_limit(header_limit);
        parser.body_limit(body_limit);
        parser.eager(true);
        boost::system::error_code ec;
        std::size_t used = feed(parser, rest, ec);
        if (ec) {
            // The server answers with an error and closes the connection.
            auto res = daemon::error_response(11, http::status::bad_request,
                                              "bad request: " + ec.message());
            check(!serialize(res).empty(), "the error answer serializes");
            break;
        }
        if (!parser.is_done())
            break; // incomplete: the server's read times out and drops it
        rest.remove_prefix(used);
        daemon::control_request req = parser.release();
        std::string_view target = req.target();
        auto outcome = test::await(w.io, daemon::route_request(req, e, peer));
        if (std::holds_alternative<daemon::event_stream>(outcome))
            break; // the event stream is the server's to write
        daemon::control_response res = std::move(std::get<daemon::control_response>(outcome));
        if (verbose)
            std::fprintf(stderr, "%s %s -> %u %.200s\n", std::string(req.method_string()).c_str(),
                         std::string(target).c_str(), res.result_int(), res.body().c_str());
        check_response(req, res, e, input);
        if (!req.keep_alive())
            break;
    }
    return 0;
}
