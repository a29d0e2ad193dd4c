// A job as a user submits it (job file or POST /v1/jobs body), parsed and
// validated before anything is stored or sent. Every rejection names the field,
// the value and what is allowed.
#pragma once

#include "core/error.hpp"

#include <boost/json/fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace klingd::core {

// What a local input must be, by the field that names it.
enum class media_want { image, video, any };

// A file:// URL in a job's params.
struct local_ref {
    std::string where; // "params.image_urls[0]"
    std::string url;   // as written in params
    std::string path;  // the absolute path it names (decoded, not resolved)
    media_want want = media_want::image;
};

// A local input as checked at intake: the file the URL resolved to, what it held.
struct local_input {
    std::string url;    // as written in params
    std::string path;   // the real path it resolved to at intake
    std::string sha256; // hex, of the content at intake
    std::int64_t bytes = 0;
    std::string mime;                  // by the content's magic bytes
    std::optional<std::string> hosted; // the hosted URL, once uploaded
};

struct job_spec {
    std::string id;
    std::string model;
    std::string params; // canonical JSON (keys sorted): equal content gives equal text
    int priority = 0;
    std::vector<local_ref> local_inputs; // the file:// URLs in params, in order
    std::vector<local_input> inputs;     // the same, checked by the daemon (stored with the job)
};

// Parses a job file. default_id is used when the file has no "id" (the file name
// without ".json"); pass "" when there is no file name. errc::invalid_job with one
// line saying what is wrong and where otherwise.
result<job_spec> parse_job_spec(std::string_view text, std::string_view default_id);

// Why id is not a valid job id, or nullopt when it is.
std::optional<std::string> job_id_problem(std::string_view id);

// Checks params against the documented parameters of kling-o1 and
// kling-o1-video-to-video-edit; other models pass. Returns the problem or nullopt.
// Any model's params may name local files as file:// URLs (syntax checked here, the
// files themselves by the daemon); refs, when given, receives them.
std::optional<std::string> model_params_problem(std::string_view model,
                                                const boost::json::object& params,
                                                std::vector<local_ref>* refs = nullptr);

// The file:// URLs in a job's stored params (canonical JSON), in order; empty when none.
std::vector<local_ref> local_refs(std::string_view model, std::string_view params);

// The same JSON with every object's keys sorted, serialized.
std::string canonical_json(const boost::json::value& v);

} // namespace klingd::core
