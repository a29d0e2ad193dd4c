// klingctl: the command line client of klingd's control socket (interface.md,
// "klingctl"). Exit codes: 0 success, 1 a job failed/expired/was cancelled/was
// not found (or a request was refused), 2 usage, 3 klingd unreachable, 4 wait timed out.
#include "client/control_client.hpp"
#include "config/loader.hpp"
#include "core/time_text.hpp"
#include "daemon/job_file.hpp"
#include "daemon/local_inputs.hpp"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <fmt/format.h>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <thread>
#include <unistd.h>

namespace {

namespace http = boost::beast::http;
namespace json = boost::json;

constexpr int exit_ok = 0, exit_job = 1, exit_usage = 2, exit_unreachable = 3, exit_timeout = 4;

struct unreachable : std::runtime_error {
    using std::runtime_error::runtime_error;
};

using klingd::client::job_target;
using klingd::client::reply;
using klingd::client::with_query;

// The control client, with klingd being unreachable an exception that ends the command.
class client {
public:
    explicit client(std::string socket) : c_(std::move(socket)) {}
    // Throws unreachable when the socket cannot be used.
    reply call(http::verb method, const std::string& target, const std::string& body = {},
               std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
        auto r = c_.call(method, target, body, timeout);
        if (!r)
            throw unreachable(r.error().message());
        return std::move(*r);
    }
    const std::string& socket() const { return c_.socket(); }

private:
    klingd::client::control_client c_;
};

bool color_output() {
    return ::isatty(1) && !std::getenv("NO_COLOR");
}

std::string str(const json::value& v, std::string_view key) {
    return klingd::client::field(v, key);
}

std::string error_of(const reply& r) {
    auto e = str(r.body, "error");
    return e.empty() ? fmt::format("HTTP {}: {}", r.status, r.text.substr(0, 200)) : e;
}

std::string paint(const std::string& state, bool color) {
    if (!color)
        return state;
    const char* c = state == "completed"                      ? "32"
                    : state == "failed" || state == "expired" ? "31"
                    : state == "cancelled"                    ? "90"
                    : state == "pending"                      ? "33"
                                                              : "36";
    return fmt::format("\033[{}m{}\033[0m", c, state);
}

// "3s ago", "5m ago", "2h ago", "4d ago" for an RFC 3339 UTC time.
std::string ago(const std::string& rfc3339) {
    auto t = klingd::core::parse_rfc3339(rfc3339);
    if (!t)
        return rfc3339;
    auto s = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now() - *t)
                 .count();
    if (s < 0)
        s = 0;
    if (s < 120)
        return fmt::format("{}s ago", s);
    if (s < 7200)
        return fmt::format("{}m ago", s / 60);
    if (s < 172800)
        return fmt::format("{}h ago", s / 3600);
    return fmt::format("{}d ago", s / 86400);
}

bool terminal(const std::string& s) {
    return s == "completed" || s == "failed" || s == "expired" || s == "cancelled";
}

void print_table(const json::array& jobs) {
    bool color = color_output();
    std::vector<std::array<std::string, 6>> rows;
    rows.push_back({"ID", "STATE", "MODEL", "UPDATED", "TRIES/POLLS", "ERROR"});
    for (auto& j : jobs) {
        std::string err = str(j, "error");
        if (err.empty())
            err = str(j, "blocked");
        if (err.empty() && j.as_object().contains("held") && j.at("held").is_object())
            err = fmt::format("held by {} until {}", str(j.at("held"), "limit"),
                              str(j.at("held"), "until"));
        if (err.size() > 60)
            err = err.substr(0, 57) + "...";
        rows.push_back({str(j, "id"), str(j, "state"), str(j, "model"), ago(str(j, "updated_at")),
                        fmt::format("{}/{}", str(j, "attempts"), str(j, "polls")), err});
    }
    std::array<std::size_t, 6> width{};
    for (auto& r : rows)
        for (std::size_t i = 0; i < r.size(); ++i)
            width[i] = std::max(width[i], r[i].size());
    for (std::size_t k = 0; k < rows.size(); ++k) {
        auto& r = rows[k];
        std::string line;
        for (std::size_t i = 0; i < r.size(); ++i) {
            std::string cell = (i == 1 && k > 0) ? paint(r[i], color) : r[i];
            line += cell;
            if (i + 1 < r.size())
                line += std::string(width[i] - r[i].size() + 2, ' ');
        }
        while (!line.empty() && line.back() == ' ')
            line.pop_back();
        std::puts(line.c_str());
    }
}

