// Whether new submissions may go out: the user's pause, the in-flight cap, and
// the stop a 401 (key refused) or 406 (no credits) puts on them until a probe
// submit gets through, one probe per probe interval. Pure: time comes in.
// (The spend limits of a later issue live here too.)
#pragma once

#include "core/job.hpp"
#include "core/lifecycle.hpp"

#include <string>

namespace klingd::core {

class submission_gate {
public:
    explicit submission_gate(milliseconds probe_interval) : probe_interval_(probe_interval) {}
    void set_probe_interval(milliseconds d) { probe_interval_ = d; }

    void set_paused(bool p) { paused_ = p; }
    bool paused() const { return paused_; }
    void set_stopping() { stopping_ = true; }

    // May a submit go out now, with in_flight of max_in_flight jobs submitted and unfinished?
    // While stopped by a 401/406, only when a probe is due.
    bool allows(time_point now, std::size_t in_flight, std::size_t max_in_flight) const;
    // A submit is leaving (while stopped, it is the probe: the next one waits an interval).
    void on_submit_sent(time_point now);
    // What an answer said about the key and credits. from_submit: a 406 is lifted only
    // by a submit that gets through (a poll proves nothing about credits). Returns a line
    // for the log when the gate changed, else "".
    std::string on_signal(api_signal s, const std::string& reason, time_point now,
                          bool from_submit);
    // The key changed (SIGHUP): a stopped gate probes at once.
    void probe_now(time_point now);

    bool stopped() const { return stop_ != stop_kind::none; }
    // Stopped because the API refused the key (401): no request of this node's can work.
    bool unauthorized() const { return stop_ == stop_kind::unauthorized; }
    // When a stopped gate's next probe is due.
    time_point next_probe() const { return next_probe_; }
    // Why submissions are not going out (paused, 401, 406), or "".
    std::string blocked_reason() const;

private:
    enum class stop_kind { none, unauthorized, no_credits };
    milliseconds probe_interval_;
    bool paused_ = false;
    bool stopping_ = false;
    stop_kind stop_ = stop_kind::none;
    std::string stop_reason_;
    time_point next_probe_{};
};

} // namespace klingd::core
