// Every transition of a job, one handler per event. Rules from the contract and
// segmind-v2.md: never re-POST after a successful submit; a 429 is never the
// job's fault; 401/406 stop submissions but leave jobs pending; GETs are always
// safe to retry; a lost submit answer is an unknown outcome (no idempotency key).
#include "core/lifecycle.hpp"

#include "core/time_text.hpp"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>

namespace klingd::core {

namespace {

using seconds_d = std::chrono::duration<double>;

milliseconds to_ms(double s) {
    return milliseconds(static_cast<std::int64_t>(std::llround(s * 1000)));
}

std::string rfc3339(time_point t) {
    return format_rfc3339(t, time_precision::seconds);
}

// Full jitter: uniform in [0, min(cap, base * 2^failures)], at least a tenth of base.
milliseconds backoff(const lifecycle_context& c, int failures) {
    double ceiling =
        std::min(c.backoff_cap_s, c.backoff_base_s * std::pow(2.0, std::min(failures, 20)));
    return to_ms(std::max(c.backoff_base_s / 10, c.jitter01 * ceiling));
}

// A 404 well inside the retention window is asked again this many times before it counts.
constexpr int not_found_retries = 2;
constexpr int max_download_failures = 20;

struct machine {
    const job& j;
    time_point now;
    const lifecycle_context& c;
    transition t;

    machine(const job& job_, time_point now_, const lifecycle_context& ctx)
        : j(job_), now(now_), c(ctx) {
        t.next = job_;
    }

    job& n() { return t.next; }

    void to_state(job_state s, std::string note, persist_mode p = persist_mode::durable) {
        if (n().state != s)
            t.note = note.empty()
                         ? fmt::format("{} -> {}", to_string(n().state), to_string(s))
                         : fmt::format("{} -> {}: {}", to_string(n().state), to_string(s), note);
        else if (!note.empty())
            t.note = std::move(note);
        n().state = s;
        n().updated_at = now;
        t.persist = std::max(t.persist, p);
        if (is_terminal(s)) {
            n().finished_at = now;
            n().phase = job_phase::none;
            n().result.reset();
            t.work = work_kind::none;
        }
    }

    void fail(std::string error) {
        n().error = error;
        to_state(job_state::failed, std::move(error));
    }

    void expire(std::string why) {
        std::string e = fmt::format("expired: {}", why);
        n().error = e;
        to_state(job_state::expired, std::move(e));
    }

    void schedule(work_kind w, time_point at) {
        t.work = w;
        t.not_before = at;
    }

    void back_to_pending(std::string note, time_point not_before) {
        to_state(job_state::pending, std::move(note));
        schedule(work_kind::submit, not_before);
    }

    // The poll after an answer that said "not done yet" (or at the start).
    void schedule_poll() {
        time_point at = now;
        if (c.planner && c.durations && n().submitted_at)
            at = c.planner->next_poll(*c.durations, *n().submitted_at, n().last_poll_at, now);
        schedule(work_kind::poll, at);
    }

    // A GET that did not work out; try again with backoff unless the result has expired.
    void retry_get(work_kind w, const std::string& why) {
        ++n().failures;
        if (past_retention(n(), now, c.retention_s)) {
            expire(fmt::format(
                "the result could not be fetched within the API's retention of {}s after "
                "submission (last error: {})",
                c.retention_s, why));
            return;
        }
        time_point at = now + backoff(c, n().failures);
        if (n().submitted_at)
            at = std::min(at, std::max(now, *n().submitted_at + to_ms(c.retention_s) -
                                                to_ms(c.backoff_base_s)));
        schedule(w, at);
        t.log = fmt::format("{} failed ({}); retry {} in {:.1f}s",
                            w == work_kind::poll ? "poll" : "result fetch", why, n().failures,
                            seconds_d(at - now).count());
    }

    // from_submit: a 406 on a GET says nothing about submissions.
    void signal_from(const http_outcome& o, answer_class k, bool from_submit = false) {
        if (k == answer_class::rate_limited) {
            t.signal = api_signal::rate_limited;
            if (auto until = rate_limit_until(o.retry_after, o.reset_at, now + c.wall_offset))
                t.rate_limited_until = *until - c.wall_offset;
        } else if (k == answer_class::unauthorized) {
            t.signal = api_signal::unauthorized;
            t.signal_reason = error_detail(o.status, o.body);
        } else if (k == answer_class::no_credits && from_submit) {
            t.signal = api_signal::no_credits;
            t.signal_reason = error_detail(o.status, o.body);
        } else if (k != answer_class::server_error && k != answer_class::other &&
                   k != answer_class::no_credits) {
            t.signal = api_signal::accepted;
        }
    }

