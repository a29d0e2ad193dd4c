// The job object of the control API (interface.md): id, model, state,
// request_id, error, outputs, priority, created_at, updated_at, attempts,
// polls, and more; times as RFC 3339 UTC.
#pragma once

#include "core/job.hpp"
#include "storage/job_store.hpp"

#include <boost/json/object.hpp>
#include <string>
#include <vector>

namespace klingd::daemon {

// blocked: why a pending job is not being submitted now (paused, 401, 406), or "".
boost::json::object job_to_json(const core::job& j, const std::string& blocked = {});
boost::json::array history_to_json(const std::vector<storage::history_entry>& h);

// One line of the event stream: {"at","id","state","note","request_id","error"} and a newline.
std::string event_line(const core::job& j, const std::string& note, core::time_point at);

} // namespace klingd::daemon
