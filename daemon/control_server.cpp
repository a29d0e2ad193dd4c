// Socket creation with the configured mode, and the per-connection loop.
#include "daemon/control_server.hpp"

#include "daemon/control_api.hpp"
#include "runtime/log.hpp"

#include <array>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <stdexcept>
#include <sys/socket.h>
#include <sys/stat.h>

namespace klingd::daemon {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using local = asio::local::stream_protocol;

control_server::control_server(asio::io_context& io, const config::settings& s, engine& e,
                               event_hub& events, control_limits limits)
    : io_(io), settings_(s), engine_(e), events_(events), limits_(limits) {}

control_server::~control_server() {
    stop();
}

void control_server::start() {
    const std::string& path = settings_.control.socket;
    namespace fs = std::filesystem;
    // A folder made here is for the service (and its group) only; RuntimeDirectory= makes it under
    // systemd.
    auto parent = fs::path(path).parent_path();
    std::error_code fec;
    if (!fs::exists(parent, fec) && fs::create_directories(parent, fec))
        fs::permissions(parent,
                        fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec, fec);
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            throw std::runtime_error(
                fmt::format("{} exists and is not a socket; refusing to replace it", path));
        local::socket probe(io_);
        boost::system::error_code ec;
        probe.connect(local::endpoint(path), ec);
        if (!ec)
            throw std::runtime_error(
                fmt::format("another process (klingd?) is listening on {}", path));
        ::unlink(path.c_str());
    }
    acceptor_.emplace(io_);
    acceptor_->open(local());
    // Bind with no permissions for others at all, then set the configured mode.
    mode_t old = ::umask(0177);
    boost::system::error_code ec;
    acceptor_->bind(local::endpoint(path), ec);
    ::umask(old);
    if (ec)
        throw std::runtime_error(
            fmt::format("cannot create the control socket {}: {}", path, ec.message()));
    if (::chmod(path.c_str(), settings_.control.socket_mode) != 0)
        throw std::runtime_error(fmt::format("cannot set mode {:04o} on {}: {}",
                                             settings_.control.socket_mode, path,
                                             std::strerror(errno)));
    acceptor_->listen(asio::socket_base::max_listen_connections);
    asio::co_spawn(io_, accept_loop(), asio::detached);
    log::info("control socket {} (mode {:04o})", path, settings_.control.socket_mode);
}

void control_server::stop() {
    if (acceptor_ && acceptor_->is_open()) {
        boost::system::error_code ec;
        acceptor_->close(ec);
        ::unlink(settings_.control.socket.c_str());
    }
}

asio::awaitable<void> control_server::accept_loop() {
    while (acceptor_ && acceptor_->is_open()) {
        boost::system::error_code ec;
        auto sock = co_await acceptor_->async_accept(asio::redirect_error(asio::use_awaitable, ec));
        if (ec) {
            if (ec == asio::error::operation_aborted || !acceptor_->is_open())
                co_return;
            log::warning("control: accept failed: {}; trying again in 100 ms", ec.message());
            // Out of file descriptors (EMFILE) fails at once, every time: not a busy loop.
            asio::steady_timer pause(io_, std::chrono::milliseconds(100));
            co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            continue;
        }
        if (sessions_ >= limits_.max_connections) {
            log::warning("control: {} connections open; refusing another", sessions_);
            continue; // closes sock
        }
        asio::co_spawn(io_, session(std::move(sock)), asio::detached);
    }
}

namespace {

// The peer's gid and supplementary groups as the kernel gave them to its process when
// it connected (SO_PEERGROUPS); its gid alone when the socket cannot tell them (never
// the user database's, which may hold groups the process dropped).
std::vector<gid_t> peer_groups(int fd, gid_t gid) {
    std::vector<gid_t> groups(64);
    for (int tries = 0; tries < 2; ++tries) {
        auto len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
        if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) == 0) {
            groups.resize(len / sizeof(gid_t));
            groups.push_back(gid);
            return groups;
        }
        if (errno != ERANGE)
            break;
        groups.resize(len / sizeof(gid_t) + 1); // len says how much is needed
    }
    return {gid};
}

} // namespace

