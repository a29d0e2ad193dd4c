#include "daemon/job_file.hpp"

#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <unistd.h>

namespace klingd::daemon {

// What a file name looks like in a one-line message: control characters escaped.
bool spool_ignores(const std::string& name) {
    return name.empty() || name.front() == '.' || name.ends_with(".tmp");
}

std::string printable(const std::string& s) {
    std::string out;
    for (unsigned char c : s.substr(0, 200)) {
        if (c < 0x20 || c == 0x7f)
            out += fmt::format("\\x{:02x}", c);
        else
            out += static_cast<char>(c);
    }
    return out;
}

std::optional<std::string> job_file_problem(const std::string& name, std::uint64_t size,
                                            std::uint64_t max_file_bytes) {
    if (!name.ends_with(".json"))
        return "only *.json files are taken (write to a .tmp or dot name, then rename to "
               "NAME.json)";
    if (size > max_file_bytes)
        return fmt::format("the file is {} bytes; spool.max_file_bytes allows {}", size,
                           max_file_bytes);
    return std::nullopt;
}

std::string_view owner_telling_file_system(long f_type) {
    switch (static_cast<unsigned long>(f_type) & 0xffffffffUL) {
    case 0xef53UL:
        return "ext4";
    case 0x58465342UL:
        return "XFS";
    case 0x9123683eUL:
        return "Btrfs";
    case 0x01021994UL:
        return "tmpfs";
    case 0x858458f6UL:
        return "ramfs";
    case 0xf2f52010UL:
        return "F2FS";
    case 0x2fc12fc1UL:
        return "ZFS";
    case 0x794c7630UL:
        return "overlay";
    case 0xca451a4eUL:
        return "bcachefs";
    case 0x3153464aUL:
        return "JFS";
    case 0x52654973UL:
        return "ReiserFS";
    case 0x3434UL:
        return "NILFS";
    default:
        return {};
    }
}

std::string owner_not_trusted(std::optional<long> f_type) {
    if (!f_type)
        return "names local files, but the file system of incoming/ cannot be told, nor so "
               "whether its owner wrote it: submit it over the socket (klingctl submit)";
    if (!owner_telling_file_system(*f_type).empty())
        return {};
    return fmt::format(
        "names local files, but incoming/ is on a file system (type {:#x}) not known "
        "to keep who wrote a file as its owner (NFS, SMB, FUSE, FAT and the like "
        "squash owners, assign them by mount options, or take them from remote "
        "clients): submit it over the socket (klingctl submit), or keep incoming/ "
        "on a local file system (ext4, XFS, Btrfs, ZFS, tmpfs, ...)",
        static_cast<unsigned long>(*f_type) & 0xffffffffUL);
}

core::result<std::string> read_job_text(int fd, std::size_t size) {
    std::string text(size, '\0');
    std::size_t got = 0;
    while (got < text.size()) {
        ssize_t r = ::read(fd, text.data() + got, text.size() - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return core::error(core::errc::io_failed,
                               fmt::format("cannot be read: {}", std::strerror(errno)));
        if (r == 0)
            break;
        got += static_cast<std::size_t>(r);
    }
    text.resize(got);
    return text;
}

core::result<core::job_spec> read_job_file(std::string_view text, const std::string& name,
                                           std::uint64_t links, std::uint32_t mode) {
    auto parsed = core::parse_job_spec(text, name.substr(0, name.size() - 5));
    if (!parsed)
        return parsed;
    if (!parsed->local_inputs.empty() && links != 1)
        return core::error(core::errc::invalid_job,
                           "names local files but has more than one name (a hard link): its "
                           "owner cannot be told; write the job file itself");
    // Its owner is taken as the user who asked for those files: nobody else may have been
    // able to change what it names.
    if (!parsed->local_inputs.empty() && (mode & 022) != 0)
        return core::error(
            core::errc::invalid_job,
            fmt::format("names local files but other users may write to it (mode {:04o}): its "
                        "owner cannot be told to have named them; make it writable by its "
                        "owner only (chmod go-w, or umask 022) before it goes into incoming/",
                        mode & 07777));
    return parsed;
}

} // namespace klingd::daemon
