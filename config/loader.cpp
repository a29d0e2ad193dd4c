// Parsing and validation of the TOML configuration. The schema is a table of
// sections and keys, each with a parser that checks the type and range and names
// the key and line on failure; cross-key rules run after all keys are read.
#include "config/loader.hpp"

#include "core/job_spec.hpp"
#include "core/money.hpp"
#include "core/url.hpp"

#include <algorithm>
#include <boost/url/ipv4_address.hpp>
#include <boost/url/ipv6_address.hpp>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <libpq-fe.h>
#include <openssl/evp.h>
#include <span>
#include <sstream>
#include <sys/stat.h>
#include <toml++/toml.h>
#include <unistd.h>

namespace klingd::config {
namespace {

namespace fs = std::filesystem;

// s as a TOML basic string: quotes, backslashes and control characters escaped.
std::string quote(std::string_view s) {
    std::string out = "\"";
    for (char ch : s) {
        auto u = static_cast<unsigned char>(ch);
        if (ch == '"' || ch == '\\')
            (out += '\\') += ch;
        else if (u < 0x20 || u == 0x7f)
            out += fmt::format("\\u{:04X}", u);
        else
            out += ch;
    }
    out += '"';
    return out;
}

struct context {
    std::string file;
    std::vector<std::pair<std::size_t, std::string>> errors; // (line, message)
    std::vector<std::string> warnings;
    std::map<std::string, std::size_t> lines; // "section.key" -> line, for cross-key rules

