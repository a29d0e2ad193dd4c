// Fuzz target: the TOML configuration (config::parse_settings, the entry point
// that takes text). Valid settings must render (render_settings) to TOML that
// parses back to the same settings, never show the API key, and carry a
// base_url that the HTTP client's URL parser accepts (the engine dereferences
// it); invalid ones must come with messages that name the file.
//
// Findings fixed, now seeds (fuzz/corpus/fuzz_config/finding-*): a model slug
// with control characters was accepted and rendered unescaped; base_url =
// "https://[]:93" was accepted though parse_url refuses it.
//
// Input: the text of klingd.toml. The file "lives" in a private temporary folder
// holding two key files, segmind-api-key (a good key) and bad-key (a key with a
// space), so that relative api_key_file values resolve there; $SEGMIND_API_KEY is set.
#include "config/loader.hpp"
#include "core/job_spec.hpp"
#include "core/url.hpp"

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <toml++/toml.h>

namespace {

namespace fs = std::filesystem;

constexpr std::string_view env_key = "fuzz-env-key-5b1c0e7d9a";
constexpr std::string_view file_key = "fuzz-file-key-3f8e2a61c4";

[[noreturn]] void violated(const char* what, const std::string& detail = {}) {
    std::fprintf(stderr, "fuzz_config: invariant violated: %s\n%s\n", what, detail.c_str());
    __builtin_trap();
}

void check(bool ok, const char* what, const std::string& detail = {}) {
    if (!ok)
        violated(what, detail);
}

// The folder the configuration file is in, made once and removed at exit.
struct folder {
    std::string path;
    folder() {
        std::string tmpl = (fs::temp_directory_path() / "klingd-fuzz-config.XXXXXX").string();
        if (!::mkdtemp(tmpl.data()))
            std::abort();
        path = tmpl;
        std::ofstream(path + "/segmind-api-key") << file_key << "\n";
        std::ofstream(path + "/bad-key") << "two words\n";
    }
    ~folder() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

const folder& dir() {
    static folder f;
    return f;
}

klingd::config::env_lookup environment() {
    return [](const std::string& name) -> std::optional<std::string> {
        if (name == "SEGMIND_API_KEY")
            return std::string(env_key);
        return std::nullopt;
    };
}

// The loader reads api.api_key_file. Keep it to files that cannot block or
// exhaust memory (no FIFOs, devices or huge files): true when the input may run.
bool key_file_is_harmless(std::string_view text, const std::string& folder) {
    toml::table root;
    try {
        root = toml::parse(text, std::string_view("fuzz"));
    } catch (const toml::parse_error&) {
        return true; // the loader stops at the same syntax error
    }
    auto value = root["api"]["api_key_file"].value<std::string>();
    if (!value || value->empty())
        return true;
    std::error_code ec;
    fs::path p(*value);
    if (p.is_relative())
        p = fs::path(folder) / p;
    auto st = fs::status(p, ec);
    if (ec || st.type() == fs::file_type::not_found)
        return true;
    if (st.type() == fs::file_type::directory)
        return true;
    return st.type() == fs::file_type::regular && fs::file_size(p, ec) <= 65536 && !ec;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size > 65536)
        return 0;
    std::string_view text(reinterpret_cast<const char*>(data), size);
    const std::string& folder = dir().path;
    if (!key_file_is_harmless(text, folder))
        return 0;
    const std::string source = folder + "/klingd.toml";
    auto env = environment();

    klingd::config::load_result r = klingd::config::parse_settings(text, source, env);
    check(r.value.has_value() == r.errors.empty(), "exactly one of settings and errors");
    for (auto& e : r.errors)
        check(e.starts_with(source + ":"), "an error names the file", e);
    for (auto& w : r.warnings)
        check(w.starts_with(source + ":"), "a warning names the file", w);
    bool key_in_input = text.find(env_key) != std::string_view::npos ||
                        text.find(file_key) != std::string_view::npos;
    if (!key_in_input)
        for (auto& e : r.errors)
            check(e.find(env_key) == std::string::npos && e.find(file_key) == std::string::npos,
                  "an error never shows the API key", e);
    if (!r.value)
        return 0;

    const klingd::config::settings& s = *r.value;
    check(!s.api_key.empty(), "valid settings have an API key");
    auto base = klingd::core::http_url::parse(s.api.base_url);
    check(base.has_value(), "api.base_url is a URL for the HTTP client", s.api.base_url);
    check((base->tls() ? "https" : "http") == s.api.scheme && base->port() == s.api.port &&
              base->host() == s.api.host,
          "api.scheme, host and port are those of api.base_url", s.api.base_url);
    check(base->target() == "/", "api.base_url has no path", s.api.base_url);
    check(s.jobs.min_poll_interval_s <= s.jobs.max_poll_interval_s &&
              s.jobs.max_poll_interval_s <= s.jobs.result_retention_s / 2,
          "poll intervals fit the retention");

    // The effective configuration, as --check-config prints it, reads back the same.
    std::string rendered = klingd::config::render_settings(s);
    if (!key_in_input)
        check(rendered.find(s.api_key.reveal()) == std::string::npos,
              "the rendered configuration never shows the API key");
    for (auto& [slug, m] : s.models)
        check(!klingd::core::job_id_problem(slug), "a model slug is a valid slug", slug);
    klingd::config::load_result again = klingd::config::parse_settings(rendered, source, env);
    std::string why;
    for (auto& e : again.errors)
        why += e + "\n";
    check(again.value.has_value(), "the rendered configuration is valid", rendered + "\n" + why);
    check(klingd::config::render_settings(*again.value) == rendered,
          "the rendered configuration is a fixed point", rendered);
    return 0;
}
