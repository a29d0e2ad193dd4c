// klingd's entry point: command line, configuration, then the daemon on one
// io_context thread until SIGTERM or SIGINT.
#include "config/loader.hpp"
#include "config/reload.hpp"
#include "daemon/control_server.hpp"
#include "daemon/engine.hpp"
#include "daemon/event_hub.hpp"
#include "daemon/http_client.hpp"
#include "daemon/job_json.hpp"
#include "daemon/service_notifier.hpp"
#include "daemon/spool.hpp"
#include "runtime/log.hpp"
#include "runtime/tls.hpp"
#include "storage/job_store.hpp"

#include <CLI/CLI.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <systemd/sd-daemon.h>

namespace {

namespace asio = boost::asio;
using namespace klingd;

// An io_context whose pending operations (suspended coroutines) can be destroyed
// while the objects they point back to still exist, instead of after them.
struct daemon_io : asio::io_context {
    using asio::io_context::io_context;
    void drop_pending() { shutdown(); }
};

std::string default_config_path() {
    if (const char* p = std::getenv("KLINGD_CONFIG"); p && *p)
        return p;
    return "/etc/klingd/klingd.toml";
}

void apply_log_level(const config::settings& s) {
    log::level lvl;
    if (log::parse_level(s.log_level, lvl))
        log::set_level(lvl);
}

// s is the live configuration: SIGHUP updates what may change in place.
int run(config::settings& s, const std::string& config_path) {
    apply_log_level(s);
    std::signal(SIGPIPE, SIG_IGN);

    namespace fs = std::filesystem;
    std::error_code ec;
    fs::create_directories(fs::path(s.storage.database).parent_path(), ec);
    fs::create_directories(s.output.directory, ec);
    if (ec) {
        log::error("cannot create the output folder {}: {}", s.output.directory, ec.message());
        return 1;
    }

    std::optional<storage::job_store> store;
    try {
        store.emplace(s.storage.database);
    } catch (const storage::storage_error& e) {
        log::error("cannot use the database: {}", e.what());
        return 1;
    }
    std::optional<asio::ssl::context> tls_ctx;
    try {
        tls_ctx.emplace(tls::make_client_context(s.api.ca_file));
    } catch (const std::exception& e) {
        log::error("api.ca_file: {}", e.what());
        return 2;
    }

    daemon_io io(1);
    daemon::client_options opts;
    opts.timeout =
        std::chrono::milliseconds(static_cast<std::int64_t>(s.api.request_timeout_s * 1000));
    opts.max_idle_per_origin = static_cast<std::size_t>(s.api.max_connections);
    daemon::http_client client(io.get_executor(), *tls_ctx, opts);
    daemon::system_clock clk;
    daemon::engine engine(io, s, *store, client, clk);
    daemon::control_limits limits;
    limits.body_bytes = s.spool.max_file_bytes + 4096;
    daemon::event_hub events;
    engine.on_change = [&](const core::job& j, const std::string& note) {
        if (!note.empty())
            events.publish(j.id, daemon::event_line(j, note, j.updated_at));
    };
    daemon::control_server control(io, s, engine, events, limits);
    daemon::spool spool(io, s, engine);
    daemon::service_notifier notifier(io, engine);
    try {
        engine.start();
        control.start();
        spool.start();
    } catch (const std::exception& e) {
        log::error("cannot start: {}", e.what());
        return 1;
    }
    log::notice("klingd {} started: API {}, spool {}, output {}, {} requests/min", KLINGD_VERSION,
                s.api.base_url, s.spool.directory, s.output.directory, s.api.requests_per_minute);

    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            auto n = co_await spool.scan();
            if (n > 0)
                log::info("spool: start-up scan looked at {} files", n);
            notifier.ready();
            notifier.start();
        },
        asio::detached);

    asio::signal_set signals(io, SIGTERM, SIGINT);
    bool stopping = false;
    std::function<void(const boost::system::error_code&, int)> on_signal =
        [&](const boost::system::error_code& ec, int sig) {
            if (ec)
                return;
            if (stopping) {
                log::warning("second signal {}: exiting at once", sig);
                std::_Exit(1);
            }
            stopping = true;
            notifier.stopping();
            log::notice("signal {}: stopping (requests in flight get a few seconds to finish)",
                        sig);
            spool.stop();
            control.stop();
            asio::co_spawn(
                io,
                [&]() -> asio::awaitable<void> {
                    co_await engine.stop(std::chrono::seconds(8));
                    io.stop();
                },
                asio::detached);
            signals.async_wait(on_signal);
        };
    signals.async_wait(on_signal);

    // SIGHUP: read the file again; apply what may change live, report the rest.
    asio::signal_set hup(io, SIGHUP);
    std::function<void(const boost::system::error_code&, int)> on_hup =
        [&](const boost::system::error_code& ec, int) {
            if (ec)
                return;
            notifier.reloading();
            auto fresh = config::load_settings(config_path, config::process_environment());
            if (!fresh.value) {
                for (auto& e : fresh.errors)
                    log::error("reload: invalid configuration, keeping the running one: {}", e);
            } else {
                for (auto& w : fresh.warnings)
                    log::warning("reload: {}", w);
                auto changes = config::apply_reload(s, *fresh.value);
                apply_log_level(s);
                client.set_timeout(std::chrono::milliseconds(
                    static_cast<std::int64_t>(s.api.request_timeout_s * 1000)));
                engine.reconfigure();
                if (changes.empty())
                    log::notice("reload: nothing changed");
                for (auto& c : changes)
                    log::notice("reload: {}", c);
            }
            notifier.ready();
            hup.async_wait(on_hup);
        };
    hup.async_wait(on_hup);

    io.run();
    io.drop_pending();
    log::notice("klingd stopped");
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"klingd: runs Segmind Kling O1 jobs from a spool directory and a control socket"};
    std::string config_path = default_config_path();
    bool check_config = false;
    bool version = false;
    app.add_option("--config", config_path,
                   "configuration file (default: $KLINGD_CONFIG, else /etc/klingd/klingd.toml)");
    app.add_flag("--check-config", check_config,
                 "validate the configuration, print it with secrets redacted, exit 0 or 2");
    app.add_flag("--version", version, "print the version and exit");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : 2;
    }
    if (version) {
        std::printf("klingd %s\n", KLINGD_VERSION);
        return 0;
    }

    auto loaded = config::load_settings(config_path, config::process_environment());
    for (auto& w : loaded.warnings)
        log::warning("config: {}", w);
    if (!loaded.value) {
        for (auto& e : loaded.errors)
            std::fprintf(stderr, "klingd: invalid configuration: %s\n", e.c_str());
        return 2;
    }
    if (check_config) {
        std::fputs(config::render_settings(*loaded.value).c_str(), stdout);
        return 0;
    }
    return run(*loaded.value, config_path);
}