    // line 0: the problem has no line (a value from the environment, a missing key).
    void error(std::size_t line, std::string_view key, std::string_view what) {
        if (line == 0)
            errors.emplace_back(line, fmt::format("{}: {}: {}", file, key, what));
        else
            errors.emplace_back(line, fmt::format("{}:{}: {}: {}", file, line, key, what));
    }
    void error(const toml::node& n, std::string_view key, std::string_view what) {
        error(n.source().begin.line, key, what);
    }
    // The messages in the order of the file (toml++ iterates tables by key name).
    std::vector<std::string> sorted_errors() {
        std::stable_sort(errors.begin(), errors.end(),
                         [](const auto& a, const auto& b) { return a.first < b.first; });
        std::vector<std::string> out;
        for (auto& e : errors)
            out.push_back(std::move(e.second));
        return out;
    }
    std::size_t line_of(const std::string& key) const {
        auto it = lines.find(key);
        return it == lines.end() ? 0 : it->second;
    }
};

std::string type_name(const toml::node& n) {
    switch (n.type()) {
    case toml::node_type::string:
        return "a string";
    case toml::node_type::integer:
        return "an integer";
    case toml::node_type::floating_point:
        return "a number";
    case toml::node_type::boolean:
        return "a boolean";
    case toml::node_type::table:
        return "a table";
    case toml::node_type::array:
        return "an array";
    default:
        return "a date or time";
    }
}

std::optional<double> read_number(context& c, const toml::node& n, std::string_view key,
                                  std::string_view unit) {
    double v;
    if (auto i = n.as_integer()) {
        v = static_cast<double>(i->get());
    } else if (auto f = n.as_floating_point()) {
        v = f->get();
    } else {
        c.error(n, key, fmt::format("expected a number of {}, found {}", unit, type_name(n)));
        return std::nullopt;
    }
    if (!std::isfinite(v)) {
        c.error(n, key, "must be a finite number");
        return std::nullopt;
    }
    return v;
}

// Seconds in (lo, hi].
std::optional<double> read_seconds(context& c, const toml::node& n, std::string_view key,
                                   double hi) {
    auto v = read_number(c, n, key, "seconds");
    if (!v)
        return std::nullopt;
    if (*v <= 0 || *v > hi) {
        c.error(n, key, fmt::format("{} is out of range: must be above 0 and at most {}", *v, hi));
        return std::nullopt;
    }
    return v;
}

// An amount of money (a price, a limit) in micro-units: at least 0, at most a billion,
// exact to a millionth (sums of prices like 0.035 never drift).
std::optional<std::int64_t> read_money(context& c, const toml::node& n, std::string_view key) {
    auto v = read_number(c, n, key, "money");
    if (!v)
        return std::nullopt;
    if (*v < 0 || *v > 1e9) {
        c.error(n, key,
                fmt::format("{} is out of range: must be at least 0 and at most 1000000000", *v));
        return std::nullopt;
    }
    auto micro = std::llround(*v * 1e6);
    // Allowed: what a double's own rounding of a 6-decimal amount gives (relative 1e-15).
    if (std::abs(static_cast<double>(micro) - *v * 1e6) > std::max(1e-3, *v * 1e6 * 1e-15)) {
        c.error(n, key, fmt::format("{} is finer than a millionth", *v));
        return std::nullopt;
    }
    return static_cast<std::int64_t>(micro);
}

std::optional<std::int64_t> read_integer(context& c, const toml::node& n, std::string_view key,
                                         std::int64_t lo, std::int64_t hi) {
    auto i = n.as_integer();
    if (!i) {
        c.error(n, key, fmt::format("expected an integer, found {}", type_name(n)));
        return std::nullopt;
    }
    auto v = i->get();
    if (v < lo || v > hi) {
        c.error(n, key, fmt::format("{} is out of range: must be from {} to {}", v, lo, hi));
        return std::nullopt;
    }
    return v;
}

std::optional<std::string> read_string(context& c, const toml::node& n, std::string_view key) {
    auto s = n.as_string();
    if (!s) {
        c.error(n, key, fmt::format("expected a string, found {}", type_name(n)));
        return std::nullopt;
    }
    const std::string& v = s->get();
    if (std::any_of(v.begin(), v.end(), [](unsigned char ch) { return ch < 0x20 || ch == 0x7f; })) {
        c.error(n, key, "must not contain control characters");
        return std::nullopt;
    }
    return v;
}

std::optional<bool> read_bool(context& c, const toml::node& n, std::string_view key) {
    auto b = n.as_boolean();
    if (!b) {
        c.error(n, key, fmt::format("expected true or false, found {}", type_name(n)));
        return std::nullopt;
    }
    return b->get();
}

// A path: non-empty; relative paths are taken from the configuration file's folder.
std::optional<std::string> read_path(context& c, const toml::node& n, std::string_view key,
                                     bool may_be_empty = false) {
    auto v = read_string(c, n, key);
    if (!v)
        return std::nullopt;
    if (v->empty()) {
        if (may_be_empty)
            return v;
        c.error(n, key, "must not be empty");
        return std::nullopt;
    }
    fs::path p(*v);
    if (p.is_relative())
        p = fs::absolute(fs::path(c.file).parent_path() / p);
    return p.lexically_normal().string();
}

// [inputs] directories: absolute folders, normalised, no duplicates.
void parse_input_directories(context& c, const toml::node& n, inputs_settings& in) {
    constexpr std::string_view key = "inputs.directories";
    auto* a = n.as_array();
    if (!a) {
        c.error(n, key, "must be an array of absolute folder paths, e.g. [\"/srv/media\"]");
        return;
    }
    std::vector<std::string> dirs;
    for (auto& e : *a) {
        auto* str = e.as_string();
        if (!str) {
            c.error(e, key, "every entry must be a string: an absolute folder path");
            return;
        }
        fs::path p(str->get());
        if (str->get().empty() || !p.is_absolute()) {
            c.error(e, key, fmt::format("\"{}\" must be an absolute folder path", str->get()));
            return;
        }
        if (str->get().find('\0') != std::string::npos) {
            c.error(e, key, "a path must not contain a NUL byte");
            return;
        }
        auto norm = p.lexically_normal().string();
        if (norm.size() > 1 && norm.ends_with('/'))
            norm.pop_back();
        if (norm == "/") {
            c.error(e, key,
                    "\"/\" would let a job file upload any file of this host (the API key, the "
                    "database): name the folders that hold media");
            return;
        }
        if (std::find(dirs.begin(), dirs.end(), norm) == dirs.end())
            dirs.push_back(norm);
    }
    in.directories = std::move(dirs);
}

} // namespace

std::string resolve_input_directories(inputs_settings& in) {
    in.real_directories.clear();
    for (auto& d : in.directories) {
        std::error_code ec;
        auto real = fs::canonical(d, ec);
        if (ec)
            return fmt::format("{} cannot be resolved: {}", d, ec.message());
        if (!fs::is_directory(real, ec))
            return fmt::format("{} is not a folder", d);
        if (real == "/")
            return fmt::format(
                "{} resolves to \"/\": a job file could upload any file of this host", d);
        in.real_directories.push_back(real.string());
    }
    return {};
}

namespace {

void parse_upload_url(context& c, const toml::node& n, inputs_settings& in) {
    constexpr std::string_view key = "inputs.upload_url";
    auto v = read_string(c, n, key);
    if (!v)
        return;
    auto u = core::http_url::parse(*v);
    if (!u) {
        c.error(n, key, fmt::format("\"{}\" {}", *v, u.error().message()));
        return;
    }
    if (!u->tls() && !core::is_loopback_host(u->host())) {
        c.error(n, key,
                fmt::format("\"{}\": plain http:// is allowed only to a loopback host "
                            "(localhost, 127.0.0.0/8, [::1]); use https://",
                            *v));
        return;
    }
    in.upload_url = *v;
}

void parse_metrics_listen(context& c, const toml::node& n, metrics_settings& m) {
    constexpr std::string_view key = "metrics.listen";
    auto v = read_string(c, n, key);
    if (!v)
        return;
    if (v->empty()) {
        m = {};
        return;
    }
    auto bad = [&](std::string_view why) {
        c.error(n, key,
                fmt::format("\"{}\" {}: write ADDRESS:PORT with an IP address, as "
                            "\"127.0.0.1:9464\" or \"[::1]:9464\"",
                            v->substr(0, 100), why));
    };
    std::string address, port;
    if (v->front() == '[') {
        auto close = v->find("]:");
        if (close == std::string::npos)
            return bad("has no ]:PORT after the IPv6 address");
        address = v->substr(1, close - 1);
        port = v->substr(close + 2);
        if (!boost::urls::parse_ipv6_address(address))
            return bad("does not hold an IPv6 address in its brackets");
    } else {
        auto colon = v->rfind(':');
        if (colon == std::string::npos)
            return bad("has no port");
        address = v->substr(0, colon);
        port = v->substr(colon + 1);
        if (!boost::urls::parse_ipv4_address(address))
            return bad("does not start with an IPv4 address (an IPv6 one goes in brackets; "
                       "no host names)");
    }
    if (port.empty() || port.size() > 5 ||
        !std::all_of(port.begin(), port.end(), [](char ch) { return ch >= '0' && ch <= '9'; }) ||
        std::stoi(port) > 65535)
        return bad("does not end with a port from 0 to 65535");
    m.listen = *v;
    m.address = address;
    m.port = static_cast<std::uint16_t>(std::stoi(port));
}

void parse_hook_command(context& c, const toml::node& n, hooks_settings& h) {
    constexpr std::string_view key = "hooks.command";
    auto* a = n.as_array();
    if (!a) {
        c.error(n, key,
                "must be an array: the program and its arguments, no shell "
                "(e.g. [\"/usr/local/bin/on-done\", \"--quiet\"])");
        return;
    }
    std::vector<std::string> argv;
    for (auto& e : *a) {
        auto* str = e.as_string();
        if (!str || str->get().find('\0') != std::string::npos) {
            c.error(e, key, "every entry must be a string without NUL bytes");
            return;
        }
        argv.push_back(str->get());
    }
    if (!argv.empty() && !fs::path(argv.front()).is_absolute()) {
        c.error(n, key,
                fmt::format("the program \"{}\" must be an absolute path (the service's PATH is "
                            "short)",
                            argv.front()));
        return;
    }
    h.command = std::move(argv);
}

void parse_webhook_url(context& c, const toml::node& n, hooks_settings& h) {
    constexpr std::string_view key = "hooks.webhook_url";
    auto v = read_string(c, n, key);
    if (!v)
        return;
    if (v->empty()) {
        h.webhook_url.clear();
        return;
    }
    auto u = core::http_url::parse(*v);
    if (!u) {
        c.error(n, key, fmt::format("\"{}\" {}", v->substr(0, 200), u.error().message()));
        return;
    }
    if (!u->tls() && !core::is_loopback_host(u->host())) {
        c.error(n, key,
                fmt::format("\"{}\": plain http:// is allowed only to a loopback host "
                            "(localhost, 127.0.0.0/8, [::1]); use https://",
                            v->substr(0, 200)));
        return;
    }
    h.webhook_url = *v;
}

void parse_base_url(context& c, const toml::node& n, api_settings& api) {
    constexpr std::string_view key = "api.base_url";
    auto v = read_string(c, n, key);
    if (!v)
        return;
    std::string_view text = *v;
    auto u = core::http_url::parse(text);
    if (!u) {
        if (u.error() == core::errc::url_not_http)
            c.error(n, key,
                    fmt::format("\"{}\" must start with https:// (or http:// for a loopback host)",
                                text));
        else if (u.error() == core::errc::url_has_userinfo)
            c.error(n, key,
                    fmt::format("\"{}\" must be scheme://host[:port], without path, query or user",
                                text));
        else
            c.error(n, key, fmt::format("\"{}\" {}", text, u.error().message()));
        return;
    }
    auto path = u->get().encoded_path();
    if ((!path.empty() && path != "/") || u->get().has_query() ||
        text.find('#') != std::string_view::npos) {
        c.error(
            n, key,
            fmt::format("\"{}\" must be scheme://host[:port], without path, query or user", text));
        return;
    }
    if (!u->tls() && !core::is_loopback_host(u->host())) {
        c.error(n, key,
                fmt::format("\"{}\": plain http:// is allowed only to a loopback host "
                            "(localhost, 127.0.0.0/8, [::1]); use https://",
                            text));
        return;
    }
    if (text.ends_with('/'))
        text.remove_suffix(1);
    api.base_url = std::string(text);
    api.scheme = u->tls() ? "https" : "http";
    api.host = u->host();
    api.port = u->port();
}

void parse_socket_mode(context& c, const toml::node& n, control_settings& control) {
    constexpr std::string_view key = "control.socket_mode";
    auto s = n.as_string();
    if (!s) {
        c.error(n, key,
                fmt::format("expected a string of octal digits such as \"0660\", found {}",
                            type_name(n)));
        return;
    }
    const std::string& v = s->get();
    if (v.empty() || v.size() > 4 ||
        !std::all_of(v.begin(), v.end(), [](char ch) { return ch >= '0' && ch <= '7'; })) {
        c.error(n, key, fmt::format("\"{}\" is not an octal mode such as \"0660\"", v));
        return;
    }
    unsigned mode = static_cast<unsigned>(std::stoul(v, nullptr, 8));
    if (mode > 0777) {
        c.error(n, key, fmt::format("\"{}\": setuid, setgid and sticky bits are not allowed", v));
        return;
    }
    if ((mode & 0600) != 0600) {
        c.error(n, key, fmt::format("\"{}\" must let the owner read and write (0600 at least)", v));
        return;
    }
    if (mode & 0002)
        c.warnings.push_back(fmt::format("{}:{}: {}: \"{}\" lets every local user control klingd",
                                         c.file, n.source().begin.line, key, v));
    control.socket_mode = mode;
}

void parse_postgresql(context& c, const toml::node& n, storage_settings& st) {
    constexpr std::string_view key = "storage.postgresql";
    auto v = read_string(c, n, key);
    if (!v)
        return;
    if (v->empty()) {
        st.postgresql.clear();
        return;
    }
    char* err = nullptr;
    PQconninfoOption* opts = PQconninfoParse(v->c_str(), &err);
    if (!opts) {
        // libpq's own message may quote a part of a URI, which may be a password: not shown.
        PQfreemem(err);
        c.error(n, key,
                "not a libpq connection string (\"host=... dbname=...\") or URI "
                "(\"postgresql://user@host/dbname\"): libpq cannot parse it (check the quoting "
                "of values with spaces, the option names and %-escapes)");
        return;
    }
    bool has_password = false;
    for (auto* o = opts; o->keyword; ++o)
        if (o->val && o->dispchar && o->dispchar[0] == '*') // password, sslpassword, ...
            has_password = true;
    PQconninfoFree(opts);
    if (has_password) {
        c.error(n, key,
                "must not hold a password (it would be in the configuration and the logs): put "
                "it in libpq's password file (~/.pgpass or $PGPASSFILE) or give the systemd "
                "credential postgresql-password");
        return;
    }
    st.postgresql = *v;
}

void parse_node_name(context& c, const toml::node& n, cluster_settings& cl) {
    constexpr std::string_view key = "cluster.node";
    auto v = read_string(c, n, key);
    if (!v)
        return;
    bool ok = v->size() <= 63 && std::all_of(v->begin(), v->end(), [](char ch) {
                  return std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' ||
                         ch == '.';
              });
    if (!ok) {
        c.error(n, key,
                fmt::format("\"{}\" is not a node name: at most 63 letters, digits, '-', '_' or "
                            "'.' (empty: the host name)",
                            v->substr(0, 80)));
        return;
    }
    cl.node = *v;
}

using key_parser = void (*)(context&, const toml::node&, settings&);

struct key_rule {
    std::string_view name;
    key_parser parse;
};

template <typename T>
void assign(std::optional<T> v, T& out) {
    if (v)
        out = *v;
}

// clang-format off
const key_rule api_keys[] = {
    {"base_url", [](context& c, const toml::node& n, settings& s) { parse_base_url(c, n, s.api); }},
    {"api_key_file", [](context& c, const toml::node& n, settings& s) { assign(read_path(c, n, "api.api_key_file", true), s.api.api_key_file); }},
    {"ca_file", [](context& c, const toml::node& n, settings& s) { assign(read_path(c, n, "api.ca_file", true), s.api.ca_file); }},
    {"requests_per_minute", [](context& c, const toml::node& n, settings& s) {
        auto v = read_number(c, n, "api.requests_per_minute", "requests");
        if (v && (*v <= 0 || *v > 1000000))
            c.error(n, "api.requests_per_minute", fmt::format("{} is out of range: must be above 0 and at most 1000000", *v));
        else
            assign(v, s.api.requests_per_minute);
    }},
    {"max_connections", [](context& c, const toml::node& n, settings& s) {
        if (auto v = read_integer(c, n, "api.max_connections", 0, 256)) s.api.max_connections = static_cast<int>(*v);
    }},
    {"max_submits_in_flight", [](context& c, const toml::node& n, settings& s) {
        if (auto v = read_integer(c, n, "api.max_submits_in_flight", 0, 256)) s.api.max_submits_in_flight = static_cast<int>(*v);
    }},
    {"request_timeout_s", [](context& c, const toml::node& n, settings& s) { assign(read_seconds(c, n, "api.request_timeout_s", 3600), s.api.request_timeout_s); }},
    {"max_result_bytes", [](context& c, const toml::node& n, settings& s) {
        if (auto v = read_integer(c, n, "api.max_result_bytes", 1024, std::int64_t{1} << 30)) s.api.max_result_bytes = static_cast<std::uint64_t>(*v);
    }},
};
const key_rule storage_keys[] = {
    {"database", [](context& c, const toml::node& n, settings& s) { assign(read_path(c, n, "storage.database"), s.storage.database); }},
    {"postgresql", [](context& c, const toml::node& n, settings& s) { parse_postgresql(c, n, s.storage); }},
};
const key_rule cluster_keys[] = {
    {"node", [](context& c, const toml::node& n, settings& s) { parse_node_name(c, n, s.cluster); }},
    {"takeover_s", [](context& c, const toml::node& n, settings& s) {
        auto v = read_seconds(c, n, "cluster.takeover_s", 3600);
        if (v && *v < 3)
            c.error(n, "cluster.takeover_s", fmt::format("{} is too short: at least 3 seconds (a node renews its claims three times within it)", *v));
        else
            assign(v, s.cluster.takeover_s);
    }},
};
const key_rule spool_keys[] = {
    {"directory", [](context& c, const toml::node& n, settings& s) { assign(read_path(c, n, "spool.directory"), s.spool.directory); }},
    {"max_file_bytes", [](context& c, const toml::node& n, settings& s) {
        if (auto v = read_integer(c, n, "spool.max_file_bytes", 64, std::int64_t{64} << 20)) s.spool.max_file_bytes = static_cast<std::uint64_t>(*v);
    }},
    {"keep_days", [](context& c, const toml::node& n, settings& s) {
        if (auto v = read_integer(c, n, "spool.keep_days", 0, 36500)) s.spool.keep_days = static_cast<int>(*v);
    }},
};
const key_rule output_keys[] = {
    {"directory", [](context& c, const toml::node& n, settings& s) { assign(read_path(c, n, "output.directory"), s.output.directory); }},
    {"max_download_bytes", [](context& c, const toml::node& n, settings& s) {
        if (auto v = read_integer(c, n, "output.max_download_bytes", 1024, std::int64_t{1} << 40)) s.output.max_download_bytes = static_cast<std::uint64_t>(*v);
    }},
};
const key_rule control_keys[] = {
    {"socket", [](context& c, const toml::node& n, settings& s) {
        auto v = read_path(c, n, "control.socket");
        // sun_path holds 108 bytes with the terminating NUL
        if (v && v->size() > 107)
            c.error(n, "control.socket", fmt::format("path is {} bytes long; a Unix socket path may have at most 107", v->size()));
        else
            assign(v, s.control.socket);
    }},
    {"socket_mode", [](context& c, const toml::node& n, settings& s) { parse_socket_mode(c, n, s.control); }},
};
const key_rule metrics_keys[] = {
    {"listen", [](context& c, const toml::node& n, settings& s) { parse_metrics_listen(c, n, s.metrics); }},
};
const key_rule jobs_keys[] = {
    {"max_in_flight", [](context& c, const toml::node& n, settings& s) {
        if (auto v = read_integer(c, n, "jobs.max_in_flight", 0, 1000000)) s.jobs.max_in_flight = static_cast<int>(*v);
    }},
    {"result_retention_s", [](context& c, const toml::node& n, settings& s) { assign(read_seconds(c, n, "jobs.result_retention_s", 30 * 86400), s.jobs.result_retention_s); }},
    {"min_poll_interval_s", [](context& c, const toml::node& n, settings& s) { assign(read_seconds(c, n, "jobs.min_poll_interval_s", 86400), s.jobs.min_poll_interval_s); }},
    {"max_poll_interval_s", [](context& c, const toml::node& n, settings& s) { assign(read_seconds(c, n, "jobs.max_poll_interval_s", 86400), s.jobs.max_poll_interval_s); }},
    {"resubmit_unknown", [](context& c, const toml::node& n, settings& s) { assign(read_bool(c, n, "jobs.resubmit_unknown"), s.jobs.resubmit_unknown); }},
    {"keep_finished_days", [](context& c, const toml::node& n, settings& s) {
        if (auto v = read_integer(c, n, "jobs.keep_finished_days", 0, 36500)) s.jobs.keep_finished_days = static_cast<int>(*v);
    }},
};
const key_rule spend_keys[] = {
    {"daily_limit", [](context& c, const toml::node& n, settings& s) { if (auto v = read_money(c, n, "spend.daily_limit")) s.spend.daily_limit_micro = *v; }},
    {"monthly_limit", [](context& c, const toml::node& n, settings& s) { if (auto v = read_money(c, n, "spend.monthly_limit")) s.spend.monthly_limit_micro = *v; }},
};
const key_rule inputs_keys[] = {
    {"directories", [](context& c, const toml::node& n, settings& s) { parse_input_directories(c, n, s.inputs); }},
    {"upload_url", [](context& c, const toml::node& n, settings& s) { parse_upload_url(c, n, s.inputs); }},
    {"max_bytes", [](context& c, const toml::node& n, settings& s) {
        if (auto v = read_integer(c, n, "inputs.max_bytes", 1, std::int64_t{1} << 30)) s.inputs.max_bytes = static_cast<std::uint64_t>(*v);
    }},
};
const key_rule hooks_keys[] = {
    {"command", [](context& c, const toml::node& n, settings& s) { parse_hook_command(c, n, s.hooks); }},
    {"webhook_url", [](context& c, const toml::node& n, settings& s) { parse_webhook_url(c, n, s.hooks); }},
    {"webhook_secret_file", [](context& c, const toml::node& n, settings& s) { assign(read_path(c, n, "hooks.webhook_secret_file", true), s.hooks.webhook_secret_file); }},
    {"timeout_s", [](context& c, const toml::node& n, settings& s) {
        auto v = read_seconds(c, n, "hooks.timeout_s", 3600);
        if (v && *v < 0.1)
            c.error(n, "hooks.timeout_s", fmt::format("{} is too short: at least 0.1 seconds", *v));
        else
            assign(v, s.hooks.timeout_s);
    }},
    {"max_attempts", [](context& c, const toml::node& n, settings& s) {
        if (auto v = read_integer(c, n, "hooks.max_attempts", 1, 1000)) s.hooks.max_attempts = static_cast<int>(*v);
    }},
    {"retry_s", [](context& c, const toml::node& n, settings& s) {
        auto v = read_seconds(c, n, "hooks.retry_s", 3600);
        if (v && *v < 0.1)
            c.error(n, "hooks.retry_s", fmt::format("{} is too short: at least 0.1 seconds", *v));
        else
            assign(v, s.hooks.retry_s);
    }},
};
// clang-format on

struct section_rule {
    std::string_view name;
    std::span<const key_rule> keys;
};

const section_rule sections[] = {
    {"api", api_keys},         {"storage", storage_keys}, {"cluster", cluster_keys},
    {"spool", spool_keys},     {"output", output_keys},   {"control", control_keys},
    {"metrics", metrics_keys}, {"jobs", jobs_keys},       {"spend", spend_keys},
    {"inputs", inputs_keys},   {"hooks", hooks_keys},
};

std::string known_names(std::span<const key_rule> keys) {
    std::string out;
    for (auto& k : keys) {
        if (!out.empty())
            out += ", ";
        out += k.name;
    }
    return out;
}

void parse_section(context& c, const section_rule& rule, const toml::node& node, settings& s,
                   std::size_t line) {
    auto table = node.as_table();
    if (!table) {
        c.error(line, rule.name,
                fmt::format("expected a table [{}], found {}", rule.name, type_name(node)));
        return;
    }
    for (auto&& [k, v] : *table) {
        std::string full = fmt::format("{}.{}", rule.name, k.str());
        auto it = std::find_if(rule.keys.begin(), rule.keys.end(),
                               [&, name = k.str()](const key_rule& r) { return r.name == name; });
        if (it == rule.keys.end()) {
            c.error(
                k.source().begin.line, full,
                fmt::format("unknown key (known in [{}]: {})", rule.name, known_names(rule.keys)));
            continue;
        }
        c.lines[full] = v.source().begin.line;
        it->parse(c, v, s);
    }
}

// The keys of a [models."<slug>"] table.
constexpr std::string_view model_keys[] = {"expected_duration_s", "price"};

void parse_models(context& c, const toml::node& node, settings& s, std::size_t line) {
    auto table = node.as_table();
    if (!table) {
        c.error(line, "models",
                fmt::format("expected tables [models.\"<slug>\"], found {}", type_name(node)));
        return;
    }
    for (auto&& [slug, v] : *table) {
        if (auto why = core::job_id_problem(slug.str())) {
            // quoted as TOML would, so that a control character shows as an escape
            c.error(slug.source().begin.line, "models",
                    fmt::format("[models.{}]: the model slug {}", quote(slug.str()), *why));
            continue;
        }
        std::string name = fmt::format("models.\"{}\"", slug.str());
        auto model = v.as_table();
        if (!model) {
            c.error(v, name, fmt::format("expected a table, found {}", type_name(v)));
            continue;
        }
        model_settings m = s.models.count(std::string(slug.str()))
                               ? s.models[std::string(slug.str())]
                               : model_settings{};
        for (auto&& [k, mv] : *model) {
            std::string full = fmt::format("{}.{}", name, k.str());
            if (k.str() == "price") {
                if (auto v = read_money(c, mv, full))
                    m.price_micro = *v;
                c.lines[full] = mv.source().begin.line;
                continue;
            }
            if (k.str() != "expected_duration_s") {
                c.error(k.source().begin.line, full,
                        fmt::format("unknown key (known: {}, {})", model_keys[0], model_keys[1]));
                continue;
            }
            assign(read_seconds(c, mv, full, 86400), m.expected_duration_s);
        }
        s.models[std::string(slug.str())] = m;
    }
}

void check_cross_rules(context& c, settings& s) {
    const auto& j = s.jobs;
    if (j.min_poll_interval_s > j.max_poll_interval_s) {
        c.error(c.line_of("jobs.min_poll_interval_s"), "jobs.min_poll_interval_s",
                fmt::format("{} must not exceed jobs.max_poll_interval_s ({})",
                            j.min_poll_interval_s, j.max_poll_interval_s));
    }
    if (j.max_poll_interval_s > j.result_retention_s / 2) {
        auto line = c.line_of("jobs.max_poll_interval_s");
        if (line == 0)
            line = c.line_of("jobs.result_retention_s");
        c.error(line, "jobs.max_poll_interval_s",
                fmt::format("{} must be at most half of jobs.result_retention_s ({}), so that a "
                            "result cannot expire between two polls",
                            j.max_poll_interval_s, j.result_retention_s));
    }
    // A price above a limit: no submission of that model could ever go out.
    for (auto& [slug, m] : s.models) {
        auto key = fmt::format("models.\"{}\".price", slug);
        for (auto [limit, name] : {std::pair{s.spend.daily_limit_micro, "spend.daily_limit"},
                                   std::pair{s.spend.monthly_limit_micro, "spend.monthly_limit"}})
            if (limit > 0 && m.price_micro > limit)
                c.error(c.line_of(key), key,
                        fmt::format("{} is above {} ({}): no submission of {} could go out",
                                    core::money_text(m.price_micro), name, core::money_text(limit),
                                    slug));
    }
    // A folder of inputs must not hold klingd's own secrets and state: a job file could
    // upload them. Compared as they really are (a folder may be a symlink).
    if (auto why = resolve_input_directories(s.inputs); !why.empty())
        c.error(c.line_of("inputs.directories"), "inputs.directories", why);
    for (auto& dir : s.inputs.real_directories) {
        for (auto [path, what] :
             {std::pair{s.api.api_key_file, "api.api_key_file"},
              std::pair{s.storage.database, "storage.database"},
              std::pair{s.hooks.webhook_secret_file, "hooks.webhook_secret_file"},
              std::pair{s.api.ca_file, "api.ca_file"},
              std::pair{std::string(c.file), "the configuration file"}}) {
            if (path.empty())
                continue;
            std::error_code ec;
            auto real = fs::weakly_canonical(fs::absolute(path), ec);
            if (ec)
                real = fs::path(path).lexically_normal();
            auto rel = real.lexically_relative(dir);
            if (!rel.empty() && *rel.begin() != "..")
                c.error(c.line_of("inputs.directories"), "inputs.directories",
                        fmt::format("{} holds {} ({}): a job file could upload it; keep "
                                    "media in a folder of their own",
                                    dir, what, path));
        }
    }
    if (s.api.request_timeout_s >= j.result_retention_s) {
        c.error(c.line_of("api.request_timeout_s"), "api.request_timeout_s",
                fmt::format("{} must be below jobs.result_retention_s ({})",
                            s.api.request_timeout_s, j.result_retention_s));
    }
}

std::string trim(std::string s) {
    auto not_space = [](unsigned char ch) {
        return !std::isspace(ch);
    };
    s.erase(s.begin(), std::find_if(s.begin(), s.end(), not_space));
    s.erase(std::find_if(s.rbegin(), s.rend(), not_space).base(), s.end());
    return s;
}

// A key that would break an HTTP header or is plainly not a key; says so without quoting it.
std::optional<std::string> key_problem(const std::string& key) {
    if (key.empty())
        return "is empty";
    if (key.size() > 4096)
        return "is longer than 4096 bytes";
    for (unsigned char ch : key) {
        if (ch <= 0x20 || ch >= 0x7f)
            return "contains a space, a control character or a non-ASCII byte";
    }
    return std::nullopt;
}

void find_api_key(context& c, settings& s, const env_lookup& env) {
    auto from_file = [&](const std::string& path, std::size_t line, std::string_view key_name) {
        std::ifstream in(path, std::ios::binary);
        if (!in) {
            c.error(line, key_name,
                    fmt::format("cannot read the API key file {}: {}", path, std::strerror(errno)));
            return;
        }
        std::ostringstream buf;
        buf << in.rdbuf();
        std::string key = trim(buf.str());
        if (auto p = key_problem(key)) {
            c.error(line, key_name, fmt::format("the API key in {} {}", path, *p));
            return;
        }
        struct stat st {};
        if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 0004))
            c.warnings.push_back(fmt::format(
                "{}: the API key file {} is readable by every user; chmod o-r it", c.file, path));
        s.api_key = secret(std::move(key));
        s.api_key_source = path;
    };
    if (!s.api.api_key_file.empty()) {
        from_file(s.api.api_key_file, c.line_of("api.api_key_file"), "api.api_key_file");
        return;
    }
    if (auto dir = env("CREDENTIALS_DIRECTORY"); dir && !dir->empty()) {
        std::string path = (fs::path(*dir) / "segmind-api-key").string();
        std::error_code ec;
        if (fs::exists(path, ec)) {
            from_file(path, 0, "api.api_key_file");
            return;
        }
    }
    if (auto v = env("SEGMIND_API_KEY"); v && !v->empty()) {
        std::string key = trim(*v);
        if (auto p = key_problem(key)) {
            c.error(0, "api.api_key_file", fmt::format("the API key in $SEGMIND_API_KEY {}", *p));
            return;
        }
        s.api_key = secret(std::move(key));
        s.api_key_source = "$SEGMIND_API_KEY";
        return;
    }
    c.error(
        0, "api.api_key_file",
        "no API key found: set api.api_key_file, or give the systemd credential segmind-api-key "
        "($CREDENTIALS_DIRECTORY/segmind-api-key), or set $SEGMIND_API_KEY");
}

