// JSON rendering of jobs and their history.
#include "daemon/job_json.hpp"

#include "core/time_text.hpp"
#include "core/utf8.hpp"

#include <boost/json.hpp>

namespace klingd::daemon {

namespace json = boost::json;

namespace {
std::string rfc3339(core::time_point t) {
    return core::format_rfc3339(t);
}
// Text that may quote a server's bytes (errors, notes) is repaired to valid UTF-8.
json::value opt(const std::optional<std::string>& s) {
    return s ? json::value(core::valid_utf8(*s)) : json::value(nullptr);
}
json::value opt_time(const std::optional<core::time_point>& t) {
    return t ? json::value(rfc3339(*t)) : json::value(nullptr);
}
} // namespace

json::object job_to_json(const core::job& j, const std::string& blocked) {
    json::object o;
    o["id"] = j.id;
    o["model"] = j.model;
    o["state"] = core::to_string(j.state);
    o["request_id"] = opt(j.request_id);
    o["error"] = opt(j.error);
    json::array outputs;
    for (auto& p : j.outputs)
        outputs.emplace_back(p);
    o["outputs"] = std::move(outputs);
    o["priority"] = j.priority;
    o["created_at"] = rfc3339(j.created_at);
    o["updated_at"] = rfc3339(j.updated_at);
    o["submitted_at"] = opt_time(j.submitted_at);
    o["finished_at"] = opt_time(j.finished_at);
    o["attempts"] = j.attempts;
    o["polls"] = j.polls;
    // Cluster: who holds it, or finished it; null while pending and on a single host.
    o["node"] = j.state == core::job_state::pending ? json::value(nullptr) : opt(j.node);
    if (j.state == core::job_state::pending && !blocked.empty())
        o["blocked"] = blocked;
    return o;
}

std::string event_line(const core::job& j, const std::string& note, core::time_point at) {
    json::object o;
    o["type"] = "job";
    o["at"] = rfc3339(at);
    o["id"] = j.id;
    o["model"] = j.model;
    o["state"] = core::to_string(j.state);
    o["note"] = core::valid_utf8(note);
    o["request_id"] = opt(j.request_id);
    o["error"] = opt(j.error);
    return json::serialize(o) + "\n";
}

json::array history_to_json(const std::vector<storage::history_entry>& h) {
    json::array a;
    for (auto& e : h) {
        json::object o;
        o["at"] = rfc3339(e.at);
        o["state"] = e.state;
        o["note"] = core::valid_utf8(e.note);
        o["request_id"] = opt(e.request_id);
        a.push_back(std::move(o));
    }
    return a;
}

} // namespace klingd::daemon
