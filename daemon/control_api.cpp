// Routes of the control API and their JSON.
#include "daemon/control_api.hpp"

#include "core/job_spec.hpp"
#include "core/money.hpp"
#include "core/time_text.hpp"
#include "core/utf8.hpp"
#include "daemon/housekeeping.hpp"
#include "daemon/job_json.hpp"
#include "runtime/log.hpp"

#include <boost/json.hpp>
#include <boost/url/parse.hpp>
#include <charconv>
#include <cmath>
#include <fmt/format.h>
#include <set>

namespace klingd::daemon {

namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace json = boost::json;

namespace {

control_response json_response(unsigned version, http::status status, const json::value& body) {
    control_response res{status, version};
    res.set(http::field::content_type, "application/json");
    res.set(http::field::cache_control, "no-store");
    res.body() = json::serialize(body);
    res.body() += '\n';
    res.prepare_payload();
    return res;
}

struct target {
    std::vector<std::string> segments;
    std::map<std::string, std::string> query;
};

// The request target as Boost.URL reads it (origin-form: path and query, each
// percent-decoded, '+' a space in the query); why not when it is malformed.
core::result<target> parse_target(std::string_view text) {
    auto u = boost::urls::parse_origin_form(text);
    if (!u)
        return core::error(core::errc::bad_request, "malformed request target (path or query)");
    target out;
    for (auto seg : u->segments())
        if (!seg.empty())
            out.segments.push_back(seg);
    for (auto p : u->params())
        if (!p.key.empty() || p.has_value)
            out.query[p.key] = p.value;
    return out;
}

// Boost.JSON 1.81 writes 600.0 as 6E2: whole numbers go out as integers, others rounded to 0.01.
json::value number(double d) {
    double r = std::round(d * 100) / 100;
    if (r == std::floor(r) && std::fabs(r) < 9e15)
        return static_cast<std::int64_t>(r);
    return r;
}

// Money (micro-units) as a JSON number exact to the millionth: whole amounts as integers.
json::value money(std::int64_t micro) {
    if (micro % 1000000 == 0)
        return micro / 1000000;
    return core::money_value(micro);
}

// The spend limit holding priced submissions: which, until when, and what it saw spent.
json::value held_json(engine& e) {
    auto h = e.spend_held();
    if (!h)
        return nullptr;
    bool daily = h->kind == storage::spend_limit_kind::daily;
    const auto& sp = e.settings().spend;
    return json::object{
        {"limit", daily ? "spend.daily_limit" : "spend.monthly_limit"},
        {"value", money(daily ? sp.daily_limit_micro : sp.monthly_limit_micro)},
        {"spent", money(daily ? h->today : h->month)},
        {"until", core::format_rfc3339(e.time().to_wall(h->until), core::time_precision::seconds)}};
}

json::object job_json(engine& e, const core::job& j) {
    auto o = job_to_json(j, e.blocked_reason());
    if (j.state == core::job_state::pending && e.holds_back(j))
        o["held"] = held_json(e); // waits for a spend limit to lift
    return o;
}

// The database could not answer (locked by another process, a full or failing disk).
control_response store_unavailable(const control_request& req, const core::error& e) {
    return error_response(req.version(), http::status::service_unavailable,
                          fmt::format("cannot read or write the database: {}", e.message()));
}

asio::awaitable<control_response> list_jobs(const control_request& req, engine& e,
                                            const target& t) {
    storage::job_filter f;
    for (auto& [k, v] : t.query) {
        if (k == "state") {
            if (v.empty())
                continue;
            auto s = core::parse_job_state(v);
            if (!s)
                co_return error_response(req.version(), http::status::bad_request,
                                         fmt::format("state \"{}\" is not a job state ({})",
                                                     v.substr(0, 40), core::job_state_names()));
            f.state = *s;
        } else if (k == "model") {
            if (!v.empty())
                f.model = v;
        } else if (k == "limit") {
            if (v.empty())
                continue;
            std::size_t n = 0;
            auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
            if (ec != std::errc() || p != v.data() + v.size() || n < 1 || n > 10000)
                co_return error_response(req.version(), http::status::bad_request,
                                         "limit must be an integer from 1 to 10000");
            f.limit = n;
        } else if (k == "after") {
            if (!v.empty())
                f.after = v;
        } else {
            co_return error_response(
                req.version(), http::status::bad_request,
                fmt::format("unknown query parameter \"{}\" (known: state, model, limit, after)",
                            k.substr(0, 40)));
        }
    }
    auto jobs = co_await e.list(f);
    if (!jobs)
        co_return store_unavailable(req, jobs.error());
    json::array a;
    a.reserve(jobs->size());
    for (auto& j : *jobs)
        a.push_back(job_json(e, j));
    json::object o;
    o["next"] = jobs->size() == f.limit && !jobs->empty() ? json::value(jobs->back().id)
                                                          : json::value(nullptr);
    o["jobs"] = std::move(a);
    co_return json_response(req.version(), http::status::ok, o);
}

asio::awaitable<control_response> get_job(const control_request& req, engine& e,
                                          const std::string& id) {
    auto j = co_await e.find(id);
    if (!j)
        co_return store_unavailable(req, j.error());
    if (!*j)
        co_return error_response(req.version(), http::status::not_found,
                                 fmt::format("no job \"{}\"", id.substr(0, 128)));
    auto o = job_json(e, **j);
    auto h = co_await e.history(id);
    if (!h)
        co_return store_unavailable(req, h.error());
    o["history"] = history_to_json(*h);
    auto d = co_await e.deliveries_of(id);
    if (!d)
        co_return store_unavailable(req, d.error());
    json::array hooks;
    for (auto& x : *d) {
        json::object ho;
        ho["event"] = x.event_id;
        ho["type"] = x.type;
        ho["target"] = x.target;
        ho["attempts"] = x.attempts;
        ho["outcome"] = x.outcome;
        ho["last_error"] =
            x.last_error ? json::value(core::valid_utf8(*x.last_error)) : json::value(nullptr);
        hooks.push_back(std::move(ho));
    }
    o["hooks"] = std::move(hooks);
    co_return json_response(req.version(), http::status::ok, o);
}

// The one query parameter of POST /v1/jobs and GET /v1/events: id, not empty (empty_message
// says why). The error answer for any other; nullopt with id set (or untouched) otherwise.
std::optional<control_response> read_id_query(const control_request& req, const target& t,
                                              std::string_view empty_message, std::string& id) {
    for (auto& [k, v] : t.query) {
        if (k != "id")
            return error_response(
                req.version(), http::status::bad_request,
                fmt::format("unknown query parameter \"{}\" (known: id)", k.substr(0, 40)));
        if (v.empty())
            return error_response(req.version(), http::status::bad_request,
                                  std::string(empty_message));
        id = v;
    }
    return std::nullopt;
}

// POST /v1/jobs[?id=NAME]: the body is a job file as written; NAME is its id when the
// file names none (klingctl sends the file's name, as the spool does).
asio::awaitable<control_response> post_job(const control_request& req, engine& e,
                                           const peer_info& peer, const target& t) {
    std::string default_id;
    if (auto bad = read_id_query(req, t, "id must name the job (leave it out to use the file's)",
                                 default_id))
        co_return std::move(*bad);
    auto parsed = core::parse_job_spec(req.body(), default_id);
    if (!parsed)
        co_return error_response(req.version(), http::status::bad_request,
                                 parsed.error().message());
    if (!parsed->local_inputs.empty() && peer.uid < 0)
        co_return error_response(req.version(), http::status::bad_request,
                                 "the sender of a job with local files cannot be told (no peer "
                                 "credentials on the socket): local files are refused");
    if (!parsed->local_inputs.empty()) {
        // Off the loop, within engine::input_work_deadline.
        auto refs = parsed->local_inputs;
        // The groups the kernel gave the sending process, when the socket tells them.
        std::optional<submitter> who;
        who.emplace().uid = static_cast<uid_t>(peer.uid);
        who->groups = peer.groups;
        auto inputs = co_await e.check_inputs(std::move(refs), std::move(who));
        if (!inputs)
            co_return error_response(req.version(),
                                     inputs.error() == core::errc::io_failed
                                         ? http::status::service_unavailable
                                         : http::status::bad_request,
                                     inputs.error().message());
        parsed->inputs = std::move(*inputs);
    }
    // Named, not braced lists in the call: GCC 12 cannot copy an initializer list into
    // a coroutine's frame.
    std::vector<core::job_spec> specs{*parsed};
    std::vector<std::string> sources{fmt::format("socket (pid {}, uid {})", peer.pid, peer.uid)};
    auto out = co_await e.add_jobs(std::move(specs), std::move(sources));
    if (!out)
        co_return error_response(req.version(), http::status::service_unavailable,
                                 fmt::format("cannot record the job: {}", out.error().message()));
    if (out->front() == storage::insert_outcome::conflict)
        co_return error_response(
            req.version(), http::status::conflict,
            fmt::format("id \"{}\" is taken by a job with other content (a job id is unique for "
                        "the life of the database)",
                        parsed->id));
    auto j = co_await e.find(parsed->id);
    if (j && !*j && out->front() == storage::insert_outcome::same_content)
        // The same job ran long ago and was pruned (its tombstone keeps the id): nothing to
        // do, as for any repeat; there is no job object left to show.
        co_return json_response(
            req.version(), http::status::ok,
            json::object{{"id", parsed->id},
                         {"pruned", true},
                         {"note", "this job was recorded before and has since been pruned "
                                  "(jobs.keep_finished_days); its id stays taken"}});
    if (!j || !*j)
        co_return store_unavailable(
            req, j ? core::error(core::errc::job_not_found, "the job just recorded") : j.error());
    bool created = out->front() == storage::insert_outcome::inserted;
    if (created)
        log::info("job {}: accepted over the socket from pid {} uid {}", parsed->id, peer.pid,
                  peer.uid);
    co_return json_response(req.version(), created ? http::status::created : http::status::ok,
                            job_json(e, **j));
}

asio::awaitable<control_response> job_action(const control_request& req, engine& e,
                                             const std::string& id, std::string action,
                                             const peer_info& peer) {
    // Not a ?: between the two calls: GCC 12 destroys the chosen awaitable twice.
    core::result<core::job> done = core::error(core::errc::bad_request);
    if (action == "cancel")
        done = co_await e.cancel(id);
    else
        done = co_await e.retry(id);
    if (!done) {
        auto status = done.error() == core::errc::job_not_found ? http::status::not_found
                      : done.error() == core::errc::wrong_state ? http::status::conflict
                                                                : http::status::service_unavailable;
        co_return error_response(req.version(), status, done.error().message());
    }
    log::notice("job {}: {} requested by pid {} uid {}", id, action, peer.pid, peer.uid);
    co_return json_response(req.version(), http::status::ok, job_json(e, *done));
}

json::object stats_json(engine& e, const std::map<std::string, std::int64_t>& counts,
                        const storage::spend_totals* spent,
                        const std::map<std::string, std::int64_t>* deliveries) {
    json::object o;
    json::object hooks;
    for (auto outcome : {"pending", "delivered", "given_up"}) {
        if (!deliveries) {
            hooks[outcome] = nullptr; // the database could not say
            continue;
        }
        auto it = deliveries->find(outcome);
        hooks[outcome] = it == deliveries->end() ? 0 : it->second;
    }
    hooks["failed_attempts"] = e.hooks ? e.hooks->stats().failed_attempts : 0;
    hooks["running"] = e.hooks ? e.hooks->running() : 0;
    o["hooks"] = std::move(hooks);
    const auto& sp = e.settings().spend;
    json::object spend;
    spend["today"] = spent ? money(spent->today) : json::value(nullptr);
    spend["month"] = spent ? money(spent->month) : json::value(nullptr);
    spend["daily_limit"] = money(sp.daily_limit_micro);
    spend["monthly_limit"] = money(sp.monthly_limit_micro);
    spend["held"] = held_json(e);
    o["spend"] = std::move(spend);
    json::object jobs;
    for (auto s : core::all_job_states)
        jobs[core::to_string(s)] = 0;
    for (auto& [state, n] : counts)
        jobs[state] = n;
    o["jobs"] = std::move(jobs);
    json::object req;
    for (auto& [kind, codes] : e.stats().requests) {
        json::object c;
        for (auto& [code, n] : codes)
            c[code] = n;
        req[core::to_string(kind)] = std::move(c);
    }
    o["requests"] = std::move(req);
    o["rate_limited"] = e.stats().rate_limited;
    auto& b = e.budget();
    auto now = e.time().now();
    json::object budget;
    budget["configured_rpm"] = number(b.configured_rpm());
    budget["allowed_rpm"] = number(b.allowed_rpm());
    budget["used_last_minute"] = b.used_last_minute(now);
    budget["blocked_until"] =
        b.blocked(now) ? json::value(core::format_rfc3339(e.time().to_wall(b.blocked_until())))
                       : json::value(nullptr);
    o["budget"] = std::move(budget);
    o["paused"] = e.paused();
    auto blocked = e.blocked_reason();
    o["submissions_blocked"] = blocked.empty() ? json::value(nullptr) : json::value(blocked);
    o["in_flight"] = e.in_flight();
    o["oldest_pending_age_s"] = number(std::round(e.oldest_pending_age_s() * 10) / 10);
    json::object intake;
    intake["accepted"] = e.stats().intake_accepted;
    intake["duplicates"] = e.stats().intake_duplicates;
    intake["conflicts"] = e.stats().intake_conflicts;
    o["intake"] = std::move(intake);
    json::object dl;
    dl["ok"] = e.stats().downloads_ok;
    dl["failed"] = e.stats().downloads_failed;
    o["downloads"] = std::move(dl);
    return o;
}

} // namespace

control_response error_response(unsigned version, http::status status, const std::string& message) {
    json::object o;
    // Messages quote what the client sent (a target, an id): JSON needs valid UTF-8.
    o["error"] = core::valid_utf8(message);
    return json_response(version, status, o);
}

namespace {

void family(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

// A label value escaped as the exposition format wants.
std::string label(std::string_view v) {
    std::string o;
    for (char c : v) {
        if (c == '\\' || c == '"')
            o += '\\';
        if (c == '\n') {
            o += "\\n";
            continue;
        }
        o += c;
    }
    return o;
}

void render_jobs(std::string& out, const storage::state_model_counts& counts) {
    family(out, "klingd_jobs", "gauge", "Jobs by state and model.");
    std::set<std::string> models;
    for (auto& [k, n] : counts)
        models.insert(k.second);
    for (auto& m : models)
        for (auto st : core::all_job_states) {
            auto s = core::to_string(st);
            auto it = counts.find({std::string(s), m});
            out += fmt::format("klingd_jobs{{state=\"{}\",model=\"{}\"}} {}\n", s, label(m),
                               it == counts.end() ? 0 : it->second);
        }
}

} // namespace

std::string render_metrics(engine& e, const storage::state_model_counts* counts,
                           const std::vector<storage::node_row>* nodes) {
    std::string out;
    auto family = [&](std::string_view name, std::string_view type, std::string_view help) {
        klingd::daemon::family(out, name, type, help);
    };
    const auto& st = e.stats();
    family("klingd_database_up", "gauge",
           "1 when the job store answered this scrape (else klingd_jobs is left out).");
    out += fmt::format("klingd_database_up {}\n", counts ? 1 : 0);
    if (counts)
        render_jobs(out, *counts);
    family("klingd_api_requests_total", "counter",
           "API requests by kind (submit, status, result, upload) and answer.");
    for (auto& [kind, codes] : st.requests)
        for (auto& [code, n] : codes)
            out += fmt::format("klingd_api_requests_total{{kind=\"{}\",code=\"{}\"}} {}\n",
                               core::to_string(kind), code, n);
    family("klingd_jobs_finished_total", "counter",
           "Jobs that reached a final state in this process, by that state.");
    for (auto s : {"completed", "failed", "expired", "cancelled"}) {
        auto f = st.finished.find(s);
        out += fmt::format("klingd_jobs_finished_total{{state=\"{}\"}} {}\n", s,
                           f == st.finished.end() ? 0 : f->second);
    }
    family("klingd_polls_total", "counter", "Status polls sent.");
    out += fmt::format("klingd_polls_total {}\n", st.polls);
    family("klingd_rate_limited_total", "counter", "429 answers.");
    out += fmt::format("klingd_rate_limited_total {}\n", st.rate_limited);
    family("klingd_allowed_requests_per_minute", "gauge",
           "The request rate klingd allows itself now.");
    out += fmt::format("klingd_allowed_requests_per_minute {}\n", e.budget().allowed_rpm());
    family("klingd_configured_requests_per_minute", "gauge", "api.requests_per_minute.");
    out += fmt::format("klingd_configured_requests_per_minute {}\n", e.budget().configured_rpm());
    family("klingd_detection_delay_seconds", "summary",
           "Estimated time from a request's completion at the API to klingd seeing it.");
    out += fmt::format("klingd_detection_delay_seconds_sum {}\n", st.detection_delay_sum_s);
    out += fmt::format("klingd_detection_delay_seconds_count {}\n", st.detection_delay_count);
    family("klingd_oldest_pending_job_age_seconds", "gauge",
           "How long the oldest pending job has waited.");
    out += fmt::format("klingd_oldest_pending_job_age_seconds {}\n", e.oldest_pending_age_s());
    family("klingd_oldest_unfetched_request_age_seconds", "gauge",
           "Seconds since the API accepted the oldest request whose result is not fetched yet "
           "(lost once it passes klingd_result_retention_seconds).");
    out +=
        fmt::format("klingd_oldest_unfetched_request_age_seconds {}\n", e.oldest_unfetched_age_s());
    family("klingd_result_retention_seconds", "gauge",
           "jobs.result_retention_s: how long the API keeps a request after its submission.");
    out +=
        fmt::format("klingd_result_retention_seconds {}\n", e.settings().jobs.result_retention_s);
    family("klingd_submissions_paused", "gauge", "1 while submissions are paused.");
    out += fmt::format("klingd_submissions_paused {}\n", e.paused() ? 1 : 0);
    family("klingd_submissions_blocked", "gauge",
           "1 while submissions are stopped by a 401 or 406.");
    out += fmt::format("klingd_submissions_blocked {}\n",
                       !e.paused() && !e.blocked_reason().empty() ? 1 : 0);
    family("klingd_jobs_in_flight", "gauge", "Submitted, unfinished jobs.");
    out += fmt::format("klingd_jobs_in_flight {}\n", e.in_flight());
    family("klingd_intake_total", "counter", "Jobs offered, by outcome.");
    out += fmt::format("klingd_intake_total{{outcome=\"accepted\"}} {}\n", st.intake_accepted);
    out += fmt::format("klingd_intake_total{{outcome=\"duplicate\"}} {}\n", st.intake_duplicates);
    out += fmt::format("klingd_intake_total{{outcome=\"conflict\"}} {}\n", st.intake_conflicts);
    out += fmt::format("klingd_intake_total{{outcome=\"invalid\"}} {}\n", st.intake_invalid);
    family("klingd_downloads_total", "counter", "Result downloads by outcome.");
    out += fmt::format("klingd_downloads_total{{outcome=\"ok\"}} {}\n", st.downloads_ok);
    out += fmt::format("klingd_downloads_total{{outcome=\"failed\"}} {}\n", st.downloads_failed);
    family("klingd_spend_total", "counter",
           "What this node's submissions cost (models.<m>.price), those taken back excluded.");
    for (auto& [model, micro] : st.spend_micro)
        out += fmt::format("klingd_spend_total{{model=\"{}\"}} {}\n", label(model),
                           core::money_text(micro));
    family(
        "klingd_spend_held", "gauge",
        "1 while a spend limit holds priced submissions back (until the UTC day or month ends).");
    out += fmt::format("klingd_spend_held {}\n", e.spend_held() ? 1 : 0);
    family("klingd_hook_deliveries_total", "counter",
           "Completion hook attempts by target (command, webhook) and outcome (delivered, "
           "failed: to be retried, given_up: after hooks.max_attempts).");
    if (e.hooks)
        for (auto& [key, n] : e.hooks->stats().by_target) {
            auto sp = key.find(' ');
            out += fmt::format("klingd_hook_deliveries_total{{target=\"{}\",outcome=\"{}\"}} {}\n",
                               key.substr(0, sp), key.substr(sp + 1), n);
        }
    family("klingd_hooks_running", "gauge", "Completion hook deliveries running now.");
    out += fmt::format("klingd_hooks_running {}\n", e.hooks ? e.hooks->running() : 0);
    if (!e.in_cluster())
        return out;
    // Cluster: what this node holds and did (per node), and the nodes (the cluster's).
    family("klingd_cluster_degraded", "gauge",
           "1 while this node sends nothing: the database cannot be reached, or its claims "
           "are about to lapse (GET /v1/health answers 503 then).");
    out += fmt::format("klingd_cluster_degraded {}\n", e.degraded_reason().empty() ? 0 : 1);
    family("klingd_cluster_claim_seconds_left", "gauge",
           "Seconds this node's claims last without a heartbeat (negative once lapsed).");
    out += fmt::format("klingd_cluster_claim_seconds_left {:.3f}\n", e.lease_left_s());
    family("klingd_cluster_jobs_held", "gauge", "Unfinished jobs this node holds the claim of.");
    out += fmt::format("klingd_cluster_jobs_held {}\n", e.jobs_held());
    family("klingd_cluster_jobs_taken_over_total", "counter",
           "Unfinished jobs this node took over from a node that stopped.");
    out += fmt::format("klingd_cluster_jobs_taken_over_total {}\n", st.taken_over);
    family("klingd_cluster_claims_lost_total", "counter",
           "Jobs this node held and lost to another node (its claims lapsed).");
    out += fmt::format("klingd_cluster_claims_lost_total {}\n", st.claims_lost);
    if (nodes) {
        std::size_t live = 0, stopped = 0, gone = 0;
        for (auto& n : *nodes)
            ++(n.live ? live : n.stopped ? stopped : gone);
        family("klingd_cluster_nodes", "gauge",
               "Nodes by state: live (heartbeat within cluster.takeover_s), stopped (left "
               "cleanly), gone (silent).");
        out += fmt::format("klingd_cluster_nodes{{state=\"live\"}} {}\n", live);
        out += fmt::format("klingd_cluster_nodes{{state=\"stopped\"}} {}\n", stopped);
        out += fmt::format("klingd_cluster_nodes{{state=\"gone\"}} {}\n", gone);
    }
    return out;
}

namespace {

// A route: method, path pattern ("{id}" matches one segment) and its handler.
struct route {
    http::verb method;
    std::vector<std::string_view> pattern;
    asio::awaitable<control_outcome> (*handle)(const control_request&, engine&, const peer_info&,
                                               const target&, const std::string& id);
};

asio::awaitable<control_response> metrics(const control_request& req, engine& e) {
    // A database that does not answer leaves out the jobs by state (the one figure read
    // from it) and says so: the rest (this node's counters) is still worth a scrape.
    // A node that knows itself cut off (cluster) does not even ask: a scrape must answer
    // within its timeout, and a frozen database would hold it for the call's deadline.
    core::result<storage::state_model_counts> counts =
        core::error(core::errc::store_unavailable, e.degraded_reason());
    if (!e.in_cluster() || e.degraded_reason().empty())
        counts = co_await e.count_by_state_and_model();
    if (!counts)
        log::debug("metrics without jobs by state: {}", counts.error().message());
    control_response res{http::status::ok, req.version()};
    res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
    std::optional<std::vector<storage::node_row>> nodes;
    if (e.in_cluster() && counts) {
        auto listed = co_await e.nodes();
        if (listed)
            nodes = std::move(*listed);
    }
    res.body() = render_metrics(e, counts ? &*counts : nullptr, nodes ? &*nodes : nullptr);
    res.prepare_payload();
    co_return res;
}

// The forecast of the unfinished jobs of counts, and how the last drained backlog's went.
json::object forecast_json(engine& e, const storage::state_model_counts& counts) {
    auto v = e.forecast_of(counts);
    const auto& f = v.f;
    json::object o;
    o["jobs_left"] = f.jobs_left;
    o["requests_left"] = number(std::round(f.requests_left));
    o["requests_per_job"] = number(std::round(v.requests_per_job * 100) / 100);
    bool finite = std::isfinite(f.seconds_left);
    o["seconds_left"] = finite ? number(std::round(f.seconds_left)) : json::value(nullptr);
    o["done_at"] =
        finite && f.jobs_left > 0
            ? json::value(core::format_rfc3339(e.time().wall_now() +
                                               std::chrono::duration_cast<core::milliseconds>(
                                                   std::chrono::duration<double>(f.seconds_left))))
            : json::value(nullptr);
    o["bound"] = f.bound.empty() ? json::value(nullptr) : json::value(f.bound);
    o["cost"] = money(v.cost_micro);
    if (auto& a = e.forecasts().last_drain()) {
        o["last_drain"] = json::object{{"made_at", core::format_rfc3339(a->made_at)},
                                       {"predicted_at", core::format_rfc3339(a->predicted_at)},
                                       {"drained_at", core::format_rfc3339(a->drained_at)},
                                       {"jobs_then", a->jobs_then},
                                       {"error_s", number(std::round(a->error_s()))}};
    } else {
        o["last_drain"] = nullptr;
    }
    return o;
}

asio::awaitable<control_response> stats(const control_request& req, engine& e) {
    auto by_model = co_await e.count_by_state_and_model();
    if (!by_model)
        co_return store_unavailable(req, by_model.error());
    std::map<std::string, std::int64_t> counts;
    for (auto& [key, n] : *by_model)
        counts[key.first] += n;
    auto spent = co_await e.spend_totals();
    auto deliveries = co_await e.delivery_counts();
    auto o = stats_json(e, counts, spent ? &*spent : nullptr, deliveries ? &*deliveries : nullptr);
    o["forecast"] = forecast_json(e, *by_model);
    co_return json_response(req.version(), http::status::ok, o);
}

// The cluster's nodes; one host alone is a cluster of one, with no database heartbeat.
asio::awaitable<control_response> list_nodes(const control_request& req, engine& e) {
    json::array a;
    if (!e.in_cluster()) {
        a.push_back(json::object{{"name", e.node_name()},
                                 {"live", true},
                                 {"heartbeat_at", nullptr},
                                 {"jobs_held", static_cast<std::int64_t>(e.in_flight())},
                                 {"version", KLINGD_VERSION},
                                 {"this", true}});
        co_return json_response(req.version(), http::status::ok, json::object{{"nodes", a}});
    }
    auto nodes = co_await e.nodes();
    if (!nodes)
        co_return store_unavailable(req, nodes.error());
    for (auto& n : *nodes) {
        json::object o;
        o["name"] = n.name;
        o["live"] = n.live;
        o["stopped"] = n.stopped;
        o["heartbeat_at"] = n.heartbeat_at ? json::value(core::format_rfc3339(*n.heartbeat_at))
                                           : json::value(nullptr);
        o["heartbeat_age_s"] =
            n.heartbeat_at
                ? number(std::chrono::duration<double>(n.db_now - *n.heartbeat_at).count())
                : json::value(nullptr);
        o["jobs_held"] = n.held;
        o["requests_per_minute"] = number(n.requests_per_minute);
        o["version"] = n.version;
        o["this"] = n.name == e.node_name();
        a.push_back(std::move(o));
    }
    co_return json_response(req.version(), http::status::ok, json::object{{"nodes", a}});
}

asio::awaitable<control_response> pause_or_resume(const control_request& req, engine& e,
                                                  const peer_info& peer, bool pause) {
    if (auto r = co_await e.set_paused(pause); !r)
        co_return store_unavailable(req, r.error());
    log::notice("submissions {} by pid {} uid {}", pause ? "paused" : "resumed", peer.pid,
                peer.uid);
    co_return json_response(req.version(), http::status::ok, json::object{{"paused", e.paused()}});
}

// POST /v1/purge?older_than_days=N: housekeeping now, with N days for both the finished
// jobs and the spool's files.
asio::awaitable<control_response> purge(const control_request& req, engine& e,
                                        const peer_info& peer, const target& t) {
    std::optional<double> days;
    for (auto& [k, v] : t.query) {
        if (k != "older_than_days")
            co_return error_response(
                req.version(), http::status::bad_request,
                fmt::format("unknown query parameter \"{}\" (known: older_than_days)",
                            k.substr(0, 40)));
        char* end = nullptr;
        double d = std::strtod(v.c_str(), &end);
        if (v.empty() || end != v.c_str() + v.size() || !(d >= 0) || d > 36500)
            co_return error_response(
                req.version(), http::status::bad_request,
                fmt::format("older_than_days \"{}\" is not a number of days from 0 to 36500",
                            v.substr(0, 40)));
        days = d;
    }
    if (!days)
        co_return error_response(req.version(), http::status::bad_request,
                                 "older_than_days is required: what finished (or was filed) "
                                 "that many days ago or earlier is removed");
    auto r = co_await housekeep(e, days, days);
    log::notice("purge by pid {} uid {}: {} finished jobs pruned, {} spool files removed (older "
                "than {} days){}",
                peer.pid, peer.uid, r.jobs_pruned, r.spool_files_removed, *days,
                r.error.empty() ? "" : "; " + r.error);
    json::object o{{"jobs_pruned", r.jobs_pruned},
                   {"spool_files_removed", static_cast<std::int64_t>(r.spool_files_removed)}};
    if (!r.error.empty()) {
        o["error"] = core::valid_utf8(r.error);
        co_return json_response(req.version(), http::status::service_unavailable, o);
    }
    co_return json_response(req.version(), http::status::ok, o);
}

// GET /v1/events[?id=ID]: a stream the server writes, not an answer.
control_outcome events(const control_request& req, const target& t) {
    event_stream s;
    if (auto bad = read_id_query(req, t, "id must name a job (leave it out for every job's events)",
                                 s.job_filter))
        return std::move(*bad);
    return s;
}

// clang-format off
#define KLINGD_ROUTE_ARGS [[maybe_unused]] const control_request& req, [[maybe_unused]] engine& e, [[maybe_unused]] const peer_info& p, [[maybe_unused]] const target& t, [[maybe_unused]] const std::string& id
const route routes[] = {
    {http::verb::get, {"metrics"}, [](KLINGD_ROUTE_ARGS) -> asio::awaitable<control_outcome> {
        co_return co_await metrics(req, e);
    }},
    {http::verb::get, {"v1", "health"}, [](KLINGD_ROUTE_ARGS) -> asio::awaitable<control_outcome> {
        // Answered from memory, never waiting on the database: a node cut off from it says so.
        if (auto why = e.degraded_reason(); !why.empty())
            co_return json_response(req.version(), http::status::service_unavailable,
                                    json::object{{"status", "degraded"}, {"reason", why}, {"version", KLINGD_VERSION}});
        json::object ok{{"status", "ok"}, {"version", KLINGD_VERSION}};
        if (auto held = held_json(e); !held.is_null())
            ok["held"] = held; // a spend limit holds priced submissions: still healthy
        co_return json_response(req.version(), http::status::ok, ok);
    }},
    {http::verb::get, {"v1", "events"}, [](KLINGD_ROUTE_ARGS) -> asio::awaitable<control_outcome> {
        co_return events(req, t);
    }},
    {http::verb::get, {"v1", "jobs"}, [](KLINGD_ROUTE_ARGS) -> asio::awaitable<control_outcome> {
        co_return co_await list_jobs(req, e, t);
    }},
    {http::verb::post, {"v1", "jobs"}, [](KLINGD_ROUTE_ARGS) -> asio::awaitable<control_outcome> {
        co_return co_await post_job(req, e, p, t);
    }},
    {http::verb::get, {"v1", "jobs", "{id}"}, [](KLINGD_ROUTE_ARGS) -> asio::awaitable<control_outcome> {
        co_return co_await get_job(req, e, id);
    }},
    {http::verb::post, {"v1", "jobs", "{id}", "cancel"}, [](KLINGD_ROUTE_ARGS) -> asio::awaitable<control_outcome> {
        co_return co_await job_action(req, e, id, "cancel", p);
    }},
    {http::verb::post, {"v1", "jobs", "{id}", "retry"}, [](KLINGD_ROUTE_ARGS) -> asio::awaitable<control_outcome> {
        co_return co_await job_action(req, e, id, "retry", p);
    }},
    {http::verb::post, {"v1", "pause"}, [](KLINGD_ROUTE_ARGS) -> asio::awaitable<control_outcome> {
        co_return co_await pause_or_resume(req, e, p, true);
    }},
    {http::verb::post, {"v1", "resume"}, [](KLINGD_ROUTE_ARGS) -> asio::awaitable<control_outcome> {
        co_return co_await pause_or_resume(req, e, p, false);
    }},
    {http::verb::post, {"v1", "purge"}, [](KLINGD_ROUTE_ARGS) -> asio::awaitable<control_outcome> {
        co_return co_await purge(req, e, p, t);
    }},
    {http::verb::get, {"v1", "nodes"}, [](KLINGD_ROUTE_ARGS) -> asio::awaitable<control_outcome> {
        co_return co_await list_nodes(req, e);
    }},
    {http::verb::get, {"v1", "stats"}, [](KLINGD_ROUTE_ARGS) -> asio::awaitable<control_outcome> {
        co_return co_await stats(req, e);
    }},
};
#undef KLINGD_ROUTE_ARGS
// clang-format on

bool matches(const route& r, const std::vector<std::string>& segments, std::string& id) {
    if (r.pattern.size() != segments.size())
        return false;
    for (std::size_t i = 0; i < segments.size(); ++i) {
        if (r.pattern[i] == "{id}")
            id = segments[i];
        else if (r.pattern[i] != segments[i])
            return false;
    }
    return true;
}

} // namespace

asio::awaitable<control_outcome> route_request(const control_request& req, engine& e,
                                               const peer_info& peer) {
    auto t = parse_target(req.target());
    if (!t)
        co_return error_response(req.version(), http::status::bad_request, t.error().message());
    std::string allowed;
    for (const auto& r : routes) {
        std::string id;
        if (!matches(r, t->segments, id))
            continue;
        if (r.method != req.method()) {
            allowed += allowed.empty() ? "" : ", ";
            allowed += std::string(http::to_string(r.method));
            continue;
        }
        std::string failure;
        try {
            co_return co_await r.handle(req, e, peer, *t, id);
        } catch (const std::exception& ex) {
            failure = ex.what();
        }
        log::error("control: {} {} failed: {}", std::string_view(req.method_string()).substr(0, 20),
                   std::string_view(req.target()).substr(0, 200), failure);
        co_return error_response(req.version(), http::status::internal_server_error, failure);
    }
    if (!allowed.empty()) {
        auto r = error_response(req.version(), http::status::method_not_allowed,
                                fmt::format("{} is not allowed here (allowed: {})",
                                            std::string_view(req.method_string()).substr(0, 20),
                                            allowed));
        r.set(http::field::allow, allowed);
        co_return r;
    }
    co_return error_response(
        req.version(), http::status::not_found,
        fmt::format("no endpoint {}", std::string_view(req.target()).substr(0, 200)));
}

} // namespace klingd::daemon
