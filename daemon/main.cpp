// klingd's entry point: the command line and the configuration, then the
// application (daemon/application.hpp) until SIGTERM or SIGINT.
#include "config/loader.hpp"
#include "daemon/application.hpp"
#include "runtime/file_lock.hpp"
#include "runtime/log.hpp"
#include "storage/job_store.hpp"
#include "storage/sqlite_import.hpp"

#include <CLI/CLI.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <cstdio>
#include <cstdlib>
#include <fmt/format.h>

namespace {

using namespace klingd;

std::string default_config_path() {
    if (const char* p = std::getenv("KLINGD_CONFIG"); p && *p)
        return p;
    return "/etc/klingd/klingd.toml";
}

// --import-sqlite: the jobs of a single host's database into the cluster's; 0 when every
// job is in the cluster now (imported, or there already), 1 on a failure or a conflict.
int import_sqlite(const std::string& file, const config::settings& s) {
    if (s.storage.postgresql.empty()) {
        std::fprintf(stderr, "klingd: --import-sqlite copies into the cluster's PostgreSQL "
                             "database: set [storage] postgresql in the configuration\n");
        return 2;
    }
    boost::asio::io_context io;
    storage::pg_repository into(s.storage.postgresql, std::chrono::seconds(30),
                                s.postgresql_password.reveal());
    // First the mark: the single host must never run on this file again (its pending jobs
    // become the cluster's, and both would submit them). No mark, no copy.
    // Not while a klingd runs on it: it would go on submitting the jobs copied. The lock
    // is held until the mark is written (a klingd started meanwhile refuses the file).
    std::string why;
    auto running = runtime::file_lock::try_exclusive(file, why);
    if (!running) {
        std::fprintf(stderr,
                     "klingd: cannot lock %s (%s); nothing was copied: stop the single-host "
                     "klingd that runs on it first (systemctl stop klingd)\n",
                     file.c_str(), why.c_str());
        return 1;
    }
    try {
        storage::job_store mark(file);
        mark.set_meta("imported_into_cluster", into.target());
    } catch (const std::exception& e) {
        std::fprintf(stderr,
                     "klingd: cannot mark %s as imported into the cluster (%s); nothing was "
                     "copied: stop the single-host klingd and run this as a user who may "
                     "write the file\n",
                     file.c_str(), e.what());
        return 1;
    }
    std::optional<core::result<storage::import_report>> done;
    boost::asio::co_spawn(
        io,
        [&]() -> boost::asio::awaitable<core::result<storage::import_report>> {
            if (auto opened = co_await into.open(); !opened)
                co_return opened.error();
            co_return co_await storage::import_sqlite(file, into);
        },
        [&](std::exception_ptr e, core::result<storage::import_report> r) {
            if (e)
                r = core::error(core::errc::store_failed, "the import stopped unexpectedly");
            done = std::move(r);
        });
    io.run();
    if (!done || !*done) {
        std::fprintf(stderr, "klingd: import from %s failed: %s\n", file.c_str(),
                     done ? (*done).error().message().c_str() : "no answer");
        return 1;
    }
    const auto& r = **done;
    std::printf("imported %zu of the %zu jobs of %s (with %zu history lines) into %s; %zu were "
                "there already\n",
                r.imported, r.read, file.c_str(), r.history, into.target().c_str(), r.already);
    if (!r.conflicts.empty()) {
        std::fprintf(stderr,
                     "klingd: %zu job ids are taken in the cluster by jobs with other content "
                     "and were not imported (first: %s)\n",
                     r.conflicts.size(), r.conflicts.front().c_str());
        return 1;
    }
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
    std::string import_file;
    app.add_option("--import-sqlite", import_file,
                   "copy every job (and its history) of this single-host SQLite database into "
                   "the cluster's PostgreSQL database ([storage] postgresql), once, and exit");
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
    if (!import_file.empty())
        return import_sqlite(import_file, *loaded.value);
    try {
        daemon::application app(*loaded.value, config_path);
        return app.run();
    } catch (const daemon::start_failure& e) {
        log::error("{}", e.what());
        return e.exit_code;
    }
}
