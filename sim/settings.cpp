// Range checks for segmind-sim's settings, shared by the command line and tests.
#include "sim/settings.hpp"

#include <fmt/format.h>

namespace klingd::sim {

std::string check_settings(const settings& s) {
    auto rate = [](const char* name, double v) -> std::string {
        if (!(v >= 0 && v <= 1))
            return fmt::format("{} must be between 0 and 1, not {}", name, v);
        return {};
    };
    if (s.api_key.empty())
        return "--api-key must not be empty";
    if (!(s.time_scale > 0))
        return fmt::format("--time-scale must be greater than 0, not {}", s.time_scale);
    if (!(s.spread >= 0))
        return fmt::format("--spread must be 0 or more, not {}", s.spread);
    for (auto& [model, median] : s.medians) {
        if (!(median > 0))
            return fmt::format("--median {}: seconds must be greater than 0, not {}", model,
                               median);
    }
    if (!(s.queue_s >= 0))
        return fmt::format("--queue-s must be 0 or more, not {}", s.queue_s);
    if (!(s.retention_s > 0))
        return fmt::format("--retention-s must be greater than 0, not {}", s.retention_s);
    if (s.result_padding > (std::uint64_t{64} << 20))
        return fmt::format("--result-padding must be at most 64 MiB, not {}", s.result_padding);
    if (s.rpm < 0)
        return fmt::format("--rpm must be 0 (unlimited) or more, not {}", s.rpm);
    if (s.credits < -1)
        return fmt::format("--credits must be -1 (unlimited) or more, not {}", s.credits);
    if (!(s.slow_s >= 0))
        return fmt::format("--slow-s must be 0 or more, not {}", s.slow_s);
    if (s.upload_max_bytes < 1)
        return "--upload-max-bytes must be 1 or more";
    if (s.upload_answer_key != "file_urls" && s.upload_answer_key != "urls")
        return fmt::format("--upload-answer-key must be file_urls or urls, not \"{}\"",
                           s.upload_answer_key);
    for (auto [name, v] : {std::pair{"--fail-rate", s.fail_rate},
                           {"--error-rate", s.error_rate},
                           {"--reset-rate", s.reset_rate},
                           {"--truncate-rate", s.truncate_rate},
                           {"--slow-rate", s.slow_rate},
                           {"--trickle-rate", s.trickle_rate}}) {
        if (auto e = rate(name, v); !e.empty())
            return e;
    }
    return {};
}

bool parse_reset_format(const std::string& name, reset_format& out) {
    for (auto f : {reset_format::iso, reset_format::iso_frac, reset_format::epoch}) {
        if (name == reset_format_name(f)) {
            out = f;
            return true;
        }
    }
    return false;
}

const char* reset_format_name(reset_format f) {
    switch (f) {
    case reset_format::iso:
        return "iso";
    case reset_format::iso_frac:
        return "iso-frac";
    case reset_format::epoch:
        return "epoch";
    }
    return "iso-frac";
}

} // namespace klingd::sim
