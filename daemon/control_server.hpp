// The control socket: HTTP/1.1 over a Unix socket created with socket_mode.
// Each connection reads, dispatches to handle_request, writes; with limits on
// header and body size and a read timeout so that a slow or hostile client
// cannot hold the daemon.
#pragma once

#include "config/settings.hpp"
#include "daemon/engine.hpp"
#include "daemon/event_hub.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <optional>

namespace klingd::daemon {

struct control_limits {
    std::size_t header_bytes = 16 * 1024;
    std::size_t body_bytes = (1u << 20) + 4096; // a job file (spool.max_file_bytes) and some
    std::chrono::milliseconds read_timeout{10000};
    std::size_t max_connections = 64;   // request connections
    std::size_t max_event_streams = 32; // GET /v1/events, apart: they stay open
};

class control_server {
public:
    control_server(boost::asio::io_context& io, const config::settings& s, engine& e,
                   event_hub& events, control_limits limits = {});
    ~control_server();

    // Creates the socket (replacing a stale one). Throws std::runtime_error when
    // the path is taken by another file or by a running daemon.
    void start();
    void stop();

private:
    boost::asio::awaitable<void> accept_loop();
    boost::asio::awaitable<void> session(boost::asio::local::stream_protocol::socket sock);
    // Ends a connection after an early answer without destroying that answer.
    boost::asio::awaitable<void>
    linger_close(boost::beast::basic_stream<boost::asio::local::stream_protocol>& stream);
    // GET /v1/events: job changes as NDJSON lines until the client goes away.
    template <typename Stream>
    boost::asio::awaitable<void> stream_events(Stream& stream, unsigned version,
                                               std::string job_filter);

    boost::asio::io_context& io_;
    const config::settings& settings_;
    engine& engine_;
    event_hub& events_;
    control_limits limits_;
    std::optional<boost::asio::local::stream_protocol::acceptor> acceptor_;
    std::size_t sessions_ = 0; // request connections (a stream leaves their count)
    std::size_t streams_ = 0;
};

} // namespace klingd::daemon