    // A status or result GET that did not answer 2xx.
    void on_get_error(answer_class k, const http_outcome& o, work_kind w) {
        switch (k) {
        case answer_class::failed:
            fail(fmt::format("the request failed: {}", error_detail(o.status, o.body)));
            return;
        case answer_class::not_found:
            // Asked again a couple of times while well inside the retention window.
            if (n().failures < not_found_retries && !past_retention(n(), now, c.retention_s))
                return retry_get(w, error_detail(o.status, o.body));
            expire(fmt::format(
                "Segmind no longer knows request {} (HTTP 404 on {}; it keeps results "
                "{}s after submission, and this one was submitted at {})",
                j.request_id.value_or("?"), w == work_kind::poll ? "poll" : "result fetch",
                c.retention_s,
                j.submitted_at ? rfc3339(*j.submitted_at + c.wall_offset) : "an unknown time"));
            return;
        case answer_class::rate_limited:
            schedule(w, t.rate_limited_until.value_or(now));
            return;
        default:
            // 5xx, 401, 406, 403, ...: the request is paid for; keep asking until the API forgets
            // it.
            return retry_get(w, error_detail(o.status, o.body));
        }
    }

    // --- events ---

    void on(const ev_submit_begin&) {
        if (j.state != job_state::pending) {
            t.rejection = fmt::format("job is {}, not pending", to_string(j.state));
            return;
        }
        ++n().attempts;
        n().polls = 0;
        // The dispatcher sends the POST itself; nothing is queued meanwhile.
        to_state(job_state::submitting, fmt::format("attempt {}", n().attempts));
    }

    void on(const ev_submit_deferred& e) {
        if (j.state != job_state::pending) {
            t.rejection = fmt::format("job is {}, not pending", to_string(j.state));
            return;
        }
        ++n().failures;
        auto at = now + backoff(c, n().failures);
        n().error = fmt::format("last submit attempt not sent: {}; retrying", e.reason);
        n().updated_at = now;
        t.persist = persist_mode::batched; // still pending: soft state
        t.note = fmt::format("submit not sent ({}); retrying in {:.1f}s", e.reason,
                             seconds_d(at - now).count());
        schedule(work_kind::submit, at);
    }

    // An upload is no submit: nothing paid, nothing to follow. Its errors are a submit's.
    void on(const ev_upload_answer& e) {
        if (j.state != job_state::pending) {
            t.rejection = fmt::format("job is {}, not pending", to_string(j.state));
            return;
        }
        const auto& o = e.out;
        n().updated_at = now;
        if (o.how != http_outcome::transport::ok) {
            ++n().failures;
            auto at = now + backoff(c, n().failures);
            n().error = fmt::format("last upload of {}: {}; retrying", e.input, o.message);
            t.persist = persist_mode::batched;
            t.note = fmt::format("upload of {} {} ({}); retrying in {:.1f}s", e.input,
                                 o.how == http_outcome::transport::not_sent ? "not sent" : "lost",
                                 o.message, seconds_d(at - now).count());
            schedule(work_kind::submit, at);
            return;
        }
        auto k = classify(o.status);
        signal_from(o, k, true);
        switch (k) {
        case answer_class::ok:
            fail(fmt::format("the upload of {} was answered (HTTP {}) without a hosted URL under "
                             "file_urls or urls: {}",
                             e.input, o.status, error_detail(o.status, o.body)));
            return;
        case answer_class::rate_limited:
            t.persist = persist_mode::batched;
            t.note =
                fmt::format("upload of {} rate limited (429); waiting for the budget", e.input);
            schedule(work_kind::submit, now);
            return;
        case answer_class::unauthorized:
        case answer_class::no_credits:
            t.persist = persist_mode::batched;
            t.note = fmt::format("upload of {} refused ({}); submissions stop until this is fixed",
                                 e.input, t.signal_reason);
            schedule(work_kind::submit, now);
            return;
        case answer_class::server_error: {
            ++n().failures;
            auto at = now + backoff(c, n().failures);
            n().error = fmt::format("last upload of {}: {}; retrying", e.input,
                                    error_detail(o.status, o.body));
            t.persist = persist_mode::batched;
            t.note = fmt::format("upload of {} got {}; retrying in {:.1f}s", e.input,
                                 error_detail(o.status, o.body), seconds_d(at - now).count());
            schedule(work_kind::submit, at);
            return;
        }
        default:
            fail(fmt::format("the upload of {} was refused: {}", e.input,
                             error_detail(o.status, o.body)));
            return;
        }
    }

