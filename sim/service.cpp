// The emulated service: request records whose state follows from the time
// they were submitted, checks in the order a gateway and then the API apply
// them, and the statistics. Every random choice comes from one seeded generator.
#include "sim/service.hpp"

#include "sim/params.hpp"

#include <boost/json.hpp>
#include <cctype>
#include <cmath>
#include <fmt/format.h>
#include <iterator>
#include <openssl/evp.h>

namespace klingd::sim {
namespace json = boost::json;

namespace {

constexpr double media_lifetime_s = 7 * 24 * 3600;
constexpr double invalid_input_run_s = 1;
constexpr std::size_t prompt_chars_kept = 200;

api_answer json_answer(unsigned status, const json::value& v) {
    return {status, json::serialize(v), "application/json", {}};
}

api_answer error_answer(unsigned status, std::string_view message) {
    return json_answer(status, json::object{{"error", message}});
}

std::string sha256_hex(std::string_view data) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr);
    std::string out;
    out.reserve(2 * n);
    for (unsigned i = 0; i < n; ++i)
        out += fmt::format("{:02x}", md[i]);
    return out;
}

// The first max_chars UTF-8 characters of s.
std::string first_chars(std::string_view s, std::size_t max_chars) {
    std::size_t chars = 0;
    std::size_t i = 0;
    for (; i < s.size(); ++i) {
        if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80 && chars++ == max_chars)
            break;
    }
    return std::string(s.substr(0, i));
}

bool is_json_content_type(std::string_view ct) {
    auto semi = ct.find(';');
    auto type = ct.substr(0, semi);
    while (!type.empty() && type.back() == ' ')
        type.remove_suffix(1);
    constexpr std::string_view want = "application/json";
    if (type.size() != want.size())
        return false;
    for (std::size_t i = 0; i < want.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(type[i])) != want[i])
            return false;
    }
    return true;
}

double round_ms(double s) {
    return std::round(s * 1000) / 1000;
}

const char* state_name(int s) {
    static constexpr const char* names[] = {"QUEUED", "PROCESSING", "COMPLETED", "FAILED"};
    return names[s];
}

void put_time(json::object& o, const char* name, std::optional<time_point> t) {
    if (t) {
        o[name] = rfc3339_ms(*t);
        o[std::string(name) + "_ms"] = unix_ms(*t);
    } else {
        o[name] = nullptr;
        o[std::string(name) + "_ms"] = nullptr;
    }
}

json::object metrics_of(double queue_s, double run_s, int st) {
    json::object m;
    if (st >= 1)
        m["queue_time"] = round_ms(queue_s);
    if (st >= 2)
        m["inference_time"] = round_ms(run_s);
    return m;
}

// The set_* helpers store v in out, or return what v must be and leave out alone.
const char* set_number(const json::value& v, double min, double max, const char* must,
                       double& out) {
    if (!v.is_number() || v.to_number<double>() < min || v.to_number<double>() > max)
        return must;
    out = v.to_number<double>();
    return nullptr;
}

template <typename Int>
const char* set_integer(const json::value& v, long long min, Int& out) {
    if (!v.is_int64() || v.get_int64() < min || v.get_int64() > INT32_MAX)
        return min < 0 ? "an integer, -1 (unlimited) or more" : "an integer, 0 (unlimited) or more";
    out = static_cast<Int>(v.get_int64());
    return nullptr;
}

const char* set_bool(const json::value& v, bool& out) {
    if (!v.is_bool())
        return "true or false";
    out = v.get_bool();
    return nullptr;
}

const char* set_key(const json::value& v, std::string& out) {
    if (!v.is_string() || v.get_string().empty())
        return "a non-empty string";
    out = v.get_string();
    return nullptr;
}

// Returns nullptr when key names no rate.
double* rate_named(settings& s, std::string_view key) {
    if (key == "error_rate")
        return &s.error_rate;
    if (key == "reset_rate")
        return &s.reset_rate;
    if (key == "truncate_rate")
        return &s.truncate_rate;
    if (key == "slow_rate")
        return &s.slow_rate;
    if (key == "trickle_rate")
        return &s.trickle_rate;
    if (key == "fail_rate")
        return &s.fail_rate;
    return nullptr;
}

} // namespace

