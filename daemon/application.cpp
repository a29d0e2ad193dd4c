// Start-up, the signal loops, reload and shutdown.
#include "daemon/application.hpp"

#include "config/loader.hpp"
#include "config/reload.hpp"
#include "daemon/housekeeping.hpp"
#include "daemon/job_json.hpp"
#include "runtime/file_lock.hpp"
#include "runtime/log.hpp"
#include "runtime/tls.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <csignal>
#include <cstdlib>
#include <filesystem>

namespace klingd::daemon {

namespace asio = boost::asio;

namespace {

void apply_log_level(const config::settings& s) {
    log::level lvl;
    if (log::parse_level(s.log_level, lvl))
        log::set_level(lvl);
}

// The folders the database and the results go in; throws start_failure.
const config::settings& with_folders(const config::settings& s) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (s.storage.postgresql.empty())
        fs::create_directories(fs::path(s.storage.database).parent_path(), ec);
    fs::create_directories(s.output.directory, ec);
    if (ec)
        throw start_failure(1, fmt::format("cannot create the output folder {}: {}",
                                           s.output.directory, ec.message()));
    return s;
}

// SQLite opens here; PostgreSQL connects and migrates in start_up (on the event loop).
std::unique_ptr<storage::job_repository>
open_store(const config::settings& s, std::optional<runtime::file_lock>& lock_out) try {
    if (!s.storage.postgresql.empty())
        return std::make_unique<storage::pg_repository>(
            s.storage.postgresql, std::chrono::seconds(10), s.postgresql_password.reveal());
    // One klingd per database: a second would submit the same pending jobs. Locked before
    // it is opened: a second klingd (perhaps a newer one) must not migrate it meanwhile.
    std::string why;
    auto lock = runtime::file_lock::try_exclusive(s.storage.database, why);
    if (!lock)
        throw start_failure(1, fmt::format("cannot lock the database {} ({}): is another klingd "
                                           "running on it? (systemctl status klingd)",
                                           s.storage.database, why));
    lock_out.emplace(std::move(*lock));
    return std::make_unique<storage::sqlite_repository>(s.storage.database);
} catch (const storage::storage_error& e) {
    throw start_failure(1, fmt::format("cannot use the database: {}", e.what()));
}

storage::cluster_store* cluster_of(storage::job_repository& r) {
    return dynamic_cast<storage::cluster_store*>(&r);
}

asio::ssl::context make_tls(const std::string& ca_file) try {
    return tls::make_client_context(ca_file);
} catch (const std::exception& e) {
    throw start_failure(2, fmt::format("api.ca_file: {}", e.what()));
}

client_options client_options_of(const config::settings& s) {
    client_options o;
    o.timeout =
        std::chrono::milliseconds(static_cast<std::int64_t>(s.api.request_timeout_s * 1000));
    o.max_idle_per_origin = static_cast<std::size_t>(std::max(4, s.api.max_connections));
    return o;
}

control_limits control_limits_of(const config::settings& s) {
    control_limits l;
    l.body_bytes = s.spool.max_file_bytes + 4096;
    return l;
}

} // namespace

application::application(config::settings& s, std::string config_path)
    : settings_((apply_log_level(s), s)), config_path_(std::move(config_path)),
      store_(open_store(with_folders(s), db_lock_)), cluster_(cluster_of(*store_)),
      tls_(make_tls(s.api.ca_file)), client_(io_.get_executor(), tls_, client_options_of(s)),
      engine_(io_, s, *store_, client_, clock_, cluster_), hooks_(io_, s, *store_, tls_, clock_),
      control_(io_, s, engine_, events_, control_limits_of(s)), metrics_(io_, s, engine_),
      spool_(io_, s, engine_), notifier_(io_, engine_), stop_signals_(io_, SIGTERM, SIGINT),
      reload_signals_(io_, SIGHUP), housekeeping_timer_(io_), forecast_timer_(io_) {
    engine_.hooks = &hooks_;
    engine_.on_change = [this](const core::job& j, const std::string& note) {
        if (core::is_terminal(j.state) && settings_.hooks.any())
            hooks_.wake();
        if (!note.empty())
            events_.publish(j.id, event_line(j, note, clock_.to_wall(j.updated_at)));
    };
    engine_.on_remote_change = [this](const core::job& j, const std::string& note,
                                      core::time_point at) {
        events_.publish(j.id, event_line(j, note, at));
    };
    engine_.on_fatal = [this](const std::string&) {
        exit_code_ = 1;
        spool_.stop();
        control_.stop();
        metrics_.stop();
        io_.stop();
    };
}

