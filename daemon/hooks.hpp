// Completion hooks: delivers the outbox (storage's deliveries, written in the commit of a
// job's final state) to the configured command and/or webhook, at least once, with backoff
// up to hooks.max_attempts, then gives up (logged and counted). A few deliveries run at a
// time, each bounded by hooks.timeout_s: a hook that hangs or a webhook server that never
// answers costs one of those slots and nothing else; the engine never waits for them.
#pragma once

#include "config/settings.hpp"
#include "daemon/clock.hpp"
#include "daemon/http_client.hpp"
#include "storage/job_repository.hpp"

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace klingd::daemon {

// The Standard Webhooks signature of one message: "v1," and the base64 HMAC-SHA256 of
// "{id}.{timestamp}.{body}" keyed by key (the secret's decoded bytes).
std::string webhook_signature(const std::string& key, const std::string& id, std::int64_t timestamp,
                              const std::string& body);

// What a command's run came to.
struct command_outcome {
    bool ok = false;
    std::string error;  // why not ok: "exit status 3", "killed after 30 s", "cannot run ..."
    std::string output; // its stdout and stderr, at most 4 KiB ("..." when cut)
};

// Runs argv (no shell) with env as its whole environment and stdin fed from input; killed
// (its process group) after timeout. Blocking: run it off the event loop.
// cancel, when given and set, ends it at once (klingd stopping). No descriptor of klingd's
// but the three given reaches it.
command_outcome run_command(const std::vector<std::string>& argv,
                            const std::vector<std::string>& env, const std::string& input,
                            std::chrono::milliseconds timeout,
                            const std::atomic<bool>* cancel = nullptr);

struct hook_stats {
    std::uint64_t delivered = 0;
    std::uint64_t given_up = 0;
    std::uint64_t failed_attempts = 0;              // attempts that failed (retried or given up)
    std::map<std::string, std::uint64_t> by_target; // "command delivered", "webhook given_up"
};

class hook_runner {
public:
    static constexpr std::size_t slots = 4; // deliveries at once, of each target

    hook_runner(boost::asio::io_context& io, const config::settings& s,
                storage::job_repository& repo, boost::asio::ssl::context& tls, const clock& clk);
    ~hook_runner();

    void start();
    void stop();
    // Before the event loop's pending work is dropped: commands still running are ended
    // and the threads joined (their completions then have nowhere to go).
    void finish();
    // A job reached a final state: look at the outbox now.
    void wake();
    // After a reload: hooks.timeout_s for the webhook's requests.
    void reconfigure();
    const hook_stats& stats() const { return stats_; }
    std::size_t running() const { return in_flight_.size(); }
    std::size_t running(const std::string& target) const;

private:
    boost::asio::awaitable<void> loop();
    boost::asio::awaitable<void> deliver(storage::hook_delivery d);
    boost::asio::awaitable<command_outcome> run_on_pool(storage::hook_delivery d);
    boost::asio::awaitable<command_outcome> post_webhook(const storage::hook_delivery& d);

    boost::asio::io_context& io_;
    const config::settings& settings_;
    storage::job_repository& repo_;
    const clock& clock_; // the daemon's one clock: deliveries are timed on its wall time
    http_client client_;
    boost::asio::steady_timer timer_;
    boost::asio::thread_pool pool_{slots};
    std::set<std::pair<std::string, std::string>> in_flight_; // (event, target)
    hook_stats stats_;
    std::atomic<bool> cancel_{false};
    bool started_ = false;
    bool stopping_ = false;
    bool released_ = false; // claims left by an earlier run are released once
};

} // namespace klingd::daemon
