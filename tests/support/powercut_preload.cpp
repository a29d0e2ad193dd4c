// A disk shim for tests, preloaded into klingd (LD_PRELOAD) to wrap fsync and fdatasync.
//
// A slow disk: with SLOW_FSYNC_UNDER (a folder) and SLOW_FSYNC_MS, each sync of a file or
// folder under it first waits that long, and says so with a line in SLOW_FSYNC_LOG.
//
// A recorder of what a process has made durable, for the power-cut test: for a file or folder under
// POWERCUT_ROOT it notes, at the moment the call is made, what the call will make
// durable, and once the call has returned, appends it to POWERCUT_TRACE/trace:
//   F <seq> <t_begin_us> <t_end_us> <inode> <path>   file content in <seq>.blob
//   D <seq> <t_begin_us> <t_end_us> <inode> <path>   entries in <seq>.dir, one
//                                                    "<inode> <type> <name>" a line
// It also notes the changes of names under the root, in the same sequence, once they
// are done (a disk that keeps its metadata in order may keep them without a sync):
//   R <seq> <t_begin_us> <t_end_us> <inode> <from>\t<to>   rename (inode: of from)
//   U <seq> <t_begin_us> <t_end_us> 0 <path>                 unlink
//   M <seq> <t_begin_us> <t_end_us> 0 <path>                 mkdir
// Replaying the trace up to a point rebuilds what a disk may hold after a power cut
// there (see tests/daemon/powercut_test.cpp). Times are CLOCK_REALTIME microseconds.
// A sync takes its number when it returns and notes what it saw when it was called: a
// change of names in the same folder by another thread meanwhile would be numbered
// before a listing that does not hold it. klingd's threads keep to their own folders
// (the database thread: the database's; the file thread: output/; the loop: the
// spool), so this does not arise; a test of other code would need numbers at the call.
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <functional>
#include <mutex>
#include <string>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