asio::awaitable<void> control_server::session(local::socket sock) {
    ++sessions_;
    struct guard {
        std::size_t& n;
        ~guard() { --n; }
    } g{sessions_};

    peer_info peer;
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (::getsockopt(sock.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
        peer.pid = cred.pid;
        peer.uid = static_cast<int>(cred.uid);
        peer.gid = static_cast<int>(cred.gid);
        peer.groups = peer_groups(sock.native_handle(), cred.gid);
    }
    beast::basic_stream<local> stream(std::move(sock));
    beast::flat_buffer buffer(limits_.header_bytes + 1024);
    for (;;) {
        http::request_parser<http::string_body> parser;
        parser.header_limit(static_cast<std::uint32_t>(limits_.header_bytes));
        parser.body_limit(limits_.body_bytes);
        boost::system::error_code ec;
        stream.expires_after(limits_.read_timeout);
        co_await http::async_read(stream, buffer, parser,
                                  asio::redirect_error(asio::use_awaitable, ec));
        if (ec == http::error::end_of_stream || ec == asio::error::eof ||
            ec == asio::error::connection_reset)
            co_return;
        if (ec == beast::error::timeout)
            co_return; // a half-sent request: drop it
        control_response res;
        bool close = false;
        if (ec) {
            auto status = ec == http::error::body_limit ? http::status::payload_too_large
                          : ec == http::error::header_limit
                              ? http::status::request_header_fields_too_large
                              : http::status::bad_request;
            res = error_response(11, status, fmt::format("bad request: {}", ec.message()));
            close = true;
        } else {
            auto req = parser.release();
            auto outcome = co_await route_request(req, engine_, peer);
            if (auto* s = std::get_if<event_stream>(&outcome)) {
                if (streams_ < limits_.max_event_streams) {
                    // Streams stay open: they count apart, so watchers never take the
                    // connections requests need.
                    struct stream_count {
                        control_server& server;
                        stream_count(control_server& sv) : server(sv) {
                            --server.sessions_;
                            ++server.streams_;
                        }
                        ~stream_count() {
                            --server.streams_;
                            ++server.sessions_;
                        }
                    } counted{*this};
                    co_await stream_events(stream, req.version(), std::move(s->job_filter));
                    co_return;
                }
                res = error_response(
                    req.version(), http::status::service_unavailable,
                    fmt::format("{} event streams are open, the most klingd keeps; close one "
                                "(klingctl watch, klingctl wait) and try again",
                                streams_));
                close = true;
            } else {
                res = std::move(std::get<control_response>(outcome));
                close = !req.keep_alive();
            }
        }
        res.keep_alive(!close);
        stream.expires_after(limits_.read_timeout);
        co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
        if (ec || close) {
            co_await linger_close(stream);
            co_return;
        }
    }
}

// Closes the way HTTP servers do after an answer that ends a connection early: the
// write side is shut so the client sees the whole answer and its end, then what the
// client still sends is read and dropped for a moment (closing with unread bytes
// would reset the connection and could destroy the answer before the client reads it).
asio::awaitable<void> control_server::linger_close(beast::basic_stream<local>& stream) {
    boost::system::error_code ec;
    stream.socket().shutdown(local::socket::shutdown_send, ec);
    if (ec)
        co_return;
    constexpr std::size_t max_drain = 1 << 20;
    std::array<char, 16384> scratch;
    std::size_t drained = 0;
    stream.expires_after(std::chrono::milliseconds(500));
    while (!ec && drained < max_drain)
        drained += co_await stream.async_read_some(asio::buffer(scratch),
                                                   asio::redirect_error(asio::use_awaitable, ec));
}

template <typename Stream>
asio::awaitable<void> control_server::stream_events(Stream& stream, unsigned version,
                                                    std::string job_filter) {
    auto sub = events_.subscribe(io_.get_executor(), std::move(job_filter));
    // The header, then NDJSON lines until the connection ends (no length: it closes).
    http::response<http::empty_body> head{http::status::ok, version};
    head.set(http::field::content_type, "application/x-ndjson");
    head.set(http::field::cache_control, "no-store");
    head.keep_alive(false);
    http::response_serializer<http::empty_body> sr{head};
    boost::system::error_code ec;
    stream.expires_after(limits_.read_timeout);
    co_await http::async_write_header(stream, sr, asio::redirect_error(asio::use_awaitable, ec));
    // A watcher sends nothing after its request: the socket turning readable means it
    // closed (or broke the protocol), and its slot is freed at once, not at a heartbeat.
    auto gone = std::make_shared<bool>(false);
    stream.socket().async_wait(local::socket::wait_read,
                               [gone, sub](const boost::system::error_code&) {
                                   *gone = true;
                                   sub->wake.cancel();
                               });
    std::string out;
    while (!ec && !*gone) {
        if (!out.empty()) {
            stream.expires_after(limits_.read_timeout);
            co_await asio::async_write(stream, asio::buffer(out),
                                       asio::redirect_error(asio::use_awaitable, ec));
            out.clear();
            if (ec)
                break;
        }
        if (sub->overflowed) {
            out = "{\"type\":\"overflow\",\"error\":\"too far behind; reconnect\"}\n";
            stream.expires_after(limits_.read_timeout);
            co_await asio::async_write(stream, asio::buffer(out),
                                       asio::redirect_error(asio::use_awaitable, ec));
            break;
        }
        if (sub->queue.empty() && !*gone) {
            sub->wake.expires_after(std::chrono::seconds(15));
            boost::system::error_code wec;
            co_await sub->wake.async_wait(asio::redirect_error(asio::use_awaitable, wec));
            if (*gone)
                break;
            if (!wec && sub->queue.empty())
                out = "{\"type\":\"heartbeat\"}\n"; // also finds clients that went away
        }
        while (!sub->queue.empty()) {
            out += sub->queue.front();
            sub->queue.pop_front();
        }
    }
    boost::system::error_code sec;
    stream.socket().shutdown(local::socket::shutdown_both, sec);
}

} // namespace klingd::daemon