    void on(const ev_input_failed& e) {
        if (j.state != job_state::pending) {
            t.rejection = fmt::format("job is {}, not pending", to_string(j.state));
            return;
        }
        fail(e.reason);
    }

    void on(const ev_submit_answer& e) {
        if (j.state != job_state::submitting) {
            t.rejection = "no submit in flight";
            return;
        }
        const auto& o = e.out;
        if (o.how == http_outcome::transport::not_sent)
            submit_not_sent(o);
        else if (o.how == http_outcome::transport::lost)
            submit_lost(o);
        else
            submit_answered(o);
    }

    // The submit never left (DNS, connect, TLS): nothing to pay, try again.
    void submit_not_sent(const http_outcome& o) {
        t.submit_created_nothing = true;
        ++n().failures;
        --n().attempts; // nothing reached the API
        auto at = now + backoff(c, n().failures);
        n().error = fmt::format("last submit attempt not sent: {}; retrying", o.message);
        back_to_pending(fmt::format("submit not sent ({}); retrying in {:.1f}s", o.message,
                                    seconds_d(at - now).count()),
                        at);
    }

    // The submit may have reached the API: a paid request may exist.
    void submit_lost(const http_outcome& o) {
        // A 2xx answer cut short after its request id: the request is known, follow it.
        if (auto f = parse_cut_submit(o.partial, c.base_url)) {
            t.signal = api_signal::accepted; // the API took it: a stopped gate may reopen
            accept_submit(*f, fmt::format("request {} (the answer was cut short after its "
                                          "request id: {})",
                                          f->request_id, o.message));
            return;
        }
        if (c.resubmit_unknown) {
            ++n().failures;
            auto at = now + backoff(c, n().failures);
            back_to_pending(
                fmt::format("submit answer lost ({}); the request may exist at Segmind; "
                            "sending again because jobs.resubmit_unknown = true",
                            o.message),
                at);
        } else {
            fail(fmt::format(
                "the answer to the submit was lost ({}): the request may or may not exist at "
                "Segmind, which has no idempotency key; not sent again because "
                "jobs.resubmit_unknown = false; `klingctl retry {}` submits it again",
                o.message, j.id));
        }
    }

    // The API took the submit: the job is queued there under f's request id.
    void accept_submit(const submit_fields& f, std::string note) {
        n().request_id = f.request_id;
        n().status_url = f.status_url;
        n().response_url = f.response_url;
        // The request may exist from the moment the POST left: count its retention from
        // "submitting" (just before the send), the earlier of the two.
        n().submitted_at = std::min(now, j.updated_at);
        n().last_poll_at = now;
        n().remote_done_at.reset();
        n().failures = 0;
        n().error.reset();
        to_state(job_state::queued, std::move(note));
        schedule_poll();
    }

    void submit_answered(const http_outcome& o) {
        // A 4xx (429, 401, 406 and the others) says the API refused it: nothing was created.
        t.submit_created_nothing = o.status >= 400 && o.status < 500;
        auto k = classify(o.status);
        signal_from(o, k, true);
        switch (k) {
        case answer_class::ok: {
            auto f = parse_submit(o.body, c.base_url);
            if (!f) {
                fail(fmt::format(
                    "the submit answer (HTTP {}) has no usable request_id, so the request cannot "
                    "be followed: {}",
                    o.status, error_detail(o.status, o.body)));
                return;
            }
            accept_submit(*f, fmt::format("request {}", f->request_id));
            return;
        }
        case answer_class::rate_limited:
            --n().attempts;
            back_to_pending("submit rate limited (429); waiting for the budget", now);
            return;
        case answer_class::unauthorized:
        case answer_class::no_credits:
            --n().attempts;
            back_to_pending(fmt::format("submit refused ({}); submissions stop until this is fixed",
                                        t.signal_reason),
                            now);
            return;
        case answer_class::server_error: {
            ++n().failures;
            auto at = now + backoff(c, n().failures);
            n().error = fmt::format("last submit: {}; retrying", error_detail(o.status, o.body));
            back_to_pending(fmt::format("submit got {}; retrying in {:.1f}s",
                                        error_detail(o.status, o.body),
                                        seconds_d(at - now).count()),
                            at);
            return;
        }
        case answer_class::not_found:
            fail(fmt::format("submit: unknown model \"{}\" ({})", j.model,
                             error_detail(o.status, o.body)));
            return;
        case answer_class::gone:
            fail(fmt::format("submit: model \"{}\" is retired ({})", j.model,
                             error_detail(o.status, o.body)));
            return;
        default:
            fail(fmt::format("submit rejected: {}", error_detail(o.status, o.body)));
            return;
        }
    }