application::~application() {
    storage::pg::finish_connects(); // none posts to the loop once it is gone
    store_->finish();               // no call runs on the worker once the parts are gone
    engine_.finish_files();
    hooks_.finish();    // no command's completion is posted to the loop once it is gone
    io_.drop_pending(); // suspended coroutines refer to the parts: drop them first
}

int application::run() {
    std::signal(SIGPIPE, SIG_IGN);
    // The spool's read leases (is a writer still at a file?) are broken by SIGIO when a
    // writer opens the file at that moment; its default action would end klingd.
    std::signal(SIGIO, SIG_IGN);
    asio::co_spawn(io_, start_up(), log::exit_on_exception);
    io_.run();
    storage::pg::finish_connects();
    store_->finish();
    engine_.finish_files();
    hooks_.finish();
    io_.drop_pending();
    if (exit_code_ == 0)
        log::notice("klingd stopped");
    return exit_code_;
}

asio::awaitable<void> application::start_up() {
    try {
        if (auto opened = co_await store_->open(); !opened)
            throw std::runtime_error("cannot use the database: " + opened.error().message());
        co_await engine_.start();
        hooks_.start();
        control_.start();
        metrics_.start();
        spool_.start();
    } catch (const std::exception& e) {
        log::error("cannot start: {}", e.what());
        exit_code_ = 1;
        io_.stop();
        co_return;
    }
    log::notice("klingd {} started: API {}, spool {}, output {}, {} requests/min, {}",
                KLINGD_VERSION, settings_.api.base_url, settings_.spool.directory,
                settings_.output.directory, settings_.api.requests_per_minute,
                cluster_ ? fmt::format("cluster node {} on PostgreSQL ({})", engine_.node_name(),
                                       static_cast<storage::pg_repository*>(store_.get())->target())
                         : fmt::format("database {}", settings_.storage.database));
    asio::co_spawn(io_, stop_on_signal(), log::exit_on_exception);
    asio::co_spawn(io_, reload_on_hup(), log::exit_on_exception);
    asio::co_spawn(io_, housekeeping_loop(engine_, housekeeping_timer_), log::exit_on_exception);
    asio::co_spawn(io_, forecast_loop(engine_, forecast_timer_), log::exit_on_exception);
    auto n = co_await spool_.scan();
    if (n > 0)
        log::info("spool: start-up scan looked at {} files", n);
    co_await notifier_.ready();
    notifier_.start();
}

// The first SIGTERM or SIGINT stops gracefully (requests in flight get a few seconds);
// a second one exits at once.
asio::awaitable<void> application::stop_on_signal() {
    auto& signals = stop_signals_;
    int sig = co_await signals.async_wait(asio::use_awaitable);
    notifier_.stopping();
    log::notice("signal {}: stopping (requests in flight get a few seconds to finish)", sig);
    spool_.stop();
    control_.stop();
    metrics_.stop();
    hooks_.stop();
    housekeeping_timer_.cancel();
    forecast_timer_.cancel();
    asio::co_spawn(
        io_,
        [this]() -> asio::awaitable<void> {
            co_await engine_.stop(std::chrono::seconds(8));
            io_.stop();
        },
        log::exit_on_exception);
    sig = co_await signals.async_wait(asio::use_awaitable);
    log::warning("second signal {}: exiting at once", sig);
    std::_Exit(1);
}

asio::awaitable<void> application::reload_on_hup() {
    for (;;) {
        co_await reload_signals_.async_wait(asio::use_awaitable);
        notifier_.reloading();
        reload();
        co_await notifier_.ready();
    }
}

// SIGHUP: read the file again; apply what may change live, report the rest.
void application::reload() {
    auto fresh = config::load_settings(config_path_, config::process_environment());
    if (!fresh.value) {
        for (auto& e : fresh.errors)
            log::error("reload: invalid configuration, keeping the running one: {}", e);
        return;
    }
    for (auto& w : fresh.warnings)
        log::warning("reload: {}", w);
    auto changes = config::apply_reload(settings_, *fresh.value);
    apply_log_level(settings_);
    client_.set_timeout(std::chrono::milliseconds(
        static_cast<std::int64_t>(settings_.api.request_timeout_s * 1000)));
    engine_.reconfigure();
    hooks_.reconfigure();
    if (changes.empty())
        log::notice("reload: nothing changed");
    for (auto& c : changes)
        log::notice("reload: {}", c);
}

} // namespace klingd::daemon
