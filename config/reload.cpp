// Field-by-field comparison of two validated configurations.
#include "config/reload.hpp"

#include "core/money.hpp"

#include <fmt/format.h>
#include <tuple>

namespace klingd::config {

namespace {

struct differ {
    std::vector<std::string> lines;

    template <typename T>
    void apply(std::string_view key, T& cur, const T& fresh) {
        if (cur == fresh)
            return;
        lines.push_back(fmt::format("{}: {} -> {}", key, cur, fresh));
        cur = fresh;
    }
    template <typename T>
    void restart_only(std::string_view key, const T& cur, const T& fresh) {
        if (cur != fresh)
            lines.push_back(fmt::format("{} changed to {} but needs a restart; still using {}", key,
                                        fresh, cur));
    }
};

} // namespace

std::vector<std::string> apply_reload(settings& cur, const settings& fresh) {
    differ d;
    d.apply("log_level", cur.log_level, fresh.log_level);
    d.restart_only("api.base_url", cur.api.base_url, fresh.api.base_url);
    d.restart_only("api.ca_file", cur.api.ca_file, fresh.api.ca_file);
    d.apply("api.requests_per_minute", cur.api.requests_per_minute, fresh.api.requests_per_minute);
    d.apply("api.max_connections", cur.api.max_connections, fresh.api.max_connections);
    d.apply("api.max_submits_in_flight", cur.api.max_submits_in_flight,
            fresh.api.max_submits_in_flight);
    d.apply("api.request_timeout_s", cur.api.request_timeout_s, fresh.api.request_timeout_s);
    d.apply("api.max_result_bytes", cur.api.max_result_bytes, fresh.api.max_result_bytes);
    d.restart_only("storage.database", cur.storage.database, fresh.storage.database);
    d.restart_only("storage.postgresql", cur.storage.postgresql, fresh.storage.postgresql);
    d.restart_only("cluster.node", cur.cluster.node, fresh.cluster.node);
    d.restart_only("cluster.takeover_s", cur.cluster.takeover_s, fresh.cluster.takeover_s);
    d.restart_only("spool.directory", cur.spool.directory, fresh.spool.directory);
    d.apply("spool.max_file_bytes", cur.spool.max_file_bytes, fresh.spool.max_file_bytes);
    d.apply("spool.keep_days", cur.spool.keep_days, fresh.spool.keep_days);
    d.restart_only("output.directory", cur.output.directory, fresh.output.directory);
    d.apply("output.max_download_bytes", cur.output.max_download_bytes,
            fresh.output.max_download_bytes);
    d.restart_only("control.socket", cur.control.socket, fresh.control.socket);
    d.restart_only("control.socket_mode", fmt::format("{:04o}", cur.control.socket_mode),
                   fmt::format("{:04o}", fresh.control.socket_mode));
    d.restart_only("metrics.listen", cur.metrics.listen, fresh.metrics.listen);
    d.apply("jobs.max_in_flight", cur.jobs.max_in_flight, fresh.jobs.max_in_flight);
    d.apply("jobs.result_retention_s", cur.jobs.result_retention_s, fresh.jobs.result_retention_s);
    d.apply("jobs.min_poll_interval_s", cur.jobs.min_poll_interval_s,
            fresh.jobs.min_poll_interval_s);
    d.apply("jobs.max_poll_interval_s", cur.jobs.max_poll_interval_s,
            fresh.jobs.max_poll_interval_s);
    d.apply("jobs.resubmit_unknown", cur.jobs.resubmit_unknown, fresh.jobs.resubmit_unknown);
    d.apply("jobs.keep_finished_days", cur.jobs.keep_finished_days, fresh.jobs.keep_finished_days);
    for (auto [key, c, f] : {std::tuple{"spend.daily_limit", &cur.spend.daily_limit_micro,
                                        fresh.spend.daily_limit_micro},
                             std::tuple{"spend.monthly_limit", &cur.spend.monthly_limit_micro,
                                        fresh.spend.monthly_limit_micro}})
        if (*c != f) {
            d.lines.push_back(
                fmt::format("{}: {} -> {}", key, core::money_text(*c), core::money_text(f)));
            *c = f;
        }
    bool dirs_changed = cur.inputs.directories != fresh.inputs.directories;
    const auto old_dirs = cur.inputs.directories;
    const auto old_real = cur.inputs.real_directories;
    if (dirs_changed) {
        auto show = [](const std::vector<std::string>& v) {
            std::string out;
            for (auto& d : v)
                out += (out.empty() ? "" : ", ") + d;
            return "[" + out + "]";
        };
        d.lines.push_back(fmt::format("inputs.directories: {} -> {}", show(cur.inputs.directories),
                                      show(fresh.inputs.directories)));
        cur.inputs.directories = fresh.inputs.directories;
    }
    if (cur.inputs.real_directories != fresh.inputs.real_directories) {
        // The same folders, now resolving elsewhere (one was replaced by a symlink): the
        // boundary stays where it was; a restart takes the new one.
        // A changed list: a folder it kept keeps its resolution from before too (it may
        // be the one replaced); only a folder new to the list is resolved now.
        bool kept_any = false;
        std::vector<std::string> real;
        // (Parallel lists; should a folder lack its resolution, it is left out: no files
        // from it rather than files from somewhere unknown.)
        for (std::size_t i = 0;
             i < fresh.inputs.directories.size() && i < fresh.inputs.real_directories.size(); ++i) {
            const auto& dir = fresh.inputs.directories[i];
            std::string r = fresh.inputs.real_directories.at(i);
            for (std::size_t j = 0; j < old_dirs.size() && j < old_real.size(); ++j)
                if (old_dirs[j] == dir) {
                    kept_any = kept_any || old_real[j] != r;
                    r = old_real[j];
                }
            real.push_back(std::move(r));
        }
        if (!dirs_changed || kept_any)
            d.lines.push_back("inputs.directories resolve elsewhere now; the folders as "
                              "resolved before are kept (restart klingd to take the new ones)");
        if (dirs_changed)
            cur.inputs.real_directories = std::move(real);
    }
    d.apply("inputs.upload_url", cur.inputs.upload_url, fresh.inputs.upload_url);
    d.apply("inputs.max_bytes", cur.inputs.max_bytes, fresh.inputs.max_bytes);
    if (cur.hooks.command != fresh.hooks.command) {
        d.lines.push_back("hooks.command changed");
        cur.hooks.command = fresh.hooks.command;
    }
    d.apply("hooks.webhook_url", cur.hooks.webhook_url, fresh.hooks.webhook_url);
    if (cur.hooks.webhook_secret_file != fresh.hooks.webhook_secret_file ||
        cur.webhook_key.reveal() != fresh.webhook_key.reveal()) {
        d.lines.push_back(fmt::format("the webhook secret was read again (from {})",
                                      fresh.hooks.webhook_secret_file.empty()
                                          ? std::string("nowhere: unsigned")
                                          : fresh.hooks.webhook_secret_file));
        cur.hooks.webhook_secret_file = fresh.hooks.webhook_secret_file;
        cur.webhook_key = fresh.webhook_key;
    }
    d.apply("hooks.timeout_s", cur.hooks.timeout_s, fresh.hooks.timeout_s);
    d.apply("hooks.max_attempts", cur.hooks.max_attempts, fresh.hooks.max_attempts);
    d.apply("hooks.retry_s", cur.hooks.retry_s, fresh.hooks.retry_s);
    for (auto it = cur.models.begin(); it != cur.models.end();) {
        if (fresh.models.count(it->first)) {
            ++it;
            continue;
        }
        d.lines.push_back(fmt::format("models.\"{}\" removed", it->first));
        it = cur.models.erase(it);
    }
    for (auto& [slug, m] : fresh.models) {
        auto it = cur.models.find(slug);
        double old = it == cur.models.end() ? 0 : it->second.expected_duration_s;
        std::int64_t old_price = it == cur.models.end() ? 0 : it->second.price_micro;
        if (old != m.expected_duration_s)
            d.lines.push_back(fmt::format("models.\"{}\".expected_duration_s: {} -> {}", slug, old,
                                          m.expected_duration_s));
        if (old_price != m.price_micro)
            d.lines.push_back(fmt::format("models.\"{}\".price: {} -> {}", slug,
                                          core::money_text(old_price),
                                          core::money_text(m.price_micro)));
        if (old != m.expected_duration_s || old_price != m.price_micro)
            cur.models[slug] = m;
    }
    if (cur.api_key.reveal() != fresh.api_key.reveal() ||
        cur.api_key_source != fresh.api_key_source) {
        d.lines.push_back(
            fmt::format("the API key was read again (from {})", fresh.api_key_source));
        cur.api_key = fresh.api_key;
        cur.api_key_source = fresh.api_key_source;
        cur.api.api_key_file = fresh.api.api_key_file;
    }
    return d.lines;
}

} // namespace klingd::config
