// The running daemon: every part built in order (database, TLS, HTTP client,
// clock, engine, event hub, control socket, spool, systemd notifier) on one
// io_context thread, with signal handling, reload and shutdown as co_await loops.
#pragma once

#include "config/settings.hpp"
#include "daemon/clock.hpp"
#include "daemon/control_server.hpp"
#include "daemon/engine.hpp"
#include "daemon/event_hub.hpp"
#include "daemon/hooks.hpp"
#include "daemon/http_client.hpp"
#include "daemon/metrics_server.hpp"
#include "daemon/service_notifier.hpp"
#include "daemon/spool.hpp"
#include "runtime/file_lock.hpp"
#include "storage/pg_repository.hpp"
#include "storage/sqlite_repository.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

namespace klingd::daemon {

// Why the daemon cannot start, with the exit status to give.
struct start_failure : std::runtime_error {
    start_failure(int code, const std::string& what) : std::runtime_error(what), exit_code(code) {}
    int exit_code;
};

class application {
public:
    // s is the live configuration: a reload updates what may change in place. Throws
    // start_failure when the database or the TLS set-up cannot be used.
    application(config::settings& s, std::string config_path);
    ~application();
    // Runs until SIGTERM or SIGINT; the exit status (start_failure's when a part cannot start).
    int run();

private:
    // An io_context whose pending operations (suspended coroutines) can be destroyed
    // while the objects they point back to still exist, instead of after them.
    struct io_context : boost::asio::io_context {
        using boost::asio::io_context::io_context;
        void drop_pending() { shutdown(); }
    };

    // Starts the parts in order; a failure ends run() with exit status 1.
    boost::asio::awaitable<void> start_up();
    boost::asio::awaitable<void> stop_on_signal();
    boost::asio::awaitable<void> reload_on_hup();
    void reload();

    int exit_code_ = 0;

    config::settings& settings_;
    std::string config_path_;
    io_context io_{1};
    std::optional<runtime::file_lock> db_lock_; // SQLite: one klingd per database
    std::unique_ptr<storage::job_repository> store_;
    storage::cluster_store* cluster_ = nullptr; // the PostgreSQL store, in a cluster
    boost::asio::ssl::context tls_;
    http_client client_;
    system_clock clock_;
    engine engine_;
    hook_runner hooks_;
    event_hub events_;
    control_server control_;
    metrics_server metrics_;
    spool spool_;
    service_notifier notifier_;
    // Made with the application, so no signal finds its default action once klingd runs.
    boost::asio::signal_set stop_signals_;
    boost::asio::signal_set reload_signals_;
    boost::asio::steady_timer housekeeping_timer_;
    boost::asio::steady_timer forecast_timer_;
};

} // namespace klingd::daemon
