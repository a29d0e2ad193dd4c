// inotify events and directory scans feed batches of names to take().
#include "daemon/spool.hpp"

#include "core/job_spec.hpp"
#include "daemon/output_dir.hpp"
#include "runtime/log.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <filesystem>
#include <fmt/format.h>
#include <stdexcept>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

namespace klingd::daemon {

namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

constexpr std::size_t batch_size = 512;

bool ignored(const std::string& name) {
    return spool_ignores(name);
}

void make_dir(const std::string& path) {
    std::error_code ec;
    fs::create_directories(path, ec);
    if (ec)
        throw std::runtime_error(fmt::format("cannot create {}: {}", path, ec.message()));
    if (fs::is_symlink(path) || !fs::is_directory(path))
        throw std::runtime_error(fmt::format("{} is not a folder", path));
}

// accepted/ or rejected/ may have been removed with the rest of the spool while klingd
// ran; put it back rather than leave files in incoming/ forever.
void restore_dir(const std::string& path) {
    std::error_code ec;
    if (fs::is_directory(fs::symlink_status(path, ec)))
        return;
    try {
        make_dir(path);
        log::notice("spool: {} was missing and is created again", path);
    } catch (const std::exception& e) {
        log::error("spool: {}", e.what());
    }
}

} // namespace

spool::spool(asio::io_context& io, const config::settings& s, engine& e)
    : io_(io), settings_(s), engine_(e), incoming_(s.spool.directory + "/incoming"),
      accepted_(s.spool.directory + "/accepted"), rejected_(s.spool.directory + "/rejected") {}

spool::~spool() {
    stop();
}

void spool::start() {
    // The read leases taken on job files are broken by SIGIO when a writer opens the
    // file at that moment; its default action would end the process.
    std::signal(SIGIO, SIG_IGN);
    for (auto* d : {&incoming_, &accepted_, &rejected_})
        make_dir(*d);
    inotify_fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (inotify_fd_ < 0)
        throw std::runtime_error(fmt::format("inotify: {}", std::strerror(errno)));
    events_.emplace(io_, inotify_fd_);
    if (!add_watch())
        throw std::runtime_error(
            fmt::format("cannot watch {}: {}", incoming_, std::strerror(errno)));
    asio::co_spawn(io_, watch(), asio::detached);
}

bool spool::add_watch() {
    // IN_CREATE for files made without a write or a rename here (symbolic links, hard
    // links, O_TMPFILE files linked in); IN_MODIFY tells a writer is still at work.
    watch_ = ::inotify_add_watch(inotify_fd_, incoming_.c_str(),
                                 IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_MODIFY | IN_ONLYDIR);
    return watch_ >= 0;
}

namespace {
// Whether no process has the file behind fd open for writing: a read lease can be
// taken only then. nullopt when the kernel will not say (a lease needs the file's
// owner or CAP_LEASE).
std::optional<bool> lease_free(int fd) {
    if (::fcntl(fd, F_SETLEASE, F_RDLCK) == 0) {
        ::fcntl(fd, F_SETLEASE, F_UNLCK);
        return true;
    }
    if (errno == EAGAIN)
        return false;
    return std::nullopt;
}

// lease_free() of the file at path.
std::optional<bool> no_writer(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return std::nullopt;
    auto free = lease_free(fd);
    ::close(fd);
    return free;
}

// A file time in nanoseconds.
std::int64_t ns(const timespec& t) {
    return static_cast<std::int64_t>(t.tv_sec) * 1'000'000'000 + t.tv_nsec;
}
} // namespace

void spool::note_created(const std::string& name) {
    created_.try_emplace(name, settling_file{-1, 0, 0, std::chrono::steady_clock::now(), false});
    if (settling_ || stopping_)
        return;
    settling_ = true;
    asio::co_spawn(io_, settle(), asio::detached);
}