// The Standard Webhooks secret: "whsec_" then the base64 key (the file's only line).
void read_webhook_secret(context& c, settings& s) {
    const auto& path = s.hooks.webhook_secret_file;
    constexpr std::string_view key = "hooks.webhook_secret_file";
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        c.error(c.line_of(std::string(key)), key,
                fmt::format("cannot read {}: {}", path, std::strerror(errno)));
        return;
    }
    std::ostringstream buf;
    buf << in.rdbuf();
    std::string text = trim(buf.str());
    constexpr std::string_view prefix = "whsec_";
    std::string b64 = text.starts_with(prefix) ? text.substr(prefix.size()) : std::string();
    std::string raw(b64.size(), '\0');
    int n = -1;
    auto body = b64.substr(0, b64.find_last_not_of('=') + 1); // padding only at the end
    bool clean = !b64.empty() && b64.size() % 4 == 0 && b64.size() - body.size() <= 2 &&
                 body.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                        "0123456789+/") == std::string::npos;
    if (clean)
        n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(raw.data()),
                            reinterpret_cast<const unsigned char*>(b64.data()),
                            static_cast<int>(b64.size()));
    if (n <= 0) {
        c.error(c.line_of(std::string(key)), key,
                fmt::format("{} does not hold a Standard Webhooks secret (\"whsec_\" and base64 "
                            "on one line)",
                            path));
        return;
    }
    raw.resize(static_cast<std::size_t>(n) - (b64.ends_with("==")  ? 2
                                              : b64.ends_with('=') ? 1
                                                                   : 0));
    if (raw.size() < 24 || raw.size() > 64) {
        c.error(c.line_of(std::string(key)), key,
                fmt::format("the key in {} is {} bytes; Standard Webhooks keys are 24 to 64", path,
                            raw.size()));
        return;
    }
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 0004))
        c.warnings.push_back(
            fmt::format("{}: the webhook secret file {} is readable by every user; chmod o-r it",
                        c.file, path));
    s.webhook_key = secret(std::move(raw));
}

