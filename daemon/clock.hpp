// The daemon's one clock seam. Engine time (now) is monotonic: it starts equal to
// the wall clock and then moves with the steady clock, so pacing, timers and every
// "how long since" go on unharmed when the wall clock is stepped (NTP, an admin).
// The wall clock is read only to talk about time with the outside: to_wall() for
// timestamps written to the database or shown, from_wall() for times read back
// (jobs after a restart, whose downtime the wall clock measures; an API's reset time).
#pragma once

#include "core/job.hpp"

#include <chrono>

namespace klingd::daemon {

class clock {
public:
    virtual ~clock() = default;
    // Engine time: monotonic, in the wall clock's units.
    virtual core::time_point now() const = 0;
    virtual core::time_point wall_now() const = 0;

    // How far the wall clock is ahead of engine time (0 until the wall clock is stepped).
    virtual core::milliseconds wall_offset() const { return wall_now() - now(); }
    core::time_point to_wall(core::time_point t) const { return t + wall_offset(); }
    core::time_point from_wall(core::time_point w) const { return w - wall_offset(); }
};

// The system's clocks, anchored when it is made.
class system_clock final : public clock {
public:
    system_clock();
    core::time_point now() const override;
    core::time_point wall_now() const override;
    // Measured to the nanosecond, then rounded: 0 while the clocks run together.
    core::milliseconds wall_offset() const override;

private:
    std::chrono::system_clock::time_point wall_at_start_;
    std::chrono::steady_clock::time_point steady_at_start_;
};

// A clock that moves only when told (tests): advance() moves both; step_wall() only
// the wall clock, as NTP does.
class manual_clock final : public clock {
public:
    explicit manual_clock(core::time_point start) : now_(start), wall_(start) {}
    core::time_point now() const override { return now_; }
    core::time_point wall_now() const override { return wall_; }
    void advance(core::milliseconds d) {
        now_ += d;
        wall_ += d;
    }
    void step_wall(core::milliseconds d) { wall_ += d; }

private:
    core::time_point now_;
    core::time_point wall_;
};

} // namespace klingd::daemon
