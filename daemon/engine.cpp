// The dispatcher loop, request execution, downloads, and persistence batching.
#include "daemon/engine.hpp"

#include "daemon/output_dir.hpp"
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

// A coroutine that throws has lost track of its job: say so and end the process
// (systemd restarts it; every job resumes from the database).
void fatal_on_exception(std::exception_ptr e) {
    if (!e)
        return;
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        log::error("internal error, exiting: {}", ex.what());
    } catch (...) {
        log::error("internal error, exiting");
    }
    std::abort();
}

bool counts_in_flight(job_state s) {
    return s == job_state::submitting || s == job_state::queued || s == job_state::processing;
}

std::chrono::milliseconds seconds_ms(double s) {
    return std::chrono::milliseconds(static_cast<std::int64_t>(s * 1000));
}

// Wake-ups are rounded up to a tick (a fiftieth of min_poll_interval_s, 1 to 10 ms),
// so polls due close together go out on one wake-up, not one each; the budget lets
// a send come that much before its even slot, so a wake-up sends all the tick accrued.
core::milliseconds wake_tick(const config::settings& s) {
    return std::clamp(seconds_ms(s.jobs.min_poll_interval_s / 50), core::milliseconds(1),
                      core::milliseconds(10));
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
               http_client& client)
    : io_(io), settings_(s), store_(store), client_(client), base_(parsed_base_url(s.api.base_url)),
      budget_(s.api.requests_per_minute, wake_tick(s)),
      planner_({s.jobs.min_poll_interval_s, s.jobs.max_poll_interval_s, s.jobs.result_retention_s}),
      scarcity_(10 * s.jobs.min_poll_interval_s, s.jobs.min_poll_interval_s), wake_timer_(io) {
    for (auto& [slug, m] : s.models)
        durations_.emplace(slug, core::duration_model(m.expected_duration_s));
}

core::time_point engine::now() {
    return std::chrono::time_point_cast<std::chrono::milliseconds>(clock::now());
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
    return c;
}

void engine::start() {
    paused_ = store_.meta("paused").value_or("0") == "1";
    for (auto& [model, d] : durations_)
        for (double secs : store_.recent_durations(model, 200))
            d.add_sample(secs);

    auto t = now();
    auto jobs = store_.unfinished();
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
    store_.save_many(changes);
    log::info("resumed {} unfinished jobs ({} submitted and unfinished){}", resumed,
              in_flight_jobs_, paused_ ? "; submissions are paused" : "");
    asio::co_spawn(io_, dispatcher(), fatal_on_exception);
    asio::co_spawn(io_, flusher(), fatal_on_exception);
}

