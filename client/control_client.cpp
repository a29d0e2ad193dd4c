// Requests and event streams over klingd's Unix socket.
#include "client/control_client.hpp"

#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/url/url.hpp>
#include <fmt/format.h>

namespace klingd::client {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using local = asio::local::stream_protocol;

namespace {

core::error unreachable(const std::string& socket, const boost::system::error_code& ec,
                        bool connected) {
    namespace errc = boost::system::errc;
    if (connected)
        return {core::errc::unreachable,
                fmt::format("klingd at {} did not answer: {} (busy or stuck? see `journalctl "
                            "-u klingd`)",
                            socket, ec.message())};
    std::string hint;
    if (ec == errc::no_such_file_or_directory)
        hint = fmt::format("no daemon at {}: is klingd running? try `systemctl status klingd` "
                           "(or name its socket: --socket PATH or $KLINGD_SOCKET)",
                           socket);
    else if (ec == errc::permission_denied)
        hint = fmt::format("permission denied on {}: is your user in the socket's group? "
                           "(`sudo usermod -aG klingd $USER`, then log in again)",
                           socket);
    else if (ec == errc::connection_refused)
        hint = fmt::format("nothing answers at {} (a socket left behind: is klingd running? "
                           "try `systemctl status klingd`)",
                           socket);
    else
        hint = fmt::format("cannot reach klingd at {}: {} (is klingd running? try `systemctl "
                           "status klingd`; --socket PATH or $KLINGD_SOCKET name another socket)",
                           socket, ec.message());
    return {core::errc::unreachable, hint};
}

http::request<http::string_body> make_request(http::verb method, std::string_view target,
                                              std::string_view body) {
    http::request<http::string_body> req{method, target, 11};
    req.set(http::field::host, "localhost");
    req.set(http::field::user_agent, "klingctl");
    if (!body.empty()) {
        req.set(http::field::content_type, "application/json");
        req.body() = body;
    }
    req.prepare_payload();
    return req;
}

} // namespace

std::string field(const json::value& v, std::string_view key) {
    if (!v.is_object())
        return {};
    auto it = v.as_object().find(key);
    if (it == v.as_object().end() || it->value().is_null())
        return {};
    return it->value().is_string() ? std::string(it->value().as_string())
                                   : json::serialize(it->value());
}

std::string job_target(std::string_view id, std::string_view action) {
    boost::urls::url u;
    auto segs = u.segments();
    segs.push_back("v1");
    segs.push_back("jobs");
    segs.push_back(id);
    if (!action.empty())
        segs.push_back(action);
    u.set_path_absolute(true);
    return std::string(u.buffer());
}

std::string with_query(std::string_view path,
                       const std::vector<std::pair<std::string_view, std::string_view>>& params) {
    boost::urls::url u;
    u.set_path(path);
    for (auto& [k, v] : params)
        if (!v.empty())
            u.params().append({k, v});
    return std::string(u.buffer());
}

control_client::control_client(std::string socket, std::chrono::milliseconds timeout)
    : socket_(std::move(socket)), timeout_(timeout) {}

core::result<reply> control_client::call(http::verb method, std::string_view target,
                                         std::string_view body,
                                         std::optional<std::chrono::milliseconds> timeout) {
    asio::io_context io;
    beast::basic_stream<local> stream(io);
    boost::system::error_code ec;
    stream.socket().connect(local::endpoint(socket_), ec);
    if (ec)
        return unreachable(socket_, ec, false);
    auto req = make_request(method, target, body);
    beast::flat_buffer buf;
    http::response_parser<http::string_body> parser;
    parser.body_limit(512u << 20);
    stream.expires_after(timeout.value_or(timeout_));
    http::async_write(stream, req, [&](boost::system::error_code wec, std::size_t) {
        if (wec) {
            ec = wec;
            return;
        }
        http::async_read(stream, buf, parser,
                         [&](boost::system::error_code rec, std::size_t) { ec = rec; });
    });
    io.run();
    if (ec)
        return unreachable(socket_, ec, true);
    reply r;
    r.status = static_cast<int>(parser.get().result_int());
    r.text = parser.get().body();
    boost::system::error_code jec;
    r.body = json::parse(r.text, jec);
    return r;
}

struct event_subscription::impl {
    asio::io_context io;
    local::socket sock{io};
    std::string buffer;

