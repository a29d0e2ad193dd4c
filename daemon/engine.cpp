// The dispatcher loop (carrying out the dispatch policy's actions), request
// execution, and applying transitions.
#include "daemon/engine.hpp"

#include "runtime/log.hpp"

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http/verb.hpp>
#include <fmt/format.h>
#include <stdexcept>

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

std::chrono::milliseconds seconds_ms(double s) {
    return std::chrono::milliseconds(static_cast<std::int64_t>(s * 1000));
}

// The configuration accepts only base URLs the HTTP client parses; anything else is a bug.
core::http_url parsed_base_url(const std::string& base_url) {
    auto u = core::http_url::parse(base_url);
    if (!u)
        throw std::invalid_argument("api.base_url is not a usable URL: " + base_url);
    return *u;
}

} // namespace

engine::engine(asio::io_context& io, const config::settings& s, storage::job_store& store,
               http_client& client, const clock& clk)
    : io_(io), settings_(s), store_(store), client_(client), clock_(clk),
      base_(parsed_base_url(s.api.base_url)),
      budget_(s.api.requests_per_minute, core::wake_tick(s.jobs.min_poll_interval_s)),
      planner_({s.jobs.min_poll_interval_s, s.jobs.max_poll_interval_s, s.jobs.result_retention_s}),
      gate_(seconds_ms(s.jobs.max_poll_interval_s)),
      policy_(queue_, budget_, planner_, gate_, limits()), journal_(store, clk),
      downloader_(client, s), wake_timer_(io) {
    for (auto& [slug, m] : s.models)
        durations_.emplace(slug, core::duration_model(m.expected_duration_s));
}