const char* endpoint_name(endpoint e) {
    static constexpr const char* names[] = {"submit", "status", "result", "media",
                                            "other",  "upload", "files"};
    static_assert(std::size(names) == endpoint_count);
    return names[static_cast<int>(e)];
}

service::service(settings s)
    : cfg_(std::move(s)), rng_(cfg_.seed), limiter_(cfg_.rpm, scaled(60), cfg_.limiter) {}

duration service::scaled(double api_seconds) const {
    return sim::scaled(api_seconds, cfg_.time_scale);
}

bool service::chance(double p) {
    if (p <= 0)
        return false;
    if (p >= 1)
        return true;
    return std::uniform_real_distribution<double>(0, 1)(rng_) < p;
}

std::string service::new_uuid() {
    std::uint64_t hi = rng_();
    std::uint64_t lo = rng_();
    hi = (hi & ~0xF000ULL) | 0x4000ULL;             // version 4
    lo = (lo & ~(0xC0ULL << 56)) | (0x80ULL << 56); // variant 10
    return fmt::format("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", hi >> 32, (hi >> 16) & 0xFFFF,
                       hi & 0xFFFF, lo >> 48, lo & 0xFFFFFFFFFFFFULL);
}

double service::draw_run_s(const std::string& model) {
    double median = cfg_.medians.at(model);
    if (cfg_.spread <= 0)
        return median;
    return std::lognormal_distribution<double>(std::log(median), cfg_.spread)(rng_);
}

double service::draw_queue_s() {
    if (cfg_.queue_s <= 0)
        return 0;
    return std::exponential_distribution<double>(1 / cfg_.queue_s)(rng_);
}

std::optional<api_answer> service::gate(std::string_view api_key, time_point now) {
    if (chance(cfg_.error_rate)) {
        ++faults_error_;
        switch (std::uniform_int_distribution<int>(0, 2)(rng_)) {
        case 0:
            return error_answer(500, "Internal server error");
        case 1:
            return api_answer{502,
                              "<html><head><title>502 Bad Gateway</title></head><body><center>"
                              "<h1>502 Bad Gateway</h1></center></body></html>\n",
                              "text/html",
                              {}};
        default:
            return api_answer{504,
                              "<html><head><title>504 Gateway Time-out</title></head><body>"
                              "<center><h1>504 Gateway Time-out</h1></center></body></html>\n",
                              "text/html",
                              {}};
        }
    }
    if (api_key.empty())
        return error_answer(401, "Missing API key: send it in the x-api-key header");
    if (api_key != cfg_.api_key)
        return error_answer(401, cfg_.echo_key ? fmt::format("Invalid API key: {}", api_key)
                                               : std::string("Invalid API key"));
    if (!limiter_.try_acquire(now)) {
        ++rate_limited_;
        auto answer = error_answer(429, "Rate limit exceeded");
        auto end = limiter_.reset_at(now);
        answer.headers.emplace_back("x-rate-limit-reset-at-utc",
                                    reset_header_value(end, cfg_.reset_header));
        if (cfg_.retry_after) {
            auto wait = std::chrono::ceil<std::chrono::seconds>(end - now).count();
            answer.headers.emplace_back("Retry-After",
                                        std::to_string(std::max<long long>(wait, 1)));
        }
        return answer;
    }
    return std::nullopt;
}

