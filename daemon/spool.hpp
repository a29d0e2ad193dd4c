// Spool intake: <spool>/incoming/ is watched with inotify and scanned at start.
// Each *.json file is validated, recorded durably (many per transaction), then
// moved to accepted/; a bad file goes to rejected/ with <name>.error beside it,
// one line saying what is wrong. Names starting with '.' or ending in .tmp are
// left alone (write, then rename into place). A crash between recording and
// moving finds the file again; the same id and content is then a no-op.
#pragma once

#include "config/settings.hpp"
#include "core/job_spec.hpp"
#include "daemon/engine.hpp"
#include "daemon/job_file.hpp"
#include "runtime/async_lane.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <sys/types.h>
#include <variant>
#include <vector>

namespace klingd::daemon {

class spool {
public:
    spool(boost::asio::io_context& io, const config::settings& s, engine& e);
    ~spool();

    // Creates incoming/, accepted/ and rejected/ where missing and starts the
    // watch. Throws std::runtime_error naming the folder when that fails.
    void start();
    // Takes every file now in incoming/ (the start-up scan); returns how many were looked at.
    boost::asio::awaitable<std::size_t> scan();
    void stop();

    const std::string& incoming() const { return incoming_; }

private:
    boost::asio::awaitable<void> watch();
    bool add_watch();
    // Reads a batch of files, records the jobs, moves the files; one batch at a time.
    boost::asio::awaitable<void> take(std::vector<std::string> names);
    // What a file in incoming/ is: gone (skip), to be rejected (and why), or a job.
    struct skip {};
    struct busy {}; // a writer still has it open: look again later
    // A file read, and which file it was (a writer may rename another file over its
    // name while the job is being recorded), and which version of it.
    struct taken_file {
        std::string name;
        dev_t dev = 0;
        ino_t ino = 0;
        std::int64_t size = 0;
        std::int64_t mtime_ns = 0;
        std::int64_t ctime_ns = 0;
        bool operator==(const taken_file&) const = default;
    };
    struct rejection {
        std::string why;
        // Set when the content did not parse: it may be a file still being written.
        std::optional<taken_file> unparsed;
    };
    struct job_file {
        core::job_spec spec; // its local files named, not yet checked (take() checks them)
        taken_file file;
        uid_t owner = 0;             // who submitted it: the file's owner
        std::optional<long> fs_type; // statfs's f_type of its file system, when told
    };
    using candidate = std::variant<skip, busy, rejection, job_file>;
    candidate read_candidate(const std::string& name) const;
    // Records the jobs read, then moves their files to accepted/ (or rejected/ for a conflict).
    boost::asio::awaitable<void> record(std::vector<core::job_spec> specs,
                                        std::vector<std::string> sources,
                                        std::vector<taken_file> files);
    // Scans incoming/ again in a few seconds (after files could not be recorded).
    void rescan_later();
    // A file that appeared without being written or renamed here (a hard link, an
    // O_TMPFILE linked in): taken once no writer has it open, or, when the kernel will
    // not say, once its size and times have been still for a second (five if it is
    // empty); settle() looks at them four times a second while there are any.
    void note_created(const std::string& name);
    boost::asio::awaitable<void> settle();
    // A file whose content did not parse is read once more, a second later, before it
    // is rejected (its writer may not have finished).
    boost::asio::awaitable<void> read_again_later(std::string name);
    // malformed: count it as an invalid file (a conflict of ids is counted by the engine).
    void reject(const std::string& name, const std::string& why, bool malformed = true);
    // Moves the file read to folder; a file renamed over it since is left for its own take.
    void move_to(const taken_file& f, const std::string& folder);
    // False (and said) when the name now holds another file than the one read, or that
    // file changed; what is there then is looked at again on its own.
    bool still_there(const taken_file& f);

    boost::asio::io_context& io_;
    const config::settings& settings_;
    engine& engine_;
    std::string incoming_, accepted_, rejected_;
    int inotify_fd_ = -1;
    int watch_ = -1;
    std::optional<boost::asio::posix::stream_descriptor> events_;
    bool stopping_ = false;
    bool rescan_pending_ = false;
    // Files seen created but not yet written or renamed here: how they looked when last
    // looked at, since when they look so, and whether a writer is at work on them here
    // (IN_MODIFY: then their IN_CLOSE_WRITE takes them).
    struct settling_file {
        std::int64_t size = -1, mtime_ns = 0, ctime_ns = 0;
        std::chrono::steady_clock::time_point since;
        bool written_here = false;
    };
    std::map<std::string, settling_file> created_;
    bool settling_ = false;
    // Files whose content did not parse once, as they were then.
    std::map<std::string, taken_file> unparsed_once_;
    lane::async_lane intake_; // the scan's and the watch's batches take turns
};

} // namespace klingd::daemon
