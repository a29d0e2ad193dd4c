// A job's result to disk: result.json and every media file its result names,
// each streamed to a temporary file, fsynced and renamed into the job's output
// folder. Media requests never carry the API key. The outcome is the lifecycle's
// event (done, with the paths; or failed, with the reason and whether to retry).
// The folder's creation, the writes of result.json and every fsync run on a thread
// of the downloader's own, never on the event loop: a slow disk holds up only the
// downloads.
#pragma once

#include "config/settings.hpp"
#include "core/lifecycle.hpp"
#include "daemon/http_client.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/thread_pool.hpp>
#include <string>

namespace klingd::daemon {

class downloader {
public:
    downloader(http_client& client, const config::settings& s) : client_(client), settings_(s) {}
    ~downloader();
    // Waits for the file thread's work to end (at shutdown, before the event loop's
    // pending handlers are dropped: a task's completion must not outlive the engine).
    void finish();

    // ev_download_done or ev_download_failed, never an exception for an expected failure.
    boost::asio::awaitable<core::event> fetch(std::string id, std::string result);

private:
    // Runs f() on the file thread; the caller resumes on its own executor.
    template <class F>
    boost::asio::awaitable<void> on_file_thread(F f);

    http_client& client_;
    const config::settings& settings_;
    boost::asio::thread_pool files_{1};
};

} // namespace klingd::daemon