asio::awaitable<void> spool::settle() {
    asio::steady_timer t(io_);
    while (!created_.empty() && !stopping_) {
        t.expires_after(std::chrono::milliseconds(250));
        boost::system::error_code ec;
        co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        auto now = std::chrono::steady_clock::now();
        std::vector<std::string> ready;
        for (auto it = created_.begin(); it != created_.end();) {
            std::string path = incoming_ + "/" + it->first;
            struct stat st {};
            bool gone = ::lstat(path.c_str(), &st) != 0;
            auto& f = it->second;
            if (!gone) {
                // Writes through another name (a hard link's, an O_TMPFILE's descriptor)
                // make no event here: the file's size and times tell.
                settling_file seen{static_cast<std::int64_t>(st.st_size), ns(st.st_mtim),
                                   ns(st.st_ctim), f.since, f.written_here};
                if (seen.size != f.size || seen.mtime_ns != f.mtime_ns ||
                    seen.ctime_ns != f.ctime_ns) {
                    seen.since = now;
                    f = seen;
                }
            }
            // Not a regular file (a FIFO, a socket): read_candidate rejects it at once.
            bool special = !gone && !S_ISREG(st.st_mode);
            // Written here: its IN_CLOSE_WRITE takes it, or the kernel's word that no
            // writer is left (a truncate(2) makes no close).
            auto free = gone || special ? std::optional<bool>(true) : no_writer(path);
            bool quiet =
                now - f.since >= (f.size > 0 ? std::chrono::seconds(1) : std::chrono::seconds(5));
            if (!gone && !special && f.written_here && !(free && *free)) {
                ++it;
                continue;
            }
            if (gone || (free && *free) || (!free && quiet)) {
                if (!gone)
                    ready.push_back(it->first);
                it = created_.erase(it);
            } else {
                ++it;
            }
        }
        if (!ready.empty())
            co_await take(std::move(ready));
    }
    settling_ = false;
}

asio::awaitable<void> spool::read_again_later(std::string name) {
    asio::steady_timer t(io_, std::chrono::seconds(1));
    boost::system::error_code ec;
    co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    std::vector<std::string> names{std::move(name)}; // named: see control_api.cpp
    if (!stopping_)
        co_await take(std::move(names));
}

void spool::rescan_later() {
    if (rescan_pending_ || stopping_)
        return;
    rescan_pending_ = true;
    asio::co_spawn(
        io_,
        [this]() -> asio::awaitable<void> {
            asio::steady_timer t(io_, std::chrono::seconds(5));
            boost::system::error_code ec;
            co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            rescan_pending_ = false;
            if (!stopping_)
                co_await scan();
        },
        asio::detached);
}

void spool::stop() {
    stopping_ = true;
    if (events_) {
        boost::system::error_code ec;
        events_->close(ec); // closes inotify_fd_
        events_.reset();
        inotify_fd_ = -1;
    }
}

asio::awaitable<std::size_t> spool::scan() {
    std::vector<std::string> names;
    std::size_t seen = 0;
    DIR* d = ::opendir(incoming_.c_str());
    if (!d) {
        log::error("spool: cannot read {}: {}", incoming_, std::strerror(errno));
        co_return 0;
    }
    while (auto* e = ::readdir(d)) {
        std::string name = e->d_name;
        if (ignored(name))
            continue;
        names.push_back(std::move(name));
    }
    ::closedir(d);
    std::sort(names.begin(), names.end());
    for (std::size_t i = 0; i < names.size() && !stopping_; i += batch_size) {
        std::vector<std::string> batch(
            names.begin() + static_cast<long>(i),
            names.begin() + static_cast<long>(std::min(names.size(), i + batch_size)));
        seen += batch.size();
        co_await take(std::move(batch));
        co_await asio::post(io_,
                            asio::use_awaitable); // let the rest of the loop run between batches
    }
    co_return seen;
}

