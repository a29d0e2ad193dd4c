// The account's request budget, shared by every API call. Sends are paced
// evenly (one every 60/rate seconds, to the microsecond) so that no window of
// any length, the API's or ours, sees a burst; a send may come early by at most
// a small tolerance (the dispatcher's wake-up tick), so that at high rates a
// wake-up sends everything the tick accrued instead of one request.
//
// Sends are paced a margin below the rate allowed (1% in the daemon), so that the
// jitter between our send times and the API's arrival times does not put one
// request more into the API's window than it allows, whether it counts fixed
// minutes, any sliding minute or a token bucket that holds two requests or more.
// The guard on early sends allows ceil(allowed) sends over the time the paced rate
// needs for them, so low and fractional rates lose no more than the 1% either. (A
// fractional rate cannot keep every minute to its floor: at 2.5/min some minutes
// hold 3 sends.)
//
// A 429 blocks every send until the reset time the API names (at most 5 minutes
// ahead), or, without a usable one (none, unreadable, more than an hour ahead, or
// not after now), for a jittered backoff that grows once per episode and starts
// small again when the way up opens. A 429 answering a request sent before the
// current episode began, arriving while sends are blocked, or naming the same reset
// time as the last, belongs to that episode. A new episode lowers the rate klingd
// allows itself (by a fifth) only on evidence that the true limit is below it: no
// usable reset time, or the previous episode's block ended less than 2 minutes ago
// and it began fewer than a minute's worth of sends ago (the allowed rate's, at
// least 10). A lone 429 whose reset time was honoured leaves the rate alone. The
// way back up counts the API's answers (not requests that failed on the way):
// after a sixth of a minute's answers without a 429 (at least 10), or 20 s after
// the block, each answer raises the rate by 0.5% of the configured one, or by 2%
// of it per second since the last raise (at most a gap's worth) when that is more.
// Counting answers makes the rule the same at every rate and time scale; the clock
// keeps low rates, with few answers, from recovering slowly.
#pragma once

#include "core/job.hpp"

#include <deque>
#include <optional>

namespace klingd::core {

// The share of the allowed rate the daemon leaves unused: 1% of a minute is 600 ms,
// far more than the jitter between sending a request and its arrival.
inline constexpr double pace_margin = 0.01;

class rate_budget {
public:
    // tolerance: how much earlier than its even slot a send may go (0: exactly on it).
    // margin: the share of the allowed rate left unused (0.01: sends go at 99% of it).
    explicit rate_budget(double configured_rpm, milliseconds tolerance = milliseconds(0),
                         double margin = 0);

    // A new configured rate and tolerance (SIGHUP); the allowed rate is capped to it.
    void reconfigure(double configured_rpm, milliseconds tolerance = milliseconds(0));

    // The earliest time the next request may go out.
    time_point next_slot() const;
    // Takes the slot if now is at or past next_slot(); false otherwise.
    bool try_acquire(time_point now);

    // A 429 arrived. until: what the answer's headers allow (nullopt: no usable
    // header); jitter01: a uniform random number in [0, 1) for the fallback backoff;
    // sent_at: when its request left (nullopt: now). A request sent before the
    // current episode began is part of that episode, however late its answer.
    void on_rate_limited(time_point now, std::optional<time_point> until, double jitter01,
                         std::optional<time_point> sent_at = std::nullopt);
    // Any other answer from the API (not a request that failed on the way): the budget
    // is working; after a quiet spell the rate recovers.
    void on_answer(time_point now);

    double configured_rpm() const { return configured_; }
    double allowed_rpm() const { return allowed_; }
    // The rate sends are paced at: the allowed one less the margin.
    double paced_rpm() const { return allowed_ * (1 - margin_); }
    bool blocked(time_point now) const { return now < blocked_until_; }
    time_point blocked_until() const { return blocked_until_; }
    // Requests sent in the last 60 s.
    std::size_t used_last_minute(time_point now);

    // A cluster: every send also takes a slot of the schedule the nodes share (reserved
    // from the database a few at a time: slots, not counts, so the cluster's sends are
    // as evenly paced as one node's). A slot an interval old is dropped unused.
    void use_shared_slots(bool on);
    bool shared() const { return shared_; }
    void add_shared_slots(time_point first, double interval_ms, int count);
    std::size_t shared_slots() const { return slots_.size(); }
    // Another node's 429: no send until then; the slots before it are void.
    void hold_until(time_point until);
    // The rate the cluster allows now (another node lowered it, or raised it back).
    void adopt_allowed(double rpm);

private:
    milliseconds gap() const;
    double interval_us() const { return 60e6 / paced_rpm(); }
    // A minute's worth of sends at the allowed rate, at least 10.
    double minute_of_sends() const { return std::max(10.0, allowed_); }
    std::size_t window_sends() const;
    milliseconds window() const;
    // The earliest time the guard's window leaves room for one more send; min when it does.
    time_point window_slot() const;

    double configured_;
    double allowed_;
    milliseconds tolerance_;
    double margin_;
    // The even slot the last send took, in microseconds since the epoch; nullopt before
    // the first send. The next slot is one interval later at the rate allowed now, so
    // a new rate (SIGHUP, recovery after 429s) moves it at once.
    std::optional<double> last_slot_us_;
    time_point blocked_until_{};
    // The current or last 429 episode: when it began; sends since then; whether one
    // came before at all. Answers of requests already in flight when a 429 arrives
    // belong to its episode.
    std::optional<time_point> episode_start_;
    std::uint64_t sends_since_episode_ = 0;
    // Answers from the API (not transport failures) since the last episode began, and
    // the last raise or decrease of the allowed rate: the way back up.
    std::uint64_t answers_since_episode_ = 0;
    bool recovering_ = false; // the quiet spell is over: answers raise the rate
    time_point last_raise_{};
    int consecutive_unhinted_ = 0;
    bool shared_ = false;
    std::deque<time_point> slots_; // the shared schedule's slots this node holds
    double slot_interval_ms_ = 0;
    void drop_stale_slots(time_point now);
    std::deque<time_point> sends_;         // within the last window()
    std::optional<time_point> last_until_; // the reset time the last episode named
};

} // namespace klingd::core
