// segmind-sim's settings: what the command line sets at start, and what
// POST /sim/config may change while it runs. Durations are API seconds; the
// service multiplies them by time_scale to get real time.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace klingd::sim {

// How the account's budget is counted (sim/rate_limiter.hpp).
enum class limiter_kind { fixed, sliding, bucket };

// How the x-rate-limit-reset-at-utc header spells the end of the window.
enum class reset_format { iso, iso_frac, epoch };

struct settings {
    std::string api_key = "sim-key";
    std::string public_url; // scheme://host:port, no trailing slash
    double time_scale = 1;
    double spread = 0.25; // sigma of the lognormal run time
    std::map<std::string, double> medians = {{"kling-o1", 58},
                                             {"kling-o1-video-to-video-edit", 223}};
    double queue_s = 2; // mean time in QUEUED
    double retention_s = 3600;
    int rpm = 0;                                // 0: unlimited
    limiter_kind limiter = limiter_kind::fixed; // how rpm is counted
    bool retry_after = false;
    // A careless API: a 401 for a wrong key repeats the key it was sent (tests that
    // klingd scrubs every key it has held from what it records and logs).
    bool echo_key = false;
    reset_format reset_header = reset_format::iso_frac;
    long long credits = -1; // -1: unlimited
    double fail_rate = 0;
    double error_rate = 0;
    double reset_rate = 0;
    double truncate_rate = 0;
    double slow_rate = 0;
    double slow_s = 0;       // real seconds
    double trickle_rate = 0; // share of media answers sent at 1 KiB/s
    // Media from another origin: this host name instead of the public URL's (the same
    // server; "localhost" against 127.0.0.1 is another origin), "" for the same.
    std::string media_host;
    int redirect_media = 0; // redirects (302) before a media file is served
    std::uint64_t media_bytes_image = 65536;
    std::uint64_t media_bytes_video = 1048576;
    std::uint64_t result_padding = 0; // bytes of filler in a completed result's body
    std::uint64_t seed = 0;
    // Uploads (POST /upload-asset): the largest decoded file, and the key the answer
    // lists the hosted URLs under ("file_urls" or "urls": sources differ).
    std::uint64_t upload_max_bytes = 104857600;
    std::string upload_answer_key = "file_urls";
};

// Returns what is wrong with s, naming the option, or the empty string when s is usable.
std::string check_settings(const settings& s);

// Returns false, and leaves out untouched, when name is not iso, iso-frac or epoch.
bool parse_reset_format(const std::string& name, reset_format& out);
const char* reset_format_name(reset_format f);

} // namespace klingd::sim
