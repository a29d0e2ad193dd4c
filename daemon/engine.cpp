// The dispatcher loop (carrying out the dispatch policy's actions), request
// execution, and applying transitions.
#include "daemon/engine.hpp"

#include "core/money.hpp"
#include "core/time_text.hpp"
#include "daemon/job_json.hpp"
#include "daemon/local_inputs.hpp"
#include "runtime/log.hpp"

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http/verb.hpp>
#include <boost/json.hpp>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <unistd.h>
#include <unordered_set>

namespace klingd::daemon {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using core::job;
using core::job_state;
using core::work_kind;

namespace {

constexpr std::size_t max_downloads = 4;
constexpr auto flush_interval = std::chrono::milliseconds(500);

bool counts_in_flight(job_state s) {
    return s == job_state::submitting || s == job_state::queued || s == job_state::processing;
}

// The UTC day and calendar month a wall-clock time falls in: where they begin and end.
core::time_point utc_day_start(core::time_point wall) {
    return std::chrono::floor<std::chrono::days>(wall);
}
core::time_point utc_month_start(core::time_point wall) {
    std::chrono::year_month_day d{std::chrono::floor<std::chrono::days>(wall)};
    return std::chrono::sys_days{d.year() / d.month() / 1};
}
core::time_point utc_month_end(core::time_point wall) {
    std::chrono::year_month_day d{std::chrono::floor<std::chrono::days>(wall)};
    auto next = d.year() / d.month() / 1;
    return std::chrono::sys_days{next + std::chrono::months(1)};
}

std::chrono::milliseconds seconds_ms(double s) {
    return std::chrono::milliseconds(static_cast<std::int64_t>(s * 1000));
}

// What tells this host apart in a cluster (a dead process of this host may leave its
// node name to its successor, judged by its pid): the machine id (else the host name),
// this boot, and the pid namespace, so that containers sharing an image's machine id,
// or a restart after a reboot, never take a pid of another namespace for theirs.
std::string host_identity() {
    auto first_word = [](const char* path) {
        std::ifstream in(path);
        std::string w;
        in >> w;
        return w;
    };
    std::string id = first_word("/etc/machine-id");
    if (id.empty()) {
        char host[256] = {};
        ::gethostname(host, sizeof host - 1);
        id = host;
    }
    id += "/" + first_word("/proc/sys/kernel/random/boot_id");
    std::error_code ec;
    auto ns = std::filesystem::read_symlink("/proc/self/ns/pid", ec);
    if (!ec)
        id += "/" + ns.string();
    return id;
}

// The configuration accepts only base URLs the HTTP client parses; anything else is a bug.
core::http_url parsed_base_url(const std::string& base_url) {
    auto u = core::http_url::parse(base_url);
    if (!u)
        throw std::invalid_argument("api.base_url is not a usable URL: " + base_url);
    return *u;
}

} // namespace

engine::engine(asio::io_context& io, const config::settings& s, storage::job_repository& repo,
               http_client& client, const clock& clk, storage::cluster_store* cluster)
    : io_(io), settings_(s), repo_(repo), cluster_(cluster), claim_timer_(io), slot_timer_(io),
      client_(client), clock_(clk), base_(parsed_base_url(s.api.base_url)),
      budget_(s.api.requests_per_minute, core::wake_tick(s.jobs.min_poll_interval_s),
              core::pace_margin),
      planner_({s.jobs.min_poll_interval_s, s.jobs.max_poll_interval_s, s.jobs.result_retention_s}),
      gate_(seconds_ms(s.jobs.max_poll_interval_s)),
      policy_(queue_, budget_, planner_, gate_, core::dispatch_limits{}), // set below
      journal_(repo, clk,
               [this](const std::string& id) -> const job* {
                   auto a = active_.find(id);
                   return a == active_.end() ? nullptr : &a->second;
               }),
      downloader_(client, s), input_work_(io.get_executor(), 2), wake_timer_(io) {
    for (auto& [slug, m] : s.models)
        durations_.emplace(slug, core::duration_model(m.expected_duration_s));
    use_limits(limits()); // needs the duration models
    hold_key();
    journal_.on_claim_lost = [this](const std::vector<std::string>& ids) {
        log::warning("this node no longer holds the claim of {} job(s) (first: {}): its claims "
                     "lapsed (cut off from the database?) and another node carries them on",
                     ids.size(), ids.front());
        for (auto& id : ids)
            drop(id);
    };
}

core::dispatch_limits engine::limits() const {
    core::dispatch_limits l;
    // 0 is automatic: from the budget and what klingd measures (answer times, run times).
    double rpm = settings_.api.requests_per_minute;
    l.max_requests = settings_.api.max_connections > 0
                         ? static_cast<std::size_t>(settings_.api.max_connections)
                         : core::automatic_connections(rpm, answer_s_);
    l.max_submits = settings_.api.max_submits_in_flight > 0
                        ? static_cast<std::size_t>(settings_.api.max_submits_in_flight)
                        : core::automatic_submits(l.max_requests);
    l.max_downloads = max_downloads;
    double run_s = 0;
    for (auto& [slug, m] : durations_)
        run_s = std::max(run_s, m.median());
    l.max_in_flight = settings_.jobs.max_in_flight > 0
                          ? static_cast<std::size_t>(settings_.jobs.max_in_flight)
                          : core::automatic_in_flight(rpm, run_s);
    l.min_poll_interval_s = settings_.jobs.min_poll_interval_s;
    l.max_poll_interval_s = settings_.jobs.max_poll_interval_s;
    return l;
}

core::duration_model& engine::durations_for(const std::string& model) {
    auto it = durations_.find(model);
    if (it == durations_.end())
        it = durations_.emplace(model, core::duration_model(60)).first;
    return it->second;
}

core::lifecycle_context engine::context_for(const job& j) {
    core::lifecycle_context c;
    c.retention_s = settings_.jobs.result_retention_s;
    c.resubmit_unknown = settings_.jobs.resubmit_unknown;
    c.backoff_base_s = settings_.jobs.min_poll_interval_s;
    c.backoff_cap_s = settings_.jobs.max_poll_interval_s;
    c.base_url = settings_.api.base_url;
    c.planner = &planner_;
    c.durations = &durations_for(j.model);
    c.jitter01 = std::uniform_real_distribution<double>(0, 1)(rng_);
    c.wall_offset = clock_.wall_offset();
    return c;
}

namespace {
// Run times reloaded at start (see engine::start).
constexpr int restart_samples = 200;

// Start-up cannot go on without the database.
template <class T>
T needed(core::result<T> r, const char* what) {
    if (!r)
        throw std::runtime_error(
            fmt::format("cannot read {} from the database: {}", what, r.error().message()));
    return std::move(*r);
}
} // namespace

asio::awaitable<void> engine::start() {
    auto paused = needed(co_await repo_.meta("paused"), "the paused state");
    gate_.set_paused(paused.value_or("0") == "1");
    std::vector<std::string> models;
    for (auto& [model, d] : durations_)
        models.push_back(model);
    for (auto& model : models) {
        // The database keeps the middle of each completion's last poll interval, not the
        // interval: biased when polls are sparse, so only a few, oldest first (the ring
        // keeps the newest); what comes next is learned as intervals and soon outweighs them.
        auto secs = needed(co_await repo_.recent_durations(model, restart_samples), "run times");
        auto& m = durations_for(model);
        for (auto it = secs.rbegin(); it != secs.rend(); ++it)
            m.add_sample(*it);
        m.fit();
    }

    if (cluster_) {
        storage::node_identity me;
        me.name = settings_.cluster.node;
        me.host_id = host_identity();
        me.pid = ::getpid();
        me.version = KLINGD_VERSION;
        me.requests_per_minute = settings_.api.requests_per_minute;
        me.takeover = seconds_ms(settings_.cluster.takeover_s);
        me.submit_margin = send_margin();
        me.submit_grace = submit_grace();
        auto asked = now();
        auto joined = co_await cluster_->join(me);
        if (!joined)
            throw std::runtime_error(joined.error().message());
        note_lease(asked, *joined);
        budget_.use_shared_slots(true);
        log::notice("joined the cluster as node {}: claims last {:.0f} s without a heartbeat",
                    me.name, settings_.cluster.takeover_s);
        asio::co_spawn(io_, dispatcher(), log::exit_on_exception);
        asio::co_spawn(io_, flusher(), log::exit_on_exception);
        asio::co_spawn(io_, claimer(), log::exit_on_exception);
        asio::co_spawn(io_, slot_reserver(), log::exit_on_exception);
        asio::co_spawn(io_, follower(), log::exit_on_exception);
        co_return;
    }
    if (auto mark = needed(co_await repo_.meta("imported_into_cluster"), "the import mark"))
        throw std::runtime_error(fmt::format(
            "this database was imported into a cluster ({}): its unfinished jobs are the "
            "cluster's now. Start klingd with that cluster's configuration ([storage] "
            "postgresql); to use this file alone again, remove the mark: sqlite3 {} \"DELETE "
            "FROM meta WHERE key = 'imported_into_cluster'\"",
            *mark, settings_.storage.database));
    auto jobs = needed(co_await repo_.unfinished(), "the unfinished jobs");
    auto changes = take_in(std::move(jobs), nullptr);
    if (auto r = co_await journal_.write(std::move(changes)); !r)
        throw std::runtime_error("cannot record the recovered jobs: " + r.error().message());
    log::info("resumed {} unfinished jobs ({} submitted and unfinished){}", active_.size(),
              in_flight_jobs_, gate_.paused() ? "; submissions are paused" : "");
    asio::co_spawn(io_, dispatcher(), log::exit_on_exception);
    asio::co_spawn(io_, flusher(), log::exit_on_exception);
}

asio::awaitable<void> engine::stop(std::chrono::milliseconds grace) {
    stopping_ = true;
    gate_.set_stopping();
    wake();
    asio::steady_timer t(io_);
    auto until = std::chrono::steady_clock::now() + grace;
    // A submit's answer carries its request id: wait for a POST sent as long as it may take
    // (else the job would wake up "submitting", outcome unknown); other work may be dropped,
    // a submit still connecting too (it stays pending).
    auto submits_until = std::chrono::steady_clock::now() +
                         std::max(grace, std::chrono::milliseconds(static_cast<std::int64_t>(
                                             settings_.api.request_timeout_s * 1000 + 1000)));
    while (true) {
        auto n = std::chrono::steady_clock::now();
        bool others =
            (requests_in_flight_ > posting_submits_ || downloads_in_flight_ > 0) && n < until;
        bool submits = posting_submits_ > 0 && n < submits_until;
        if (!others && !submits)
            break;
        t.expires_after(std::chrono::milliseconds(20));
        boost::system::error_code ec;
        co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    if (posting_submits_ > 0)
        log::warning(
            "stopping with {} submits unanswered; those jobs will be treated as outcome unknown",
            posting_submits_);
    else if (requests_in_flight_ > 0)
        log::warning("stopping with {} API requests still in flight; the next start resumes them",
                     requests_in_flight_);
    journal_.include_lazy();
    // Writes on their way first (a failed durable write defers its change), then what is
    // deferred; each flush waits behind the writes asked before it.
    for (int round = 0; round < 3 && (!committing_.empty() || !journal_.idle()); ++round)
        co_await flush();
    if (cluster_) {
        // The others may take this node's jobs at once, not after takeover_s.
        if (auto r = co_await cluster_->leave(); !r)
            log::warning("cannot release this node's claims: {}; the other nodes take its jobs "
                         "after cluster.takeover_s",
                         r.error().message());
        left_ = true;
        claim_timer_.cancel();
    }
}

void engine::wake() {
    if (armed_until_ == std::chrono::steady_clock::time_point::min())
        return;
    armed_until_ = std::chrono::steady_clock::time_point::min();
    wake_timer_.cancel();
}

void engine::wake_by(core::time_point at) {
    // `at` is wall clock, the timer steady: compare what is left of each.
    if (std::chrono::steady_clock::now() + (at - now()) < armed_until_)
        wake();
}

void engine::schedule(const job& j, work_kind w, core::time_point at) {
    if (w == work_kind::none) {
        queue_.cancel(j.id);
        return;
    }
    if (w == work_kind::submit && holds_back(j)) {
        at = std::max(at, spend_hold_->until); // a spend limit holds it until the day or month ends
        held_by_spend_.insert(j.id);
    }
    core::time_point deadline{};
    if (j.submitted_at)
        deadline = *j.submitted_at + seconds_ms(settings_.jobs.result_retention_s);
    queue_.schedule(j.id, w, at, deadline, j.priority, j.created_at);
}

asio::awaitable<bool> engine::persist(const std::string& id, const core::transition& t) {
    std::optional<storage::history_entry> line;
    if (!t.note.empty())
        line = storage::history_entry{t.next.updated_at, std::string(core::to_string(t.next.state)),
                                      t.note, t.next.request_id};
    switch (t.persist) {
    case core::persist_mode::durable: {
        // Spend: a submission is counted in the commit of its "submitting" (refused there
        // when a limit would be passed), and taken back in the commit of an answer that
        // proves nothing was created.
        std::optional<storage::spend_charge> charge;
        std::optional<std::int64_t> refund;
        auto before = active_.find(id);
        bool answer = before != active_.end() && before->second.state == job_state::submitting &&
                      t.next.state != job_state::submitting;
        if (t.next.state == job_state::submitting)
            charge = charge_for(t.next);
        if (auto c = charged_.find(id); answer && t.submit_created_nothing && c != charged_.end())
            refund = c->second.attempt;
        std::optional<storage::hook_event> event;
        if (core::is_terminal(t.next.state) &&
            (before == active_.end() || !core::is_terminal(before->second.state)))
            event = hook_event_for(t.next);
        committing_.emplace(id, t.next.state);
        auto r = co_await journal_.write_now(t.next, line, charge, refund, std::move(event));
        committing_.erase(id);
        if (r && charge)
            charged_[id] = {charge->attempt, charge->micro};
        // Room made by a submission taken back: the jobs a limit held may fit now (one that
        // does not is refused at its commit and held again).
        if (r && refund && spend_hold_)
            release_spend_hold("a submission taken back");
        if (auto c = charged_.find(id); answer && c != charged_.end()) {
            if (!t.submit_created_nothing)
                stats_.spend_micro[t.next.model] += c->second.micro;
            charged_.erase(c);
        }
        if (!r && r.error() == core::errc::spend_limit) {
            hold_spending(r.error().detail, *charge);
            co_return false; // stays pending, until the limit lifts
        }
        if (!r && r.error() == core::errc::claim_lost)
            co_return false; // dropped: another node's job now
        if (!r) {
            log::error("job {}: cannot record \"{}\" in the database: {}", id, t.note,
                       r.error().message());
            // Nothing may be sent before "submitting" is committed: the caller tries later.
            if (t.next.state == job_state::submitting)
                co_return false;
            journal_.defer(id, std::move(line));
        }
        co_return true;
    }
    case core::persist_mode::batched:
        journal_.defer(id, std::move(line));
        co_return true;
    case core::persist_mode::lazy:
        journal_.defer_lazy(id);
        co_return true;
    case core::persist_mode::none:
        break;
    }
    co_return true;
}

void engine::log_transition(const std::string& id, const core::transition& t) {
    if (!t.log.empty())
        log::info("job {}: {}", id, t.log);
    if (t.note.empty())
        return;
    auto lvl = t.next.state == job_state::failed || t.next.state == job_state::expired
                   ? log::level::warning
                   : log::level::info;
    if (log::enabled(lvl))
        log::write(
            lvl,
            fmt::format("job {}{}: {}", id,
                        t.next.request_id ? fmt::format(" (request {})", *t.next.request_id) : "",
                        t.note));
}

asio::awaitable<bool> engine::apply(std::string id, core::transition t) {
    auto it = active_.find(id);
    if (it == active_.end())
        co_return false;
    if (!t.rejection.empty()) {
        log::debug("job {}: event ignored: {}", id, t.rejection);
        co_return false;
    }
    if (committing_.count(id)) { // computed from a state that is about to change
        log::debug("job {}: event ignored: a change of the job is being recorded", id);
        co_return false;
    }
    scrub(t);
    bool persisted = co_await persist(id, t);
    it = active_.find(id);
    if (it == active_.end())
        co_return false;
    job& j = it->second;
    if (!persisted) {
        schedule(j, work_kind::submit, now() + std::chrono::seconds(5));
        wake();
        co_return false;
    }
    bool was = counts_in_flight(j.state);
    bool is = counts_in_flight(t.next.state);
    if (was && !is)
        --in_flight_jobs_;
    else if (!was && is)
        ++in_flight_jobs_;
    log_transition(id, t);
    if (t.duration_sample) {
        durations_for(t.next.model).add_interval(t.duration_sample->lo, t.duration_sample->hi);
        if (t.next.remote_done_at) {
            stats_.detection_delay_sum_s +=
                std::chrono::duration<double>(t.next.updated_at - *t.next.remote_done_at).count();
            ++stats_.detection_delay_count;
        }
    }

    j = std::move(t.next);
    if (j.state != job_state::pending && j.state != job_state::submitting && !j.params.empty())
        std::string().swap(j.params); // submitted: the body is in the database if ever needed again
    if (on_change)
        on_change(j, t.note);
    if (core::is_terminal(j.state)) {
        ++stats_.finished[std::string(core::to_string(j.state))];
        read_timeouts_.erase(id);
        queue_.cancel(id);
        journal_.retire(j);
        active_.erase(it);
        wake(); // a slot in max_in_flight may be free
    } else {
        schedule(j, t.work, t.not_before);
        if (was != is)
            wake();
        else if (t.work != work_kind::none)
            wake_by(t.not_before);
    }
    co_return true;
}

void engine::scrub(core::transition& t) const {
    // Longest first (a key that holds another is replaced whole); the search goes on after
    // each replacement, so a key found in "[redacted]" cannot loop.
    static constexpr std::string_view mark = "[redacted]";
    auto clean = [&](std::string& s) {
        for (const auto& key : keys_held_)
            for (auto at = s.find(key); at != std::string::npos; at = s.find(key, at + mark.size()))
                s.replace(at, key.size(), mark);
    };
    if (t.next.error)
        clean(*t.next.error);
    clean(t.note);
    clean(t.log);
    clean(t.signal_reason);
}

void engine::note_signal(const core::transition& t, bool from_submit, core::time_point sent_at,
                         bool answered) {
    auto n = now();
    if (t.signal == core::api_signal::rate_limited) {
        ++stats_.rate_limited;
        budget_.on_rate_limited(n, t.rate_limited_until,
                                std::uniform_real_distribution<double>(0, 1)(rng_), sent_at);
        log::info("rate limited (429); sends resume in {:.1f}s, allowed rate now {:.1f}/min",
                  std::chrono::duration<double>(budget_.blocked_until() - n).count(),
                  budget_.allowed_rpm());
        warn_of_expiry_while_blocked(budget_.blocked_until());
        if (cluster_) {
            std::optional<double> lowered;
            if (budget_.allowed_rpm() < budget_.configured_rpm())
                lowered = budget_.allowed_rpm();
            asio::co_spawn(io_, share_block(budget_.blocked_until() - db_offset_, lowered),
                           log::exit_on_exception);
        }
        return;
    }
    if (answered) // a request that failed on the way says nothing about the budget
        budget_.on_answer(n);
    bool was_stopped = gate_.stopped();
    auto line = gate_.on_signal(t.signal, t.signal_reason, n, from_submit);
    if (line.empty())
        return;
    if (gate_.stopped()) {
        log::error("{}", line);
    } else {
        log::notice("{}", line);
        if (was_stopped)
            wake();
    }
}

void engine::warn_of_expiry_while_blocked(core::time_point until) {
    if (until <= warned_block_until_)
        return; // said already
    // A 429 that prolongs a block warned of names only the jobs its extension puts at risk.
    auto said_until = std::max(now(), warned_block_until_);
    warned_block_until_ = until;
    auto retention = settings_.jobs.result_retention_s;
    std::size_t n = 0;
    const job* first = nullptr;
    for (auto& [id, j] : active_)
        if (core::expires_while_blocked(j, until, retention) &&
            !core::expires_while_blocked(j, said_until, retention)) {
            ++n;
            if (!first || *j.submitted_at < *first->submitted_at)
                first = &j;
        }
    if (first)
        log::warning(
            "the API's 429 blocks every send until {}, past the end of retention of {} "
            "job(s) (first: {}, request {}, submitted at {}): they are polled and "
            "fetched first when sends resume, and may expire",
            core::format_rfc3339(until + clock_.wall_offset(), core::time_precision::seconds), n,
            first->id, first->request_id.value_or("?"),
            core::format_rfc3339(*first->submitted_at + clock_.wall_offset(),
                                 core::time_precision::seconds));
}

void engine::count(core::request_kind kind, const core::http_outcome& o) {
    std::string key = o.how == core::http_outcome::transport::ok         ? std::to_string(o.status)
                      : o.how == core::http_outcome::transport::not_sent ? "not_sent"
                                                                         : "lost";
    if (o.too_large)
        key = "too_large";
    ++stats_.requests[kind][key];
    if (kind == core::request_kind::status && o.how != core::http_outcome::transport::not_sent)
        ++stats_.polls;
}

asio::awaitable<void> engine::flush() {
    if (auto r = co_await journal_.flush(); !r)
        log::error("cannot write to the database: {}; will try again", r.error().message());
}

asio::awaitable<void> engine::flusher() {
    asio::steady_timer t(io_);
    while (!stopping_) {
        t.expires_after(flush_interval);
        boost::system::error_code ec;
        co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        co_await flush();
        client_.close_idle(std::chrono::steady_clock::now());
        follow_limits();
    }
}

asio::awaitable<bool> engine::begin_submit(std::string id) {
    auto it = active_.find(id);
    if (it == active_.end())
        co_return false;
    // "submitting" is committed before the POST leaves.
    auto tr = core::advance(it->second, core::ev_submit_begin{}, now(), context_for(it->second));
    co_return co_await apply(id, std::move(tr));
}

asio::awaitable<void> engine::dispatcher() {
    while (!stopping_) {
        auto t = now();
        if (cluster_ && !holds_claims()) {
            // Nothing is sent or downloaded that this node could not record: wait for the
            // heartbeat to renew the claims.
            wake_timer_.expires_after(std::chrono::milliseconds(200));
            armed_until_ = wake_timer_.expiry();
            boost::system::error_code ec;
            co_await wake_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            armed_until_ = std::chrono::steady_clock::time_point::min();
            continue;
        }
        auto action = policy_.next_action(t, counts());
        if (auto* d = std::get_if<core::start_download>(&action)) {
            ++downloads_in_flight_;
            asio::co_spawn(io_, download(d->item.job_id), log::exit_on_exception);
            continue;
        }
        if (auto* r = std::get_if<core::send_request>(&action)) {
            bool submit = r->item.kind == work_kind::submit;
            ++requests_in_flight_;
            if (submit) {
                ++submits_in_flight_;
                ++starting_submits_; // until its "submitting" is committed (send_submit)
            }
            asio::co_spawn(io_, execute(std::move(r->item), t), log::exit_on_exception);
            continue;
        }
        auto at = std::get<core::sleep_until>(action).at;
        wake_timer_.expires_after(at ? policy_.sleep_for(*at, now())
                                     : core::milliseconds(std::chrono::hours(1)));
        armed_until_ = wake_timer_.expiry();
        boost::system::error_code ec;
        co_await wake_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        armed_until_ = std::chrono::steady_clock::time_point::min();
    }
}

asio::awaitable<void> engine::execute(core::dispatch_queue::item item, core::time_point taken_at) {
    struct done_guard {
        engine& e;
        bool submit;
        ~done_guard() {
            --e.requests_in_flight_;
            if (submit)
                --e.submits_in_flight_;
            // A connection is free: only work that waits for one needs the dispatcher now.
            if (e.queue_.ready_budgeted(true) > 0 || e.stopping_)
                e.wake();
        }
    } guard{*this, item.kind == work_kind::submit};

    auto sent = std::chrono::steady_clock::now();
    if (item.kind == work_kind::submit)
        co_await send_submit(item.job_id, taken_at);
    else if (active_.count(item.job_id))
        co_await send_get(item.job_id, item.kind == work_kind::poll, taken_at);
    // How long a request holds its slot (connecting, the exchange, recording its
    // answer), for the automatic number of slots and so connections: Little's law
    // wants the whole time a slot is taken. A slow moving average: one slow answer
    // does not open many connections.
    answer_s_ +=
        0.05 * (std::chrono::duration<double>(std::chrono::steady_clock::now() - sent).count() -
                answer_s_);
}

asio::awaitable<std::string> engine::submit_body(std::string id, std::string params) {
    if (!params.empty())
        co_return params;
    auto stored = co_await repo_.params_of(id);
    if (!stored)
        log::error("job {}: cannot read its parameters: {}", id, stored.error().message());
    co_return stored ? std::move(*stored) : std::string();
}

asio::awaitable<void> engine::send_submit(std::string id, core::time_point taken_at) {
    // Counted as in flight from the dispatch until "submitting" is committed or put off.
    struct starting_guard {
        std::size_t& n;
        bool held = true;
        void release() {
            if (held)
                --n;
            held = false;
        }
        ~starting_guard() { release(); }
    } starting{starting_submits_};
    // Stopping: no POST may start now, as its answer might not be waited for (the
    // job stays pending, in memory and in the database).
    auto it = active_.find(id);
    if (stopping_ || it == active_.end())
        co_return;
    // All that may fail before the send comes before "submitting": the body, a
    // connection and its TLS handshake. What fails here never left; the job stays pending.
    std::string body = co_await submit_body(id, it->second.params);
    it = active_.find(id);
    if (it == active_.end())
        co_return;
    // Local inputs: uploaded first, one upload per dispatch (it spends this turn's budget
    // slot), their hosted URLs recorded before the submit that sends them.
    if (!body.empty() && !core::local_refs(it->second.model, body).empty()) {
        auto ready = co_await prepare_inputs(id, std::move(body), taken_at);
        it = active_.find(id);
        if (!ready || stopping_ || it == active_.end())
            co_return;
        body = std::move(*ready);
    }
    auto u = base_.with_target(fmt::format("/v2/{}", it->second.model));
    http_client::prepared conn;
    if (!body.empty() && !stopping_)
        conn = co_await client_.prepare(u, true);
    it = active_.find(id);
    if (stopping_ || it == active_.end())
        co_return;
    if (body.empty() || !conn) {
        if (!body.empty())
            count(core::request_kind::submit, conn.failure()); // not sent, as before
        std::string why = body.empty() ? "the job's parameters could not be read from the database"
                                       : conn.failure().message;
        core::event ev = core::ev_submit_deferred{std::move(why)};
        auto tr = core::advance(it->second, ev, now(), context_for(it->second));
        starting.release();
        co_await apply(id, std::move(tr));
        co_return;
    }
    bool began = co_await begin_submit(id); // "submitting" is committed before the POST leaves
    starting.release();
    it = active_.find(id);
    if (!began || it == active_.end())
        co_return;
    if (stopping_ || !holds_claims()) {
        // Nothing is sent: back to pending. Stopping: to be tried again after the restart.
        // Cluster: the claim may lapse before the answer could come (the database went
        // away, or this node was held up since the dispatch).
        core::http_outcome not_sent;
        not_sent.how = core::http_outcome::transport::not_sent;
        not_sent.message = stopping_ ? "klingd is stopping"
                                     : "this node's claim on the job may lapse before an answer";
        core::event ev = core::ev_submit_answer{std::move(not_sent)};
        auto tr = core::advance(it->second, ev, now(), context_for(it->second));
        co_await apply(id, std::move(tr));
        co_return;
    }
    // The send itself, nothing awaited before it on a connection still fresh.
    header_list headers;
    headers.emplace_back("x-api-key", settings_.api_key.reveal());
    ++posting_submits_; // what stop() waits for: its answer carries the request id
    // Cluster: the heartbeat renews the claim while the answer is awaited (also while
    // stopping). Should the database go away meanwhile and the claim lapse, another node
    // finds the job "submitting" and follows jobs.resubmit_unknown, as after a crash.
    auto out = co_await client_.request(http::verb::post, u, std::move(body), std::move(headers),
                                        settings_.api.max_result_bytes, std::move(conn));
    --posting_submits_;
    count(core::request_kind::submit, out);
    bool out_answered = out.how == core::http_outcome::transport::ok;
    it = active_.find(id);
    if (it == active_.end())
        co_return;
    core::event ev = core::ev_submit_answer{std::move(out)};
    auto tr = core::advance(it->second, ev, now(), context_for(it->second));
    scrub(tr); // before the gate keeps or logs its reason
    note_signal(tr, true, taken_at, out_answered);
    co_await apply(id, std::move(tr));
}

namespace {

// params with every string that names an uploaded input replaced by its hosted URL.
std::string with_hosted_urls(const std::string& params,
                             const std::vector<core::local_input>& inputs) {
    boost::system::error_code ec;
    auto v = boost::json::parse(params, ec);
    if (ec)
        return params;
    std::function<void(boost::json::value&)> walk = [&](boost::json::value& x) {
        if (x.is_string()) {
            for (auto& in : inputs)
                if (in.hosted && x.as_string() == in.url)
                    x = *in.hosted;
        } else if (x.is_array()) {
            for (auto& e : x.as_array())
                walk(e);
        } else if (x.is_object()) {
            for (auto& kv : x.as_object())
                walk(kv.value());
        }
    };
    walk(v);
    return core::canonical_json(v);
}

// The upload body of in, for a pool thread: owns what it reads; running out of memory
// is an answer, not an exception.
std::function<core::result<std::string>()> upload_reader(core::local_input in,
                                                         config::inputs_settings cfg) {
    return [in = std::move(in), cfg = std::move(cfg)]() -> core::result<std::string> {
        try {
            return upload_body(in, cfg);
        } catch (const std::bad_alloc&) {
            return core::error(core::errc::invalid_job,
                               fmt::format("input \"{}\" ({} bytes) does not fit in memory to "
                                           "be encoded for its upload",
                                           in.url, in.bytes));
        }
    };
}

// check_local_inputs for a pool thread, owning its arguments.
std::function<core::result<std::vector<core::local_input>>()>
inputs_checker(std::vector<core::local_ref> refs, config::inputs_settings cfg,
               std::optional<submitter> who) {
    return [refs = std::move(refs), cfg = std::move(cfg), who = std::move(who)]() {
        return check_local_inputs(refs, cfg, who);
    };
}

} // namespace

asio::awaitable<core::result<std::vector<core::local_input>>>
engine::check_inputs(std::vector<core::local_ref> refs, std::optional<submitter> who) {
    auto out = co_await input_work_.run<core::result<std::vector<core::local_input>>>(
        inputs_checker(std::move(refs), settings_.inputs, std::move(who)), input_work_deadline);
    if (!out) // not the job's fault: io_failed, not invalid_job
        co_return core::error(
            core::errc::io_failed,
            fmt::format("its local files could not be checked within {} s (a slow or hung file "
                        "system, or too much to read: inputs.max_bytes); submit it again",
                        input_work_deadline.count()));
    co_return std::move(*out);
}

asio::awaitable<std::optional<std::string>>
engine::prepare_inputs(std::string id, std::string params, core::time_point taken_at) {
    auto put_off = [&](std::string why) -> asio::awaitable<void> {
        auto it = active_.find(id);
        if (it == active_.end())
            co_return;
        core::event ev = core::ev_submit_deferred{std::move(why)};
        auto tr = core::advance(it->second, ev, now(), context_for(it->second));
        co_await apply(id, std::move(tr));
    };
    auto inputs = co_await repo_.inputs_of(id);
    if (!inputs) {
        co_await put_off(fmt::format("its local inputs cannot be read from the database: {}",
                                     inputs.error().message()));
        co_return std::nullopt;
    }
    // Every file:// URL of params must have been checked at intake (a job taken in by an
    // older klingd has none): never sent as it is, never read unchecked.
    if (auto it = active_.find(id); it != active_.end())
        for (auto& ref : core::local_refs(it->second.model, params))
            if (std::none_of(inputs->begin(), inputs->end(),
                             [&](auto& in) { return in.url == ref.url; })) {
                core::event ev = core::ev_input_failed{fmt::format(
                    "{} names a local file that was not checked when the job was taken in; "
                    "submit the job again",
                    ref.where)};
                auto tr = core::advance(it->second, ev, now(), context_for(it->second));
                co_await apply(id, std::move(tr));
                co_return std::nullopt;
            }
    auto wall = clock_.to_wall(now());
    for (auto& in : *inputs) {
        if (in.hosted)
            continue;
        // The same content uploaded within a day: its hosted URL again, no request spent.
        auto cached = co_await repo_.cached_upload(in.sha256, wall - std::chrono::hours(24));
        if (cached && *cached) {
            auto r = co_await repo_.record_upload(id, in.url, in.sha256, **cached, wall, false);
            if (!r) {
                co_await put_off(fmt::format("the hosted URL of {} cannot be recorded: {}", in.url,
                                             r.error().message()));
                co_return std::nullopt;
            }
            log::info("job {}: {} has the content of an upload of the last day: {}", id, in.url,
                      **cached);
            in.hosted = **cached;
            continue;
        }
        // The same content being uploaded for another job: its URL, once recorded, serves
        // this one too.
        if (uploading_.count(in.sha256)) {
            if (auto it = active_.find(id); it != active_.end() && !stopping_) {
                schedule(it->second, work_kind::submit, now() + std::chrono::seconds(1));
                wake();
            }
            co_return std::nullopt;
        }
        auto u = core::http_url::parse(settings_.inputs.upload_url);
        if (!u) {
            co_await put_off(
                fmt::format("inputs.upload_url is not usable: {}", u.error().message()));
            co_return std::nullopt;
        }
        // From the read on, another job with the same content waits for this upload.
        struct uploading_guard {
            std::set<std::string>& set;
            std::string sha;
            ~uploading_guard() { set.erase(sha); }
        } guard{uploading_, in.sha256};
        uploading_.insert(in.sha256);
        // Read and encoded off the loop: a large file or a slow mount stalls no other job.
        auto body = co_await input_work_.run<core::result<std::string>>(
            upload_reader(in, settings_.inputs), input_work_deadline);
        if (!body) {
            // A file that hangs every time fails its job rather than holding it (and a
            // worker thread) for ever.
            if (++read_timeouts_[id] >= max_read_timeouts) {
                read_timeouts_.erase(id);
                if (auto it = active_.find(id); it != active_.end() && !stopping_) {
                    core::event ev = core::ev_input_failed{fmt::format(
                        "reading {} for its upload did not end within {} s, {} times (a slow "
                        "or hung file system?)",
                        in.url, input_work_deadline.count(), max_read_timeouts)};
                    auto tr = core::advance(it->second, ev, now(), context_for(it->second));
                    co_await apply(id, std::move(tr));
                }
                co_return std::nullopt;
            }
            co_await put_off(fmt::format(
                "reading {} for its upload did not end within {} s (a slow or hung file "
                "system?); tried again later",
                in.url, input_work_deadline.count()));
            co_return std::nullopt;
        }
        read_timeouts_.erase(id);
        if (stopping_ || !active_.count(id))
            co_return std::nullopt; // cancelled (or klingd stopping) while it was read
        if (!*body) {
            auto it = active_.find(id);
            core::event ev = core::ev_input_failed{body->error().detail};
            auto tr = core::advance(it->second, ev, now(), context_for(it->second));
            co_await apply(id, std::move(tr));
            co_return std::nullopt;
        }
        header_list headers;
        headers.emplace_back("x-api-key", settings_.api_key.reveal());
        auto out = co_await client_.request(http::verb::post, *u, std::move(**body),
                                            std::move(headers), settings_.api.max_result_bytes);
        count(core::request_kind::upload, out);
        bool answered = out.how == core::http_outcome::transport::ok;
        std::string hosted =
            answered && out.status >= 200 && out.status < 300 ? hosted_url_of(out.body) : "";
        if (!hosted.empty()) {
            core::transition ok;
            ok.signal = core::api_signal::accepted;
            note_signal(ok, true, taken_at, true);
            auto r = co_await repo_.record_upload(id, in.url, in.sha256, hosted,
                                                  clock_.to_wall(now()), true);
            if (!r)
                log::warning("job {}: {} was uploaded as {} but that cannot be recorded ({}): it "
                             "is uploaded again later",
                             id, in.url, hosted, r.error().message());
            else
                log::info("job {}: {} uploaded ({} bytes, {}) as {}", id, in.url, in.bytes, in.mime,
                          hosted);
        } else {
            auto it = active_.find(id);
            if (it == active_.end())
                co_return std::nullopt;
            core::event ev = core::ev_upload_answer{std::move(out), in.url};
            auto tr = core::advance(it->second, ev, now(), context_for(it->second));
            scrub(tr);
            note_signal(tr, true, taken_at, answered);
            co_await apply(id, std::move(tr));
            co_return std::nullopt;
        }
        // This turn's slot is spent: the next input, or the submit, takes another.
        if (auto it = active_.find(id); it != active_.end() && !stopping_) {
            it->second.error.reset();
            schedule(it->second, work_kind::submit, now());
            wake();
        }
        co_return std::nullopt;
    }
    co_return with_hosted_urls(params, *inputs);
}

asio::awaitable<core::result<std::vector<storage::hook_delivery>>>
engine::deliveries_of(std::string id) {
    co_await flush(); // a final state deferred: its deliveries go with it
    co_return co_await repo_.deliveries_of(std::move(id));
}

asio::awaitable<core::result<std::map<std::string, std::int64_t>>> engine::delivery_counts() {
    co_return co_await repo_.delivery_counts();
}

std::optional<storage::hook_event> engine::hook_event_for(const core::job& next) const {
    const auto& h = settings_.hooks;
    if (!h.any() || !core::is_terminal(next.state))
        return std::nullopt;
    storage::hook_event e;
    e.state = std::string(core::to_string(next.state));
    e.type = "job." + e.state;
    e.at = clock_.to_wall(now());
    auto wall = core::shifted(next, clock_.wall_offset());
    wall.params.clear();
    wall.result.reset();
    boost::json::object o;
    o["type"] = e.type;
    o["timestamp"] = core::format_rfc3339(e.at);
    o["data"] = job_to_json(wall);
    e.payload = boost::json::serialize(o);
    if (!h.command.empty())
        e.targets.push_back("command");
    if (!h.webhook_url.empty())
        e.targets.push_back("webhook");
    return e;
}

asio::awaitable<void> engine::send_get(std::string id, bool poll, core::time_point taken_at) {
    job& j = active_.find(id)->second;
    if (core::past_retention(j, now(), settings_.jobs.result_retention_s) && !j.result) {
        auto tr = core::advance(j, core::ev_expire{}, now(), context_for(j));
        co_await apply(id, std::move(tr));
        co_return;
    }
    // The URL the answer gave, where the key may go; else the API's own.
    const auto& target = poll ? j.status_url : j.response_url;
    auto parsed = target ? core::http_url::parse(*target)
                         : core::result<core::http_url>(core::error(core::errc::url_malformed));
    auto u = parsed && core::may_carry_api_key(*parsed, base_)
                 ? *parsed
                 : base_.with_target(fmt::format("/v2/requests/{}{}", j.request_id.value_or(""),
                                                 poll ? "/status" : ""));
    header_list headers;
    headers.emplace_back("x-api-key", settings_.api_key.reveal());
    auto out = co_await client_.request(http::verb::get, u, std::string(), std::move(headers),
                                        settings_.api.max_result_bytes);
    count(poll ? core::request_kind::status : core::request_kind::result, out);
    bool out_answered = out.how == core::http_outcome::transport::ok;
    auto it = active_.find(id);
    if (it == active_.end())
        co_return;
    core::event ev = poll ? core::event{core::ev_poll_answer{std::move(out)}}
                          : core::event{core::ev_result_answer{std::move(out)}};
    auto tr = core::advance(it->second, ev, now(), context_for(it->second));
    scrub(tr);
    note_signal(tr, false, taken_at, out_answered);
    co_await apply(id, std::move(tr));
}

asio::awaitable<void> engine::download(std::string id) {
    struct done_guard {
        engine& e;
        ~done_guard() {
            --e.downloads_in_flight_;
            e.wake();
        }
    } guard{*this};

    auto it = active_.find(id);
    if (it == active_.end() || !it->second.result)
        co_return;
    auto ev = co_await downloader_.fetch(id, *it->second.result);
    if (std::holds_alternative<core::ev_download_done>(ev))
        ++stats_.downloads_ok;
    else
        ++stats_.downloads_failed;
    it = active_.find(id);
    if (it == active_.end())
        co_return;
    auto tr = core::advance(it->second, ev, now(), context_for(it->second));
    co_await apply(id, std::move(tr));
}

asio::awaitable<core::result<std::vector<storage::insert_outcome>>>
engine::add_jobs(std::vector<core::job_spec> specs, std::vector<std::string> sources) {
    auto t = now();
    auto outcomes = co_await repo_.insert(specs, clock_.to_wall(t), std::move(sources));
    if (!outcomes)
        co_return outcomes;
    for (std::size_t i = 0; i < specs.size(); ++i) {
        switch ((*outcomes)[i]) {
        case storage::insert_outcome::inserted: {
            ++stats_.intake_accepted;
            if (cluster_) {
                // One queue for the cluster: whichever node has room claims it.
                job j;
                j.id = specs[i].id;
                j.model = specs[i].model;
                j.priority = specs[i].priority;
                j.created_at = t;
                j.updated_at = t;
                if (on_change)
                    on_change(j, "accepted");
                wake_claimer();
                break;
            }
            job j;
            j.id = specs[i].id;
            j.model = specs[i].model;
            j.params = specs[i].params;
            j.priority = specs[i].priority;
            j.created_at = t;
            j.updated_at = t;
            // Prompts can be private: a job's content is logged only at log_level = "debug".
            log::debug("job {}: model {}, priority {}, params {}", j.id, j.model, j.priority,
                       j.params);
            auto [it, fresh] = active_.emplace(j.id, std::move(j));
            if (!fresh)
                break;
            schedule(it->second, work_kind::submit, t);
            if (on_change)
                on_change(it->second, "accepted");
            break;
        }
        case storage::insert_outcome::same_content:
            ++stats_.intake_duplicates;
            break;
        case storage::insert_outcome::conflict:
            ++stats_.intake_conflicts;
            break;
        }
    }
    wake();
    co_return outcomes;
}

asio::awaitable<core::result<std::optional<job>>> engine::find(std::string id) {
    if (auto it = active_.find(id); it != active_.end())
        co_return to_wall(it->second);
    // Finished, its last state not in the database yet (a failed write waits for the flush).
    if (const job* r = journal_.retired(id))
        co_return to_wall(*r);
    co_return co_await repo_.get(id);
}

asio::awaitable<core::result<std::vector<job>>> engine::list(storage::job_filter f) {
    co_await flush();
    auto jobs = co_await repo_.list(std::move(f));
    if (!jobs)
        co_return jobs;
    for (auto& j : *jobs) {
        const job* now = nullptr;
        if (auto it = active_.find(j.id); it != active_.end())
            now = &it->second;
        else
            now = journal_.retired(j.id);
        if (now) {
            j = to_wall(*now);
            std::string().swap(j.params); // lists carry no params
        }
    }
    co_return jobs;
}

asio::awaitable<core::result<std::vector<storage::history_entry>>> engine::history(std::string id) {
    co_await flush();
    co_return co_await repo_.history(std::move(id));
}

asio::awaitable<core::result<std::map<std::string, std::int64_t>>> engine::count_by_state() {
    auto counts = co_await count_by_state_and_model();
    if (!counts)
        co_return counts.error();
    std::map<std::string, std::int64_t> out;
    for (auto& [key, n] : *counts)
        out[key.first] += n;
    co_return out;
}

asio::awaitable<core::result<storage::state_model_counts>> engine::count_by_state_and_model() {
    co_await flush();
    co_return co_await repo_.counts();
}

double engine::oldest_pending_age_s() {
    std::optional<core::time_point> oldest;
    for (auto& [id, j] : active_)
        if (j.state == job_state::pending && (!oldest || j.created_at < *oldest))
            oldest = j.created_at;
    return oldest ? std::chrono::duration<double>(now() - *oldest).count() : 0.0;
}

asio::awaitable<core::result<std::int64_t>> engine::prune(core::time_point finished_before) {
    if (pruning_)
        co_return core::error(core::errc::wrong_state, "housekeeping is pruning already");
    pruning_ = true;
    struct prune_done {
        bool& b;
        ~prune_done() { b = false; }
    } done{pruning_};
    // A retry under way read its finished job before this began: it is written first.
    // Retries are short (one read, one write); one that takes longer than this is
    // waited for at the next round instead.
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    asio::steady_timer wait(co_await asio::this_coro::executor);
    while (retries_running_ > 0 && !stopping_) {
        if (std::chrono::steady_clock::now() >= until)
            co_return core::error(
                core::errc::wrong_state,
                "a retry is still being written; pruning waits for the next round");
        wait.expires_after(std::chrono::milliseconds(20));
        boost::system::error_code ec;
        co_await wait.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    co_await flush(); // a final state still deferred is written (and judged) first
    constexpr std::size_t batch = 1000;
    std::int64_t total = 0;
    for (;;) {
        auto n = co_await repo_.prune(finished_before, clock_.wall_now(), batch);
        if (!n)
            co_return n.error();
        total += *n;
        if (*n < static_cast<std::int64_t>(batch) || stopping_)
            break;
    }
    co_return total;
}

engine::forecast_view engine::forecast_of(const storage::state_model_counts& counts) {
    forecast_view v;
    core::forecast_input in;
    std::set<std::string> models;
    for (auto& [key, n] : counts) {
        auto& [state, model] = key;
        if (state == "pending" || state == "submitting")
            in.waiting += n;
        else if (state == "queued" || state == "processing")
            in.running += n;
        else
            continue;
        models.insert(model);
        if (state == "pending")
            if (auto m = settings_.models.find(model); m != settings_.models.end())
                v.cost_micro += n * m->second.price_micro;
    }
    // Requests a job, as this klingd has spent them: every submit, poll and result fetch
    // over the results fetched; 3 until 10 results say otherwise.
    std::uint64_t sent = 0, results = 0;
    for (auto& [kind, codes] : stats_.requests) {
        if (kind == core::request_kind::upload)
            continue;
        for (auto& [code, n] : codes) {
            sent += n;
            if (kind == core::request_kind::result && code.size() == 3 && code[0] == '2')
                results += n;
        }
    }
    if (results >= 10)
        v.requests_per_job = static_cast<double>(sent) / static_cast<double>(results);
    in.requests_per_job = v.requests_per_job;
    in.allowed_rpm = budget_.allowed_rpm();
    in.run_s = 0;
    for (auto& m : models)
        in.run_s = std::max(in.run_s, durations_for(m).median());
    in.max_in_flight = limits().max_in_flight;
    v.f = core::make_forecast(in);
    return v;
}

double engine::oldest_unfetched_age_s() {
    std::optional<core::time_point> oldest;
    for (auto& [id, j] : active_)
        if (j.submitted_at && !j.result && !core::is_terminal(j.state) &&
            (!oldest || *j.submitted_at < *oldest))
            oldest = *j.submitted_at;
    return oldest ? std::chrono::duration<double>(now() - *oldest).count() : 0.0;
}

namespace {
core::error no_such_job(const std::string& id) {
    return {core::errc::job_not_found, fmt::format("no job \"{}\"", id.substr(0, 128))};
}
} // namespace

asio::awaitable<core::result<std::optional<job>>> engine::inactive_job(std::string id) {
    if (const job* r = journal_.retired(id))
        co_return *r; // its last state, not yet in the database
    auto stored = co_await repo_.get(id);
    if (stored && *stored)
        **stored = core::shifted(std::move(**stored), -clock_.wall_offset());
    co_return stored;
}

namespace {
core::error being_recorded(const std::string& id, job_state next) {
    return {core::errc::wrong_state,
            fmt::format("job {} is being recorded as {}", id, core::to_string(next))};
}
} // namespace

asio::awaitable<core::result<job>> engine::existing(std::string id) {
    auto j = co_await find(id);
    if (!j)
        co_return j.error();
    if (!*j)
        co_return no_such_job(id);
    co_return std::move(**j);
}

asio::awaitable<core::result<job>> engine::cancel(std::string id) {
    if (auto c = committing_.find(id); c != committing_.end())
        co_return being_recorded(id, c->second);
    auto it = active_.find(id);
    if (it == active_.end()) {
        auto stored = co_await inactive_job(id);
        if (!stored)
            co_return stored.error();
        if (!*stored)
            co_return no_such_job(id);
        auto& s = **stored;
        auto why = core::advance(s, core::ev_cancel{}, now(), context_for(s)).rejection;
        if (!cluster_ || !why.empty())
            co_return core::error(
                core::errc::wrong_state,
                why.empty() ? fmt::format("job {} is {}", id, core::to_string(s.state)) : why);
        // Cluster: a pending job another node may hold. Take it if nobody does, else ask
        // its holder, which cancels it at its next heartbeat.
        auto got = co_await cluster_->claim_one(id);
        if (!got)
            co_return got.error();
        if (!*got) {
            if (auto asked = co_await cluster_->request_cancel(id); !asked)
                co_return asked.error();
            asio::steady_timer wait(io_);
            auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
            while (std::chrono::steady_clock::now() < until) {
                wait.expires_after(std::chrono::milliseconds(100));
                boost::system::error_code ec;
                co_await wait.async_wait(asio::redirect_error(asio::use_awaitable, ec));
                auto now_stored = co_await repo_.get(id);
                if (!now_stored || !*now_stored || (*now_stored)->state == job_state::pending)
                    continue;
                if ((*now_stored)->state == job_state::cancelled)
                    co_return core::shifted(std::move(**now_stored), -clock_.wall_offset());
                co_return core::error(core::errc::wrong_state,
                                      fmt::format("job {} is {} now: node {} sent it before the "
                                                  "cancel reached it",
                                                  id, core::to_string((*now_stored)->state),
                                                  (*now_stored)->node.value_or("?")));
            }
            co_return core::error(core::errc::wrong_state,
                                  fmt::format("job {} is held by another node, which was asked "
                                              "to cancel it and has not yet",
                                              id));
        }
        std::vector<job> claimed;
        claimed.push_back(std::move(**got));
        co_await adopt(std::move(claimed), "claimed to cancel");
        it = active_.find(id);
        if (it == active_.end())
            co_return core::error(core::errc::wrong_state,
                                  fmt::format("job {} is no longer pending", id));
    }
    auto tr = core::advance(it->second, core::ev_cancel{}, now(), context_for(it->second));
    if (!tr.rejection.empty())
        co_return core::error(core::errc::wrong_state, tr.rejection);
    co_await apply(id, std::move(tr));
    co_return co_await existing(id);
}

asio::awaitable<core::result<job>> engine::retry(std::string id) {
    if (auto c = committing_.find(id); c != committing_.end())
        co_return being_recorded(id, c->second);
    auto rejected_while_active = [&]() -> core::error {
        auto& a = active_.find(id)->second;
        return {core::errc::wrong_state,
                core::advance(a, core::ev_retry{}, now(), context_for(a)).rejection};
    };
    if (active_.count(id))
        co_return rejected_while_active();
    // A finished job read here could be pruned before its retry is written: housekeeping
    // and retries take turns (prune waits for the retries under way).
    if (pruning_)
        co_return core::error(core::errc::wrong_state,
                              fmt::format("job {} cannot be retried while housekeeping prunes "
                                          "old finished jobs; try again in a few seconds",
                                          id));
    ++retries_running_;
    struct retry_done {
        std::size_t& n;
        ~retry_done() { --n; }
    } done{retries_running_};
    auto stored = co_await inactive_job(id);
    if (!stored)
        co_return stored.error();
    if (!*stored)
        co_return no_such_job(id);
    if (active_.count(id)) // retried by another request meanwhile
        co_return rejected_while_active();
    auto tr = core::advance(**stored, core::ev_retry{}, now(), context_for(**stored));
    if (!tr.rejection.empty())
        co_return core::error(core::errc::wrong_state, tr.rejection);
    if (cluster_) {
        // Cluster: this node takes the finished job's claim, and its retry is written under it.
        auto got = co_await cluster_->claim_one(id);
        if (!got)
            co_return got.error();
        if (!*got || active_.count(id))
            co_return core::error(core::errc::wrong_state,
                                  fmt::format("job {} was just taken by another node", id));
        auto mine = core::shifted(std::move(**got), -clock_.wall_offset());
        tr = core::advance(mine, core::ev_retry{}, now(), context_for(mine));
        if (!tr.rejection.empty())
            co_return core::error(core::errc::wrong_state, tr.rejection);
        active_.emplace(id, std::move(mine));
        co_await apply(id, std::move(tr));
        co_return co_await existing(id);
    }
    active_.emplace(id, **stored);
    co_await apply(id, std::move(tr));
    co_return co_await existing(id);
}

void engine::hold_key() {
    const auto& key = settings_.api_key.reveal();
    if (!key.empty() && std::find(keys_held_.begin(), keys_held_.end(), key) == keys_held_.end())
        keys_held_.push_back(key);
    std::sort(keys_held_.begin(), keys_held_.end(),
              [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
}

void engine::use_limits(const core::dispatch_limits& l) {
    policy_.set_limits(l);
    client_.set_max_idle_per_origin(l.max_requests);
}

void engine::follow_limits() {
    auto l = limits();
    const auto& in_use = policy_.limits();
    if (l.max_requests == in_use.max_requests && l.max_in_flight == in_use.max_in_flight &&
        l.max_submits == in_use.max_submits)
        return;
    log::debug("limits now: {} connections, {} submits, {} jobs in flight (answers take {:.3f} s)",
               l.max_requests, l.max_submits, l.max_in_flight, answer_s_);
    use_limits(l);
    wake(); // more room may let work go now
}

void engine::reconfigure() {
    hold_key(); // an answer to a request sent with the old key may still come
    budget_.reconfigure(settings_.api.requests_per_minute,
                        core::wake_tick(settings_.jobs.min_poll_interval_s));
    if (cluster_) // the cluster paces at the smallest rate of its live nodes
        cluster_->set_node_settings(settings_.api.requests_per_minute, submit_grace());
    planner_.set_policy({settings_.jobs.min_poll_interval_s, settings_.jobs.max_poll_interval_s,
                         settings_.jobs.result_retention_s});
    use_limits(limits());
    gate_.set_probe_interval(seconds_ms(settings_.jobs.max_poll_interval_s));
    for (auto& [slug, m] : settings_.models)
        durations_for(slug).set_prior(m.expected_duration_s);
    // New limits or prices: the jobs a spend limit held try again now (one still over a
    // limit is refused at its commit, and held again).
    release_spend_hold("the reload");
    // A new key may be the fix for a 401: probe at once.
    gate_.probe_now(now());
    wake();
}

asio::awaitable<core::result<void>> engine::set_paused(bool paused) {
    // Recorded first, then in force: what the caller is told is what the database says,
    // and (cluster) a heartbeat that read the old value meanwhile does not undo it.
    ++pause_writes_;
    std::string value = paused ? "1" : "0";
    auto r = co_await repo_.set_meta("paused", std::move(value));
    --pause_writes_;
    ++pause_epoch_;
    if (!r && cluster_) {
        log::error("cannot record that submissions are {}: {}", paused ? "paused" : "resumed",
                   r.error().message());
        co_return r; // the cluster's state is the database's: nothing changed
    }
    if (!r) // one host: an emergency brake works anyway, until a restart
        log::error("cannot record that submissions are {} ({}): in force until klingd restarts",
                   paused ? "paused" : "resumed", r.error().message());
    if (gate_.paused() != paused) {
        gate_.set_paused(paused);
        log::notice("submissions {}", paused ? "paused" : "resumed");
        wake();
    }
    co_return core::result<void>{};
}

} // namespace klingd::daemon

namespace klingd::daemon {} // namespace klingd::daemon

namespace klingd::daemon {

const std::string& engine::node_name() const {
    static const std::string none;
    return cluster_ ? cluster_->node_name() : none;
}

std::chrono::milliseconds engine::send_margin() const {
    // A request goes only while the claims outlive it: its timeout, or half the takeover
    // time when that is shorter (the heartbeat renews them every second).
    return std::min(seconds_ms(settings_.api.request_timeout_s),
                    seconds_ms(settings_.cluster.takeover_s / 2));
}

std::chrono::milliseconds engine::submit_grace() const {
    // A POST under way takes at most the timeout; its answer is recorded within the
    // database's deadline (10 s) after that.
    return seconds_ms(settings_.api.request_timeout_s) + std::chrono::seconds(10);
}

bool engine::holds_claims() const {
    // Cut off from the database (the last heartbeat failed), nothing it sends could be
    // recorded: it stops at once, not when its claims are about to lapse.
    return !cluster_ || (db_problem_.empty() && lease_until_ - now() >= send_margin());
}

std::optional<storage::spend_charge> engine::charge_for(const core::job& j) const {
    auto m = settings_.models.find(j.model);
    if (m == settings_.models.end() || m->second.price_micro <= 0)
        return std::nullopt;
    auto wall = clock_.to_wall(now());
    storage::spend_charge c;
    c.model = j.model;
    c.micro = m->second.price_micro;
    c.attempt = j.attempts;
    c.at = wall;
    c.day_start = utc_day_start(wall);
    c.month_start = utc_month_start(wall);
    c.daily_limit = settings_.spend.daily_limit_micro;
    c.monthly_limit = settings_.spend.monthly_limit_micro;
    return c;
}

void engine::release_spend_hold(const char* why) {
    if (!spend_hold_ && held_by_spend_.empty())
        return;
    spend_hold_.reset();
    std::size_t n = 0;
    for (auto& id : held_by_spend_)
        if (auto it = active_.find(id);
            it != active_.end() && it->second.state == job_state::pending) {
            schedule(it->second, work_kind::submit, now());
            ++n;
        }
    held_by_spend_.clear();
    if (n > 0)
        log::notice("spend: the hold ends with {}: {} pending job(s) try again", why, n);
    wake();
}

void engine::hold_spending(const std::string& detail, const storage::spend_charge& refused) {
    std::istringstream in(detail);
    std::string limit;
    spend_hold h;
    in >> limit >> h.today >> h.month;
    h.kind = limit == "monthly_limit" ? storage::spend_limit_kind::monthly
                                      : storage::spend_limit_kind::daily;
    // The end of the day or month whose totals refused it (not of the time the refusal was
    // committed, which may be just past midnight).
    auto end = h.kind == storage::spend_limit_kind::daily ? refused.day_start + std::chrono::days(1)
                                                          : utc_month_end(refused.day_start);
    h.until = clock_.from_wall(end);
    bool fresh = !spend_hold_ || spend_hold_->kind != h.kind || spend_hold_->until != h.until ||
                 now() >= spend_hold_->until;
    spend_hold_ = h;
    if (fresh) {
        auto name = h.kind == storage::spend_limit_kind::daily ? "spend.daily_limit"
                                                               : "spend.monthly_limit";
        auto cap = h.kind == storage::spend_limit_kind::daily ? settings_.spend.daily_limit_micro
                                                              : settings_.spend.monthly_limit_micro;
        log::warning(
            "spend: {} ({}) reached ({} spent {}); priced submissions wait until {} "
            "(UTC), or a reload that raises it",
            name, core::money_text(cap),
            core::money_text(h.kind == storage::spend_limit_kind::daily ? h.today : h.month),
            h.kind == storage::spend_limit_kind::daily ? "today" : "this month",
            core::format_rfc3339(end, core::time_precision::seconds));
    }
    for (auto& [id, j] : active_)
        if (j.state == job_state::pending && holds_back(j))
            schedule(j, work_kind::submit, now());
}

std::optional<spend_hold> engine::spend_held() const {
    if (!spend_hold_ || now() >= spend_hold_->until)
        return std::nullopt;
    return spend_hold_;
}

bool engine::holds_back(const core::job& j) const {
    if (!spend_hold_ || now() >= spend_hold_->until)
        return false;
    auto m = settings_.models.find(j.model);
    if (m == settings_.models.end() || m->second.price_micro <= 0)
        return false; // unpriced: never held
    auto price = m->second.price_micro;
    const auto& sp = settings_.spend;
    return (sp.daily_limit_micro > 0 && spend_hold_->today + price > sp.daily_limit_micro) ||
           (sp.monthly_limit_micro > 0 && spend_hold_->month + price > sp.monthly_limit_micro);
}

asio::awaitable<core::result<storage::spend_totals>> engine::spend_totals() {
    auto wall = clock_.to_wall(now());
    co_return co_await repo_.spend(utc_day_start(wall), utc_month_start(wall));
}

double engine::lease_left_s() const {
    return std::chrono::duration<double>(lease_until_ - now()).count();
}

std::string engine::degraded_reason() const {
    if (!cluster_)
        return {};
    if (!db_problem_.empty())
        return "the database cannot be reached (nothing is sent until it answers): " + db_problem_;
    if (!holds_claims())
        return "this node's claims are about to lapse: nothing is sent until the database "
               "renews them";
    return {};
}

void engine::note_lease(core::time_point asked, const storage::lease& l) {
    if (db_offset_ == core::milliseconds(0)) // a first estimate; reservations refine it
        db_offset_ = asked - l.db_now;
    // What is left of the lease by the database's clock, counted from when it was asked
    // for by ours: a clock that differs from the database's does not stretch it.
    lease_until_ = asked + (l.until - l.db_now);
}

void engine::wake_claimer() {
    claim_soon_ = true;
    claim_timer_.cancel();
}

std::size_t engine::pending_room() const {
    if (gate_.paused() || gate_.stopped() || stopping_)
        return 0;
    // Jobs a spend limit holds do not count: jobs of unpriced models go on meanwhile. They
    // are kept to a bound, so a held queue does not move into memory whole.
    std::size_t pending = 0, held = 0;
    for (auto& [id, j] : active_)
        if (j.state == job_state::pending)
            ++(holds_back(j) ? held : pending);
    auto l = policy_.limits();
    std::size_t in_flight = in_flight_jobs_ + starting_submits_;
    std::size_t room = l.max_in_flight > in_flight ? l.max_in_flight - in_flight : 0;
    // Enough for two seconds of submits at the budget's rate: the rest stays in the one
    // queue, for whichever node has room first.
    auto ahead = static_cast<std::size_t>(std::ceil(budget_.allowed_rpm() * 2.0 / 60.0)) + 4;
    auto target = std::min(room, ahead);
    if (held >= 10 * ahead + 100)
        return 0;
    return target > pending ? target - pending : 0;
}

void engine::drop(const std::string& id) {
    auto it = active_.find(id);
    if (it == active_.end())
        return;
    if (counts_in_flight(it->second.state))
        --in_flight_jobs_;
    queue_.cancel(id);
    active_.erase(it);
    wake();
}

asio::awaitable<void> engine::adopt(std::vector<core::job> jobs, const char* why) {
    auto changes = take_in(std::move(jobs), why);
    co_await record_taken(std::move(changes));
}

asio::awaitable<void> engine::record_taken(std::vector<storage::job_change> changes) {
    std::vector<std::string> ids;
    for (auto& c : changes)
        if (recording_.insert(c.j.id).second)
            ids.push_back(c.j.id);
    if (!changes.empty())
        if (auto r = co_await journal_.write(std::move(changes)); !r)
            log::error("cannot record the jobs taken over: {}; they are let go and taken again",
                       r.error().message());
    for (auto& id : ids)
        recording_.erase(id);
}

asio::awaitable<void> engine::apply_later(std::string id, core::transition t) {
    co_await apply(id, std::move(t));
    cancels_applying_.erase(id);
}

std::vector<storage::job_change> engine::take_in(std::vector<core::job> jobs, const char* why) {
    auto t = now();
    std::vector<storage::job_change> changes;
    for (auto& stored : jobs) {
        // Times by the wall clock: the time the job spent elsewhere (down, another node) counts.
        auto j = core::shifted(std::move(stored), -clock_.wall_offset());
        if (active_.count(j.id))
            continue; // held already (a claim renewed while it was on its way)
        auto tr = core::advance(j, core::ev_recover{}, t, context_for(j));
        if (tr.persist != core::persist_mode::none) {
            std::vector<storage::history_entry> h;
            if (!tr.note.empty())
                h.push_back(
                    {t, std::string(core::to_string(tr.next.state)), tr.note, tr.next.request_id});
            changes.push_back({tr.next, std::move(h)});
            if (core::is_terminal(tr.next.state) && !core::is_terminal(j.state))
                changes.back().event = hook_event_for(tr.next);
        }
        if (why && j.state != job_state::pending) {
            ++stats_.taken_over;
            log::notice("job {}: {} ({}{})", j.id, why, core::to_string(j.state),
                        tr.next.state != j.state ? "; " + tr.note : std::string());
        } else if (!why && tr.next.state != j.state)
            log::notice("job {}: {}", j.id, tr.note);
        if (core::is_terminal(tr.next.state)) {
            if (on_change)
                on_change(tr.next, tr.note);
            continue;
        }
        auto id = tr.next.id;
        if (counts_in_flight(tr.next.state))
            ++in_flight_jobs_;
        auto [it, ok] = active_.emplace(id, std::move(tr.next));
        schedule(it->second, tr.work, tr.not_before);
    }
    wake();
    return changes;
}

asio::awaitable<void> engine::claimer() {
    // Until this node has left: while stopping, the heartbeat goes on (without taking
    // work), so the jobs whose requests stop() waits for stay this node's.
    while (!left_) {
        co_await cluster_tick();
        if (left_)
            break;
        if (claim_soon_ && !stopping_) {
            claim_soon_ = false;
            continue;
        }
        claim_timer_.expires_after(std::chrono::seconds(1));
        boost::system::error_code ec;
        co_await claim_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
}

asio::awaitable<void> engine::cluster_tick() {
    auto asked = now();
    // A pause or resume being written (or written since the heartbeat was asked): what
    // the heartbeat reads may be older than it.
    auto epoch_asked = pause_writes_ > 0 ? -1 : pause_epoch_;
    auto r = co_await cluster_->renew();
    if (!r && r.error() == core::errc::store_busy) {
        // A deadlock or serialization failure the server broke: a retry goes through.
        asked = now();
        r = co_await cluster_->renew();
    }
    if (!r) {
        if (db_problem_.empty())
            log::error("cluster: cannot renew this node's claims: {}; nothing is sent once they "
                       "are about to lapse",
                       r.error().message());
        db_problem_ = r.error().message();
        co_return;
    }
    if (!db_problem_.empty())
        log::notice("cluster: the database answers again");
    db_problem_.clear();
    if (!r->node_alive) {
        lease_until_ = {};
        std::vector<std::string> all;
        for (auto& [id, j] : active_)
            all.push_back(id);
        for (auto& id : all)
            drop(id);
        auto why = fmt::format("another process took this node's name ({}) after its heartbeat "
                               "stopped for cluster.takeover_s; this one stops",
                               node_name());
        log::error("cluster: {}", why);
        if (on_fatal)
            on_fatal(why);
        co_return;
    }
    note_lease(asked, r->l);
    std::unordered_set<std::string> held(r->held.begin(), r->held.end());
    std::vector<std::string> lost;
    for (auto& [id, j] : active_)
        if (!held.count(id) && !committing_.count(id))
            lost.push_back(id);
    if (!lost.empty()) {
        log::warning("cluster: this node no longer holds {} job(s) (first: {}); another node "
                     "carries them on",
                     lost.size(), lost.front());
        for (auto& id : lost)
            drop(id);
        stats_.claims_lost += lost.size();
    }
    if (r->blocked_until > r->l.db_now)
        budget_.hold_until(r->blocked_until + db_offset_); // another node's 429
    // Not while this node records a pause or resume of its own (or did since the heartbeat
    // was asked): the value read may be older than it.
    if (r->paused != gate_.paused() && pause_writes_ == 0 && pause_epoch_ == epoch_asked) {
        gate_.set_paused(r->paused);
        log::notice("submissions {} (for the whole cluster)", r->paused ? "paused" : "resumed");
        wake();
    }
    // A cancel asked on another node stays asked (each heartbeat says so again) until the
    // job has left pending: one that could not be applied now is tried again.
    std::erase_if(cancels_refused_, [&](const std::string& id) { return !active_.count(id); });
    for (auto& id : r->cancel_requested) {
        auto it = active_.find(id);
        if (it == active_.end() || committing_.count(id) || cancels_applying_.count(id))
            continue;
        auto tr = core::advance(it->second, core::ev_cancel{}, now(), context_for(it->second));
        if (!tr.rejection.empty()) {
            if (cancels_refused_.insert(id).second)
                log::notice("job {}: a cancel asked on another node is refused: {}", id,
                            tr.rejection);
            continue;
        }
        // Recorded on the side: the heartbeat never waits behind the journal.
        cancels_applying_.insert(id);
        asio::co_spawn(io_, apply_later(id, std::move(tr)), log::exit_on_exception);
    }
    // Held in the database but not here, nor on their way to it (a recovery whose write
    // failed): let them go, so that a node (this one too) takes them again. A job this
    // node finished whose last state is not written yet (retired) stays held.
    std::vector<std::string> stray;
    for (auto& id : r->held)
        if (!active_.count(id) && !committing_.count(id) && !journal_.retired(id) &&
            !recording_.count(id))
            stray.push_back(id);
    if (!stray.empty()) {
        std::sort(stray.begin(), stray.end());
        log::notice("cluster: letting go of {} job(s) held but not in memory (first: {})",
                    stray.size(), stray.front());
        if (auto rel = co_await cluster_->release(std::move(stray)); !rel)
            log::warning("cluster: cannot let them go: {}", rel.error().message());
    }
    if (stopping_ || !holds_claims())
        co_return;
    if (gate_.unauthorized()) {
        // The API refuses this node's key (401), and its polls and fetches fail as its
        // submits do: it lets the other nodes, whose key may work, carry its jobs on. It
        // keeps one pending job (its probe of the key, until a reload fixes it), the jobs
        // whose submit or write is under way and those with a result (downloads need no
        // key), and takes nothing new.
        // One submitted job stays too: its status polls also tell when the key works again
        // (any accepted answer reopens the gate), with no pending job to probe with.
        // A submitted job is kept only when there is no pending one: the others poll theirs
        // (a job kept here could expire before the key is fixed).
        std::vector<std::string> go;
        bool probe_kept = false, poll_kept = false;
        for (auto& [id, j] : active_)
            if (j.state == job_state::pending && !committing_.count(id))
                probe_kept = true;
        for (auto& [id, j] : active_) {
            if (committing_.count(id) || j.state == job_state::submitting || j.result)
                continue;
            if (j.state == job_state::pending && probe_kept && !poll_kept) {
                poll_kept = true; // (the one pending probe)
                continue;
            }
            if (j.state != job_state::pending && !probe_kept && !poll_kept) {
                poll_kept = true;
                continue;
            }
            go.push_back(id);
        }
        std::sort(go.begin(), go.end()); // released in one order (rows locked by id)
        if (!go.empty()) {
            log::warning("cluster: the API refuses this node's key: letting the other nodes "
                         "carry on {} job(s) (first: {})",
                         go.size(), go.front());
            for (auto& id : go)
                drop(id);
            if (auto rel = co_await cluster_->release(std::move(go)); !rel)
                log::warning("cluster: cannot let them go: {}", rel.error().message());
        }
        if (probe_kept || poll_kept)
            co_return;
        // Nothing to probe the key with: one pending job, and nothing else.
        auto c = co_await cluster_->claim(1, 0);
        if (!c) {
            db_problem_ = c.error().message();
            log::error("cluster: cannot claim work: {}", db_problem_);
            co_return;
        }
        auto changes = take_in(std::move(c->jobs), "taken over from another node");
        asio::co_spawn(io_, record_taken(std::move(changes)), log::exit_on_exception);
        co_return;
    }
    auto room = pending_room();
    constexpr std::size_t orphans = 256;
    auto c = co_await cluster_->claim(room, orphans);
    if (!c) {
        db_problem_ = c.error().message();
        log::error("cluster: cannot claim work: {}", db_problem_);
        co_return;
    }
    if (c->jobs.empty())
        co_return;
    std::size_t taken = c->jobs.size();
    // Taken into memory at once; the recovery's write goes on without holding up the
    // heartbeat.
    auto changes = take_in(std::move(c->jobs), "taken over from another node");
    asio::co_spawn(io_, record_taken(std::move(changes)), log::exit_on_exception);
    if (taken >= room + orphans || taken == orphans)
        claim_soon_ = true; // more may wait
}

std::size_t engine::sends_waiting() {
    auto l = policy_.limits();
    // A gate stopped by a 401 or 406 lets one submit through when its probe is due: that
    // one needs a slot too.
    std::size_t in_flight = in_flight_jobs_ + starting_submits_;
    bool submits = gate_.allows(now(), in_flight, l.max_in_flight);
    std::size_t n = queue_.ready_budgeted(submits);
    if (submits) // no more submits than the room left (one, for a probe)
        n = std::min(n, queue_.ready_budgeted(false) +
                            (gate_.stopped() ? 1 : l.max_in_flight - in_flight));
    return std::min(n, l.max_requests > requests_in_flight_ ? l.max_requests - requests_in_flight_
                                                            : std::size_t{0});
}

void engine::adopt_shared_rate(std::optional<double> shared_rpm, std::int64_t epoch) {
    double configured = budget_.configured_rpm();
    double shared = shared_rpm.value_or(configured);
    if (epoch != budget_epoch_) {
        // A node lowered the account's rate (or it was raised since): take it as it is.
        budget_epoch_ = epoch;
        budget_.adopt_allowed(shared);
    } else if (shared > budget_.allowed_rpm()) {
        budget_.adopt_allowed(shared); // another node has recovered it further
    }
}

asio::awaitable<void> engine::share_block(core::time_point until, std::optional<double> lowered) {
    if (auto r = co_await cluster_->report_block(until, lowered); !r)
        log::warning("cluster: cannot share a 429 with the other nodes: {}", r.error().message());
}

asio::awaitable<void> engine::slot_reserver() {
    constexpr auto poll = std::chrono::milliseconds(20);
    while (!stopping_) {
        auto t = now();
        auto waiting = sends_waiting();
        bool need = holds_claims() && !budget_.blocked(t) && waiting > budget_.shared_slots();
        if (need) {
            // A few slots ahead, no more than the work waiting: about half a second of the
            // budget, at most 32; a slot this node does not use is lost to the cluster.
            auto half_second = static_cast<std::size_t>(std::ceil(budget_.paced_rpm() / 120.0));
            int count = static_cast<int>(std::clamp<std::size_t>(
                std::min(waiting - budget_.shared_slots(), half_second), 1, 32));
            std::optional<double> mine;
            if (budget_.allowed_rpm() < budget_.configured_rpm())
                mine = budget_.allowed_rpm();
            auto asked = now();
            auto g = co_await cluster_->reserve_slots(count, budget_.configured_rpm(), mine,
                                                      budget_epoch_, core::pace_margin);
            auto answered = now();
            if (g) {
                reserve_problem_.clear();
                db_offset_ = asked + (answered - asked) / 2 - g->db_now;
                adopt_shared_rate(g->allowed_rpm, g->epoch);
                if (g->blocked_until > g->db_now)
                    budget_.hold_until(g->blocked_until + db_offset_);
                budget_.add_shared_slots(g->first + db_offset_, g->interval_ms, g->count);
                wake();
                continue;
            }
            if (g.error().message() != reserve_problem_)
                log::warning("cluster: cannot reserve slots of the account's budget: {}",
                             g.error().message());
            reserve_problem_ = g.error().message();
        }
        slot_timer_.expires_after(need ? std::chrono::milliseconds(200) : poll);
        boost::system::error_code ec;
        co_await slot_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
}

asio::awaitable<void> engine::follower() {
    // From now on: watchers see what happens while they watch, not the past. Sequence
    // numbers are taken at insert, not at commit: a line may become visible after one
    // with a higher number, so the last 4096 numbers are read again and lines already
    // published are skipped.
    constexpr std::int64_t window = 4096; // more than one intake batch (512) takes
    std::int64_t seq = 0;
    std::int64_t start = 0; // lines up to here were there before this node followed
    std::set<std::int64_t> seen;
    asio::steady_timer t(io_);
    bool positioned = false;
    while (!stopping_) {
        if (!positioned) {
            auto last = co_await cluster_->last_event();
            if (last) {
                seq = start = *last;
                positioned = true;
            }
        } else {
            // The window's lines (seen or not) and up to 1000 new ones.
            constexpr std::size_t limit = static_cast<std::size_t>(window) + 1000;
            auto events =
                co_await cluster_->events_after(std::max<std::int64_t>(0, seq - window), limit);
            if (events) {
                for (auto& e : *events) {
                    if (e.seq <= start || e.seq <= seq - window || !seen.insert(e.seq).second)
                        continue;
                    seq = std::max(seq, e.seq);
                    if (!e.own && on_remote_change)
                        on_remote_change(e.j, e.note, e.at);
                }
                while (!seen.empty() && *seen.begin() <= seq - window)
                    seen.erase(seen.begin());
                if (events->size() == limit)
                    continue; // more are waiting
            }
        }
        t.expires_after(std::chrono::milliseconds(250));
        boost::system::error_code ec;
        co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
}

asio::awaitable<core::result<std::vector<storage::node_row>>> engine::nodes() {
    if (!cluster_)
        co_return std::vector<storage::node_row>{};
    co_return co_await cluster_->nodes();
}

} // namespace klingd::daemon
