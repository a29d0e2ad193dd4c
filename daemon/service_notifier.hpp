// Talks to systemd (sd_notify): READY=1 once the daemon serves, STATUS= lines
// with job counts, WATCHDOG=1 at half the watchdog interval sent from the event
// loop itself (a stuck loop stops the pings and gets restarted), RELOADING=1 /
// READY=1 around a reload, STOPPING=1 on the way out. Does nothing without
// $NOTIFY_SOCKET.
#pragma once

#include "daemon/engine.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>

namespace klingd::daemon {

class service_notifier {
public:
    service_notifier(boost::asio::io_context& io, engine& e);

    boost::asio::awaitable<void> ready();
    void reloading();
    void stopping();
    // Starts the watchdog pings (when systemd asked for them) and the periodic status.
    void start(std::chrono::milliseconds status_every = std::chrono::seconds(10));
    boost::asio::awaitable<std::string> status_line();

private:
    boost::asio::io_context& io_;
    engine& engine_;
    bool stopping_ = false;
};

} // namespace klingd::daemon
