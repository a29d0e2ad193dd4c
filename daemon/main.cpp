// klingd's entry point: the command line and the configuration, then the
// application (daemon/application.hpp) until SIGTERM or SIGINT.
#include "config/loader.hpp"
#include "daemon/application.hpp"
#include "runtime/log.hpp"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>

namespace {

using namespace klingd;

std::string default_config_path() {
    if (const char* p = std::getenv("KLINGD_CONFIG"); p && *p)
        return p;
    return "/etc/klingd/klingd.toml";
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
    try {
        daemon::application app(*loaded.value, config_path);
        return app.run();
    } catch (const daemon::start_failure& e) {
        log::error("{}", e.what());
        return e.exit_code;
    }
}