api_answer service::submit(std::string_view model, std::string_view api_key,
                           std::string_view content_type, std::string_view body, time_point now) {
    if (auto refused = gate(api_key, now))
        return *refused;
    std::string model_name(model);
    if (!cfg_.medians.count(model_name))
        return error_answer(404, "Model not found");
    if (!is_json_content_type(content_type))
        return error_answer(
            406,
            fmt::format("Unsupported content type \"{}\": send application/json", content_type));
    boost::system::error_code ec;
    json::value parsed = json::parse(body, ec);
    if (ec || !parsed.is_object())
        return error_answer(400, "Request body must be a JSON object");
    const auto& params = parsed.get_object();
    bool image = model_name == kling_o1;
    std::string problem = image ? check_kling_o1(params) : check_video_edit(params);
    if (!problem.empty() && image)
        return error_answer(400, problem);
    if (cfg_.credits == 0)
        return error_answer(406, "Insufficient credits");
    if (cfg_.credits > 0)
        --cfg_.credits;

    record r;
    r.id = new_uuid();
    r.model = model_name;
    std::string_view prompt;
    if (auto* p = params.if_contains("prompt"); p && p->is_string())
        prompt = p->get_string();
    r.prompt = first_chars(prompt, prompt_chars_kept);
    r.body_sha256 = sha256_hex(body);
    auto add_url = [&r](const json::value* v) {
        if (v && v->is_string())
            r.input_urls.emplace_back(v->get_string());
    };
    add_url(params.if_contains("video_url"));
    if (auto* a = params.if_contains("image_urls"); a && a->is_array())
        for (auto& u : a->get_array())
            add_url(&u);
    if (auto* el = params.if_contains("elements"); el && el->is_array())
        for (auto& e : el->get_array())
            if (e.is_object()) {
                add_url(e.get_object().if_contains("frontal_image_url"));
                if (auto* refs = e.get_object().if_contains("reference_image_urls");
                    refs && refs->is_array())
                    for (auto& u : refs->get_array())
                        add_url(&u);
            }
    r.kind = media_kind::mp4;
    if (image) {
        auto* f = params.if_contains("output_format");
        r.kind =
            (f && f->is_string() && f->get_string() == "jpg") ? media_kind::jpg : media_kind::png;
    }
    r.queue_api_s = draw_queue_s();
    r.run_api_s = problem.empty() ? draw_run_s(model_name) : invalid_input_run_s;
    bool unlucky = chance(cfg_.fail_rate);
    if (!problem.empty())
        r.error = "Invalid input: " + problem;
    else if (prompt.find("SIM_FAIL") != std::string_view::npos)
        r.error = "Content blocked by safety filters (SIM_FAIL)";
    else if (unlucky)
        r.error = "Inference failed: worker error (simulated)";
    r.submitted_at = now;
    r.processing_at = now + scaled(r.queue_api_s);
    r.done_at = r.processing_at + scaled(r.run_api_s);

    std::string base = cfg_.public_url + "/v2/requests/" + r.id;
    json::object out{{"request_id", r.id},
                     {"status", "QUEUED"},
                     {"status_url", base + "/status"},
                     {"response_url", base},
                     {"poll_url", base + "/status"}};
    index_.emplace(r.id, records_.size());
    records_.push_back(std::move(r));
    return json_answer(200, out);
}

service::record* service::find_live(std::string_view id, time_point now) {
    auto it = index_.find(id);
    if (it == index_.end())
        return nullptr;
    record& r = records_[it->second];
    if (now - r.submitted_at >= scaled(cfg_.retention_s))
        return nullptr;
    return &r;
}

service::state service::state_at(const record& r, time_point now) const {
    if (now < r.processing_at)
        return state::queued;
    if (now < r.done_at)
        return state::processing;
    return r.error.empty() ? state::completed : state::failed;
}

void service::note_seen(record& r, time_point now, std::optional<time_point> seen_at) {
    if (seen_at && !r.first_seen_at && now >= r.done_at)
        r.first_seen_at = *seen_at;
}

api_answer service::failed_answer(const record& r) const {
    return json_answer(422, json::object{{"status", "FAILED"},
                                         {"error", r.error},
                                         {"metrics", metrics_of(r.queue_api_s, r.run_api_s, 3)},
                                         {"request_id", r.id}});
}

api_answer service::not_found(std::string_view id) const {
    return error_answer(404, fmt::format("Request {} not found", id));
}

