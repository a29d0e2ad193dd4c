#include "daemon/housekeeping.hpp"

#include "daemon/job_file.hpp"
#include "runtime/log.hpp"

#include <algorithm>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <memory>
#include <sys/stat.h>
#include <unistd.h>

namespace klingd::daemon {

namespace asio = boost::asio;

spool_cleanup remove_old_spool_files(const std::string& spool_dir,
                                     std::chrono::system_clock::time_point before) {
    spool_cleanup out;
    auto cut =
        std::chrono::duration_cast<std::chrono::nanoseconds>(before.time_since_epoch()).count();
    for (auto folder : {"accepted", "rejected"}) {
        std::string dir = spool_dir + "/" + folder;
        // The folder itself, not a symbolic link planted in its place.
        int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        std::unique_ptr<DIR, int (*)(DIR*)> d(dfd >= 0 ? ::fdopendir(dfd) : nullptr, ::closedir);
        if (!d) {
            int err = errno;
            if (dfd >= 0)
                ::close(dfd);
            if (err == ELOOP || err == ENOTDIR) {
                if (out.error.empty())
                    out.error =
                        fmt::format("{} is not a folder (a symbolic link?): left alone", dir);
            } else if (err != ENOENT && out.error.empty()) {
                out.error = fmt::format("cannot read {}: {}", dir, std::strerror(err));
            }
            continue;
        }
        int fd = ::dirfd(d.get());
        while (auto* e = ::readdir(d.get())) {
            std::string_view name = e->d_name;
            if (name == "." || name == "..")
                continue;
            struct stat st {};
            if (::fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || S_ISDIR(st.st_mode))
                continue;
            // Its age in the folder: the spool's rename into it changes the ctime, not the
            // mtime (a file written long ago and dropped today keeps its old mtime).
            auto ns = [](const timespec& t) {
                return std::int64_t{t.tv_sec} * 1000000000 + t.tv_nsec;
            };
            if (std::max(ns(st.st_mtim), ns(st.st_ctim)) >= cut)
                continue;
            if (::unlinkat(fd, e->d_name, 0) == 0)
                ++out.removed;
            else if (errno != ENOENT && out.error.empty())
                out.error = fmt::format("cannot remove {}/{}: {}", dir, printable(e->d_name),
                                        std::strerror(errno));
        }
    }
    return out;
}

namespace {
// What remove_old_spool_files does, owning its arguments, for the file work pool.
std::function<spool_cleanup()> spool_cleaner(std::string dir,
                                             std::chrono::system_clock::time_point before) {
    return [dir = std::move(dir), before] {
        return remove_old_spool_files(dir, before);
    };
}

std::chrono::milliseconds days(double d) {
    return std::chrono::milliseconds(static_cast<std::int64_t>(d * 86400000.0));
}
} // namespace

asio::awaitable<housekeeping_report> housekeep(engine& e, std::optional<double> jobs_days,
                                               std::optional<double> files_days) {
    housekeeping_report out;
    if (jobs_days) {
        auto before = e.time().wall_now() - days(*jobs_days);
        auto n = co_await e.prune(before);
        if (n)
            out.jobs_pruned = *n;
        else
            out.error = fmt::format("cannot prune jobs: {}", n.error().message());
    }
    if (files_days) {
        auto before = std::chrono::system_clock::now() - days(*files_days);
        auto r = co_await e.file_work().run<spool_cleanup>(
            spool_cleaner(e.settings().spool.directory, before), std::chrono::minutes(5));
        if (!r) {
            if (out.error.empty())
                out.error = "the spool's cleanup did not end within 5 minutes";
        } else {
            out.spool_files_removed = r->removed;
            if (!r->error.empty() && out.error.empty())
                out.error = r->error;
        }
    }
    co_return out;
}

asio::awaitable<void> housekeeping_loop(engine& e, asio::steady_timer& timer) {
    auto wait = std::chrono::minutes(1);
    for (;;) {
        timer.expires_after(wait);
        boost::system::error_code ec;
        co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        if (ec)
            co_return; // stopping
        wait = std::chrono::hours(1);
        const auto& s = e.settings();
        std::optional<double> jobs_days, files_days;
        if (s.jobs.keep_finished_days > 0)
            jobs_days = s.jobs.keep_finished_days;
        if (s.spool.keep_days > 0)
            files_days = s.spool.keep_days;
        if (!jobs_days && !files_days)
            continue;
        auto r = co_await housekeep(e, jobs_days, files_days);
        if (r.jobs_pruned > 0 || r.spool_files_removed > 0)
            log::notice("housekeeping: {} finished jobs pruned (older than {} days), {} spool "
                        "files removed (older than {} days)",
                        r.jobs_pruned, s.jobs.keep_finished_days, r.spool_files_removed,
                        s.spool.keep_days);
        if (!r.error.empty())
            log::warning("housekeeping: {}; tried again in an hour", r.error);
    }
}

asio::awaitable<void> forecast_loop(engine& e, asio::steady_timer& timer) {
    for (;;) {
        timer.expires_after(std::chrono::minutes(1));
        boost::system::error_code ec;
        co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        if (ec)
            co_return; // stopping
        auto counts = co_await e.count_by_state_and_model();
        if (!counts)
            continue; // the database is away: this minute goes unrecorded
        e.forecasts().record(e.time().wall_now(), e.forecast_of(*counts).f);
    }
}

} // namespace klingd::daemon
