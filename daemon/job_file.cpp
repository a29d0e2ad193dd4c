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

std::string_view owner_blind_file_system(long f_type) {
    switch (static_cast<unsigned long>(f_type) & 0xffffffffUL) {
    case 0x6969UL:
        return "NFS";
    case 0x517bUL:
        return "SMB";
    case 0xfe534d42UL:
        return "SMB2";
    case 0xff534d42UL:
        return "CIFS";
    case 0x65735546UL:
        return "FUSE";
    case 0x01021997UL:
        return "9p";
    case 0x4d44UL:
        return "FAT";
    case 0x2011bab0UL:
        return "exFAT";
    case 0x5346544eUL:
        return "NTFS";
    case 0x7366746eUL:
        return "NTFS3";
    case 0x786f4256UL:
        return "vboxsf";
    case 0x00c36400UL:
        return "Ceph";
    case 0x5346414fUL:
        return "AFS";
    case 0x0bd00bd0UL:
        return "Lustre";
    case 0x47504653UL:
        return "GPFS";
    case 0x20030528UL:
        return "OrangeFS";
    case 0x15013346UL:
        return "UDF";
    case 0x482bUL:
        return "HFS+";
    case 0x564c:
        return "NCP";
    case 0x73757245UL:
        return "Coda";
    default:
        return {};
    }
}

std::string owner_not_trusted(std::optional<long> f_type) {
    if (!f_type)
        return "names local files, but the file system of incoming/ cannot be told, nor so "
               "whether its owner wrote it: submit it over the socket (klingctl submit)";
    auto fs = owner_blind_file_system(*f_type);
    if (fs.empty())
        return {};
    return fmt::format("names local files, but incoming/ is on a {} file system, whose owners do "
                       "not say who wrote a file (squashed, assigned by the mount, or set by a "
                       "remote client): submit it over the socket (klingctl submit), or keep "
                       "incoming/ on a local file system",
                       fs);
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
