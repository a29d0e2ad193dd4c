// A job as a user submits it (job file or POST /v1/jobs body), parsed and
// validated before anything is stored or sent. Every rejection names the field,
// the value and what is allowed.
#pragma once

#include "core/error.hpp"

#include <boost/json/fwd.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace klingd::core {

struct job_spec {
    std::string id;
    std::string model;
    std::string params; // canonical JSON (keys sorted): equal content gives equal text
    int priority = 0;
};

// Parses a job file. default_id is used when the file has no "id" (the file name
// without ".json"); pass "" when there is no file name. errc::invalid_job with one
// line saying what is wrong and where otherwise.
result<job_spec> parse_job_spec(std::string_view text, std::string_view default_id);

// Why id is not a valid job id, or nullopt when it is.
std::optional<std::string> job_id_problem(std::string_view id);

// Checks params against the documented parameters of kling-o1 and
// kling-o1-video-to-video-edit; other models pass. Returns the problem or nullopt.
std::optional<std::string> model_params_problem(std::string_view model,
                                                const boost::json::object& params);

// The same JSON with every object's keys sorted, serialized.
std::string canonical_json(const boost::json::value& v);

} // namespace klingd::core
