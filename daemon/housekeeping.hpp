// Housekeeping (the contract's section of that name): finished jobs pruned after
// jobs.keep_finished_days (storage leaves a tombstone per id), and the spool's accepted/
// and rejected/ files removed after spool.keep_days; hourly, and at once on POST /v1/purge
// (klingctl purge --older-than DAYS).
#pragma once

#include "daemon/engine.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

namespace klingd::daemon {

// Removes the files in spool_dir's accepted/ and rejected/ that arrived there (the later of
// their mtime and ctime) before `before`
// (the folders' own entries, nothing below them); how many, and the first error met (the
// rest are still tried). Blocking: run it off the event loop.
struct spool_cleanup {
    std::size_t removed = 0;
    std::string error;
};
spool_cleanup remove_old_spool_files(const std::string& spool_dir,
                                     std::chrono::system_clock::time_point before);

struct housekeeping_report {
    std::int64_t jobs_pruned = 0;
    std::size_t spool_files_removed = 0;
    std::string error; // the first thing that failed ("" when none); the rest was done
};

// Prunes the jobs finished more than jobs_days ago and removes the spool files older than
// files_days, each when given.
boost::asio::awaitable<housekeeping_report> housekeep(engine& e, std::optional<double> jobs_days,
                                                      std::optional<double> files_days);

// Every hour (the first a minute after start) while klingd runs: housekeep by the settings
// of the moment (0 days: that part never).
boost::asio::awaitable<void> housekeeping_loop(engine& e, boost::asio::steady_timer& timer);

// Every minute while klingd runs: the forecast of the unfinished jobs is recorded
// (engine::forecasts), so that when a backlog drains, the one made an hour before is
// compared with what happened.
boost::asio::awaitable<void> forecast_loop(engine& e, boost::asio::steady_timer& timer);

} // namespace klingd::daemon