namespace {

using sync_fn = int (*)(int);

std::mutex trace_mutex;
long long next_seq = 0;

const std::string& root() {
    static const std::string r = [] {
        const char* v = std::getenv("POWERCUT_ROOT");
        return std::string(v ? v : "");
    }();
    return r;
}

const std::string& trace_dir() {
    static const std::string t = [] {
        const char* v = std::getenv("POWERCUT_TRACE");
        return std::string(v ? v : "");
    }();
    return t;
}

long long now_us() {
    timespec ts{};
    ::clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<long long>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

// The path of an open descriptor, relative to the root; false when outside it.
bool relative_path(int fd, std::string& rel) {
    if (root().empty() || trace_dir().empty())
        return false;
    char link[64];
    std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    char buf[4096];
    ssize_t n = ::readlink(link, buf, sizeof buf - 1);
    if (n <= 0)
        return false;
    std::string p(buf, static_cast<std::size_t>(n));
    if (p == root()) {
        rel = ".";
        return true;
    }
    if (p.size() <= root().size() || p.compare(0, root().size(), root()) != 0 ||
        p[root().size()] != '/')
        return false;
    rel = p.substr(root().size() + 1);
    return true;
}

bool write_all(int fd, const char* p, std::size_t n) {
    while (n > 0) {
        ssize_t w = ::write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= static_cast<std::size_t>(w);
    }
    return true;
}

// What a sync of fd will make durable, read now: the file's bytes or the folder's entries.
struct capture {
    bool dir = false;
    unsigned long long ino = 0;
    std::string data;
};

bool take(int fd, capture& c) {
    struct stat st {};
    if (::fstat(fd, &st) != 0)
        return false;
    c.ino = st.st_ino;
    char link[64];
    std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    if (S_ISDIR(st.st_mode)) {
        c.dir = true;
        DIR* d = ::opendir(link);
        if (!d)
            return false;
        while (dirent* e = ::readdir(d)) {
            if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0)
                continue;
            char line[512];
            std::snprintf(line, sizeof line, "%llu %d ", static_cast<unsigned long long>(e->d_ino),
                          static_cast<int>(e->d_type));
            c.data += line;
            c.data += e->d_name;
            c.data += '\n';
        }
        ::closedir(d);
        return true;
    }
    if (!S_ISREG(st.st_mode))
        return false;
    int r = ::open(link, O_RDONLY | O_CLOEXEC);
    if (r < 0)
        return false;
    char buf[65536];
    ssize_t n;
    while ((n = ::read(r, buf, sizeof buf)) > 0)
        c.data.append(buf, static_cast<std::size_t>(n));
    ::close(r);
    return n == 0;
}

void append_line(const char* line, std::size_t n) {
    std::string trace = trace_dir() + "/trace";
    int t = ::open(trace.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (t < 0)
        return;
    write_all(t, line, n);
    ::close(t);
}

void record(const capture& c, const std::string& rel, long long t0, long long t1) {
    std::lock_guard<std::mutex> lock(trace_mutex);
    long long seq = next_seq++;
    std::string body = trace_dir() + "/" + std::to_string(seq) + (c.dir ? ".dir" : ".blob");
    int b = ::open(body.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (b < 0)
        return;
    bool ok = write_all(b, c.data.data(), c.data.size());
    ::close(b);
    if (!ok)
        return;
    char line[4608];
    int n = std::snprintf(line, sizeof line, "%c %lld %lld %lld %llu %s\n", c.dir ? 'D' : 'F', seq,
                          t0, t1, c.ino, rel.c_str());
    append_line(line, static_cast<std::size_t>(n));
}

// The path of an open descriptor.
std::string fd_path(int fd) {
    char link[64];
    std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    char buf[4096];
    ssize_t n = ::readlink(link, buf, sizeof buf - 1);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

void maybe_slow(int fd) {
    static const char* under = std::getenv("SLOW_FSYNC_UNDER");
    static const char* ms = std::getenv("SLOW_FSYNC_MS");
    static const char* log = std::getenv("SLOW_FSYNC_LOG");
    if (!under || !*under || !ms)
        return;
    std::string p = fd_path(fd), u = under;
    if (p.compare(0, u.size(), u) != 0 || (p.size() > u.size() && p[u.size()] != '/'))
        return;
    long wait = std::atol(ms);
    timespec ts{wait / 1000, (wait % 1000) * 1000000};
    while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    if (log && *log) {
        int l = ::open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (l >= 0) {
            p += '\n';
            write_all(l, p.data(), p.size());
            ::close(l);
        }
    }
}

int traced(sync_fn real, int fd) {
    int saved_errno = errno;
    maybe_slow(fd);
    errno = saved_errno;
    std::string rel;
    capture c;
    if (!relative_path(fd, rel) || !take(fd, c))
        return real(fd);
    long long t0 = now_us();
    int r = real(fd);
    if (r == 0) {
        int saved = errno;
        record(c, rel, t0, now_us());
        errno = saved;
    }
    return r;
}

sync_fn next(const char* name) {
    return reinterpret_cast<sync_fn>(::dlsym(RTLD_NEXT, name));
}

} // namespace

extern "C" int fsync(int fd) {
    static sync_fn real = next("fsync");
    return traced(real, fd);
}

extern "C" int fdatasync(int fd) {
    static sync_fn real = next("fdatasync");
    return traced(real, fd);
}

namespace {

// An absolute path for (dirfd, name) as the *at calls read it ("" when unknown).
std::string absolute(int dirfd, const char* name) {
    if (!name)
        return {};
    std::string n = name;
    if (n.rfind("/proc/self/fd/", 0) == 0) { // a folder handle's path (output_dir)
        std::size_t end = n.find('/', 14);
        int fd = std::atoi(n.c_str() + 14);
        return fd_path(fd) + (end == std::string::npos ? "" : n.substr(end));
    }
    if (!n.empty() && n[0] == '/')
        return n;
    std::string base;
    if (dirfd == AT_FDCWD) {
        char cwd[4096];
        if (!::getcwd(cwd, sizeof cwd))
            return {};
        base = cwd;
    } else {
        base = fd_path(dirfd);
    }
    return base.empty() ? std::string() : base + "/" + n;
}

// The path with its folder resolved (symlinks, "..") as the root is; the name kept.
std::string canonical_parent(const std::string& abs) {
    auto slash = abs.rfind('/');
    if (slash == std::string::npos || slash == 0)
        return abs;
    char buf[PATH_MAX];
    if (!::realpath(abs.substr(0, slash).c_str(), buf))
        return abs;
    return std::string(buf) + abs.substr(slash);
}

// The path relative to the root; false when outside it.
bool under_root(const std::string& given, std::string& rel) {
    std::string abs = canonical_parent(given);
    if (root().empty() || trace_dir().empty() || abs.size() <= root().size() ||
        abs.compare(0, root().size(), root()) != 0 || abs[root().size()] != '/')
        return false;
    rel = abs.substr(root().size() + 1);
    return true;
}

void record_name_change(char kind, unsigned long long ino, const std::string& what, long long t0) {
    long long t1 = now_us();
    std::lock_guard<std::mutex> lock(trace_mutex);
    long long seq = next_seq++;
    std::string line = std::string(1, kind) + " " + std::to_string(seq) + " " + std::to_string(t0) +
                       " " + std::to_string(t1) + " " + std::to_string(ino) + " " + what + "\n";
    append_line(line.data(), line.size());
}

template <class Fn>
Fn next_fn(const char* name) {
    return reinterpret_cast<Fn>(::dlsym(RTLD_NEXT, name));
}

int traced_rename(int olddir, const char* from, int newdir, const char* to,
                  const std::function<int()>& real) {
    std::string a = absolute(olddir, from), b = absolute(newdir, to), ra, rb;
    if (!under_root(a, ra) || !under_root(b, rb))
        return real();
    struct stat st {};
    unsigned long long ino = ::lstat(a.c_str(), &st) == 0 ? st.st_ino : 0;
    long long t0 = now_us();
    int r = real();
    if (r == 0) {
        int saved = errno;
        record_name_change('R', ino, ra + "\t" + rb, t0);
        errno = saved;
    }
    return r;
}

int traced_path(char kind, int dirfd, const char* path, const std::function<int()>& real) {
    std::string a = absolute(dirfd, path), ra;
    if (!under_root(a, ra))
        return real();
    long long t0 = now_us();
    int r = real();
    if (r == 0) {
        int saved = errno;
        record_name_change(kind, 0, ra, t0);
        errno = saved;
    }
    return r;
}

} // namespace

extern "C" int rename(const char* from, const char* to) {
    static auto real = next_fn<int (*)(const char*, const char*)>("rename");
    return traced_rename(AT_FDCWD, from, AT_FDCWD, to, [&] { return real(from, to); });
}

extern "C" int renameat(int od, const char* from, int nd, const char* to) {
    static auto real = next_fn<int (*)(int, const char*, int, const char*)>("renameat");
    return traced_rename(od, from, nd, to, [&] { return real(od, from, nd, to); });
}

extern "C" int renameat2(int od, const char* from, int nd, const char* to, unsigned flags) {
    static auto real = next_fn<int (*)(int, const char*, int, const char*, unsigned)>("renameat2");
    return traced_rename(od, from, nd, to, [&] { return real(od, from, nd, to, flags); });
}

extern "C" int unlink(const char* path) {
    static auto real = next_fn<int (*)(const char*)>("unlink");
    return traced_path('U', AT_FDCWD, path, [&] { return real(path); });
}

extern "C" int unlinkat(int dirfd, const char* path, int flags) {
    static auto real = next_fn<int (*)(int, const char*, int)>("unlinkat");
    return traced_path('U', dirfd, path, [&] { return real(dirfd, path, flags); });
}

extern "C" int mkdir(const char* path, mode_t mode) {
    static auto real = next_fn<int (*)(const char*, mode_t)>("mkdir");
    return traced_path('M', AT_FDCWD, path, [&] { return real(path, mode); });
}

extern "C" int mkdirat(int dirfd, const char* path, mode_t mode) {
    static auto real = next_fn<int (*)(int, const char*, mode_t)>("mkdirat");
    return traced_path('M', dirfd, path, [&] { return real(dirfd, path, mode); });
}