void find_postgresql_password(context& c, settings& s, const env_lookup& env) {
    auto dir = env("CREDENTIALS_DIRECTORY");
    if (!dir || dir->empty())
        return;
    std::string path = (fs::path(*dir) / "postgresql-password").string();
    std::error_code ec;
    if (!fs::exists(path, ec))
        return;
    std::ifstream in(path, std::ios::binary);
    std::ostringstream buf;
    buf << in.rdbuf();
    if (!in && !in.eof()) {
        c.error(0, "storage.postgresql",
                fmt::format("cannot read the credential {}: {}", path, std::strerror(errno)));
        return;
    }
    s.postgresql_password = secret(trim(buf.str()));
}

} // namespace

env_lookup process_environment() {
    return [](const std::string& name) -> std::optional<std::string> {
        if (const char* v = std::getenv(name.c_str()))
            return std::string(v);
        return std::nullopt;
    };
}

load_result parse_settings(std::string_view toml_text, const std::string& source_path,
                           const env_lookup& env, secrets how) {
    context c;
    c.file = source_path;
    settings s;
    s.source_path = source_path;
    // Defaults that are paths are absolute already; nothing to resolve.

    toml::table root;
    try {
        root = toml::parse(toml_text, source_path);
    } catch (const toml::parse_error& e) {
        c.error(e.source().begin.line, "syntax", std::string(e.description()));
        return {std::nullopt, c.sorted_errors(), {}};
    }

    for (auto&& [k, v] : root) {
        std::size_t line = k.source().begin.line;
        if (k.str() == "log_level") {
            c.lines["log_level"] = line;
            auto lvl = read_string(c, v, "log_level");
            static constexpr std::string_view levels[] = {"error", "warning", "notice", "info",
                                                          "debug"};
            if (lvl && std::find(std::begin(levels), std::end(levels), *lvl) == std::end(levels))
                c.error(
                    v, "log_level",
                    fmt::format("\"{}\" is not a level: use error, warning, notice, info or debug",
                                *lvl));
            else if (lvl)
                s.log_level = *lvl;
            continue;
        }
        if (k.str() == "models") {
            parse_models(c, v, s, line);
            continue;
        }
        auto sec =
            std::find_if(std::begin(sections), std::end(sections),
                         [&, name = k.str()](const section_rule& r) { return r.name == name; });
        if (sec == std::end(sections)) {
            c.error(line, k.str(),
                    "unknown key or table (known: log_level, [api], [storage], [cluster], [spool], "
                    "[output], [control], [metrics], [jobs], [spend], [inputs], [hooks], "
                    "[models.\"<slug>\"])");
            continue;
        }
        parse_section(c, *sec, v, s, line);
    }

    if (c.errors.empty())
        check_cross_rules(c, s);
    bool secrets_too = how == secrets::read;
    if (c.errors.empty() && secrets_too)
        find_api_key(c, s, env);
    if (c.errors.empty() && secrets_too && !s.storage.postgresql.empty())
        find_postgresql_password(c, s, env);
    if (c.errors.empty() && secrets_too && !s.hooks.webhook_secret_file.empty())
        read_webhook_secret(c, s);
    if (c.errors.empty() && s.cluster.node.empty()) {
        char host[256] = {};
        if (::gethostname(host, sizeof host - 1) == 0)
            s.cluster.node = host;
        auto dot = s.cluster.node.find('.');
        if (dot != std::string::npos && dot > 0)
            s.cluster.node.resize(dot); // the short name
        if (s.cluster.node.empty())
            s.cluster.node = "localhost";
    }

    load_result r;
    r.errors = c.sorted_errors();
    r.warnings = std::move(c.warnings);
    if (r.errors.empty())
        r.value = std::move(s);
    return r;
}

