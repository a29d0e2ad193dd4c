// The submission gate's rules.
#include "core/submission_gate.hpp"

#include <fmt/format.h>

namespace klingd::core {

bool submission_gate::allows(time_point now, std::size_t in_flight,
                             std::size_t max_in_flight) const {
    if (paused_ || stopping_ || in_flight >= max_in_flight)
        return false;
    return stop_ == stop_kind::none || now >= next_probe_;
}

void submission_gate::on_submit_sent(time_point now) {
    if (stop_ != stop_kind::none)
        next_probe_ = now + probe_interval_;
}

std::string submission_gate::on_signal(api_signal s, const std::string& reason, time_point now,
                                       bool from_submit) {
    switch (s) {
    case api_signal::unauthorized:
    case api_signal::no_credits: {
        auto kind = s == api_signal::unauthorized ? stop_kind::unauthorized : stop_kind::no_credits;
        std::string line;
        if (stop_ != kind)
            line = fmt::format("submissions stopped: {} ({}); jobs stay pending; a probe is sent "
                               "every {}s",
                               kind == stop_kind::unauthorized ? "the API key was refused"
                                                               : "the account has no credits",
                               reason, std::chrono::duration<double>(probe_interval_).count());
        stop_ = kind;
        stop_reason_ = reason;
        next_probe_ = now + probe_interval_;
        return line;
    }
    case api_signal::accepted:
        if (stop_ == stop_kind::unauthorized || (stop_ == stop_kind::no_credits && from_submit)) {
            stop_ = stop_kind::none;
            stop_reason_.clear();
            return "submissions resume: the API accepts requests again";
        }
        return {};
    case api_signal::rate_limited:
    case api_signal::none:
        break;
    }
    return {};
}

void submission_gate::probe_now(time_point now) {
    if (stop_ != stop_kind::none)
        next_probe_ = now;
}

std::string submission_gate::blocked_reason() const {
    if (paused_)
        return "submissions are paused (klingctl resume)";
    if (stop_ != stop_kind::none)
        return fmt::format("submissions stopped: {}; a probe is sent every {}s", stop_reason_,
                           std::chrono::duration<double>(probe_interval_).count());
    return {};
}

} // namespace klingd::core
