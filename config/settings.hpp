// The typed, validated configuration of klingd, with the contract's defaults.
// Durations are seconds (fractional allowed); paths are absolute after loading.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace klingd::config {

// The API key. It has no stream operator and no formatter on purpose: the only
// way to read it is reveal(), which only the HTTP client calls.
class secret {
public:
    secret() = default;
    explicit secret(std::string value) : value_(std::move(value)) {}
    const std::string& reveal() const { return value_; }
    bool empty() const { return value_.empty(); }

private:
    std::string value_;
};

struct api_settings {
    std::string base_url = "https://api.segmind.com";
    std::string scheme = "https"; // derived from base_url
    std::string host = "api.segmind.com";
    std::uint16_t port = 443;
    std::string api_key_file;
    std::string ca_file;
    double requests_per_minute = 60;
    int max_connections = 0;       // 0: automatic (core::automatic_connections)
    int max_submits_in_flight = 0; // 0: automatic (core::automatic_submits)
    double request_timeout_s = 30;
    std::uint64_t max_result_bytes = 8u << 20; // a result body larger than this is refused
};

struct storage_settings {
    std::string database = "/var/lib/klingd/klingd.db";
    // A libpq connection string or URI: PostgreSQL and a cluster instead of SQLite. Never
    // holds a password (refused at load); see settings::postgresql_password.
    std::string postgresql;
};

struct cluster_settings {
    std::string node;       // this host's name in the cluster; "" at load: the host name
    double takeover_s = 30; // a node silent this long loses its claims to the others
};

struct spool_settings {
    std::string directory = "/var/spool/klingd";
    std::uint64_t max_file_bytes = 1u << 20;
    int keep_days = 30; // files in accepted/ and rejected/ older than this are removed; 0: never
};

struct output_settings {
    std::string directory = "/var/lib/klingd/output";
    std::uint64_t max_download_bytes = std::uint64_t{4} << 30;
};

struct control_settings {
    std::string socket = "/run/klingd/klingd.sock";
    unsigned socket_mode = 0660;
};

// An HTTP listener serving only GET /metrics and GET /v1/health, for Prometheus (which
// cannot scrape a Unix socket); the control API stays on the socket.
struct metrics_settings {
    std::string listen;     // "ADDRESS:PORT" as given; "": none
    std::string address;    // the IP address of listen ("::1" for "[::1]:9464")
    std::uint16_t port = 0; // its port
};

struct jobs_settings {
    int max_in_flight = 0; // 0: automatic (core::automatic_in_flight)
    double result_retention_s = 3600;
    double min_poll_interval_s = 1;
    double max_poll_interval_s = 60;
    bool resubmit_unknown = false;
    int keep_finished_days = 30; // finished jobs older than this are pruned; 0: never
};

struct model_settings {
    double expected_duration_s = 60;
    // What one submission costs, in micro-units (1e-6) of the user's unit; 0: not counted.
    std::int64_t price_micro = 0;
};

// Spend limits, in micro-units (1e-6) of the unit prices are given in; 0: none.
struct spend_settings {
    std::int64_t daily_limit_micro = 0;   // a UTC day
    std::int64_t monthly_limit_micro = 0; // a UTC calendar month
};

// Local files as job inputs (file:// URLs in params), uploaded before the submit.
struct inputs_settings {
    std::vector<std::string> directories; // absolute, normalised; empty: no local files
    // The same folders resolved (every symlink) when the configuration was read: what a
    // file must be inside. Fixed then, so a folder swapped later for a symlink to
    // elsewhere does not move the boundary.
    std::vector<std::string> real_directories;
    std::string upload_url = "https://workflows-api.segmind.com/upload-asset";
    std::uint64_t max_bytes = 104857600;
    std::size_t max_files = 16; // local files one job may name
};

// Fills in.real_directories from in.directories; the first folder that cannot be resolved
// (or is not a folder), with the reason, or "" when all are.
std::string resolve_input_directories(inputs_settings& in);

// What runs when a job reaches a final state: a command and/or a signed webhook POST.
struct hooks_settings {
    std::vector<std::string> command; // argv, no shell; empty: none
    std::string webhook_url;          // https (http only to loopback); empty: none
    std::string webhook_secret_file;  // "whsec_" + base64; empty: unsigned
    double timeout_s = 30;
    int max_attempts = 10;
    double retry_s = 5; // the first retry's delay; it doubles each time, at most an hour
    bool any() const { return !command.empty() || !webhook_url.empty(); }
};

struct settings {
    std::string log_level = "info";
    api_settings api;
    storage_settings storage;
    cluster_settings cluster;
    spool_settings spool;
    output_settings output;
    control_settings control;
    metrics_settings metrics;
    jobs_settings jobs;
    spend_settings spend;
    inputs_settings inputs;
    hooks_settings hooks;
    std::map<std::string, model_settings> models = {
        {"kling-o1", {58}},
        {"kling-o1-video-to-video-edit", {223}},
    };

    std::string source_path; // the file these settings came from
    secret api_key;
    std::string
        api_key_source; // where the key was found (a path or a variable name), never the key
    // The PostgreSQL password from the systemd credential postgresql-password, if given
    // (libpq's passfile is the other way); never in the connection string.
    secret postgresql_password;
    // The webhook signing key: the bytes base64-decoded from after "whsec_" in
    // hooks.webhook_secret_file; empty when there is none.
    secret webhook_key;
};

} // namespace klingd::config