int cmd_submit(client& c, const std::vector<std::string>& files) {
    int rc = exit_ok;
    for (auto& f : files) {
        std::ifstream in(f, std::ios::binary);
        if (!in) {
            std::fprintf(stderr, "klingctl: cannot read %s\n", f.c_str());
            rc = exit_job;
            continue;
        }
        std::ostringstream s;
        s << in.rdbuf();
        std::string body = s.str();
        // Sent as written (exact numbers and escapes kept); as in the spool, a file
        // without "id" takes its name (without .json), given beside it as ?id=.
        std::string name =
            f.substr(f.find_last_of('/') == std::string::npos ? 0 : f.find_last_of('/') + 1);
        if (name.ends_with(".json"))
            name.resize(name.size() - 5);
        // A job naming local files is answered once klingd has checked and hashed them
        // (up to two minutes for large ones): waited for longer than other requests.
        std::optional<std::chrono::milliseconds> timeout;
        // (A "\u" escape could spell file: out of sight: such a body waits as long.)
        if (body.find("file:") != std::string::npos || body.find("\\u") != std::string::npos)
            timeout = std::chrono::seconds(150);
        auto r = c.call(http::verb::post, with_query("/v1/jobs", {{"id", name}}), body, timeout);
        if (r.status == 200 || r.status == 201) {
            std::puts(str(r.body, "id").c_str());
        } else {
            std::fprintf(stderr, "klingctl: %s: %s\n", f.c_str(), error_of(r).c_str());
            rc = exit_job;
        }
    }
    return rc;
}

int cmd_list(client& c, const std::string& state, const std::string& model, std::size_t limit,
             bool as_json, bool ids_only) {
    json::array all;
    std::string after;
    for (;;) {
        std::size_t page = limit ? std::min<std::size_t>(limit - all.size(), 1000) : 1000;
        std::string limit_text = std::to_string(page);
        std::string target = with_query(
            "/v1/jobs",
            {{"limit", limit_text}, {"state", state}, {"model", model}, {"after", after}});
        auto r = c.call(http::verb::get, target);
        if (r.status != 200) {
            std::fprintf(stderr, "klingctl: %s\n", error_of(r).c_str());
            return r.status == 400 ? exit_usage : exit_job;
        }
        for (auto& j : r.body.at("jobs").as_array())
            all.push_back(j);
        after = str(r.body, "next");
        if (after.empty() || (limit && all.size() >= limit))
            break;
    }
    if (as_json)
        std::puts(json::serialize(all).c_str());
    else if (ids_only)
        for (auto& j : all)
            std::puts(str(j, "id").c_str());
    else
        print_table(all);
    return exit_ok;
}

// GETs target; the exit status when that is all there is to do (an error, or --json
// printed the answer), else nullopt and the answer in r.
std::optional<int> get_or_print(client& c, const std::string& target, bool as_json, reply& r) {
    r = c.call(http::verb::get, target);
    if (r.status != 200) {
        std::fprintf(stderr, "klingctl: %s\n", error_of(r).c_str());
        return exit_job;
    }
    if (as_json) {
        std::puts(json::serialize(r.body).c_str());
        return exit_ok;
    }
    return std::nullopt;
}

int cmd_show(client& c, const std::string& id, bool as_json) {
    reply r;
    if (auto rc = get_or_print(c, job_target(id), as_json, r))
        return *rc;
    bool color = color_output();
    const auto& o = r.body.as_object();
    for (auto key :
         {"id", "model", "state", "request_id", "priority", "attempts", "polls", "created_at",
          "submitted_at", "finished_at", "updated_at", "error", "blocked"}) {
        auto v = str(r.body, key);
        if (v.empty() && key != std::string_view("request_id") && key != std::string_view("error"))
            continue;
        std::printf("%-13s %s\n", (std::string(key) + ":").c_str(),
                    key == std::string_view("state") ? paint(v, color).c_str()
                                                     : (v.empty() ? "-" : v.c_str()));
    }
    std::puts("outputs:");
    for (auto& p : o.at("outputs").as_array())
        std::printf("  %s\n", std::string(p.as_string()).c_str());
    std::puts("history:");
    if (auto h = o.find("history"); h != o.end())
        for (auto& e : h->value().as_array())
            std::printf("  %s  %-10s %s\n", str(e, "at").c_str(), str(e, "state").c_str(),
                        str(e, "note").c_str());
    if (auto h = o.find("hooks"); h != o.end() && !h->value().as_array().empty()) {
        std::puts("hooks:");
        for (auto& e : h->value().as_array()) {
            auto err = str(e, "last_error");
            std::printf("  %-28s %-8s %-10s %s attempt%s%s\n", str(e, "event").c_str(),
                        str(e, "target").c_str(), str(e, "outcome").c_str(),
                        str(e, "attempts").c_str(), str(e, "attempts") == "1" ? "" : "s",
                        err.empty() ? "" : ("  " + err).c_str());
        }
    }
    return exit_ok;
}

// Subscribes to the event stream (of one job when only one is named); exit_unreachable
// (thrown) when klingd cannot be reached; nullopt when klingd keeps as many streams open
// as it will (the caller reads the states now and then instead).
std::optional<klingd::client::event_subscription> subscribe(client& c,
                                                            const std::vector<std::string>& ids) {
    auto sub = klingd::client::event_subscription::open(c.socket(), ids.size() == 1 ? ids[0] : "");
    if (!sub && sub.error() == klingd::core::errc::unreachable)
        throw unreachable(sub.error().message());
    if (!sub && sub.error() == klingd::core::errc::streams_full)
        return std::nullopt;
    if (!sub)
        throw std::runtime_error(sub.error().message());
    return std::move(*sub);
}