api_answer service::reach(std::string_view id, std::string_view api_key, time_point now,
                          std::optional<time_point> seen_at, std::uint64_t record::*counter,
                          const std::function<api_answer(const record&, state)>& answer) {
    if (auto refused = gate(api_key, now))
        return *refused;
    record* r = find_live(id, now);
    if (!r)
        return not_found(id);
    ++(r->*counter);
    note_seen(*r, now, seen_at);
    auto st = state_at(*r, now);
    if (st == state::failed)
        return failed_answer(*r);
    return answer(*r, st);
}

api_answer service::status(std::string_view id, std::string_view api_key, time_point now,
                           std::optional<time_point> seen_at) {
    return reach(id, api_key, now, seen_at, &record::status_polls, [](const record& r, state st) {
        int s = static_cast<int>(st);
        return json_answer(200,
                           json::object{{"request_id", r.id},
                                        {"status", state_name(s)},
                                        {"metrics", metrics_of(r.queue_api_s, r.run_api_s, s)}});
    });
}

api_answer service::result(std::string_view id, std::string_view api_key, time_point now,
                           std::optional<time_point> seen_at) {
    return reach(
        id, api_key, now, seen_at, &record::result_fetches, [this](const record& r, state st) {
            json::object out{{"request_id", r.id}, {"status", state_name(static_cast<int>(st))}};
            if (st == state::completed) {
                out["output"] = fmt::format(
                    "{}/media/{}.{}", cfg_.redirect_media > 0 ? cfg_.public_url : media_base(),
                    r.id, extension(r.kind));
                out["metrics"] = json::object{{"inference_time", round_ms(r.run_api_s)}};
                if (cfg_.result_padding > 0)
                    out["padding"] = std::string(cfg_.result_padding, 'x');
            }
            return json_answer(200, out);
        });
}

api_answer service::other_api_call(std::string_view api_key, time_point now) {
    if (auto refused = gate(api_key, now))
        return *refused;
    return error_answer(404, "Not found");
}

std::optional<media_file> service::media(std::string_view id, std::string_view ext,
                                         time_point now) const {
    auto it = index_.find(id);
    if (it == index_.end())
        return std::nullopt;
    const record& r = records_[it->second];
    if (state_at(r, now) != state::completed || extension(r.kind) != ext ||
        now - r.done_at >= scaled(media_lifetime_s))
        return std::nullopt;
    return media_file{r.kind, media_seed(r.id),
                      r.kind == media_kind::mp4 ? cfg_.media_bytes_video : cfg_.media_bytes_image};
}

std::string service::media_base() const {
    if (cfg_.media_host.empty())
        return cfg_.public_url;
    // scheme://host[:port]: the host replaced, the port kept.
    const std::string& u = cfg_.public_url;
    auto start = u.find("://") + 3;
    auto end = u.find_first_of(":/", u[start] == '[' ? u.find(']', start) : start);
    return u.substr(0, start) + cfg_.media_host +
           (end == std::string::npos ? std::string() : u.substr(end));
}

service::media_answer service::get_media(std::string_view name, std::string_view api_key,
                                         std::string_view host, int hop, time_point now) {
    media_answer out;
    if (!api_key.empty()) { // media URLs are public: a client that sends the key leaks it
        ++media_with_key_;
        out.refused = true;
        return out;
    }
    ++media_by_host_[std::string(host)];
    if (hop < cfg_.redirect_media) {
        out.redirect_to = fmt::format("{}/media/{}?hop={}", media_base(), name, hop + 1);
        return out;
    }
    auto dot = name.rfind('.');
    if (dot != std::string_view::npos)
        out.file = media(name.substr(0, dot), name.substr(dot + 1), now);
    return out;
}

