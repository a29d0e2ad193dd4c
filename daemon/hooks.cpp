// Completion hooks: the outbox's delivery loop, the command runner and webhook signing.
#include "daemon/hooks.hpp"

#include "core/url.hpp"
#include "runtime/log.hpp"

#include <algorithm>
#include <atomic>
#include <boost/asio/async_result.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http/verb.hpp>
#include <boost/json.hpp>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <random>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace klingd::daemon {
namespace asio = boost::asio;

std::string webhook_signature(const std::string& key, const std::string& id, std::int64_t timestamp,
                              const std::string& body) {
    std::string msg = fmt::format("{}.{}.{}", id, timestamp, body);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
         reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), mac, &len);
    std::string b64(4 * ((len + 2) / 3) + 1, '\0');
    int n =
        EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()), mac, static_cast<int>(len));
    b64.resize(static_cast<std::size_t>(n));
    return "v1," + b64;
}

namespace {

constexpr std::size_t output_kept = 4096;

// Keeps what the command wrote up to output_kept bytes; cut says some was dropped.
void keep_output(command_outcome& out, const char* data, std::size_t n, bool& cut) {
    auto room = output_kept - std::min(output_kept, out.output.size());
    out.output.append(data, std::min(room, n));
    cut = cut || n > room;
}

void close_fd(int& fd) {
    if (fd >= 0)
        ::close(fd);
    fd = -1;
}

} // namespace

command_outcome run_command(const std::vector<std::string>& argv,
                            const std::vector<std::string>& env, const std::string& input,
                            std::chrono::milliseconds timeout, const std::atomic<bool>* cancel) {
    auto stopped = [cancel] {
        return cancel && cancel->load();
    };
    command_outcome out;
    if (argv.empty()) {
        out.error = "no command";
        return out;
    }
    int in_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1};
    if (::pipe2(in_pipe, O_CLOEXEC) != 0 || ::pipe2(out_pipe, O_CLOEXEC) != 0) {
        out.error = fmt::format("cannot make a pipe: {}", std::strerror(errno));
        close_fd(in_pipe[0]);
        close_fd(in_pipe[1]);
        return out;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in_pipe[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
    posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 2);
    // Sockets Asio made are not close-on-exec: nothing of klingd's may reach the command.
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setpgroup(&attr, 0); // its own group: a timeout kills what it started too
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    sigset_t dfl;
    sigemptyset(&dfl);
    sigaddset(&dfl, SIGPIPE);
    sigaddset(&dfl, SIGIO);
    posix_spawnattr_setsigdefault(&attr, &dfl);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                        POSIX_SPAWN_SETSIGDEF);
    std::vector<char*> args, envp;
    for (auto& a : argv)
        args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    for (auto& e : env)
        envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
    pid_t pid = -1;
    int rc = ::posix_spawn(&pid, argv[0].c_str(), &fa, &attr, args.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close_fd(in_pipe[0]);
    close_fd(out_pipe[1]);
    if (rc != 0) {
        close_fd(in_pipe[1]);
        close_fd(out_pipe[0]);
        out.error = fmt::format("cannot run {}: {}", argv[0], std::strerror(rc));
        return out;
    }
    ::fcntl(in_pipe[1], F_SETFL, O_NONBLOCK);
    ::fcntl(out_pipe[0], F_SETFL, O_NONBLOCK);
    auto deadline = std::chrono::steady_clock::now() + timeout;
    std::size_t written = 0;
    bool cut = false, timed_out = false;
    if (input.empty())
        close_fd(in_pipe[1]);
    int status = 0;
    bool reaped = false;
    while (out_pipe[0] >= 0) {
        // It ended, but something it started may hold its output open: what was written
        // is read, and that is all.
        if (!reaped && ::waitpid(pid, &status, WNOHANG) == pid) {
            reaped = true;
            char buf[4096];
            for (ssize_t r; (r = ::read(out_pipe[0], buf, sizeof buf)) > 0;) {
                keep_output(out, buf, static_cast<std::size_t>(r), cut);
            }
            break;
        }
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0 || stopped()) {
            timed_out = true;
            break;
        }
        pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {in_pipe[1], POLLOUT, 0}};
        int nfds = in_pipe[1] >= 0 ? 2 : 1;
        int p = ::poll(fds, nfds, static_cast<int>(std::min<long>(left.count(), 200)));
        if (p < 0 && errno != EINTR)
            break;
        if (nfds == 2 && (fds[1].revents & (POLLOUT | POLLERR | POLLHUP))) {
            auto w = ::write(in_pipe[1], input.data() + written, input.size() - written);
            if (w > 0)
                written += static_cast<std::size_t>(w);
            if (w < 0 && errno != EAGAIN)
                close_fd(in_pipe[1]); // it does not read its input: fine
            else if (written == input.size())
                close_fd(in_pipe[1]);
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            char buf[4096];
            auto r = ::read(out_pipe[0], buf, sizeof buf);
            if (r > 0) {
                keep_output(out, buf, static_cast<std::size_t>(r), cut);
            } else if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                close_fd(out_pipe[0]); // the command closed its output: wait for its end
            }
        }
    }
    close_fd(in_pipe[1]);
    if (!timed_out && !reaped) {
        // Its output is closed; it should end now, within what is left of the timeout.
        while (true) {
            auto w = ::waitpid(pid, &status, WNOHANG);
            if (w == pid)
                break;
            if (w < 0 && errno != EINTR) {
                status = 0;
                break;
            }
            if (std::chrono::steady_clock::now() >= deadline || stopped()) {
                timed_out = true;
                break;
            }
            ::usleep(10000);
        }
    }
    if (timed_out) {
        ::kill(-pid, SIGKILL);
        if (!reaped)
            ::waitpid(pid, &status, 0);
    }
    close_fd(out_pipe[0]);
    if (cut)
        out.output += "...";
    if (timed_out)
        out.error = stopped() ? std::string("stopped with klingd")
                              : fmt::format("killed after {:.1f} s (hooks.timeout_s)",
                                            timeout.count() / 1000.0);
    else if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        out.ok = true;
    else if (WIFEXITED(status))
        out.error = fmt::format("exit status {}", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        out.error = fmt::format("killed by signal {}", WTERMSIG(status));
    else
        out.error = "ended abnormally";
    return out;
}