    // A GET's answer: a transport failure is retried and an error answer handled here
    // (nullopt then); a 2xx gives the status its body reports.
    std::optional<remote_status> answer_status(const http_outcome& o, work_kind w) {
        if (o.how != http_outcome::transport::ok) {
            retry_get(w, o.message);
            return std::nullopt;
        }
        auto k = classify(o.status);
        signal_from(o, k);
        if (k != answer_class::ok) {
            on_get_error(k, o, w);
            return std::nullopt;
        }
        return parse_status(o.body);
    }

    void on(const ev_poll_answer& e) {
        if ((j.state != job_state::queued && j.state != job_state::processing) ||
            j.phase != job_phase::none) {
            t.rejection = "no poll expected";
            return;
        }
        const auto& o = e.out;
        if (o.how != http_outcome::transport::not_sent)
            ++n().polls;
        t.persist = persist_mode::batched;
        auto status = answer_status(o, work_kind::poll);
        if (!status)
            return;
        if (*status == remote_status::queued || *status == remote_status::processing) {
            n().failures = 0;
            n().last_poll_at = now;
            t.persist = persist_mode::lazy; // unless the state moves on
            if (*status == remote_status::processing && j.state == job_state::queued)
                to_state(job_state::processing, "", persist_mode::batched);
            schedule_poll();
        } else if (*status == remote_status::completed) {
            n().failures = 0;
            // The request finished between the last "not done" answer and this one.
            auto last = std::max(j.last_poll_at, j.submitted_at.value_or(now));
            n().remote_done_at = last + (now - last) / 2;
            if (j.submitted_at)
                t.duration_sample = {seconds_d(last - *j.submitted_at).count(),
                                     seconds_d(now - *j.submitted_at).count()};
            n().phase = job_phase::result_due;
            to_state(job_state::processing, "the API reports COMPLETED", persist_mode::batched);
            schedule(work_kind::fetch_result, now);
        } else if (*status == remote_status::failed) {
            fail(fmt::format("the request failed: {}", error_detail(o.status, o.body)));
        } else {
            retry_get(work_kind::poll, fmt::format("status answer without a known status: {}",
                                                   error_detail(o.status, o.body)));
        }
    }

    void on(const ev_result_answer& e) {
        if (j.phase != job_phase::result_due || is_terminal(j.state)) {
            t.rejection = "no result fetch expected";
            return;
        }
        const auto& o = e.out;
        if (o.too_large) {
            fail(fmt::format("the result body is larger than api.max_result_bytes; refused ({})",
                             o.message));
            return;
        }
        auto status = answer_status(o, work_kind::fetch_result);
        if (!status)
            return;
        if (*status == remote_status::queued || *status == remote_status::processing) {
            // The status endpoint ran ahead of the result endpoint: poll again.
            n().phase = job_phase::none;
            n().last_poll_at = now;
            schedule_poll();
            return;
        }
        if (*status == remote_status::failed) {
            fail(fmt::format("the request failed: {}", error_detail(o.status, o.body)));
            return;
        }
        n().failures = 0;
        n().result = o.body;
        n().phase = job_phase::download_due;
        to_state(job_state::processing, "result fetched", persist_mode::durable);
        schedule(work_kind::download, now);
    }

    void on(const ev_download_done& e) {
        if (j.phase != job_phase::download_due || is_terminal(j.state)) {
            t.rejection = "no download expected";
            return;
        }
        n().outputs = e.paths;
        n().failures = 0;
        n().error.reset();
        to_state(job_state::completed,
                 fmt::format("{} file{} written", e.paths.size(), e.paths.size() == 1 ? "" : "s"));
    }

