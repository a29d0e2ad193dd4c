// Names of job states, as the contract spells them.
#include "core/job.hpp"

#include <array>

namespace klingd::core {

namespace {
constexpr std::array<std::pair<job_state, std::string_view>, std::size(all_job_states)> names{{
    {job_state::pending, "pending"},
    {job_state::submitting, "submitting"},
    {job_state::queued, "queued"},
    {job_state::processing, "processing"},
    {job_state::completed, "completed"},
    {job_state::failed, "failed"},
    {job_state::expired, "expired"},
    {job_state::cancelled, "cancelled"},
}};
}

std::string_view to_string(job_state s) {
    for (auto& [st, n] : names)
        if (st == s)
            return n;
    return "pending";
}

std::optional<job_state> parse_job_state(std::string_view name) {
    for (auto& [st, n] : names)
        if (n == name)
            return st;
    return std::nullopt;
}

std::string job_state_names() {
    std::string out;
    for (auto s : all_job_states)
        out += (out.empty() ? "" : ", ") + std::string(to_string(s));
    return out;
}

bool is_terminal(job_state s) {
    return s == job_state::completed || s == job_state::failed || s == job_state::expired ||
           s == job_state::cancelled;
}

job shifted(job j, milliseconds d) {
    if (d == milliseconds(0))
        return j;
    for (auto* t : {&j.created_at, &j.updated_at, &j.last_poll_at})
        if (*t != time_point{})
            *t += d;
    for (auto* t : {&j.submitted_at, &j.remote_done_at, &j.finished_at})
        if (*t)
            **t += d;
    return j;
}

} // namespace klingd::core
