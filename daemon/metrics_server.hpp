// [metrics] listen: a small TCP listener for Prometheus, which cannot scrape a Unix
// socket. It serves GET /metrics and GET /v1/health exactly as the control socket does,
// and nothing else (404): the control API (jobs, pause, cancel) stays on the socket and its
// permissions. One request a connection, bounded in size, time and number.
#pragma once

#include "config/settings.hpp"
#include "daemon/engine.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <optional>

namespace klingd::daemon {

class metrics_server {
public:
    metrics_server(boost::asio::io_context& io, const config::settings& s, engine& e);
    ~metrics_server();

    // Listens on settings' metrics.listen, if set. Throws std::runtime_error when the
    // address cannot be bound (taken, not this host's), saying which.
    void start();
    void stop();
    // The port listened on (the one bound when metrics.listen asked for port 0), or 0.
    std::uint16_t port() const { return port_; }

    static constexpr std::size_t max_connections = 16;

private:
    boost::asio::awaitable<void> accept_loop();
    boost::asio::awaitable<void> session(boost::asio::ip::tcp::socket sock);

    boost::asio::io_context& io_;
    const config::settings& settings_;
    engine& engine_;
    std::optional<boost::asio::ip::tcp::acceptor> acceptor_;
    std::uint16_t port_ = 0;
    std::size_t sessions_ = 0;
};

} // namespace klingd::daemon
