// openat/renameat on a folder handle opened with O_NOFOLLOW.
#include "daemon/output_dir.hpp"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <random>
#include <sys/stat.h>
#include <unistd.h>

namespace klingd::daemon {

namespace {
boost::system::error_code last_error() {
    return {errno, boost::system::system_category()};
}

// This process's mark in temporary names, random: processes of several hosts may write
// into one shared output folder (a cluster), and none may touch another's temporary.
// "<host>-<pid>-<random>": a temporary left by a process of this host that has died can be
// recognised, and removed at once.
const std::string& host_name() {
    static const std::string name = [] {
        char buf[256] = {};
        if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0')
            return std::string("host");
        std::string h = buf;
        for (auto& c : h)
            if (c == '/' || c == '.' || c == '-') // no dash: the name's fields are read by them
                c = '_';
        return h;
    }();
    return name;
}

const std::string& process_tag() {
    static const std::string tag = [] {
        std::random_device rd;
        return fmt::format("{}-{}-{:08x}", host_name(), ::getpid(), rd());
    }();
    return tag;
}

// A temporary named by a process of this host that no longer runs.
bool left_by_dead_process(std::string_view name) {
    // ".<stem>-<host>-<pid>-<random>.tmp", read from the right (the stem may hold dashes).
    if (!name.ends_with(".tmp"))
        return false;
    name.remove_suffix(4);
    auto r = name.rfind('-');
    if (r == std::string_view::npos || r == 0)
        return false;
    auto p = name.rfind('-', r - 1);
    if (p == std::string_view::npos || p == 0)
        return false;
    auto h = name.rfind('-', p - 1);
    if (h == std::string_view::npos || name.substr(h + 1, p - h - 1) != host_name())
        return false;
    auto digits = name.substr(p + 1, r - p - 1);
    if (digits.empty())
        return false;
    long pid = 0;
    for (char c : digits) {
        if (c < '0' || c > '9')
            return false;
        pid = pid * 10 + (c - '0');
        if (pid > 1L << 30)
            return false;
    }
    return pid != ::getpid() && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}
} // namespace

std::string output_dir::temp_name(std::string_view stem) {
    return fmt::format(".{}-{}.tmp", stem, process_tag());
}

void output_dir::remove_stale_temps(std::chrono::seconds older_than) const {
    // Temporaries left by a process that died (its own names are never reused).
    int fd = ::fcntl(fd_, F_DUPFD_CLOEXEC, 0); // not inherited by a hook spawned meanwhile
    if (fd < 0)
        return;
    DIR* d = ::fdopendir(fd);
    if (!d) {
        ::close(fd);
        return;
    }
    auto limit = std::chrono::system_clock::now() - older_than;
    while (auto* e = ::readdir(d)) {
        std::string_view name = e->d_name;
        if (name.size() < 5 || name.front() != '.' || !name.ends_with(".tmp"))
            continue;
        struct stat st {};
        if (::fstatat(fd_, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (std::chrono::system_clock::from_time_t(st.st_mtime) < limit ||
            left_by_dead_process(name))
            ::unlinkat(fd_, e->d_name, 0);
    }
    ::closedir(d);
}

boost::system::result<output_dir> output_dir::open(const std::string& root,
                                                   const std::string& job_id, durability d) {
    std::string path = root + "/" + job_id;
    if (::mkdir(path.c_str(), 0750) != 0 && errno != EEXIST)
        return last_error();
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return last_error(); // ELOOP for a symlink, ENOTDIR for a file
    output_dir dir(std::move(path), fd);
    if (d != durability::synced)
        return dir;
    // The folder's own name must outlive a power cut, or the files synced inside it are
    // lost with it. Also when it was there already: an earlier run may have made it and
    // stopped before this sync.
    int parent = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (parent < 0)
        return last_error();
    int synced = ::fsync(parent);
    auto ec = last_error();
    ::close(parent);
    if (synced != 0)
        return ec;
    return dir;
}

output_dir::output_dir(output_dir&& o) noexcept : path_(std::move(o.path_)), fd_(o.fd_) {
    o.fd_ = -1;
}

output_dir::~output_dir() {
    if (fd_ >= 0)
        ::close(fd_);
}

std::string output_dir::temp_path(const std::string& name) const {
    return "/proc/self/fd/" + std::to_string(fd_) + "/" + name;
}

void output_dir::remove(const std::string& name) const {
    ::unlinkat(fd_, name.c_str(), 0);
}

boost::system::error_code output_dir::write_atomically(const std::string& name,
                                                       const std::string& content,
                                                       durability d) const {
    // A short name of this process's: a long final name still fits.
    std::string tmp = temp_name("write");
    remove(tmp);
    int fd = ::openat(fd_, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
    if (fd < 0)
        return last_error();
    const char* p = content.data();
    std::size_t left = content.size();
    while (left > 0) {
        ssize_t n = ::write(fd, p, left);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            auto ec = last_error();
            ::close(fd);
            remove(tmp);
            return ec;
        }
        p += n;
        left -= static_cast<std::size_t>(n);
    }
    if (::close(fd) != 0) {
        auto ec = last_error();
        remove(tmp);
        return ec;
    }
    return commit(tmp, name, d);
}

boost::system::error_code output_dir::commit(const std::string& temp, const std::string& final_name,
                                             durability d) const {
    bool sync = d == durability::synced;
    int fd = ::openat(fd_, temp.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return last_error();
    if (::fchmod(fd, 0640) != 0 || (sync && ::fsync(fd) != 0)) {
        auto ec = last_error();
        ::close(fd);
        return ec;
    }
    ::close(fd);
    if (::renameat(fd_, temp.c_str(), fd_, final_name.c_str()) != 0)
        return last_error();
    if (sync && ::fsync(fd_) != 0)
        return last_error();
    return {};
}

} // namespace klingd::daemon