// What a buffer of inotify events says: the names to take, whether to rescan (the
// queue overflowed), whether the watch is gone. Not in the coroutine: an inotify_event
// (a flexible array member) cannot live in a coroutine frame.
namespace {
struct event_batch {
    std::vector<std::string> names;   // written and closed, or renamed in: take them
    std::vector<std::string> created; // regular files that appeared otherwise
    std::vector<std::string> modified;
    bool rescan = false;
    bool lost_watch = false;
};

event_batch read_events(const std::string& incoming, const char* buf, std::size_t n) {
    event_batch out;
    for (std::size_t off = 0; off + sizeof(inotify_event) <= n;) {
        inotify_event ev;
        std::memcpy(&ev, buf + off, sizeof ev); // the buffer may not be aligned for it
        const char* ev_name = buf + off + sizeof ev;
        off += sizeof(inotify_event) + ev.len;
        if (off > n)
            break;
        if (ev.mask & IN_Q_OVERFLOW)
            out.rescan = true;
        if (ev.mask & IN_IGNORED)
            out.lost_watch = true;
        if (ev.len == 0)
            continue;
        std::string name(ev_name, ::strnlen(ev_name, ev.len));
        if (ignored(name))
            continue;
        if (ev.mask & (IN_CLOSE_WRITE | IN_MOVED_TO)) {
            out.names.push_back(std::move(name));
        } else if (ev.mask & IN_MODIFY) {
            out.modified.push_back(std::move(name));
        } else if ((ev.mask & IN_CREATE) && !(ev.mask & IN_ISDIR)) {
            // A symbolic link is complete now, to be refused; a regular file may be a
            // hard link (complete) or a file a writer has just opened here (its
            // IN_CLOSE_WRITE follows): settle() tells them apart.
            struct stat st {};
            if (::lstat((incoming + "/" + name).c_str(), &st) == 0 && S_ISLNK(st.st_mode))
                out.names.push_back(std::move(name));
            else
                out.created.push_back(std::move(name));
        }
    }
    return out;
}
} // namespace

asio::awaitable<void> spool::watch() {
    // On the heap: GCC 12 does not honour alignas for locals of a coroutine frame (UBSan
    // found a misaligned access here); read_events copies each event out anyway.
    std::vector<char> buf(64 * 1024);
    asio::steady_timer retry(io_);
    while (!stopping_ && events_) {
        boost::system::error_code ec;
        std::size_t n = co_await events_->async_read_some(
            asio::buffer(buf.data(), buf.size()), asio::redirect_error(asio::use_awaitable, ec));
        if (stopping_ || !events_)
            co_return;
        if (ec) {
            log::error("spool: reading inotify events failed: {}", ec.message());
            co_return;
        }
        // Not a structured binding: its names would have to live across the co_awaits below.
        event_batch got = read_events(incoming_, buf.data(), n);
        const auto& names = got.names;
        bool rescan = got.rescan;
        bool lost_watch = got.lost_watch;
        for (auto& name : got.created)
            note_created(name);
        for (auto& name : got.modified)
            if (auto c = created_.find(name); c != created_.end())
                c->second.written_here = true;
        for (auto& name : names)
            created_.erase(name); // written and closed here: taken now
        for (std::size_t i = 0; i < names.size(); i += batch_size)
            co_await take(std::vector<std::string>(
                names.begin() + static_cast<long>(i),
                names.begin() + static_cast<long>(std::min(names.size(), i + batch_size))));
        if (lost_watch) {
            log::error(
                "spool: {} was removed or is no longer readable; intake resumes when it is back",
                incoming_);
            while (!stopping_ && !add_watch()) {
                retry.expires_after(std::chrono::seconds(1));
                co_await retry.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            }
            if (stopping_)
                co_return;
            log::notice("spool: watching {} again", incoming_);
            rescan = true;
        }
        if (rescan)
            co_await scan();
    }
}

namespace {

// A descriptor closed when it goes out of scope.
struct unique_fd {
    int fd = -1;
    explicit unique_fd(int f) : fd(f) {}
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    ~unique_fd() {
        if (fd >= 0)
            ::close(fd);
    }
};

// The whole file behind fd (at most size bytes).
} // namespace