load_result load_settings(const std::string& path, const env_lookup& env, secrets how) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        return {std::nullopt,
                {fmt::format("{}: cannot read the configuration: {}", path, std::strerror(errno))},
                {}};
    std::ostringstream buf;
    buf << in.rdbuf();
    std::string abs = fs::absolute(path).lexically_normal().string();
    return parse_settings(buf.str(), abs, env, how);
}

std::vector<std::string> known_keys() {
    std::vector<std::string> out{"log_level"};
    for (auto& sec : sections)
        for (auto& k : sec.keys)
            out.push_back(fmt::format("{}.{}", sec.name, k.name));
    for (auto k : model_keys)
        out.push_back(fmt::format("models.SLUG.{}", k));
    return out;
}

std::string render_settings(const settings& s) {
    std::string o;
    auto line = [&](std::string_view key, const std::string& value) {
        o += fmt::format("{} = {}\n", key, value);
    };
    auto num = [](double d) {
        return fmt::format("{}", d);
    };
    o += fmt::format("# effective configuration of {}\n", s.source_path);
    line("log_level", quote(s.log_level));
    o += "\n[api]\n";
    line("base_url", quote(s.api.base_url));
    line("api_key_file", quote(s.api.api_key_file));
    o += fmt::format("# api key: {} (redacted)\n",
                     s.api_key.empty() ? "none" : "found in " + s.api_key_source);
    line("ca_file", quote(s.api.ca_file));
    line("requests_per_minute", num(s.api.requests_per_minute));
    line("max_connections", std::to_string(s.api.max_connections));
    line("max_submits_in_flight", std::to_string(s.api.max_submits_in_flight));
    line("request_timeout_s", num(s.api.request_timeout_s));
    line("max_result_bytes", std::to_string(s.api.max_result_bytes));
    o += "\n[storage]\n";
    line("database", quote(s.storage.database));
    line("postgresql", quote(s.storage.postgresql));
    if (!s.postgresql_password.empty())
        o += "# postgresql password: from the systemd credential postgresql-password (redacted)\n";
    o += "\n[cluster]\n";
    line("node", quote(s.cluster.node));
    line("takeover_s", num(s.cluster.takeover_s));
    o += "\n[spool]\n";
    line("directory", quote(s.spool.directory));
    line("max_file_bytes", std::to_string(s.spool.max_file_bytes));
    line("keep_days", std::to_string(s.spool.keep_days));
    o += "\n[output]\n";
    line("directory", quote(s.output.directory));
    line("max_download_bytes", std::to_string(s.output.max_download_bytes));
    o += "\n[control]\n";
    line("socket", quote(s.control.socket));
    line("socket_mode", quote(fmt::format("{:04o}", s.control.socket_mode)));
    o += "\n[metrics]\n";
    line("listen", quote(s.metrics.listen));
    o += "\n[jobs]\n";
    line("max_in_flight", std::to_string(s.jobs.max_in_flight));
    line("result_retention_s", num(s.jobs.result_retention_s));
    line("min_poll_interval_s", num(s.jobs.min_poll_interval_s));
    line("max_poll_interval_s", num(s.jobs.max_poll_interval_s));
    line("resubmit_unknown", s.jobs.resubmit_unknown ? "true" : "false");
    line("keep_finished_days", std::to_string(s.jobs.keep_finished_days));
    o += "\n[spend]\n";
    line("daily_limit", core::money_text(s.spend.daily_limit_micro));
    line("monthly_limit", core::money_text(s.spend.monthly_limit_micro));
    o += "\n[inputs]\n";
    {
        std::string dirs;
        for (auto& d : s.inputs.directories)
            dirs += (dirs.empty() ? "" : ", ") + quote(d);
        line("directories", "[" + dirs + "]");
    }
    line("upload_url", quote(s.inputs.upload_url));
    line("max_bytes", std::to_string(s.inputs.max_bytes));
    o += "\n[hooks]\n";
    {
        std::string argv;
        for (auto& a : s.hooks.command)
            argv += (argv.empty() ? "" : ", ") + quote(a);
        line("command", "[" + argv + "]");
    }
    line("webhook_url", quote(s.hooks.webhook_url));
    line("webhook_secret_file", quote(s.hooks.webhook_secret_file));
    if (!s.webhook_key.empty())
        o += "# webhook secret: read (redacted)\n";
    line("timeout_s", num(s.hooks.timeout_s));
    line("max_attempts", std::to_string(s.hooks.max_attempts));
    line("retry_s", num(s.hooks.retry_s));
    for (auto& [slug, m] : s.models) {
        o += fmt::format("\n[models.{}]\n", quote(slug));
        line("expected_duration_s", num(m.expected_duration_s));
        line("price", core::money_text(m.price_micro));
    }
    return o;
}

} // namespace klingd::config
