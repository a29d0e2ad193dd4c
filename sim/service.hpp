// The emulated Segmind account and its requests, with no I/O and no clock: the
// caller passes the time in. It answers the v2 API calls (auth, rate limit,
// credits, validation, request states, retention), decides the injected faults
// with a seeded generator, and keeps the statistics the tests read.
#pragma once

#include "sim/media.hpp"
#include "sim/rate_limiter.hpp"
#include "sim/settings.hpp"
#include "sim/timestamps.hpp"

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace klingd::sim {

struct api_answer {
    unsigned status = 200;
    std::string body;
    std::string content_type = "application/json";
    std::vector<std::pair<std::string, std::string>> headers;
};

enum class endpoint { submit, status, result, media, other, upload, files };
constexpr int endpoint_count = 7;
// Its name in /sim/stats and in the request log.
const char* endpoint_name(endpoint e);

// What happens to one answer on its way to the client.
struct delivery {
    bool trickle = false;      // a media body sent at 1 KiB/s (drawn for media only)
    bool reset_before = false; // the connection is reset before the request is processed
    bool reset_after = false;  // the request is processed, then the connection is reset
    bool truncate = false;     // the full length is announced, half the body sent
    double delay_s = 0;        // real seconds to wait before answering
};

class service {
public:
    explicit service(settings s);

    api_answer submit(std::string_view model, std::string_view api_key,
                      std::string_view content_type, std::string_view body, time_point now);
    // seen_at: when the answer reaches the client; nullopt when it never does.
    api_answer status(std::string_view id, std::string_view api_key, time_point now,
                      std::optional<time_point> seen_at);
    api_answer status(std::string_view id, std::string_view api_key, time_point now) {
        return status(id, api_key, now, now);
    }
    api_answer result(std::string_view id, std::string_view api_key, time_point now,
                      std::optional<time_point> seen_at);
    api_answer result(std::string_view id, std::string_view api_key, time_point now) {
        return result(id, api_key, now, now);
    }
    // POST /upload-asset: {"data_urls":["data:<mime>;base64,..."]} -> the hosted URLs.
    api_answer upload(std::string_view api_key, std::string_view content_type,
                      std::string_view body, time_point now);
    // GET /files/<name>: an uploaded file (its bytes and type), or nullopt.
    struct hosted_file {
        std::string mime;
        std::string bytes;
    };
    const hosted_file* hosted(std::string_view name) const;

    // Any other call under /v2/: authenticated and counted like the rest, then 404.
    api_answer other_api_call(std::string_view api_key, time_point now);

    // Returns nullopt when the id has no completed media with that extension at now.
    std::optional<media_file> media(std::string_view id, std::string_view ext,
                                    time_point now) const;

    // Where media files are served from: the public URL, with media_host as its host.
    std::string media_base() const;
    // A GET of a media file, hop redirects already followed: the file, a redirect to
    // the next hop, or a refusal (403 for a request that carries x-api-key, counted).
    struct media_answer {
        std::optional<media_file> file;
        std::string redirect_to; // not empty: answer 302 with this Location
        bool refused = false;
    };
    media_answer get_media(std::string_view name, std::string_view api_key, std::string_view host,
                           int hop, time_point now);

    // Draws the transport faults for one non-control request.
    delivery draw_delivery(endpoint e);
    // Counts one answer by endpoint and code; code 0 is a connection reset.
    void count_answer(endpoint e, unsigned code);

    // Applies a POST /sim/config body; 400 without any change when a key or value is bad.
    api_answer configure(std::string_view body);
    // The values /sim/config can change, as JSON.
    std::string config_json() const;
    std::string stats_json(bool with_requests, time_point now) const;

    const settings& current() const { return cfg_; }
    // The base of the URLs handed out, once the listening port is known.
    void set_public_url(std::string url) { cfg_.public_url = std::move(url); }

private:
    enum class state { queued, processing, completed, failed };

    struct record {
        std::string id;
        std::string model;
        std::string prompt;
        std::string body_sha256;
        media_kind kind = media_kind::png;
        std::string error; // not empty: ends FAILED with this detail
        double queue_api_s = 0;
        double run_api_s = 0;
        time_point submitted_at;
        time_point processing_at;
        time_point done_at;
        std::optional<time_point> first_seen_at;
        std::vector<std::string> input_urls; // the URLs in its params
        std::uint64_t status_polls = 0;
        std::uint64_t result_fetches = 0;
    };

    struct string_hash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const {
            return std::hash<std::string_view>{}(s);
        }
    };

    std::optional<api_answer> gate(std::string_view api_key, time_point now);
    // Returns nullptr when the id is unknown or its retention has passed.
    record* find_live(std::string_view id, time_point now);
    state state_at(const record& r, time_point now) const;
    void note_seen(record& r, time_point now, std::optional<time_point> seen_at);
    api_answer failed_answer(const record& r) const;
    api_answer not_found(std::string_view id) const;
    // A GET of a live request: its counter bumped and the sighting noted, then
    // answer(record, state); or the answer the GET gets instead (key, rate limit, unknown
    // or expired id, a failed request).
    api_answer reach(std::string_view id, std::string_view api_key, time_point now,
                     std::optional<time_point> seen_at, std::uint64_t record::*counter,
                     const std::function<api_answer(const record&, state)>& answer);
    bool chance(double p);
    std::string new_uuid();
    double draw_run_s(const std::string& model);
    double draw_queue_s();
    duration scaled(double api_seconds) const;

    settings cfg_;
    std::mt19937_64 rng_;
    rate_limiter limiter_;
    std::deque<record> records_;
    std::unordered_map<std::string, std::size_t, string_hash, std::equal_to<>> index_;
    std::map<unsigned, std::uint64_t> answers_[endpoint_count];
    struct upload_record {
        std::string url;
        std::string mime;
        std::uint64_t bytes = 0;
        std::string sha256;
    };
    std::vector<upload_record> uploads_;
    std::map<std::string, hosted_file, std::less<>> files_; // by name ("<uuid>.png")
    std::uint64_t rate_limited_ = 0;
    std::uint64_t faults_error_ = 0;
    std::uint64_t faults_reset_ = 0;
    std::uint64_t faults_truncate_ = 0;
    std::uint64_t faults_slow_ = 0;
    std::uint64_t faults_trickle_ = 0;
    std::uint64_t media_with_key_ = 0;
    std::map<std::string, std::uint64_t> media_by_host_;
};

} // namespace klingd::sim