namespace {

client_options hook_client_options(const config::settings& s) {
    client_options o;
    o.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(s.hooks.timeout_s * 1000));
    o.max_idle_per_origin = hook_runner::slots;
    return o;
}

// One line for the log: control characters out, at most 300 bytes.
std::string one_line(std::string s) {
    for (auto& c : s)
        if (static_cast<unsigned char>(c) < 0x20)
            c = ' ';
    if (s.size() > 300)
        s = s.substr(0, 300) + "...";
    return s;
}

} // namespace

hook_runner::hook_runner(asio::io_context& io, const config::settings& s,
                         storage::job_repository& repo, asio::ssl::context& tls, const clock& clk)
    : io_(io), settings_(s), repo_(repo), clock_(clk),
      client_(io.get_executor(), tls, hook_client_options(s)), timer_(io) {}

hook_runner::~hook_runner() {
    finish();
}

void hook_runner::finish() {
    cancel_ = true; // a command still running is killed, not waited for
    pool_.join();
}

std::size_t hook_runner::running(const std::string& target) const {
    return static_cast<std::size_t>(std::count_if(in_flight_.begin(), in_flight_.end(),
                                                  [&](auto& k) { return k.second == target; }));
}

void hook_runner::start() {
    if (started_)
        return;
    started_ = true;
    asio::co_spawn(io_, loop(), log::exit_on_exception);
}

void hook_runner::stop() {
    stopping_ = true;
    cancel_ = true; // a command running ends now; its delivery is taken again after the restart
    timer_.cancel();
}

void hook_runner::reconfigure() {
    client_.set_timeout(
        std::chrono::milliseconds(static_cast<std::int64_t>(settings_.hooks.timeout_s * 1000)));
    timer_.cancel();
}

void hook_runner::wake() {
    timer_.cancel();
}

