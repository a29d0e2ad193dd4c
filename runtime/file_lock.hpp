// An exclusive advisory lock (flock) on a file, held while the object lives: one klingd
// per SQLite database, and no import of a database a klingd still runs on. flock locks
// are apart from SQLite's own (POSIX) locks, and the kernel drops them when the process
// dies, kill -9 included.
#pragma once

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <optional>
#include <string>
#include <sys/file.h>
#include <unistd.h>
#include <utility>

namespace klingd::runtime {

class file_lock {
public:
    // The lock, or nothing with why set (held by another process, or the file cannot be
    // opened).
    static std::optional<file_lock> try_exclusive(const std::string& path, std::string& why) {
        // Read-write (a lock emulated over NFS needs it), created when missing (before
        // SQLite opens it: nothing of the file is touched unless the lock is ours).
        int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);
        if (fd < 0 && (errno == EROFS || errno == EACCES)) // the owner says why it cannot write
            fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
            why = std::strerror(errno);
            return std::nullopt;
        }
        if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
            why = errno == EWOULDBLOCK ? "another process holds it" : std::strerror(errno);
            ::close(fd);
            return std::nullopt;
        }
        return file_lock(fd);
    }
    file_lock(file_lock&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    file_lock& operator=(file_lock&&) = delete;
    ~file_lock() {
        if (fd_ >= 0)
            ::close(fd_);
    }

private:
    explicit file_lock(int fd) : fd_(fd) {}
    int fd_ = -1;
};

} // namespace klingd::runtime
