// What the storage backends exchange with the daemon: history lines, list filters,
// insert outcomes and a job's change with the history written along.
#pragma once

#include "core/job.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace klingd::storage {

struct history_entry {
    core::time_point at;
    std::string state;
    std::string note;
    std::optional<std::string> request_id;
};

struct job_filter {
    std::optional<core::job_state> state;
    std::optional<std::string> model;
    std::size_t limit = 1000;
    std::optional<std::string> after; // cursor: the id of the last job of the previous page
};

enum class insert_outcome {
    inserted,
    same_content, // the id exists with the same content: a no-op
    conflict,     // the id exists with other content
};

// A job's mutable fields and the history lines written along, in order.
struct job_change {
    core::job j;
    std::vector<history_entry> history;
};

// (state, model) -> number of jobs.
using state_model_counts = std::map<std::pair<std::string, std::string>, std::int64_t>;

// A job's output paths as both backends store them: a JSON array of strings.
std::string outputs_json(const std::vector<std::string>& outputs);
std::vector<std::string> parse_outputs(const std::string& text);

} // namespace klingd::storage
