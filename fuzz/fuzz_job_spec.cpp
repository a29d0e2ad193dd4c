// Fuzz target: job files as the spool and POST /v1/jobs read them
// (core::parse_job_spec and, through it, model_params_problem, job_id_problem and
// canonical_json). An accepted spec must be valid by every rule it was checked
// against, its params must be canonical JSON, and the job file rebuilt from it
// must parse to the same spec; a rejection must say why.
//
// Finding fixed, now seeds (fuzz/corpus/fuzz_job_spec/finding-4, -5): Boost.JSON
// 1.81 read long numbers a unit or two in the last place off, so canonical params
// were not a fixed point; job files are now parsed with correctly rounded doubles.
//
// Finding fixed, now seeds (fuzz/corpus/fuzz_job_spec/finding-1..3): Boost.JSON 1.81
// parses 1e400 as infinity and 0e400 as NaN and writes them as Infinity and NaN,
// which are not JSON; a number beyond a double is now refused, naming its path,
// and 0e400 is read as the 0 it is.
//
// Input: the job file's text. When it holds a NUL byte, the text before the first
// NUL is the job file and the rest is the file name's id (default_id); the whole
// input is also parsed as it is, with no default id.
#include "core/job_spec.hpp"
#include "core/json_exact.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace {

namespace json = boost::json;
using klingd::core::job_spec;
using spec_result = klingd::core::result<klingd::core::job_spec>;

[[noreturn]] void violated(const char* what) {
    std::fprintf(stderr, "fuzz_job_spec: invariant violated: %s\n", what);
    __builtin_trap();
}

void check(bool ok, const char* what) {
    if (!ok)
        violated(what);
}

void check_result(const spec_result& r) {
    check(r.has_value() ||
              (r.error() == klingd::core::errc::invalid_job && !r.error().detail.empty()),
          "a refused job is invalid_job and says what is wrong");
    if (!r)
        return;
    const job_spec& s = *r;
    check(!klingd::core::job_id_problem(s.id), "an accepted id is a valid job id");
    check(!klingd::core::job_id_problem(s.model), "an accepted model is a valid slug");
    check(s.priority >= -1000000 && s.priority <= 1000000, "priority is in range");

    // params: canonical JSON of an object that passes the model's rules.
    boost::system::error_code ec;
    json::parse_options opts;
    opts.max_depth = 64;
    std::size_t consumed = 0;
    json::value params = klingd::core::parse_json_exact(s.params, opts, ec, consumed);
    check(!ec, "canonical params are valid JSON");
    check(params.is_object(), "params are an object");
    check(klingd::core::canonical_json(params) == s.params, "canonical params are a fixed point");
    check(!klingd::core::model_params_problem(s.model, params.as_object()),
          "canonical params pass the model's rules again");

    // The job file rebuilt from the spec parses to the same spec, whatever default id.
    std::string rebuilt = "{\"id\":" + json::serialize(json::string(s.id)) +
                          ",\"model\":" + json::serialize(json::string(s.model)) +
                          ",\"params\":" + s.params +
                          ",\"priority\":" + std::to_string(s.priority) + "}";
    spec_result again = klingd::core::parse_job_spec(rebuilt, "");
    if (!again)
        std::fprintf(stderr, "rebuilt job rejected: %s\n", again.error().message().c_str());
    check(again.has_value(), "the rebuilt job file is accepted");
    check(again->id == s.id && again->model == s.model && again->params == s.params &&
              again->priority == s.priority,
          "the rebuilt job file gives the same spec");
}

void run(std::string_view text, std::string_view default_id) {
    spec_result r = klingd::core::parse_job_spec(text, default_id);
    check_result(r);
    // Without an "id" field the id comes from default_id.
    if (r && text.find("\"id\"") == std::string_view::npos &&
        text.find("\\u") == std::string_view::npos)
        check(r->id == default_id, "a job without an id field takes the default id");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size > (1u << 20) + 4096)
        return 0; // the spool and the socket refuse larger files before parsing
    std::string_view input(reinterpret_cast<const char*>(data), size);
    run(input, "");
    if (auto nul = input.find('\0'); nul != std::string_view::npos)
        run(input.substr(0, nul), input.substr(nul + 1));
    else
        run(input, "from-file-name");
    return 0;
}