delivery service::draw_delivery(endpoint e) {
    delivery d;
    if (chance(cfg_.reset_rate)) {
        ++faults_reset_;
        (std::uniform_int_distribution<int>(0, 1)(rng_) ? d.reset_after : d.reset_before) = true;
        return d;
    }
    if (chance(cfg_.truncate_rate)) {
        ++faults_truncate_;
        d.truncate = true;
    }
    if (chance(cfg_.slow_rate)) {
        ++faults_slow_;
        d.delay_s = cfg_.slow_s;
    }
    if (e == endpoint::media && chance(cfg_.trickle_rate)) {
        ++faults_trickle_;
        d.trickle = true;
    }
    return d;
}

void service::count_answer(endpoint e, unsigned code) {
    ++answers_[static_cast<int>(e)][code];
}

std::string service::config_json() const {
    return json::serialize(json::object{{"rpm", cfg_.rpm},
                                        {"credits", cfg_.credits},
                                        {"api_key", cfg_.api_key},
                                        {"error_rate", cfg_.error_rate},
                                        {"reset_rate", cfg_.reset_rate},
                                        {"truncate_rate", cfg_.truncate_rate},
                                        {"slow_rate", cfg_.slow_rate},
                                        {"slow_s", cfg_.slow_s},
                                        {"trickle_rate", cfg_.trickle_rate},
                                        {"media_host", cfg_.media_host},
                                        {"redirect_media", cfg_.redirect_media},
                                        {"fail_rate", cfg_.fail_rate},
                                        {"retry_after", cfg_.retry_after},
                                        {"limiter", name_of(cfg_.limiter)},
                                        {"echo_key", cfg_.echo_key},
                                        {"upload_max_bytes", cfg_.upload_max_bytes},
                                        {"upload_answer_key", cfg_.upload_answer_key}});
}

api_answer service::configure(std::string_view body) {
    boost::system::error_code ec;
    json::value parsed = json::parse(body, ec);
    if (ec || !parsed.is_object())
        return error_answer(400, "body must be a JSON object");
    settings next = cfg_;
    for (const auto& [name, v] : parsed.get_object()) {
        std::string_view key = name;
        const char* must = nullptr;
        if (key == "rpm") {
            must = set_integer(v, 0, next.rpm);
        } else if (key == "credits") {
            must = set_integer(v, -1, next.credits);
        } else if (key == "api_key") {
            must = set_key(v, next.api_key);
        } else if (key == "media_host") {
            must = v.is_string() && v.get_string().find_first_of("/:@?# ") == json::string::npos
                       ? nullptr
                       : "a host name (no port, no slash)";
            if (!must)
                next.media_host = v.get_string();
        } else if (key == "redirect_media") {
            must = set_integer(v, 0, next.redirect_media);
        } else if (key == "slow_s") {
            must = set_number(v, 0, 1e9, "a number of seconds, 0 or more", next.slow_s);
        } else if (key == "retry_after") {
            must = set_bool(v, next.retry_after);
        } else if (key == "limiter") {
            auto k = v.is_string() ? limiter_kind_named(v.get_string()) : std::nullopt;
            must = k ? nullptr : "fixed, sliding or bucket";
            if (k)
                next.limiter = *k;
        } else if (key == "echo_key") {
            must = set_bool(v, next.echo_key);
        } else if (key == "upload_max_bytes") {
            must = v.is_int64() && v.get_int64() >= 1 ? nullptr
                                                      : "an integer number of bytes, 1 or more";
            if (!must)
                next.upload_max_bytes = static_cast<std::uint64_t>(v.get_int64());
        } else if (key == "upload_answer_key") {
            must = v.is_string() && (v.get_string() == "file_urls" || v.get_string() == "urls")
                       ? nullptr
                       : "\"file_urls\" or \"urls\"";
            if (!must)
                next.upload_answer_key = v.get_string();
        } else if (double* rate = rate_named(next, key)) {
            must = set_number(v, 0, 1, "a number between 0 and 1", *rate);
        } else {
            return error_answer(400, fmt::format("unknown key \"{}\"", key));
        }
        if (must)
            return error_answer(
                400, fmt::format("{} must be {}, not {}", key, must, json::serialize(v)));
    }
    cfg_ = std::move(next);
    limiter_.set_limit(cfg_.rpm);
    limiter_.set_kind(cfg_.limiter);
    return {200, config_json(), "application/json", {}};
}