    // Reads more bytes within timeout: the count, 0 on timeout, or the error.
    boost::system::error_code read_some(std::chrono::milliseconds timeout, std::size_t& n) {
        char chunk[8192];
        asio::steady_timer timer(io, timeout);
        boost::system::error_code ec;
        bool timed_out = false;
        n = 0;
        sock.async_read_some(asio::buffer(chunk), [&](boost::system::error_code e, std::size_t k) {
            ec = e;
            n = k;
            timer.cancel();
        });
        timer.async_wait([&](boost::system::error_code e) {
            if (!e) {
                timed_out = true;
                sock.cancel();
            }
        });
        io.restart();
        io.run();
        buffer.append(chunk, n);
        if (timed_out && ec == asio::error::operation_aborted)
            return {};
        return ec;
    }
};

event_subscription::event_subscription() : impl_(std::make_unique<impl>()) {}
event_subscription::event_subscription(event_subscription&&) noexcept = default;
event_subscription& event_subscription::operator=(event_subscription&&) noexcept = default;
event_subscription::~event_subscription() = default;

core::result<event_subscription> event_subscription::open(const std::string& socket,
                                                          std::string_view job_filter,
                                                          std::chrono::milliseconds timeout) {
    event_subscription s;
    auto& i = *s.impl_;
    boost::system::error_code ec;
    i.sock.connect(local::endpoint(socket), ec);
    if (ec)
        return unreachable(socket, ec, false);
    auto target = with_query("/v1/events", {{"id", job_filter}});
    auto req = make_request(http::verb::get, target, {});
    http::write(i.sock, req, ec);
    auto deadline = std::chrono::steady_clock::now() + timeout;
    std::size_t end;
    while (!ec && (end = i.buffer.find("\r\n\r\n")) == std::string::npos) {
        auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline -
                                                                 std::chrono::steady_clock::now());
        std::size_t n = 0;
        ec = left.count() <= 0 ? boost::system::error_code(asio::error::timed_out)
                               : i.read_some(left, n); // a timeout reads 0 and loops to the check
    }
    if (ec)
        return unreachable(socket, ec, true);
    auto status_line = i.buffer.substr(0, i.buffer.find("\r\n"));
    if (!status_line.starts_with("HTTP/1.1 200")) {
        auto body = i.buffer.substr(end + 4);
        return core::error(status_line.starts_with("HTTP/1.1 503") ? core::errc::streams_full
                                                                   : core::errc::bad_request,
                           fmt::format("klingd refused the event stream: {} {}", status_line,
                                       body.substr(0, 300)));
    }
    i.buffer.erase(0, end + 4);
    return s;
}

core::result<std::optional<json::value>>
event_subscription::next(std::chrono::milliseconds timeout) {
    auto& i = *impl_;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        if (auto nl = i.buffer.find('\n'); nl != std::string::npos) {
            std::string line = i.buffer.substr(0, nl);
            i.buffer.erase(0, nl + 1);
            boost::system::error_code jec;
            auto v = json::parse(line, jec);
            if (jec || !v.is_object())
                continue; // not a line of the stream's kind: skip it
            return std::optional<json::value>(std::move(v));
        }
        auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline -
                                                                 std::chrono::steady_clock::now());
        if (left.count() <= 0)
            return std::optional<json::value>();
        std::size_t n = 0;
        if (auto ec = i.read_some(left, n))
            return core::error(core::errc::stream_ended, ec.message());
    }
}

} // namespace klingd::client
