// Local files as job inputs: the checks at intake and the read before the upload.
//
// A job file names local media as file:// URLs; klingd uploads them and sends the hosted
// URLs. A job file must never make klingd read a file outside [inputs] directories, so
// both the intake and the upload open the file the same careful way: the path walked from
// "/" one name at a time, each folder held open while the next name is looked up beneath
// it, every symlink resolved by klingd itself (never by the kernel), nothing looked up
// that is not on the way to or inside the folders, no mount crossed inside them; then the
// path of what was really reached (/proc/self/fd) checked again against the folders; a
// regular file with one link only (a hard link could be a door to a file elsewhere), no
// larger than max_bytes. The content's SHA-256 is recorded at intake and checked again
// while the upload body is built: bytes that changed fail the job.
#pragma once

#include "config/settings.hpp"
#include "core/error.hpp"
#include "core/job_spec.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <vector>

namespace klingd::daemon {

// Who submitted a job, for the check that this user may read its local files (through
// every folder on the way), not only klingd.
struct submitter {
    uid_t uid = 0;
    // The groups the kernel gives that user's process (a socket peer's gid and
    // SO_PEERGROUPS); nullopt: taken from the user database (a job file's owner), and a
    // uid without an entry there is refused.
    std::optional<std::vector<gid_t>> groups;
};

// The MIME type the first bytes of a file show ("image/png", "video/mp4"), or "" when
// they are none klingd knows.
std::string sniff_media(std::string_view head);

// Checks each of a job's file:// references (what, where, kind by content) and reads
// its hash: the inputs to record, or errc::invalid_job with one line naming the field,
// the URL and what is wrong.
// who: the user who submitted the job (the job file's owner, the socket peer); the file
// must be readable by that user too, not only by klingd (root and klingd's own user may
// use what klingd may). nullopt: klingd's own check, nobody else's rights.
core::result<std::vector<core::local_input>>
check_local_inputs(const std::vector<core::local_ref>& refs, const config::inputs_settings& cfg,
                   const std::optional<submitter>& who = std::nullopt);

// The JSON body of the upload of one input, {"data_urls":["data:<mime>;base64,..."]},
// built while the file is read (one copy of it in memory, encoded); the file opened as at
// intake and its content checked against the hash recorded then. errc::invalid_job when
// the file is gone, moved out, changed or no longer acceptable (the job fails with it).
core::result<std::string> upload_body(const core::local_input& in,
                                      const config::inputs_settings& cfg);

// The hosted URL an upload's answer gives, under "file_urls" or "urls"; "" when none.
std::string hosted_url_of(std::string_view body);

} // namespace klingd::daemon