asio::awaitable<void> hook_runner::loop() {
    while (!stopping_) {
        if (!released_) {
            // Claims an earlier run of this node left (a crash): its deliveries are due.
            if (auto r = co_await repo_.release_deliveries(); r)
                released_ = true;
            else
                log::warning("hooks: cannot release earlier claims: {}", r.error().message());
        }
        // Only the targets configured here are taken: the others wait for a node (or a
        // reload) that has them.
        std::vector<std::string> targets;
        if (!settings_.hooks.command.empty())
            targets.emplace_back("command");
        if (!settings_.hooks.webhook_url.empty())
            targets.emplace_back("webhook");
        for (std::size_t t = 0; released_ && t < targets.size() && !stopping_; ++t) {
            std::size_t room = slots - std::min(slots, running(targets[t]));
            if (room == 0)
                continue;
            // A claim outlasts the longest attempt: connect, handshake and exchange each
            // bounded by timeout_s, and room to spare.
            auto now = clock_.wall_now();
            auto hold = std::chrono::milliseconds(
                static_cast<std::int64_t>(settings_.hooks.timeout_s * 3000) + 60000);
            auto due = co_await repo_.take_due_deliveries(now, now + hold, targets[t], room);
            if (!due) {
                log::warning("hooks: cannot read the deliveries due: {}", due.error().message());
                continue;
            }
            for (auto& d : *due) {
                if (!in_flight_.insert({d.event_id, d.target}).second)
                    continue;
                asio::co_spawn(io_, deliver(std::move(d)), log::exit_on_exception);
            }
        }
        timer_.expires_after(std::chrono::seconds(1));
        boost::system::error_code ec;
        co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
}

namespace {

// run_command on the pool, its outcome handed back to the caller's executor. Not a
// coroutine itself: GCC 12 would destroy a lambda's moved captures twice inside one.
asio::awaitable<command_outcome>
run_off_loop(asio::thread_pool& pool, std::vector<std::string> argv, std::vector<std::string> env,
             std::string data, std::chrono::milliseconds timeout, const std::atomic<bool>* cancel) {
    return asio::async_initiate<const asio::use_awaitable_t<>, void(command_outcome)>(
        [&pool, argv = std::move(argv), env = std::move(env), data = std::move(data), timeout,
         cancel](auto handler) mutable {
            auto ex = asio::get_associated_executor(handler);
            asio::post(pool, [argv = std::move(argv), env = std::move(env), data = std::move(data),
                              timeout, handler = std::move(handler),
                              work = asio::make_work_guard(ex)]() mutable {
                auto out = run_command(argv, env, data, timeout);
                auto to = work.get_executor();
                asio::post(
                    to, [handler = std::move(handler), out = std::move(out),
                         work = std::move(work)]() mutable { std::move(handler)(std::move(out)); });
            });
        },
        asio::use_awaitable);
}

} // namespace

asio::awaitable<command_outcome> hook_runner::run_on_pool(storage::hook_delivery d) {
    std::vector<std::string> env{"PATH=/usr/local/bin:/usr/bin:/bin", "KLINGD_JOB_ID=" + d.job_id};
    std::string data = d.payload;
    std::string state, output_dir;
    boost::system::error_code ec;
    auto v = boost::json::parse(d.payload, ec);
    if (!ec && v.is_object()) {
        if (auto* j = v.as_object().if_contains("data"); j && j->is_object()) {
            data = boost::json::serialize(*j);
            if (auto* s = j->as_object().if_contains("state"); s && s->is_string())
                state = s->as_string();
        }
    }
    if (state == "completed")
        output_dir = settings_.output.directory + "/" + d.job_id;
    env.push_back("KLINGD_JOB_STATE=" + state);
    env.push_back("KLINGD_OUTPUT_DIR=" + output_dir);
    auto argv = settings_.hooks.command;
    auto timeout =
        std::chrono::milliseconds(static_cast<std::int64_t>(settings_.hooks.timeout_s * 1000));
    co_return co_await run_off_loop(pool_, std::move(argv), std::move(env), std::move(data),
                                    timeout, &cancel_);
}

asio::awaitable<command_outcome> hook_runner::post_webhook(const storage::hook_delivery& d) {
    command_outcome out;
    auto u = core::http_url::parse(settings_.hooks.webhook_url);
    if (!u) {
        out.error = fmt::format("hooks.webhook_url is not usable: {}", u.error().message());
        co_return out;
    }
    auto ts = std::chrono::duration_cast<std::chrono::seconds>(clock_.wall_now().time_since_epoch())
                  .count();
    header_list headers;
    headers.emplace_back("webhook-id", d.event_id);
    headers.emplace_back("webhook-timestamp", std::to_string(ts));
    if (!settings_.webhook_key.empty())
        headers.emplace_back("webhook-signature", webhook_signature(settings_.webhook_key.reveal(),
                                                                    d.event_id, ts, d.payload));
    auto answer = co_await client_.request(boost::beast::http::verb::post, *u, d.payload,
                                           std::move(headers), 64 * 1024);
    if (answer.how != core::http_outcome::transport::ok)
        out.error = answer.message;
    else if (answer.status >= 200 && answer.status < 300)
        out.ok = true;
    else
        out.error = fmt::format("HTTP {}", answer.status);
    if (answer.how == core::http_outcome::transport::ok && !out.ok)
        out.output = answer.body.substr(0, 300);
    co_return out;
}

asio::awaitable<void> hook_runner::deliver(storage::hook_delivery d) {
    struct done_guard {
        hook_runner& h;
        std::pair<std::string, std::string> key;
        ~done_guard() {
            h.in_flight_.erase(key);
            h.timer_.cancel(); // a slot is free: the next one now
        }
    } guard{*this, {d.event_id, d.target}};
    // The attempt was counted when it was taken (one during which klingd died counts too).
    command_outcome out;
    bool configured = d.target == "command" ? !settings_.hooks.command.empty()
                                            : !settings_.hooks.webhook_url.empty();
    if (!configured) {
        // Dropped by a reload since it was taken: left for a node (or a reload) that has it.
        --d.attempts;
        d.next_at = clock_.wall_now() + std::chrono::seconds(60);
        if (auto r = co_await repo_.finish_delivery(d); !r)
            log::warning("hook {}: cannot put it back: {}", d.event_id, r.error().message());
        co_return;
    }
    if (d.attempts > settings_.hooks.max_attempts) {
        out.error = "its attempts were spent while klingd stopped during them";
    } else if (d.target == "command") {
        out = co_await run_on_pool(d);
        if (!out.output.empty())
            log::info("hook {}: command said: {}", d.event_id, one_line(out.output));
    } else {
        out = co_await post_webhook(d);
    }
    if (stopping_ && !out.ok)
        co_return; // ended by the stop: taken again after the restart
    std::string counted;
    if (out.ok) {
        d.outcome = "delivered";
        d.last_error.reset();
        ++stats_.delivered;
        counted = "delivered";
        log::info("hook {}: {} delivered (attempt {})", d.event_id, d.target, d.attempts);
    } else {
        ++stats_.failed_attempts;
        d.last_error = out.output.empty() ? out.error : out.error + ": " + one_line(out.output);
        if (d.attempts >= settings_.hooks.max_attempts) {
            d.outcome = "given_up";
            ++stats_.given_up;
            counted = "given_up";
            log::error("hook {}: {} given up after {} attempt{}: {}", d.event_id, d.target,
                       d.attempts, d.attempts == 1 ? "" : "s", *d.last_error);
        } else {
            // retry_s, twice that, ... at most an hour, with a tenth of jitter.
            double base = std::min(3600.0, settings_.hooks.retry_s *
                                               std::pow(2.0, std::min(d.attempts - 1, 30)));
            static thread_local std::mt19937_64 rng{std::random_device{}()};
            base *= std::uniform_real_distribution<double>(0.9, 1.1)(rng);
            d.next_at = clock_.wall_now() +
                        std::chrono::milliseconds(static_cast<std::int64_t>(base * 1000));
            counted = "failed";
            log::warning("hook {}: {} attempt {} failed ({}); again in {:.1f} s", d.event_id,
                         d.target, d.attempts, *d.last_error, base);
        }
    }
    ++stats_.by_target[d.target + " " + counted];
    if (auto r = co_await repo_.finish_delivery(d); !r)
        log::warning("hook {}: its outcome cannot be recorded ({}): it may be delivered again",
                     d.event_id, r.error().message());
}

} // namespace klingd::daemon