core::dispatch_limits engine::limits() const {
    core::dispatch_limits l;
    l.max_requests = static_cast<std::size_t>(settings_.api.max_connections);
    l.max_downloads = max_downloads;
    l.max_in_flight = static_cast<std::size_t>(settings_.jobs.max_in_flight);
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

void engine::start() {
    gate_.set_paused(store_.meta("paused").value_or("0") == "1");
    for (auto& [model, d] : durations_)
        for (double secs : store_.recent_durations(model, 200))
            d.add_sample(secs);

    auto t = now();
    auto jobs = store_.unfinished();
    for (auto& j : jobs)
        j = core::shifted(std::move(j), -clock_.wall_offset()); // downtime: by the wall clock
    std::vector<storage::job_store::change> changes;
    std::size_t resumed = 0;
    for (auto& j : jobs) {
        auto tr = core::advance(j, core::ev_recover{}, t, context_for(j));
        if (tr.persist != core::persist_mode::none) {
            std::vector<storage::history_entry> h;
            if (!tr.note.empty())
                h.push_back(
                    {t, std::string(core::to_string(tr.next.state)), tr.note, tr.next.request_id});
            changes.push_back({tr.next, std::move(h)});
        }
        if (tr.next.state != j.state)
            log::notice("job {}: {}", j.id, tr.note);
        if (core::is_terminal(tr.next.state))
            continue;
        auto id = tr.next.id;
        if (counts_in_flight(tr.next.state))
            ++in_flight_jobs_;
        auto [it, ok] = active_.emplace(id, std::move(tr.next));
        schedule(it->second, tr.work, tr.not_before);
        ++resumed;
    }
    if (auto r = journal_.write(std::move(changes)); !r)
        throw std::runtime_error("cannot record the recovered jobs: " + r.error().message());
    log::info("resumed {} unfinished jobs ({} submitted and unfinished){}", resumed,
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
    // A submit's answer carries its request id: wait for it as long as it may take
    // (else the job would wake up "submitting", outcome unknown); other work may be dropped.
    auto submits_until = std::chrono::steady_clock::now() +
                         std::max(grace, std::chrono::milliseconds(static_cast<std::int64_t>(
                                             settings_.api.request_timeout_s * 1000 + 1000)));
    while (true) {
        auto n = std::chrono::steady_clock::now();
        bool others =
            (requests_in_flight_ > submits_in_flight_ || downloads_in_flight_ > 0) && n < until;
        bool submits = submits_in_flight_ > 0 && n < submits_until;
        if (!others && !submits)
            break;
        t.expires_after(std::chrono::milliseconds(20));
        boost::system::error_code ec;
        co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    if (submits_in_flight_ > 0)
        log::warning(
            "stopping with {} submits unanswered; those jobs will be treated as outcome unknown",
            submits_in_flight_);
    else if (requests_in_flight_ > 0)
        log::warning("stopping with {} API requests still in flight; the next start resumes them",
                     requests_in_flight_);
    journal_.include_lazy();
    flush();
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
    core::time_point deadline{};
    if (j.submitted_at)
        deadline = *j.submitted_at + seconds_ms(settings_.jobs.result_retention_s);
    queue_.schedule(j.id, w, at, deadline, j.priority, j.created_at);
}

bool engine::persist(const std::string& id, const core::transition& t) {
    std::optional<storage::history_entry> line;
    if (!t.note.empty())
        line = storage::history_entry{t.next.updated_at, std::string(core::to_string(t.next.state)),
                                      t.note, t.next.request_id};
    switch (t.persist) {
    case core::persist_mode::durable:
        if (auto r = journal_.write_now(t.next, line); !r) {
            log::error("job {}: cannot record \"{}\" in the database: {}", id, t.note,
                       r.error().message());
            // Nothing may be sent before "submitting" is committed: the caller tries later.
            if (t.next.state == job_state::submitting)
                return false;
            journal_.defer(id, std::move(line));
        }
        return true;
    case core::persist_mode::batched:
        journal_.defer(id, std::move(line));
        return true;
    case core::persist_mode::lazy:
        journal_.defer_lazy(id);
        return true;
    case core::persist_mode::none:
        break;
    }
    return true;
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

bool engine::apply(const std::string& id, core::transition t) {
    auto it = active_.find(id);
    if (it == active_.end())
        return false;
    if (!t.rejection.empty()) {
        log::debug("job {}: event ignored: {}", id, t.rejection);
        return false;
    }
    job& j = it->second;
    scrub(t);
    if (!persist(id, t)) {
        schedule(j, work_kind::submit, now() + std::chrono::seconds(5));
        wake();
        return false;
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
    return true;
}

void engine::scrub(core::transition& t) const {
    const auto& key = settings_.api_key.reveal();
    auto clean = [&](std::string& s) {
        for (auto at = s.find(key); !key.empty() && at != std::string::npos; at = s.find(key, at))
            s.replace(at, key.size(), "[redacted]");
    };
    if (t.next.error)
        clean(*t.next.error);
    clean(t.note);
    clean(t.log);
    clean(t.signal_reason);
}

void engine::note_signal(const core::transition& t, bool from_submit) {
    auto n = now();
    if (t.signal == core::api_signal::rate_limited) {
        ++stats_.rate_limited;
        budget_.on_rate_limited(n, t.rate_limited_until,
                                std::uniform_real_distribution<double>(0, 1)(rng_));
        log::info("rate limited (429); sends resume in {:.1f}s, allowed rate now {:.1f}/min",
                  std::chrono::duration<double>(budget_.blocked_until() - n).count(),
                  budget_.allowed_rpm());
        return;
    }
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

void engine::flush() {
    auto r = journal_.flush([this](const std::string& id) -> const job* {
        auto a = active_.find(id);
        return a == active_.end() ? nullptr : &a->second;
    });
    if (!r)
        log::error("cannot write to the database: {}; will try again", r.error().message());
}

asio::awaitable<void> engine::flusher() {
    asio::steady_timer t(io_);
    while (!stopping_) {
        t.expires_after(flush_interval);
        boost::system::error_code ec;
        co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        flush();
    }
}

bool engine::begin_submit(const std::string& id, core::time_point t) {
    auto it = active_.find(id);
    if (it == active_.end())
        return false;
    // "submitting" is committed before the POST leaves.
    return apply(id,
                 core::advance(it->second, core::ev_submit_begin{}, t, context_for(it->second)));
}

asio::awaitable<void> engine::dispatcher() {
    while (!stopping_) {
        auto t = now();
        auto action = policy_.next_action(t, counts());
        if (auto* d = std::get_if<core::start_download>(&action)) {
            ++downloads_in_flight_;
            asio::co_spawn(io_, download(d->item.job_id), log::exit_on_exception);
            continue;
        }
        if (auto* r = std::get_if<core::send_request>(&action)) {
            bool submit = r->item.kind == work_kind::submit;
            if (submit && !begin_submit(r->item.job_id, t))
                continue;
            ++requests_in_flight_;
            if (submit)
                ++submits_in_flight_;
            asio::co_spawn(io_, execute(std::move(r->item)), log::exit_on_exception);
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

asio::awaitable<void> engine::execute(core::dispatch_queue::item item) {
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

    if (!active_.count(item.job_id))
        co_return;
    if (item.kind == work_kind::submit)
        co_await send_submit(item.job_id);
    else
        co_await send_get(item.job_id, item.kind == work_kind::poll);
}

std::string engine::submit_body(const job& j) {
    if (!j.params.empty())
        return j.params;
    try {
        return store_.params_of(j.id);
    } catch (const storage::storage_error& e) {
        log::error("job {}: cannot read its parameters: {}", j.id, e.what());
        return {};
    }
}

asio::awaitable<void> engine::send_submit(const std::string& id) {
    auto it = active_.find(id);
    std::string body = submit_body(it->second);
    if (body.empty()) {
        // Nothing was sent: back to pending, to be tried again.
        core::http_outcome not_sent;
        not_sent.how = core::http_outcome::transport::not_sent;
        not_sent.message = "the job's parameters could not be read from the database";
        apply(id, core::advance(it->second, core::ev_submit_answer{not_sent}, now(),
                                context_for(it->second)));
        co_return;
    }
    auto u = base_.with_target(fmt::format("/v2/{}", it->second.model));
    header_list headers;
    headers.emplace_back("x-api-key", settings_.api_key.reveal());
    auto out = co_await client_.request(http::verb::post, u, std::move(body), std::move(headers),
                                        settings_.api.max_result_bytes);
    count(core::request_kind::submit, out);
    it = active_.find(id);
    if (it == active_.end())
        co_return;
    auto tr = core::advance(it->second, core::ev_submit_answer{std::move(out)}, now(),
                            context_for(it->second));
    note_signal(tr, true);
    apply(id, std::move(tr));
}

asio::awaitable<void> engine::send_get(const std::string& id, bool poll) {
    job& j = active_.find(id)->second;
    if (core::past_retention(j, now(), settings_.jobs.result_retention_s) && !j.result) {
        apply(id, core::advance(j, core::ev_expire{}, now(), context_for(j)));
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
    auto it = active_.find(id);
    if (it == active_.end())
        co_return;
    core::event ev = poll ? core::event{core::ev_poll_answer{std::move(out)}}
                          : core::event{core::ev_result_answer{std::move(out)}};
    auto tr = core::advance(it->second, ev, now(), context_for(it->second));
    note_signal(tr, false);
    apply(id, std::move(tr));
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
    if (it != active_.end())
        apply(id, core::advance(it->second, ev, now(), context_for(it->second)));
}

std::vector<storage::insert_outcome> engine::add_jobs(const std::vector<core::job_spec>& specs,
                                                      const std::vector<std::string>& sources) {
    auto t = now();
    auto outcomes = store_.insert_many(specs, clock_.to_wall(t), sources);
    for (std::size_t i = 0; i < specs.size(); ++i) {
        switch (outcomes[i]) {
        case storage::insert_outcome::inserted: {
            ++stats_.intake_accepted;
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
            auto [it, ok] = active_.emplace(j.id, std::move(j));
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
    return outcomes;
}

std::optional<job> engine::find(const std::string& id) {
    if (auto it = active_.find(id); it != active_.end())
        return to_wall(it->second);
    // Finished, its last state not in the database yet (a failed write waits for the flush).
    if (const job* r = journal_.retired(id))
        return to_wall(*r);
    return store_.get(id);
}

std::vector<job> engine::list(const storage::job_filter& f) {
    flush();
    auto jobs = store_.list(f);
    for (auto& j : jobs)
        if (auto it = active_.find(j.id); it != active_.end()) {
            std::string params;
            j = to_wall(it->second);
            j.params.swap(params);
        } else if (const job* r = journal_.retired(j.id)) {
            std::string params;
            j = to_wall(*r);
            j.params.swap(params);
        }
    return jobs;
}

std::vector<storage::history_entry> engine::history(const std::string& id) {
    flush();
    return store_.history(id);
}

std::map<std::string, std::int64_t> engine::count_by_state() {
    flush();
    return store_.count_by_state();
}

std::map<std::pair<std::string, std::string>, std::int64_t> engine::count_by_state_and_model() {
    flush();
    return store_.count_by_state_and_model();
}

double engine::oldest_pending_age_s() {
    std::optional<core::time_point> oldest;
    for (auto& [id, j] : active_)
        if (j.state == job_state::pending && (!oldest || j.created_at < *oldest))
            oldest = j.created_at;
    return oldest ? std::chrono::duration<double>(now() - *oldest).count() : 0.0;
}

namespace {
core::error no_such_job(const std::string& id) {
    return {core::errc::job_not_found, fmt::format("no job \"{}\"", id.substr(0, 128))};
}
} // namespace

std::optional<job> engine::inactive_job(const std::string& id) {
    if (const job* r = journal_.retired(id))
        return *r; // its last state, not yet in the database
    auto stored = store_.get(id);
    if (stored)
        *stored = core::shifted(std::move(*stored), -clock_.wall_offset());
    return stored;
}

core::result<job> engine::cancel(const std::string& id) {
    auto it = active_.find(id);
    if (it == active_.end()) {
        auto stored = inactive_job(id);
        if (!stored)
            return no_such_job(id);
        auto why = core::advance(*stored, core::ev_cancel{}, now(), context_for(*stored)).rejection;
        return core::error(
            core::errc::wrong_state,
            why.empty() ? fmt::format("job {} is {}", id, core::to_string(stored->state)) : why);
    }
    auto tr = core::advance(it->second, core::ev_cancel{}, now(), context_for(it->second));
    if (!tr.rejection.empty())
        return core::error(core::errc::wrong_state, tr.rejection);
    apply(id, std::move(tr));
    auto j = find(id);
    if (!j)
        return no_such_job(id);
    return *j;
}

core::result<job> engine::retry(const std::string& id) {
    if (auto it = active_.find(id); it != active_.end())
        return core::error(
            core::errc::wrong_state,
            core::advance(it->second, core::ev_retry{}, now(), context_for(it->second)).rejection);
    auto stored = inactive_job(id);
    if (!stored)
        return no_such_job(id);
    auto tr = core::advance(*stored, core::ev_retry{}, now(), context_for(*stored));
    if (!tr.rejection.empty())
        return core::error(core::errc::wrong_state, tr.rejection);
    active_.emplace(id, *stored);
    apply(id, std::move(tr));
    auto j = find(id);
    if (!j)
        return no_such_job(id);
    return *j;
}

void engine::reconfigure() {
    budget_.reconfigure(settings_.api.requests_per_minute,
                        core::wake_tick(settings_.jobs.min_poll_interval_s));
    planner_.set_policy({settings_.jobs.min_poll_interval_s, settings_.jobs.max_poll_interval_s,
                         settings_.jobs.result_retention_s});
    policy_.set_limits(limits());
    gate_.set_probe_interval(seconds_ms(settings_.jobs.max_poll_interval_s));
    for (auto& [slug, m] : settings_.models)
        durations_for(slug).set_prior(m.expected_duration_s);
    // A new key may be the fix for a 401: probe at once.
    gate_.probe_now(now());
    wake();
}

void engine::set_paused(bool paused) {
    if (gate_.paused() == paused)
        return;
    gate_.set_paused(paused);
    try {
        store_.set_meta("paused", paused ? "1" : "0");
    } catch (const storage::storage_error& e) {
        log::error("cannot record the paused state: {}", e.what());
    }
    log::notice("submissions {}", paused ? "paused" : "resumed");
    wake();
}

} // namespace klingd::daemon