    void on(const ev_download_failed& e) {
        if (j.phase != job_phase::download_due || is_terminal(j.state)) {
            t.rejection = "no download expected";
            return;
        }
        ++n().failures;
        if (!e.retryable || (!e.local && n().failures >= max_download_failures)) {
            fail(fmt::format("downloading the output failed{}: {}",
                             e.retryable ? fmt::format(" {} times", n().failures) : "", e.reason));
            return;
        }
        // Media URLs outlive the request record: no retention cap here.
        auto at = now + backoff(c, n().failures);
        n().error = fmt::format("download failed ({}); retrying", e.reason);
        t.persist = persist_mode::batched;
        t.log = fmt::format("download failed ({}); retry {} in {:.1f}s", e.reason, n().failures,
                            seconds_d(at - now).count());
        schedule(work_kind::download, at);
    }

    void on(const ev_recover&) {
        n().failures = 0;
        switch (j.state) {
        case job_state::pending:
            schedule(work_kind::submit, now);
            return;
        case job_state::submitting:
            if (c.resubmit_unknown) {
                n().error =
                    "klingd stopped while this job's submit was in flight; sent again because "
                    "jobs.resubmit_unknown = true (the earlier request may exist at Segmind too)";
                back_to_pending(*n().error, now);
            } else {
                fail(fmt::format(
                    "klingd stopped while this job's submit was in flight: the request may or may "
                    "not exist at Segmind, which has no idempotency key; not sent again because "
                    "jobs.resubmit_unknown = false; `klingctl retry {}` submits it again",
                    j.id));
            }
            return;
        case job_state::queued:
        case job_state::processing:
            if (n().result) {
                n().phase = job_phase::download_due;
                schedule(work_kind::download, now);
                return;
            }
            n().phase = job_phase::none;
            if (past_retention(n(), now, c.retention_s)) {
                expire(fmt::format(
                    "klingd was down past the API's retention of {}s after submission (at {}); "
                    "the result of request {} is gone",
                    c.retention_s, j.submitted_at ? rfc3339(*j.submitted_at + c.wall_offset) : "?",
                    j.request_id.value_or("?")));
                return;
            }
            n().last_poll_at = n().submitted_at.value_or(now);
            schedule(work_kind::poll, now);
            return;
        default:
            return;
        }
    }

    void on(const ev_expire&) {
        if ((j.state != job_state::queued && j.state != job_state::processing) || j.result) {
            t.rejection = "nothing to expire";
            return;
        }
        expire(fmt::format(
            "request {} was not fetched within the API's retention of {}s after submission (at {})",
            j.request_id.value_or("?"), c.retention_s,
            j.submitted_at ? rfc3339(*j.submitted_at + c.wall_offset) : "?"));
    }

    void on(const ev_cancel&) {
        if (j.state != job_state::pending) {
            t.rejection =
                is_terminal(j.state)
                    ? fmt::format("job {} is already {}", j.id, to_string(j.state))
                    : fmt::format(
                          "job {} is {}: it was already sent to Segmind, which has no cancel "
                          "endpoint; only pending jobs can be cancelled",
                          j.id, to_string(j.state));
            return;
        }
        n().error = "cancelled";
        to_state(job_state::cancelled, "cancelled by request");
    }

    void on(const ev_retry&) {
        if (j.state != job_state::failed && j.state != job_state::expired) {
            t.rejection = fmt::format("job {} is {}: only failed or expired jobs can be retried",
                                      j.id, to_string(j.state));
            return;
        }
        std::string previous =
            j.request_id ? fmt::format(" (previous request {})", *j.request_id) : "";
        n().request_id.reset();
        n().status_url.reset();
        n().response_url.reset();
        n().submitted_at.reset();
        n().remote_done_at.reset();
        n().finished_at.reset();
        n().result.reset();
        n().outputs.clear();
        n().error.reset();
        n().phase = job_phase::none;
        n().failures = 0;
        n().polls = 0;
        back_to_pending("retry requested" + previous, now);
    }
};

} // namespace

bool past_retention(const job& j, time_point now, double retention_s) {
    return j.submitted_at && now >= *j.submitted_at + to_ms(retention_s);
}

bool expires_while_blocked(const job& j, time_point until, double retention_s) {
    return (j.state == job_state::queued || j.state == job_state::processing) && !j.result &&
           past_retention(j, until, retention_s);
}

transition advance(const job& j, const event& e, time_point now, const lifecycle_context& ctx) {
    machine m(j, now, ctx);
    std::visit([&](const auto& ev) { m.on(ev); }, e);
    if (!m.t.rejection.empty())
        m.t.next = j;
    return std::move(m.t);
}

} // namespace klingd::core