spool::candidate spool::read_candidate(const std::string& name) const {
    std::string path = incoming_ + "/" + name;
    unique_fd f(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    if (f.fd < 0) {
        if (errno == ENOENT)
            return skip{}; // taken already (a scan and an event for the same file)
        if (errno == ELOOP)
            return rejection{"is a symbolic link; put the job file itself into incoming/"};
        log::error("spool: cannot open {}: {}", path, std::strerror(errno));
        return skip{};
    }
    struct stat st {};
    if (::fstat(f.fd, &st) != 0)
        return rejection{fmt::format("cannot be read: {}", std::strerror(errno))};
    if (!S_ISREG(st.st_mode))
        return rejection{"is not a regular file"};
    // On this descriptor: no second open. Another user's file: the kernel will not say.
    if (lease_free(f.fd) == false)
        return busy{};
    if (auto why = job_file_problem(name, static_cast<std::uint64_t>(st.st_size),
                                    settings_.spool.max_file_bytes))
        return rejection{std::move(*why)};
    auto text = read_job_text(f.fd, static_cast<std::size_t>(st.st_size));
    if (!text)
        return rejection{text.error().detail};
    auto parsed = read_job_file(*text, name, st.st_nlink, st.st_mode);
    taken_file file{name,           st.st_dev,     st.st_ino, static_cast<std::int64_t>(st.st_size),
                    ns(st.st_mtim), ns(st.st_ctim)};
    if (!parsed)
        return rejection{parsed.error().message(), std::move(file)};
    struct statfs sfs {};
    std::optional<long> fs_type;
    if (::fstatfs(f.fd, &sfs) == 0)
        fs_type = static_cast<long>(sfs.f_type);
    return job_file{std::move(*parsed), std::move(file), st.st_uid, fs_type};
}

asio::awaitable<void> spool::take(std::vector<std::string> names) {
    auto turn = co_await intake_.wait_turn();
    std::vector<core::job_spec> specs;
    std::vector<std::string> sources;
    std::vector<taken_file> files;
    for (const auto& name : names) {
        if (log::enabled(log::level::debug)) // printable() costs, per file
            log::debug("spool: reading {}", printable(name));
        created_.erase(name);
        auto c = read_candidate(name);
        if (std::holds_alternative<busy>(c)) {
            // Still open for writing (a scan found it, or another name's writer): later.
            note_created(name);
            continue;
        }
        if (auto* r = std::get_if<rejection>(&c)) {
            if (r->unparsed && unparsed_once_[name] != *r->unparsed) {
                // The first time this version does not parse: read it again in a second.
                unparsed_once_[name] = *r->unparsed;
                asio::co_spawn(io_, read_again_later(name), asio::detached);
                continue;
            }
            unparsed_once_.erase(name);
            reject(name, r->why);
        } else if (std::holds_alternative<skip>(c)) {
            unparsed_once_.erase(name);
        } else if (auto* job = std::get_if<job_file>(&c)) {
            unparsed_once_.erase(name);
            if (!job->spec.local_inputs.empty()) {
                // Only where owners say who wrote a file (not NFS, FUSE, FAT, ...).
                if (auto why = owner_not_trusted(job->fs_type); !why.empty()) {
                    reject(name, why);
                    continue;
                }
                // The job file's owner submitted it: the files must be readable by that
                // user. Checked off the loop (engine::check_inputs).
                auto refs = job->spec.local_inputs;
                // Its groups from the user database (a file does not carry them).
                std::optional<submitter> who;
                who.emplace().uid = job->owner;
                auto inputs = co_await engine_.check_inputs(std::move(refs), std::move(who));
                if (stopping_)
                    co_return; // its file stays in incoming/ for the next start
                // Not a newer file put there meanwhile (that one is taken on its own).
                if (!still_there(job->file))
                    continue;
                if (!inputs) {
                    // A check that ran out of time is not the file's fault.
                    reject(name, inputs.error().message(),
                           !(inputs.error() == core::errc::io_failed));
                    continue;
                }
                job->spec.inputs = std::move(*inputs);
            }
            specs.push_back(std::move(job->spec));
            sources.push_back("spool:" + name);
            files.push_back(std::move(job->file));
        }
    }
    co_await record(std::move(specs), std::move(sources), std::move(files));
}

asio::awaitable<void> spool::record(std::vector<core::job_spec> specs,
                                    std::vector<std::string> sources,
                                    std::vector<taken_file> files) {
    if (specs.empty())
        co_return;
    auto outcomes = co_await engine_.add_jobs(specs, std::move(sources));
    if (!outcomes) {
        // Not recorded: the files stay in incoming/ and are taken at the next scan or start.
        log::error(
            "spool: cannot record {} jobs: {}; their files stay in {} and are tried again in 5s",
            specs.size(), outcomes.error().message(), incoming_);
        rescan_later();
        co_return;
    }
    for (std::size_t i = 0; i < specs.size(); ++i) {
        switch ((*outcomes)[i]) {
        case storage::insert_outcome::inserted:
            log::info("job {}: accepted from {}", specs[i].id, printable(files[i].name));
            move_to(files[i], accepted_);
            break;
        case storage::insert_outcome::same_content:
            log::info("job {}: {} repeats a job already recorded; nothing to do", specs[i].id,
                      printable(files[i].name));
            move_to(files[i], accepted_);
            break;
        case storage::insert_outcome::conflict:
            if (!still_there(files[i]))
                break;
            reject(files[i].name,
                   fmt::format(
                       "id \"{}\" is taken by a job with other content (a job id is unique for "
                       "the life of the database; use another id)",
                       specs[i].id),
                   false);
            break;
        }
    }
}

namespace {
// folder/name, or folder/name.N when that is taken.
std::string free_name(const std::string& folder, const std::string& name) {
    std::string to = folder + "/" + name;
    for (int n = 1; ::access(to.c_str(), F_OK) == 0 && n < 100000; ++n)
        to = fmt::format("{}/{}.{}", folder, name, n);
    return to;
}
} // namespace

bool spool::still_there(const taken_file& f) {
    struct stat st {};
    std::string path = incoming_ + "/" + f.name;
    if (::lstat(path.c_str(), &st) == 0 && st.st_dev == f.dev && st.st_ino == f.ino &&
        st.st_size == f.size && ns(st.st_mtim) == f.mtime_ns && ns(st.st_ctim) == f.ctime_ns)
        return true;
    log::notice("spool: {} was replaced, changed or removed while its job was being recorded; "
                "what is there now is taken on its own",
                printable(f.name));
    // A new file's own event takes it; one changed in place (through another name) makes
    // none here: look at it again.
    if (::access(path.c_str(), F_OK) == 0)
        note_created(f.name);
    return false;
}

void spool::move_to(const taken_file& f, const std::string& folder) {
    if (!still_there(f))
        return;
    std::string from = incoming_ + "/" + f.name;
    restore_dir(folder);
    std::string to = free_name(folder, f.name);
    if (::rename(from.c_str(), to.c_str()) != 0)
        log::error("spool: cannot move {} to {}: {}", from, to, std::strerror(errno));
}

void spool::reject(const std::string& name, const std::string& why, bool malformed) {
    std::string line = fmt::format("{}: {}", printable(name), why);
    for (auto& c : line)
        if (c == '\n' || c == '\r')
            c = ' ';
    log::warning("spool: rejected {}", line);
    if (malformed)
        engine_.note_invalid_file();
    restore_dir(rejected_);
    std::string to = free_name(rejected_, name);
    std::string error_name = to.substr(rejected_.size() + 1) + ".error";
    auto dir =
        output_dir::open(settings_.spool.directory, "rejected", output_dir::durability::renamed);
    auto ec = dir ? dir->write_atomically(error_name, line + '\n', output_dir::durability::renamed)
                  : dir.error();
    if (ec)
        log::error("spool: cannot write {}/{}: {}", rejected_, error_name, ec.message());
    std::string from = incoming_ + "/" + name;
    if (::rename(from.c_str(), to.c_str()) != 0)
        log::error("spool: cannot move {} to {}: {}", from, to, std::strerror(errno));
}

} // namespace klingd::daemon