namespace {

// Strict base64 (RFC 4648 alphabet, padding only at the end, unused bits zero); nullopt
// when not.
std::optional<std::string> decode_base64(std::string_view in) {
    if (in.size() % 4 != 0)
        return std::nullopt;
    auto pad = in.ends_with("==") ? 2u : in.ends_with('=') ? 1u : 0u;
    auto value = [](char c) -> int {
        if (c >= 'A' && c <= 'Z')
            return c - 'A';
        if (c >= 'a' && c <= 'z')
            return c - 'a' + 26;
        if (c >= '0' && c <= '9')
            return c - '0' + 52;
        return c == '+' ? 62 : c == '/' ? 63 : -1;
    };
    for (std::size_t i = 0; i < in.size() - pad; ++i) {
        if (value(in[i]) < 0)
            return std::nullopt;
    }
    // The bits after the last whole byte: 4 with "==", 2 with "=".
    if (pad > 0 && (value(in[in.size() - pad - 1]) & (pad == 2 ? 0xF : 0x3)) != 0)
        return std::nullopt;
    std::string out(in.size() / 4 * 3, '\0');
    int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                            reinterpret_cast<const unsigned char*>(in.data()),
                            static_cast<int>(in.size()));
    if (n < 0)
        return std::nullopt;
    out.resize(static_cast<std::size_t>(n) - pad);
    return out;
}

// A media type's type and subtype: RFC 6838 names, at least one character each.
bool is_media_type(std::string_view m) {
    auto name = [](std::string_view part) {
        if (part.empty() || !std::isalnum(static_cast<unsigned char>(part[0])))
            return false;
        for (char c : part) {
            if (!std::isalnum(static_cast<unsigned char>(c)) &&
                std::string_view("!#$&-^_.+").find(c) == std::string_view::npos)
                return false;
        }
        return true;
    };
    auto slash = m.find('/');
    return slash != std::string_view::npos && name(m.substr(0, slash)) && name(m.substr(slash + 1));
}

std::string extension_of(std::string_view mime) {
    static const std::pair<std::string_view, std::string_view> known[] = {
        {"image/png", "png"},  {"image/jpeg", "jpg"}, {"image/webp", "webp"},
        {"image/gif", "gif"},  {"video/mp4", "mp4"},  {"video/quicktime", "mov"},
        {"video/webm", "webm"}};
    std::string lower(mime);
    for (char& c : lower)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    for (auto& [m, e] : known) {
        if (m == lower)
            return std::string(e);
    }
    return "bin";
}

} // namespace

