// A job's output folder, <output>/<id>/: created without following symlinks,
// files written to a temporary name, fsynced, then renamed into place so they
// appear whole. Names on disk come from us, never from the server.
#pragma once

#include <boost/system/result.hpp>
#include <chrono>
#include <string>
#include <string_view>

namespace klingd::daemon {

class output_dir {
public:
    // synced: the file and the folder are fsynced (results); renamed: whole or absent, but
    // a power cut may lose it (a rejected file's .error, cheap enough for the event loop).
    enum class durability { synced, renamed };

    // Opens (creating) <root>/<job_id>; synced: and syncs root, so that the folder's name
    // is durable. Fails when it is a symlink or not a folder.
    static boost::system::result<output_dir>
    open(const std::string& root, const std::string& job_id, durability d = durability::synced);
    output_dir(output_dir&& o) noexcept;
    output_dir& operator=(output_dir&&) = delete;
    ~output_dir();

    const std::string& path() const { return path_; }
    // A path for a temporary file inside the folder that resolves through the
    // open folder handle (a symlink swapped in for the folder cannot redirect it).
    std::string temp_path(const std::string& name) const;
    // Removes a leftover temporary of that name, if any.
    void remove(const std::string& name) const;
    // A temporary file's name, unique to this process (".<stem>-<tag>.tmp"): another
    // host's klingd writing into the same shared folder never uses it.
    static std::string temp_name(std::string_view stem);
    // Removes temporaries (".*.tmp") left by a process of this host that died, and any
    // not modified for older_than (another host's).
    void remove_stale_temps(std::chrono::seconds older_than) const;
    // Writes content to name atomically. Returns the error (disk full, ...).
    boost::system::error_code write_atomically(const std::string& name, const std::string& content,
                                               durability d = durability::synced) const;
    // fsyncs temp then renames it to final_name, and syncs the folder (as d says).
    boost::system::error_code commit(const std::string& temp, const std::string& final_name,
                                     durability d = durability::synced) const;
    std::string final_path(const std::string& name) const { return path_ + "/" + name; }

private:
    output_dir(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
    std::string path_;
    int fd_ = -1;
};

} // namespace klingd::daemon
