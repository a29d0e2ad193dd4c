// The account's request budget, shared by every API call. Sends are paced
// evenly (one every 60/rate seconds, to the microsecond) so that no window of
// any length, the API's or ours, sees a burst; a send may come early by at most
// a small tolerance (the dispatcher's wake-up tick), so that at high rates a
// wake-up sends everything the tick accrued instead of one request. A 429 blocks
// every send until the time the API names (or a jittered backoff) and lowers the
// rate the daemon allows itself, since the true limit may be below the configured
// one; quiet time raises it back.
#pragma once

#include "core/job.hpp"

#include <deque>
#include <optional>

namespace klingd::core {

class rate_budget {
public:
    // tolerance: how much earlier than its even slot a send may go (0: exactly on it).
    explicit rate_budget(double configured_rpm, milliseconds tolerance = milliseconds(0));

    // A new configured rate and tolerance (SIGHUP); the allowed rate is capped to it.
    void reconfigure(double configured_rpm, milliseconds tolerance = milliseconds(0));

    // The earliest time the next request may go out.
    time_point next_slot() const;
    // Takes the slot if now is at or past next_slot(); false otherwise.
    bool try_acquire(time_point now);

    // A 429 arrived. until: what the answer's headers allow (nullopt: no usable
    // header); jitter01: a uniform random number in [0, 1) for the fallback backoff.
    void on_rate_limited(time_point now, std::optional<time_point> until, double jitter01);
    // Any other answer: the budget is working; after a quiet spell the rate recovers.
    void on_answer(time_point now);

    double configured_rpm() const { return configured_; }
    double allowed_rpm() const { return allowed_; }
    bool blocked(time_point now) const { return now < blocked_until_; }
    time_point blocked_until() const { return blocked_until_; }
    // Requests sent in the last 60 s.
    std::size_t used_last_minute(time_point now);

private:
    milliseconds gap() const;
    double interval_us() const { return 60e6 / allowed_; }
    // The earliest time the last minute's sends leave room for one more; min when they do.
    time_point window_slot() const;

    double configured_;
    double allowed_;
    milliseconds tolerance_;
    // The even slot the last send took, in microseconds since the epoch; nullopt before
    // the first send. The next slot is one interval later at the rate allowed now, so
    // a new rate (SIGHUP, recovery after 429s) moves it at once.
    std::optional<double> last_slot_us_;
    time_point blocked_until_{};
    time_point last_decrease_{};
    time_point last_raise_{};
    int consecutive_unhinted_ = 0;
    std::deque<time_point> sends_; // within the last minute
};

} // namespace klingd::core