api_answer service::upload(std::string_view api_key, std::string_view content_type,
                           std::string_view body, time_point now) {
    if (auto refused = gate(api_key, now))
        return *refused;
    if (!is_json_content_type(content_type))
        return error_answer(
            406,
            fmt::format("Unsupported content type \"{}\": send application/json", content_type));
    boost::system::error_code ec;
    json::value parsed = json::parse(body, ec);
    if (ec || !parsed.is_object())
        return error_answer(400, "Request body must be a JSON object");
    auto* list = parsed.get_object().if_contains("data_urls");
    if (!list || !list->is_array() || list->get_array().empty())
        return error_answer(400, "data_urls must be a non-empty array of data URLs");
    if (list->get_array().size() > 10)
        return error_answer(400, "at most 10 data_urls per upload");
    std::vector<std::pair<std::string, std::string>> files; // (mime, bytes)
    for (auto& v : list->get_array()) {
        if (!v.is_string())
            return error_answer(400, "data_urls must hold strings");
        std::string_view d = v.get_string();
        auto comma = d.find(',');
        constexpr std::string_view b64 = ";base64";
        if (!d.starts_with("data:") || comma == std::string_view::npos ||
            d.substr(0, comma).size() < 5 + b64.size() || !d.substr(0, comma).ends_with(b64))
            return error_answer(400, "each entry must be data:<type>/<subtype>;base64,<data>");
        auto mime = d.substr(5, comma - 5 - b64.size());
        if (!is_media_type(mime))
            return error_answer(400, fmt::format("\"{}\" is not a media type (type/subtype)",
                                                 first_chars(mime, 60)));
        auto data = d.substr(comma + 1);
        if (data.empty())
            return error_answer(400, "a data URL holds no data");
        if (data.size() / 4 * 3 > cfg_.upload_max_bytes + 2)
            return error_answer(
                413, fmt::format("File too large: at most {} bytes", cfg_.upload_max_bytes));
        auto bytes = decode_base64(data);
        if (!bytes)
            return error_answer(400, "the data is not valid base64 (RFC 4648, padded, no spaces)");
        if (bytes->size() > cfg_.upload_max_bytes)
            return error_answer(
                413, fmt::format("File too large: at most {} bytes", cfg_.upload_max_bytes));
        files.emplace_back(std::string(mime), std::move(*bytes));
    }
    json::array urls;
    for (auto& [mime, bytes] : files) {
        auto name = new_uuid() + "." + extension_of(mime);
        auto url = cfg_.public_url + "/files/" + name;
        uploads_.push_back({url, mime, bytes.size(), sha256_hex(bytes)});
        files_[name] = {mime, std::move(bytes)};
        urls.emplace_back(url);
    }
    return json_answer(200, json::object{{cfg_.upload_answer_key, std::move(urls)}});
}

const service::hosted_file* service::hosted(std::string_view name) const {
    auto it = files_.find(name);
    return it == files_.end() ? nullptr : &it->second;
}

std::string service::stats_json(bool with_requests, time_point now) const {
    json::object out;
    for (int e = 0; e < endpoint_count; ++e) {
        json::object codes;
        for (auto [code, n] : answers_[e])
            codes[code == 0 ? std::string("reset") : std::to_string(code)] = n;
        out[endpoint_name(static_cast<endpoint>(e))] = std::move(codes);
    }
    out["submissions"] = records_.size();
    out["rate_limited"] = rate_limited_;
    out["faults"] = json::object{{"error", faults_error_},
                                 {"reset", faults_reset_},
                                 {"truncate", faults_truncate_},
                                 {"slow", faults_slow_},
                                 {"trickle", faults_trickle_}};
    json::object hosts;
    for (auto& [h, n] : media_by_host_)
        hosts[h] = n;
    out["media_by_host"] = std::move(hosts);
    out["media_with_key"] = media_with_key_;
    out["credits"] = cfg_.credits;
    out["uploads"] = uploads_.size();
    if (with_requests) {
        json::array up;
        for (auto& u : uploads_)
            up.push_back(json::object{
                {"url", u.url}, {"mime", u.mime}, {"bytes", u.bytes}, {"sha256", u.sha256}});
        out["uploaded"] = std::move(up);
        json::array list;
        list.reserve(records_.size());
        for (const record& r : records_) {
            auto st = state_at(r, now);
            bool done = st == state::completed || st == state::failed;
            json::object o{
                {"request_id", r.id},
                {"model", r.model},
                {"prompt", r.prompt},
                {"body_sha256", r.body_sha256},
                {"input_urls", json::array(r.input_urls.begin(), r.input_urls.end())},
                {"outcome", state_name(static_cast<int>(st))},
                {"error", r.error.empty() || !done ? json::value() : json::value(r.error)},
                {"status_polls", r.status_polls},
                {"result_fetches", r.result_fetches},
                {"queue_time", round_ms(r.queue_api_s)},
                {"inference_time", round_ms(r.run_api_s)}};
            put_time(o, "submitted_at", r.submitted_at);
            put_time(o, "completed_at", done ? std::optional(r.done_at) : std::nullopt);
            put_time(o, "first_seen_at", r.first_seen_at);
            list.push_back(std::move(o));
        }
        out["requests"] = std::move(list);
    }
    return json::serialize(out);
}

} // namespace klingd::sim
