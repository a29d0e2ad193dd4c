// sd_notify messages and the timers that send them.
#include "daemon/service_notifier.hpp"

#include "runtime/log.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <fmt/format.h>
#include <systemd/sd-daemon.h>

namespace klingd::daemon {

namespace asio = boost::asio;

service_notifier::service_notifier(asio::io_context& io, engine& e) : io_(io), engine_(e) {}

asio::awaitable<std::string> service_notifier::status_line() {
    auto counts = co_await engine_.count_by_state();
    if (!counts)
        co_return fmt::format("the database does not answer: {}", counts.error().message());
    auto n = [&](core::job_state st) {
        auto it = counts->find(std::string(core::to_string(st)));
        return it == counts->end() ? 0 : it->second;
    };
    std::string blocked = engine_.blocked_reason();
    co_return fmt::format("{} pending, {} in flight, {} completed, {} failed, {} expired; {:.0f} "
                          "requests/min allowed{}",
                          n(core::job_state::pending), engine_.in_flight(),
                          n(core::job_state::completed), n(core::job_state::failed),
                          n(core::job_state::expired), engine_.budget().allowed_rpm(),
                          blocked.empty() ? "" : "; " + blocked);
}

asio::awaitable<void> service_notifier::ready() {
    auto status = co_await status_line();
    sd_notifyf(0, "READY=1\nSTATUS=%s", status.c_str());
}

void service_notifier::reloading() {
    sd_notify(0, "RELOADING=1");
}

void service_notifier::stopping() {
    stopping_ = true;
    sd_notify(0, "STOPPING=1\nSTATUS=stopping");
}

void service_notifier::start(std::chrono::milliseconds status_every) {
    std::uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
        auto every = std::chrono::microseconds(usec / 2);
        log::info("systemd watchdog: pinging every {} ms", every.count() / 1000);
        asio::co_spawn(
            io_,
            [this, every]() -> asio::awaitable<void> {
                asio::steady_timer t(io_);
                while (true) {
                    sd_notify(0, "WATCHDOG=1");
                    t.expires_after(every);
                    boost::system::error_code ec;
                    co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
                }
            },
            asio::detached);
    }
    asio::co_spawn(
        io_,
        [this, status_every]() -> asio::awaitable<void> {
            asio::steady_timer t(io_);
            while (!stopping_) {
                t.expires_after(status_every);
                boost::system::error_code ec;
                co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
                if (stopping_)
                    break;
                auto status = co_await status_line();
                sd_notifyf(0, "STATUS=%s", status.c_str());
            }
        },
        asio::detached);
}

} // namespace klingd::daemon
