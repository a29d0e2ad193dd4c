// Loads a klingd TOML file into validated settings. Every problem is reported as
// "FILE:LINE: KEY: what is wrong", all of them at once, and the API key is found
// as the contract says without ever appearing in a message.
#pragma once

#include "config/settings.hpp"

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace klingd::config {

// Looks up an environment variable; injected so tests need not touch the process environment.
using env_lookup = std::function<std::optional<std::string>(const std::string&)>;

// The process environment.
env_lookup process_environment();

struct load_result {
    std::optional<settings> value; // empty when errors is not
    std::vector<std::string> errors;
    std::vector<std::string> warnings;
};

// Whether the secrets (API key, PostgreSQL password, webhook secret) are looked for: a tool
// that only checks job files against the configuration (klingctl validate) neither needs
// them nor may be able to read them.
enum class secrets { read, skip };

// Parses TOML text; source_path names it in messages and anchors relative paths.
load_result parse_settings(std::string_view toml_text, const std::string& source_path,
                           const env_lookup& env, secrets how = secrets::read);

// Reads and parses a file; a file that cannot be read is an error naming it.
load_result load_settings(const std::string& path, const env_lookup& env,
                          secrets how = secrets::read);

// Every key the loader takes: "log_level", "SECTION.KEY", and "models.SLUG.KEY" for the
// keys of a model's table. What the manual klingd.toml(5) documents, no more, no less.
std::vector<std::string> known_keys();

// The effective configuration as TOML, with the API key redacted.
std::string render_settings(const settings& s);

} // namespace klingd::config