asio::awaitable<void> engine::stop(std::chrono::milliseconds grace) {
    stopping_ = true;
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
    for (const auto& id : lazy_)
        dirty_.try_emplace(id);
    lazy_.clear();
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

bool engine::submits_allowed(core::time_point t) {
    if (paused_ || stopping_)
        return false;
    if (in_flight_jobs_ >= static_cast<std::size_t>(settings_.jobs.max_in_flight))
        return false;
    if (stop_ != stop_kind::none)
        return t >= next_probe_; // one probe submit per interval
    return true;
}

std::string engine::blocked_reason() const {
    if (paused_)
        return "submissions are paused (klingctl resume)";
    if (stop_ != stop_kind::none)
        return fmt::format("submissions stopped: {}; a probe is sent every {}s", stop_reason_,
                           settings_.jobs.max_poll_interval_s);
    return {};
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
    bool durable_ok = true;
    if (t.persist == core::persist_mode::durable) {
        try {
            std::vector<storage::history_entry> h;
            if (auto p = pending_history_.find(id); p != pending_history_.end())
                h = p->second;
            if (!t.note.empty())
                h.push_back({t.next.updated_at, std::string(core::to_string(t.next.state)), t.note,
                             t.next.request_id});
            store_.save_many({{t.next, std::move(h)}});
            dirty_.erase(id);
            pending_history_.erase(id);
        } catch (const storage::storage_error& e) {
            durable_ok = false;
            log::error("job {}: cannot record \"{}\" in the database: {}", id, t.note, e.what());
        }
        if (!durable_ok && t.next.state == job_state::submitting) {
            // Nothing may be sent before "submitting" is committed: try again later.
            schedule(j, work_kind::submit, now() + std::chrono::seconds(5));
            wake();
            return false;
        }
    }
    if (t.persist == core::persist_mode::lazy)
        lazy_.insert(id);
    if (t.persist == core::persist_mode::batched || !durable_ok) {
        if (!t.note.empty())
            pending_history_[id].push_back({t.next.updated_at,
                                            std::string(core::to_string(t.next.state)), t.note,
                                            t.next.request_id});
        dirty_.insert_or_assign(id, std::nullopt); // the state in active_, not an old copy
    }

    bool was = counts_in_flight(j.state);
    bool is = counts_in_flight(t.next.state);
    if (was && !is)
        --in_flight_jobs_;
    else if (!was && is)
        ++in_flight_jobs_;

    if (!t.log.empty())
        log::info("job {}: {}", id, t.log);
    if (!t.note.empty()) {
        auto lvl = t.next.state == job_state::failed || t.next.state == job_state::expired
                       ? log::level::warning
                       : log::level::info;
        if (log::enabled(lvl))
            log::write(lvl, fmt::format("job {}{}: {}", id,
                                        t.next.request_id
                                            ? fmt::format(" (request {})", *t.next.request_id)
                                            : "",
                                        t.note));
    }
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
        if (auto d = dirty_.find(id); d != dirty_.end())
            d->second = std::move(j); // its last state is still to be written
        lazy_.erase(id);
        active_.erase(it);
        wake(); // a slot in max_in_flight may be free
    } else {
        schedule(j, t.work, t.not_before);
        if (was != is)
            wake();
        else if (t.work != work_kind::none)
            wake_by(t.not_before);
    }
    return durable_ok;
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
    switch (t.signal) {
    case core::api_signal::rate_limited:
        ++stats_.rate_limited;
        budget_.on_rate_limited(n, t.rate_limited_until,
                                std::uniform_real_distribution<double>(0, 1)(rng_));
        log::info("rate limited (429); sends resume in {:.1f}s, allowed rate now {:.1f}/min",
                  std::chrono::duration<double>(budget_.blocked_until() - n).count(),
                  budget_.allowed_rpm());
        return;
    case core::api_signal::unauthorized:
    case core::api_signal::no_credits: {
        budget_.on_answer(n);
        auto kind = t.signal == core::api_signal::unauthorized ? stop_kind::unauthorized
                                                               : stop_kind::no_credits;
        if (stop_ != kind)
            log::error("submissions stopped: {} ({}); jobs stay pending; a probe is sent every {}s",
                       kind == stop_kind::unauthorized ? "the API key was refused"
                                                       : "the account has no credits",
                       t.signal_reason, settings_.jobs.max_poll_interval_s);
        stop_ = kind;
        stop_reason_ = t.signal_reason;
        next_probe_ = n + seconds_ms(settings_.jobs.max_poll_interval_s);
        return;
    }
    case core::api_signal::accepted:
        budget_.on_answer(n);
        if ((stop_ == stop_kind::unauthorized) || (stop_ == stop_kind::no_credits && from_submit)) {
            log::notice("submissions resume: the API accepts requests again");
            stop_ = stop_kind::none;
            stop_reason_.clear();
            wake();
        }
        return;
    case core::api_signal::none:
        budget_.on_answer(n);
        return;
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
    if (dirty_.empty())
        return;
    std::vector<storage::job_store::change> changes;
    changes.reserve(dirty_.size());
    for (auto& [id, copy] : dirty_) {
        const job* j = copy ? &*copy : nullptr;
        if (!j) {
            auto a = active_.find(id);
            if (a == active_.end())
                continue;
            j = &a->second;
        }
        auto h = pending_history_.find(id);
        changes.push_back(
            {*j, h == pending_history_.end() ? std::vector<storage::history_entry>{} : h->second});
    }
    try {
        store_.save_many(changes);
        dirty_.clear();
        pending_history_.clear();
    } catch (const storage::storage_error& e) {
        log::error("cannot write {} job updates to the database: {}; will try again",
                   changes.size(), e.what());
    }
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

asio::awaitable<void> engine::dispatcher() {
    while (!stopping_) {
        const auto max_requests = static_cast<std::size_t>(settings_.api.max_connections);
        auto t = now();
        queue_.promote(t);
        while (downloads_in_flight_ < max_downloads) {
            auto item = queue_.pop_download();
            if (!item)
                break;
            ++downloads_in_flight_;
            asio::co_spawn(io_, download(item->job_id), fatal_on_exception);
        }
        bool submits = submits_allowed(t);
        while (requests_in_flight_ < max_requests && queue_.has_budgeted_ready(submits)) {
            if (!budget_.try_acquire(t))
                break;
            // Polls this close to their deadline never give way to a submit.
            auto urgent = t + seconds_ms(2 * settings_.jobs.max_poll_interval_s);
            auto item = queue_.pop_budgeted(submits, urgent);
            if (!item)
                break;
            // Is the budget the bottleneck? Work that waited for it about as long as a
            // poll interval says so; a burst the budget drains in moments does not.
            // A backlog the budget needs many poll intervals to drain is scarcity at once,
            // before the waits show it (120 submits at 30/min at the start, say).
            double drain_s = static_cast<double>(queue_.ready_budgeted(submits)) * 60 /
                             std::max(1.0, budget_.allowed_rpm());
            double backlog =
                std::clamp((drain_s / settings_.jobs.min_poll_interval_s - 1) / 9, 0.0, 1.0);
            planner_.set_scarcity(std::max(scarcity_.observe(item->not_before, t), backlog));
            if (item->kind == work_kind::submit) {
                if (stop_ != stop_kind::none)
                    next_probe_ = t + seconds_ms(settings_.jobs.max_poll_interval_s);
                auto it = active_.find(item->job_id);
                if (it == active_.end())
                    continue;
                // "submitting" is committed before the POST leaves.
                if (!apply(item->job_id, core::advance(it->second, core::ev_submit_begin{}, t,
                                                       context_for(it->second))))
                    continue;
                submits = submits_allowed(t);
            }
            ++requests_in_flight_;
            if (item->kind == work_kind::submit)
                ++submits_in_flight_;
            asio::co_spawn(io_, execute(*item), fatal_on_exception);
        }

        std::optional<core::time_point> next = queue_.next_due();
        auto consider = [&](core::time_point at) {
            if (!next || at < *next)
                next = at;
        };
        if (requests_in_flight_ < max_requests && queue_.has_budgeted_ready(submits))
            consider(budget_.next_slot());
        if (stop_ != stop_kind::none && !paused_ && next_probe_ > t &&
            in_flight_jobs_ < static_cast<std::size_t>(settings_.jobs.max_in_flight) &&
            queue_.has_ready_submits())
            consider(next_probe_);
        if (next) {
            auto tick = wake_tick(settings_);
            auto wait = std::max(core::milliseconds(1),
                                 std::chrono::ceil<core::milliseconds>(*next - now()));
            wait = (wait + tick - core::milliseconds(1)) / tick * tick;
            wake_timer_.expires_after(wait);
        } else {
            wake_timer_.expires_after(std::chrono::hours(1));
        }
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

    auto it = active_.find(item.job_id);
    if (it == active_.end())
        co_return;
    const auto& key = settings_.api_key.reveal();
    const auto max_body = settings_.api.max_result_bytes;

    if (item.kind == work_kind::submit) {
        std::string body = it->second.params;
        if (body.empty()) {
            try {
                body = store_.params_of(item.job_id);
            } catch (const storage::storage_error& e) {
                log::error("job {}: cannot read its parameters: {}", item.job_id, e.what());
            }
        }
        if (body.empty()) {
            // Nothing was sent: back to pending, to be tried again.
            core::http_outcome not_sent;
            not_sent.how = core::http_outcome::transport::not_sent;
            not_sent.message = "the job's parameters could not be read from the database";
            apply(item.job_id, core::advance(it->second, core::ev_submit_answer{not_sent}, now(),
                                             context_for(it->second)));
            co_return;
        }
        auto u = base_.with_target(fmt::format("/v2/{}", it->second.model));
        header_list headers;
        headers.emplace_back("x-api-key", key);
        auto out = co_await client_.request(http::verb::post, u, std::move(body),
                                            std::move(headers), max_body);
        count(core::request_kind::submit, out);
        it = active_.find(item.job_id);
        if (it == active_.end())
            co_return;
        auto tr = core::advance(it->second, core::ev_submit_answer{std::move(out)}, now(),
                                context_for(it->second));
        note_signal(tr, true);
        apply(item.job_id, std::move(tr));
        co_return;
    }

    job& j = it->second;
    if (core::past_retention(j, now(), settings_.jobs.result_retention_s) && !j.result) {
        apply(item.job_id, core::advance(j, core::ev_expire{}, now(), context_for(j)));
        co_return;
    }
    bool poll = item.kind == work_kind::poll;
    const auto& target = poll ? j.status_url : j.response_url;
    auto parsed = target ? core::http_url::parse(*target) : core::result<core::http_url>();
    auto u = parsed && core::may_carry_api_key(*parsed, base_)
                 ? *parsed
                 : base_.with_target(fmt::format("/v2/requests/{}{}", j.request_id.value_or(""),
                                                 poll ? "/status" : ""));
    header_list headers;
    headers.emplace_back("x-api-key", key);
    auto out =
        co_await client_.request(http::verb::get, u, std::string(), std::move(headers), max_body);
    count(poll ? core::request_kind::status : core::request_kind::result, out);
    it = active_.find(item.job_id);
    if (it == active_.end())
        co_return;
    core::event ev = poll ? core::event{core::ev_poll_answer{std::move(out)}}
                          : core::event{core::ev_result_answer{std::move(out)}};
    auto tr = core::advance(it->second, ev, now(), context_for(it->second));
    note_signal(tr, false);
    apply(item.job_id, std::move(tr));
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
    std::string result = *it->second.result;
    auto fail = [&](std::string reason, bool retryable, bool local = false) {
        ++stats_.downloads_failed;
        auto i = active_.find(id);
        if (i != active_.end())
            apply(id, core::advance(i->second,
                                    core::ev_download_failed{std::move(reason), retryable, local},
                                    now(), context_for(i->second)));
    };

    auto dir = output_dir::open(settings_.output.directory, id);
    if (!dir) {
        fail(fmt::format("cannot use the output folder {}/{}: {}", settings_.output.directory, id,
                         dir.error().message()),
             true, true);
        co_return;
    }
    if (auto ec = dir->write_atomically("result.json", result)) {
        fail(fmt::format("cannot write {}: {}", dir->final_path("result.json"), ec.message()), true,
             true);
        co_return;
    }
    std::vector<std::string> paths{dir->final_path("result.json")};
    auto urls = core::output_urls(result);
    for (std::size_t i = 0; i < urls.size(); ++i) {
        auto u = core::http_url::parse(urls[i]);
        if (!u) {
            fail(fmt::format("output URL {} {}", urls[i].substr(0, 200), u.error().message()),
                 false);
            co_return;
        }
        std::string tmp = fmt::format(".download-{}.tmp", i + 1);
        dir->remove(tmp);
        auto r =
            co_await client_.download(*u, dir->temp_path(tmp), settings_.output.max_download_bytes);
        const auto& o = r.outcome;
        if (o.too_large) {
            dir->remove(tmp);
            fail(fmt::format("{} is larger than output.max_download_bytes ({})",
                             urls[i].substr(0, 200), settings_.output.max_download_bytes),
                 false);
            co_return;
        }
        if (o.how != core::http_outcome::transport::ok || o.status < 200 || o.status >= 300) {
            dir->remove(tmp);
            fail(o.how != core::http_outcome::transport::ok
                     ? o.message
                     : fmt::format("HTTP {} for {}", o.status, urls[i].substr(0, 200)),
                 true, o.local_io);
            co_return;
        }
        std::string ext = core::media_extension(urls[i], r.content_type);
        std::string name = i == 0 ? "output." + ext : fmt::format("output-{}.{}", i + 1, ext);
        if (auto ec = dir->commit(tmp, name)) {
            dir->remove(tmp);
            fail(fmt::format("cannot write {}: {}", dir->final_path(name), ec.message()), true,
                 true);
            co_return;
        }
        paths.push_back(dir->final_path(name));
    }
    ++stats_.downloads_ok;
    it = active_.find(id);
    if (it != active_.end())
        apply(id, core::advance(it->second, core::ev_download_done{std::move(paths)}, now(),
                                context_for(it->second)));
}

std::vector<storage::insert_outcome> engine::add_jobs(const std::vector<core::job_spec>& specs,
                                                      const std::vector<std::string>& sources) {
    auto t = now();
    auto outcomes = store_.insert_many(specs, t, sources);
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
        return it->second;
    return store_.get(id);
}

std::vector<job> engine::list(const storage::job_filter& f) {
    flush();
    auto jobs = store_.list(f);
    for (auto& j : jobs)
        if (auto it = active_.find(j.id); it != active_.end()) {
            std::string params;
            j = it->second;
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

std::string engine::cancel(const std::string& id) {
    auto it = active_.find(id);
    if (it == active_.end()) {
        auto stored = store_.get(id);
        if (!stored)
            return "not found";
        return core::advance(*stored, core::ev_cancel{}, now(), context_for(*stored)).rejection;
    }
    auto tr = core::advance(it->second, core::ev_cancel{}, now(), context_for(it->second));
    if (!tr.rejection.empty())
        return tr.rejection;
    apply(id, std::move(tr));
    return {};
}

std::string engine::retry(const std::string& id) {
    if (auto it = active_.find(id); it != active_.end())
        return core::advance(it->second, core::ev_retry{}, now(), context_for(it->second))
            .rejection;
    auto stored = store_.get(id);
    if (!stored)
        return "not found";
    auto tr = core::advance(*stored, core::ev_retry{}, now(), context_for(*stored));
    if (!tr.rejection.empty())
        return tr.rejection;
    active_.emplace(id, *stored);
    apply(id, std::move(tr));
    return {};
}

void engine::reconfigure() {
    budget_.reconfigure(settings_.api.requests_per_minute, wake_tick(settings_));
    planner_.set_policy({settings_.jobs.min_poll_interval_s, settings_.jobs.max_poll_interval_s,
                         settings_.jobs.result_retention_s});
    scarcity_.set_scale(10 * settings_.jobs.min_poll_interval_s,
                        settings_.jobs.min_poll_interval_s);
    for (auto& [slug, m] : settings_.models)
        durations_for(slug).set_prior(m.expected_duration_s);
    // A new key may be the fix for a 401: probe at once.
    if (stop_ != stop_kind::none)
        next_probe_ = now();
    wake();
}

void engine::set_paused(bool paused) {
    if (paused_ == paused)
        return;
    paused_ = paused;
    try {
        store_.set_meta("paused", paused ? "1" : "0");
    } catch (const storage::storage_error& e) {
        log::error("cannot record the paused state: {}", e.what());
    }
    log::notice("submissions {}", paused ? "paused" : "resumed");
    wake();
}

} // namespace klingd::daemon
