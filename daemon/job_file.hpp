// The spool's rules for one job file, apart from its folder: what the spool rejects a file
// for before and after reading it. The daemon's spool applies them, and klingctl validate
// applies the same ones offline, so both say the same one-line reasons.
#pragma once

#include "core/error.hpp"
#include "core/job_spec.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <sys/types.h>

namespace klingd::daemon {

// A name the spool leaves alone in incoming/: one starting with '.' or ending in .tmp is
// taken as a file still being written (write it so, then rename it).
bool spool_ignores(const std::string& name);
// The reason a file called name, of size bytes, is rejected before it is read, or nullopt.
std::optional<std::string> job_file_problem(const std::string& name, std::uint64_t size,
                                            std::uint64_t max_file_bytes);
// Once read: the job (its local files named, not yet checked: check_local_inputs), or
// errc::invalid_job whose message is the reason. links: the file's number of names; mode:
// its permission bits (a job with local files must have one name and be writable by its
// owner only).
core::result<core::job_spec> read_job_file(std::string_view text, const std::string& name,
                                           std::uint64_t links, std::uint32_t mode);
// The text of a job file open on fd: at most size bytes (what was measured before: a file
// that grows meanwhile is read no further, a shorter one ends sooner), or errc::io_failed
// "cannot be read: <why>" when a read fails.
core::result<std::string> read_job_text(int fd, std::size_t size);
// The name of a local file system (by statfs's f_type) whose owners are the users who
// wrote the files (ext4, XFS, Btrfs, ZFS, tmpfs, overlay, ...); "" for any other: network
// and foreign ones (NFS, SMB, FUSE, 9p, FAT, NTFS, ...) squash owners, assign them by
// mount options, or take them from remote clients.
std::string_view owner_telling_file_system(long f_type);
// Why a job file naming local files cannot be taken as its owner's, or "": on any other
// file system than those (f_type; nullopt: it cannot be told) its owner may be anyone
// (root's or klingd's own would let it read whatever klingd may).
std::string owner_not_trusted(std::optional<long> f_type);
// A file name as a one-line message shows it (control characters escaped, cut at 200).
std::string printable(const std::string& s);

} // namespace klingd::daemon