// What a terminal job ended as: "completed", or "failed: why" and the like.
std::string outcome_of(const json::value& job) {
    auto st = str(job, "state");
    return st + (st == "completed" ? "" : ": " + str(job, "error"));
}

// Follows the event stream until every job is terminal: subscribed first, then each
// job's state is read, so no change falls between the two. An overflowed stream is
// opened again the same way.
int cmd_wait(client& c, const std::vector<std::string>& ids, double timeout_s) {
    auto deadline = std::chrono::steady_clock::now() +
                    std::chrono::milliseconds(static_cast<long>(timeout_s * 1000));
    std::map<std::string, std::string> final;
    std::set<std::string> wanted(ids.begin(), ids.end());
    // Reads the state of every job not known to be terminal yet.
    auto read_states = [&] {
        for (auto& id : wanted) {
            if (final.count(id))
                continue;
            auto r = c.call(http::verb::get, job_target(id));
            if (r.status == 404)
                final[id] = "not found";
            else if (r.status >= 500)
                continue; // klingd is busy (its database locked, say): asked again later
            else if (r.status != 200)
                final[id] = "error: " + error_of(r);
            else if (terminal(str(r.body, "state")))
                final[id] = outcome_of(r.body);
        }
    };
    // On a terminal, a progress line on stderr (rewritten in place); nothing when piped.
    bool tty = ::isatty(2) == 1;
    std::size_t shown = static_cast<std::size_t>(-1);
    auto progress = [&] {
        if (!tty || final.size() == shown)
            return;
        shown = final.size();
        std::size_t failed = 0;
        for (auto& [id, outcome] : final)
            failed += outcome != "completed";
        std::fprintf(stderr, "\r\033[Kwaiting: %zu/%zu done, %zu not completed", final.size(),
                     wanted.size(), failed);
        std::fflush(stderr);
    };
    auto clear_progress = [&] {
        if (tty && shown != static_cast<std::size_t>(-1))
            std::fprintf(stderr, "\r\033[K");
    };
    // Gave up: what each job came to, or that it still runs.
    auto timed_out = [&] {
        clear_progress();
        for (auto& id : ids)
            std::printf("%s: %s\n", id.c_str(),
                        final.count(id) ? final[id].c_str() : "still running");
        return exit_timeout;
    };
    bool said_polling = false;
    while (final.size() < wanted.size()) {
        auto sub = subscribe(c, ids);
        read_states();
        progress();
        bool overflowed = false;
        if (!sub) {
            // No stream to follow: the states are read once a second, then a stream is asked
            // for again.
            if (!said_polling)
                std::fprintf(stderr, "klingctl: klingd has no event stream to spare; reading "
                                     "the jobs' states once a second instead\n");
            said_polling = true;
            if (final.size() == wanted.size())
                break;
            auto left = deadline - std::chrono::steady_clock::now();
            if (timeout_s > 0 && left <= std::chrono::steady_clock::duration::zero())
                return timed_out();
            std::this_thread::sleep_for(
                timeout_s > 0
                    ? std::min<std::chrono::steady_clock::duration>(left, std::chrono::seconds(1))
                    : std::chrono::seconds(1));
            continue;
        }
        while (final.size() < wanted.size() && !overflowed) {
            auto left = std::chrono::milliseconds(60'000);
            if (timeout_s > 0) {
                left = std::chrono::ceil<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now());
                if (left.count() <= 0)
                    return timed_out();
            }
            // Quiet for a while (or a heartbeat): read the states again, in case a change
            // came before the stream could show it.
            auto ev = sub->next(std::min(left, std::chrono::milliseconds(20'000)));
            if (!ev)
                throw unreachable(ev.error().message());
            if (!*ev || str(**ev, "type") == "heartbeat") {
                read_states();
                progress();
                continue;
            }
            const auto& v = **ev;
            if (str(v, "type") == "overflow")
                overflowed = true;
            else if (str(v, "type") == "job" && wanted.count(str(v, "id")) &&
                     terminal(str(v, "state"))) {
                final.emplace(str(v, "id"), outcome_of(v));
                progress();
            }
        }
    }
    clear_progress();
    int rc = exit_ok;
    for (auto& id : ids) {
        std::printf("%s: %s\n", id.c_str(), final[id].c_str());
        if (final[id] != "completed")
            rc = exit_job;
    }
    return rc;
}

int cmd_action(client& c, const std::string& target) {
    auto r = c.call(http::verb::post, target);
    if (r.status != 200) {
        std::fprintf(stderr, "klingctl: %s\n", error_of(r).c_str());
        return exit_job;
    }
    if (auto s = str(r.body, "state"); !s.empty())
        std::printf("%s: %s\n", str(r.body, "id").c_str(), s.c_str());
    else
        std::puts(r.text.c_str());
    return exit_ok;
}

// Follows GET /v1/events and prints each change as it happens, until interrupted
// (or, with ids, until those jobs are all terminal).
int cmd_watch(client& c, const std::vector<std::string>& ids, bool as_json) {
    auto sub = subscribe(c, ids);
    if (!sub) {
        std::fprintf(stderr, "klingctl: klingd has as many event streams open as it keeps; "
                             "close a `klingctl watch` or `wait`, or use `klingctl list`\n");
        return exit_unreachable;
    }
    bool color = color_output();
    std::set<std::string> open(ids.begin(), ids.end());
    // Subscribed: each named job's state now, then its changes, without a gap between.
    for (auto& id : ids) {
        auto r = c.call(http::verb::get, job_target(id));
        std::string st = r.status == 200   ? str(r.body, "state")
                         : r.status == 404 ? "not found"
                                           : "error: " + error_of(r);
        if (as_json)
            std::printf("%s\n",
                        json::serialize(json::object{{"type", "state"}, {"id", id}, {"state", st}})
                            .c_str());
        else
            std::printf("%s: %s\n", id.c_str(), st.c_str());
        if (r.status != 200 || terminal(st))
            open.erase(id);
    }
    std::fflush(stdout);
    while (ids.empty() || !open.empty()) {
        auto ev = sub->next(std::chrono::minutes(1));
        if (!ev) {
            std::fprintf(stderr, "klingctl: %s\n", ev.error().message().c_str());
            return exit_unreachable;
        }
        if (!*ev)
            continue;
        const auto& v = **ev;
        if (str(v, "type") == "overflow") {
            std::fprintf(stderr,
                         "klingctl: fell too far behind the event stream; run watch again\n");
            return exit_unreachable;
        }
        if (str(v, "type") != "job")
            continue;
        std::string id = str(v, "id");
        if (!ids.empty() && std::find(ids.begin(), ids.end(), id) == ids.end())
            continue;
        if (as_json)
            std::printf("%s\n", json::serialize(v).c_str());
        else
            std::printf("%s  %-24s %-10s %s\n", str(v, "at").c_str(), id.c_str(),
                        paint(str(v, "state"), color).c_str(), str(v, "note").c_str());
        std::fflush(stdout);
        if (terminal(str(v, "state")))
            open.erase(id);
    }
    return exit_ok;
}

// A duration as a person reads it: "45 s", "12 min", "3 h 20 min", "2 d 4 h".
std::string human_duration(double s) {
    if (!(s >= 0))
        return "?";
    auto n = static_cast<long long>(std::llround(s));
    if (n < 90)
        return fmt::format("{} s", n);
    if (n < 90 * 60)
        return fmt::format("{} min", (n + 30) / 60);
    if (n < 48 * 3600)
        return fmt::format("{} h {} min", n / 3600, (n % 3600) / 60);
    return fmt::format("{} d {} h", n / 86400, (n % 86400) / 3600);
}

// /v1/stats' forecast, in words: when the unfinished jobs should be done, what they cost,
// and how the forecast made an hour before the last drain did.
std::vector<std::string> forecast_lines(const json::value& stats) {
    std::vector<std::string> out;
    auto* o = stats.is_object() ? stats.as_object().if_contains("forecast") : nullptr;
    if (!o || !o->is_object())
        return out;
    auto left = std::strtoll(str(*o, "jobs_left").c_str(), nullptr, 10);
    auto cost = str(*o, "cost");
    if (auto* c = o->as_object().if_contains("cost"); c && c->is_double())
        cost = fmt::format("{}", c->as_double());
    if (left == 0) {
        out.push_back("forecast: nothing waiting");
    } else if (str(*o, "seconds_left").empty()) {
        out.push_back(
            fmt::format("forecast: {} jobs left; no time can be given (no budget)", left));
    } else {
        out.push_back(fmt::format(
            "forecast: {} jobs left, done in about {} (at {}), bound by the {}; about {} "
            "requests at {} a job{}",
            left, human_duration(std::strtod(str(*o, "seconds_left").c_str(), nullptr)),
            str(*o, "done_at"), str(*o, "bound"), str(*o, "requests_left"),
            str(*o, "requests_per_job"),
            cost == "0" ? "" : fmt::format("; the pending ones cost {}", cost)));
    }
    if (auto* d = o->as_object().if_contains("last_drain"); d && d->is_object()) {
        double err = std::strtod(str(*d, "error_s").c_str(), nullptr);
        out.push_back(fmt::format(
            "forecast made at {} for {} jobs said {}; they were done at {} ({} {})",
            str(*d, "made_at"), str(*d, "jobs_then"), str(*d, "predicted_at"),
            str(*d, "drained_at"), human_duration(std::abs(err)), err >= 0 ? "later" : "earlier"));
    }
    return out;
}

int cmd_stats(client& c, bool as_json) {
    reply r;
    if (auto rc = get_or_print(c, "/v1/stats", as_json, r))
        return *rc;
    const auto& o = r.body.as_object();
    std::puts("jobs:");
    for (auto& [k, v] : o.at("jobs").as_object())
        std::printf("  %-11s %s\n", std::string(k).c_str(), json::serialize(v).c_str());
    std::puts("API requests:");
    for (auto& [kind, codes] : o.at("requests").as_object()) {
        std::string line;
        for (auto& [code, n] : codes.as_object())
            line += fmt::format(" {}={}", std::string_view(code), json::serialize(n));
        std::printf("  %-7s%s\n", std::string(kind).c_str(), line.c_str());
    }
    const auto& b = o.at("budget").as_object();
    std::printf("budget: %s requests/min allowed now (configured %s), %s used in the last minute\n",
                json::serialize(b.at("allowed_rpm")).c_str(),
                json::serialize(b.at("configured_rpm")).c_str(),
                json::serialize(b.at("used_last_minute")).c_str());
    std::printf("429 answers: %s\n", json::serialize(o.at("rate_limited")).c_str());
    auto blocked = str(r.body, "submissions_blocked");
    std::printf("submissions: %s\n", blocked.empty() ? "going" : blocked.c_str());
    if (auto sp = o.find("spend"); sp != o.end() && sp->value().is_object()) {
        const auto& m = sp->value().as_object();
        // Amounts as a person writes them (Boost.JSON would print 1.05 as 1.05E0).
        auto amount = [&](const char* k) -> std::string {
            auto& v = m.at(k);
            if (v.is_double())
                return fmt::format("{}", v.as_double());
            return v.is_null() ? std::string("?") : json::serialize(v);
        };
        auto limit = [&](const char* k) {
            auto v = amount(k);
            return v == "0" ? std::string("no limit") : "limit " + v;
        };
        std::printf("spend: %s today (%s), %s this month (%s)\n", amount("today").c_str(),
                    limit("daily_limit").c_str(), amount("month").c_str(),
                    limit("monthly_limit").c_str());
        if (auto h = m.find("held"); h != m.end() && h->value().is_object())
            std::printf("spend: priced submissions held by %s until %s\n",
                        str(h->value(), "limit").c_str(), str(h->value(), "until").c_str());
    }
    for (auto& line : forecast_lines(r.body))
        std::printf("%s\n", line.c_str());
    return exit_ok;
}

// top: a live view. On a terminal the screen is redrawn in place every interval; piped,
// one summary line a refresh and one line per job that ends. Follows /v1/events for the
// jobs that end; /v1/stats for the rest. iterations: refreshes before it exits (0: until
// interrupted).
int cmd_top(client& c, double interval_s, int iterations) {
    bool tty = ::isatty(1) == 1;
    auto interval = std::chrono::milliseconds(static_cast<long>(std::max(0.1, interval_s) * 1000));
    auto sub = subscribe(c, {}); // nullopt: no stream to spare; endings are not shown then
    struct ending {
        std::string at, id, state, error;
    };
    std::deque<ending> recent;
    std::deque<double> rpm_history; // used in the last minute, one a refresh
    auto now_text = [] {
        auto t = std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now());
        auto s = klingd::core::format_rfc3339(
            std::chrono::time_point_cast<std::chrono::milliseconds>(t));
        return s.substr(11, 8); // HH:MM:SS (UTC)
    };
    auto spark = [](const std::deque<double>& v, double top_value) {
        static const char* bars[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
        std::string out;
        for (double x : v) {
            int i = top_value > 0 ? static_cast<int>(std::lround(x / top_value * 7)) : 0;
            out += bars[std::clamp(i, 0, 7)];
        }
        return out;
    };
    for (int n = 0; iterations <= 0 || n < iterations; ++n) {
        // Until the next refresh: the jobs that end.
        auto until =
            std::chrono::steady_clock::now() + (n == 0 ? std::chrono::milliseconds(0) : interval);
        while (sub) {
            auto left = std::chrono::ceil<std::chrono::milliseconds>(
                until - std::chrono::steady_clock::now());
            if (left.count() <= 0)
                break;
            auto ev = sub->next(left);
            if (!ev) {
                sub.reset(); // the stream ended: the counts go on
                break;
            }
            if (!*ev)
                break;
            const auto& v = **ev;
            if (str(v, "type") != "job" || !terminal(str(v, "state")))
                continue;
            ending e{now_text(), str(v, "id"), str(v, "state"), str(v, "error")};
            if (!tty)
                std::printf("%s %s %s%s\n", e.at.c_str(), e.state.c_str(), e.id.c_str(),
                            e.error.empty() ? "" : (": " + e.error).c_str());
            recent.push_front(std::move(e));
            if (recent.size() > 8)
                recent.pop_back();
        }
        if (!sub && n > 0)
            std::this_thread::sleep_for(interval); // the refresh's pace, not a synchronisation
        auto r = c.call(http::verb::get, "/v1/stats");
        if (r.status != 200) {
            std::fprintf(stderr, "klingctl: %s\n", error_of(r).c_str());
            return exit_job;
        }
        const auto& o = r.body.as_object();
        std::string jobs;
        for (auto st : {"pending", "submitting", "queued", "processing", "completed", "failed",
                        "expired", "cancelled"})
            jobs += fmt::format("{} {}  ", st, str(o.at("jobs"), st));
        const auto& b = o.at("budget");
        double used = std::strtod(str(b, "used_last_minute").c_str(), nullptr);
        double allowed = std::strtod(str(b, "allowed_rpm").c_str(), nullptr);
        double configured = std::strtod(str(b, "configured_rpm").c_str(), nullptr);
        rpm_history.push_back(used);
        if (rpm_history.size() > 30)
            rpm_history.pop_front();
        std::string going = str(r.body, "paused") == "true" ? "paused (klingctl resume)"
                            : !str(r.body, "submissions_blocked").empty()
                                ? str(r.body, "submissions_blocked")
                                : "going";
        double oldest = std::strtod(str(r.body, "oldest_pending_age_s").c_str(), nullptr);
        auto forecast = forecast_lines(r.body);
        if (!tty) {
            std::printf("%s jobs: %s| requests %g/min of %g allowed | 429s %s | submissions %s | "
                        "oldest pending %s | %s\n",
                        now_text().c_str(), jobs.c_str(), used, allowed,
                        str(r.body, "rate_limited").c_str(), going.c_str(),
                        oldest > 0 ? human_duration(oldest).c_str() : "-",
                        forecast.empty() ? "" : forecast.front().c_str());
            std::fflush(stdout);
            continue;
        }
        std::string screen = "\033[H\033[J";
        screen +=
            fmt::format("klingd top: {}   {} UTC   (Ctrl-C to quit)\n\n", c.socket(), now_text());
        screen += "jobs        " + jobs + "\n";
        screen += fmt::format("requests    {:g}/min of {:g} allowed ({:g} configured)   429s: "
                              "{}\n",
                              used, allowed, configured, str(r.body, "rate_limited"));
        screen += fmt::format("            {}\n", spark(rpm_history, std::max(configured, 1.0)));
        screen += fmt::format("submissions {}   in flight {}   oldest pending {}\n", going,
                              str(r.body, "in_flight"), oldest > 0 ? human_duration(oldest) : "-");
        for (auto& line : forecast)
            screen += line + "\n";
        screen += "\nrecently ended:\n";
        if (!sub)
            screen += "  (klingd has no event stream to spare: not shown)\n";
        else if (recent.empty())
            screen += "  none since klingctl top started\n";
        for (auto& e : recent)
            screen += fmt::format("  {}  {:<10} {}{}\n", e.at, e.state, e.id,
                                  e.error.empty() ? "" : "  " + e.error.substr(0, 80));
        std::fputs(screen.c_str(), stdout);
        std::fflush(stdout);
    }
    return exit_ok;
}

// The cluster's nodes: name, live or not, last heartbeat, jobs held.
int cmd_nodes(client& c, bool as_json) {
    reply r;
    if (auto rc = get_or_print(c, "/v1/nodes", as_json, r))
        return *rc;
    std::printf("%-20s %-8s %-24s %9s  %s\n", "NODE", "STATUS", "LAST HEARTBEAT", "JOBS HELD",
                "VERSION");
    for (auto& n : r.body.at("nodes").as_array()) {
        std::string status = str(n, "live") == "true"      ? "live"
                             : str(n, "stopped") == "true" ? "stopped"
                                                           : "gone";
        std::string beat = str(n, "heartbeat_at");
        if (auto age = str(n, "heartbeat_age_s"); !age.empty())
            beat = fmt::format("{:.1f} s ago", std::strtod(age.c_str(), nullptr));
        std::printf("%-20s %-8s %-24s %9s  %s%s\n", str(n, "name").c_str(), status.c_str(),
                    beat.empty() ? "-" : beat.c_str(), str(n, "jobs_held").c_str(),
                    str(n, "version").c_str(), str(n, "this") == "true" ? "  (this node)" : "");
    }
    return exit_ok;
}

// The command line: each subcommand and what it takes.
// validate: each job file judged offline by the spool's own rules (daemon/job_file), and
// with a configuration its local files by its [inputs]: one line each, "NAME: ok ..." or
// "NAME: REASON" as the spool's .error file says it. No socket, no daemon.
int cmd_validate(const std::vector<std::string>& files, const std::string& config_path) {
    namespace cfg = klingd::config;
    std::optional<cfg::settings> settings;
    if (!config_path.empty()) {
        auto r = cfg::load_settings(config_path, cfg::process_environment(), cfg::secrets::skip);
        if (!r.value) {
            for (auto& e : r.errors)
                std::fprintf(stderr, "klingctl: %s\n", e.c_str());
            return exit_usage;
        }
        settings = std::move(*r.value);
    }
    std::uint64_t max_bytes =
        settings ? settings->spool.max_file_bytes : cfg::spool_settings{}.max_file_bytes;
    int rc = exit_ok;
    bool unchecked_inputs = false;
    for (auto& path : files) {
        auto slash = path.find_last_of('/');
        std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
        auto shown = klingd::daemon::printable(name);
        auto bad = [&](const std::string& why) {
            auto line = fmt::format("{}: {}", shown, why);
            for (auto& c : line) // one line, as the spool's .error file has it
                if (c == '\n' || c == '\r')
                    c = ' ';
            std::puts(line.c_str());
            rc = exit_job;
        };
        if (klingd::daemon::spool_ignores(name)) {
            bad("is ignored by the spool: a name starting with '.' or ending in .tmp is taken "
                "as a file still being written; rename it to NAME.json");
            continue;
        }
        struct stat st {};
        if (::lstat(path.c_str(), &st) != 0) {
            bad(fmt::format("cannot be read: {}", std::strerror(errno)));
            continue;
        }
        if (S_ISLNK(st.st_mode)) {
            bad("is a symbolic link; put the job file itself into incoming/");
            continue;
        }
        if (!S_ISREG(st.st_mode)) {
            bad("is not a regular file");
            continue;
        }
        if (auto why = klingd::daemon::job_file_problem(
                name, static_cast<std::uint64_t>(st.st_size), max_bytes)) {
            bad(*why);
            continue;
        }
        // Read as the spool reads: what was looked at (no link followed, nothing that
        // blocks), no more than was measured.
        int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd < 0) {
            bad(fmt::format("cannot be read: {}", std::strerror(errno)));
            continue;
        }
        // The file read is the one judged: its own mode and link count (fstat), not those
        // of what the path named a moment before.
        struct stat now {};
        const bool same_file = ::fstat(fd, &now) == 0 && S_ISREG(now.st_mode) &&
                               now.st_ino == st.st_ino && now.st_dev == st.st_dev;
        auto text = same_file
                        ? klingd::daemon::read_job_text(fd, static_cast<std::size_t>(st.st_size))
                        : klingd::core::result<std::string>(std::string());
        ::close(fd);
        if (!same_file) {
            bad("was replaced while it was read");
            continue;
        }
        if (!text) {
            bad(text.error().detail);
            continue;
        }
        auto job = klingd::daemon::read_job_file(*text, name, now.st_nlink, now.st_mode);
        if (!job) {
            bad(job.error().message());
            continue;
        }
        std::string note;
        if (!job->local_inputs.empty()) {
            if (settings) {
                // As klingd would check them for the file's owner (as far as this user can
                // see them).
                // And the spool's rule for where it will lie: incoming/ must keep owners
                // (judged when this user can see that folder).
                struct statfs sfs {};
                auto incoming = settings->spool.directory + "/incoming";
                if (::statfs(incoming.c_str(), &sfs) == 0) {
                    if (auto why = klingd::daemon::owner_not_trusted(static_cast<long>(sfs.f_type));
                        !why.empty()) {
                        bad(fmt::format("{} ({})", why, incoming));
                        continue;
                    }
                }
                std::optional<klingd::daemon::submitter> owner;
                owner.emplace().uid = now.st_uid;
                auto inputs =
                    klingd::daemon::check_local_inputs(job->local_inputs, settings->inputs, owner);
                if (!inputs) {
                    bad(inputs.error().message());
                    continue;
                }
                note = fmt::format(", {} local file{} checked", inputs->size(),
                                   inputs->size() == 1 ? "" : "s");
            } else {
                note =
                    fmt::format(", {} local file{} NOT checked (give --config)",
                                job->local_inputs.size(), job->local_inputs.size() == 1 ? "" : "s");
                unchecked_inputs = true;
            }
        }
        std::printf("%s: ok: job %s, model %s%s\n", shown.c_str(), job->id.c_str(),
                    job->model.c_str(), note.c_str());
    }
    if (unchecked_inputs)
        std::fprintf(stderr, "klingctl: local files (file:// URLs) are checked only against a "
                             "configuration's [inputs]: klingctl validate --config "
                             "/etc/klingd/klingd.toml FILE...\n");
    return rc;
}

// purge: POST /v1/purge, and what it removed.
int cmd_purge(client& c, double days) {
    // Pruning a large database and cleaning a large spool takes a while: waited for as
    // long as a job's local files.
    auto r = c.call(http::verb::post,
                    with_query("/v1/purge", {{"older_than_days", fmt::format("{}", days)}}), "",
                    std::chrono::milliseconds(std::chrono::seconds(150)));
    if (r.status != 200) {
        std::fprintf(stderr, "klingctl: %s\n", error_of(r).c_str());
        if (r.status == 503 && r.body.is_object())
            std::fprintf(stderr,
                         "klingctl: done before that: %s finished jobs pruned, %s spool "
                         "files removed\n",
                         str(r.body, "jobs_pruned").c_str(),
                         str(r.body, "spool_files_removed").c_str());
        return exit_job;
    }
    std::printf("%s finished jobs pruned, %s spool files removed\n",
                str(r.body, "jobs_pruned").c_str(), str(r.body, "spool_files_removed").c_str());
    return exit_ok;
}

struct command_line {
    std::string socket =
        std::getenv("KLINGD_SOCKET") ? std::getenv("KLINGD_SOCKET") : "/run/klingd/klingd.sock";
    std::vector<std::string> files, ids;
    std::string id, state, model;
    bool as_json = false;
    bool quiet = false;
    double timeout = 0;
    std::size_t limit = 0;
    CLI::App* submit = nullptr;
    CLI::App* list = nullptr;
    CLI::App* show = nullptr;
    CLI::App* wait = nullptr;
    CLI::App* cancel = nullptr;
    CLI::App* retry = nullptr;
    CLI::App* pause = nullptr;
    CLI::App* resume = nullptr;
    CLI::App* watch = nullptr;
    CLI::App* stats = nullptr;
    CLI::App* nodes = nullptr;
    CLI::App* validate = nullptr;
    CLI::App* purge = nullptr;
    CLI::App* top = nullptr;
    double interval_s = 1;
    int iterations = 0;
    double older_than_days = -1;
    std::string config_path;

    void define(CLI::App& app) {
        app.require_subcommand(1);
        app.add_option(
            "--socket", socket,
            "klingd's control socket (default: $KLINGD_SOCKET, else /run/klingd/klingd.sock)");
        submit = app.add_subcommand("submit", "send job files, print each id");
        submit->add_option("FILE", files, "job files")->required();
        list = app.add_subcommand("list", "list jobs");
        list->add_option("--state", state, "only jobs in this state");
        list->add_option("--model", model, "only jobs of this model");
        list->add_option("--limit", limit, "at most this many");
        list->add_flag("--json", as_json, "print the JSON array of job objects");
        list->add_flag("-q,--quiet", quiet, "print only the ids, one a line");
        show = app.add_subcommand("show", "one job, with its history");
        show->add_option("ID", id, "job id")->required();
        show->add_flag("--json", as_json, "print the job object");
        wait = app.add_subcommand("wait",
                                  "block until the jobs are terminal; exit 0 when all completed");
        wait->add_option("ID", ids, "job ids")->required();
        wait->add_option("--timeout", timeout, "give up after this many seconds (exit 4)");
        cancel = app.add_subcommand("cancel", "cancel a pending job");
        cancel->add_option("ID", id, "job id")->required();
        retry = app.add_subcommand("retry", "submit a failed or expired job again");
        retry->add_option("ID", id, "job id")->required();
        pause = app.add_subcommand("pause", "stop submitting (polling goes on)");
        resume = app.add_subcommand("resume", "submit again");
        watch = app.add_subcommand(
            "watch", "print job changes as they happen (with IDs: until those are terminal)");
        watch->add_option("ID", ids, "only these jobs");
        watch->add_flag("--json", as_json, "print the events as JSON lines");
        stats = app.add_subcommand("stats", "jobs by state, API requests, budget");
        stats->add_flag("--json", as_json, "print the JSON");
        nodes = app.add_subcommand("nodes",
                                   "the cluster's nodes: live or not, last heartbeat, jobs held");
        nodes->add_flag("--json", as_json, "print the JSON");
        top = app.add_subcommand("top", "a live view: jobs by state, requests against the "
                                        "budget, the oldest pending job, the forecast, and the "
                                        "jobs that end (plain lines when not on a terminal)");
        top->add_option("--interval", interval_s, "seconds between refreshes (default 1)")
            ->check(CLI::Range(0.1, 3600.0));
        top->add_option("-n,--iterations", iterations,
                        "refreshes before it exits (default: "
                        "until interrupted)")
            ->check(CLI::NonNegativeNumber);
        purge = app.add_subcommand("purge",
                                   "prune finished jobs and remove spool files older than DAYS now "
                                   "(jobs.keep_finished_days and spool.keep_days do it hourly)");
        purge->add_option("--older-than", older_than_days, "DAYS (0 or more; may be fractional)")
            ->required()
            ->check(CLI::Range(0.0, 36500.0));
        validate = app.add_subcommand(
            "validate", "check job files offline by klingd's own rules (no daemon needed); "
                        "exit 0 when all are valid, 1 otherwise");
        validate->add_option("FILE", files, "job files")->required();
        validate->add_option("--config", config_path,
                             "check file:// inputs against this configuration's [inputs] (and "
                             "its spool.max_file_bytes)");
    }

    // Runs the chosen subcommand; throws unreachable when klingd cannot be reached.
    int run(client& c) const {
        if (*submit)
            return cmd_submit(c, files);
        if (*list)
            return cmd_list(c, state, model, limit, as_json, quiet);
        if (*show)
            return cmd_show(c, id, as_json);
        if (*wait)
            return cmd_wait(c, ids, timeout);
        if (*cancel)
            return cmd_action(c, job_target(id, "cancel"));
        if (*retry)
            return cmd_action(c, job_target(id, "retry"));
        if (*pause)
            return cmd_action(c, "/v1/pause");
        if (*resume)
            return cmd_action(c, "/v1/resume");
        if (*stats)
            return cmd_stats(c, as_json);
        if (*watch)
            return cmd_watch(c, ids, as_json);
        if (*nodes)
            return cmd_nodes(c, as_json);
        if (*validate)
            return cmd_validate(files, config_path);
        if (*purge)
            return cmd_purge(c, older_than_days);
        if (*top)
            return cmd_top(c, interval_s, iterations);
        return exit_usage;
    }
};

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"klingctl: control klingd over its Unix socket"};
    command_line cl;
    cl.define(app);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        int rc = app.exit(e);
        return rc == 0 ? exit_ok : exit_usage;
    }
    client c(cl.socket);
    try {
        return cl.run(c);
    } catch (const unreachable& e) {
        std::fprintf(stderr, "klingctl: %s\n", e.what());
        return exit_unreachable;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "klingctl: unexpected answer: %s\n", e.what());
        return exit_job;
    }
}
