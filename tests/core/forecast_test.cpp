// The forecast of a backlog: which bound holds (the budget or the run time through the
// in-flight slots), the time it gives, and the tracker's comparison of the forecast made
// an hour before a backlog drained with the time it drained.
#include "core/forecast.hpp"

#include <gtest/gtest.h>

namespace {

using namespace klingd::core;
using std::chrono::hours;
using std::chrono::minutes;

forecast_input backlog(std::int64_t waiting, std::int64_t running, double rpm) {
    forecast_input in;
    in.waiting = waiting;
    in.running = running;
    in.allowed_rpm = rpm;
    in.requests_per_job = 3;
    in.run_s = 60;
    in.max_in_flight = 50;
    return in;
}

TEST(forecast, nothing_left_is_nothing_to_wait_for) {
    auto f = make_forecast(backlog(0, 0, 60));
    EXPECT_EQ(f.jobs_left, 0);
    EXPECT_EQ(f.seconds_left, 0);
    EXPECT_EQ(f.bound, "");
}

TEST(forecast, a_small_budget_bounds_it) {
    // 100 jobs at 3 requests: 300 requests at 60 a minute, 300 s; the slots would pass them
    // in 100 / (50 / 60 s) = 120 s. The last one still runs a minute.
    auto f = make_forecast(backlog(100, 0, 60));
    EXPECT_EQ(f.bound, "budget");
    EXPECT_DOUBLE_EQ(f.requests_left, 300);
    EXPECT_DOUBLE_EQ(f.seconds_left, 360);
}

TEST(forecast, a_large_budget_leaves_the_run_time_through_the_slots) {
    auto f = make_forecast(backlog(100, 0, 6000));
    EXPECT_EQ(f.bound, "run time");
    EXPECT_DOUBLE_EQ(f.seconds_left, 120 + 60);
    // Twice the slots, half the flow time.
    auto in = backlog(100, 0, 6000);
    in.max_in_flight = 100;
    EXPECT_DOUBLE_EQ(make_forecast(in).seconds_left, 60 + 60);
}

TEST(forecast, running_jobs_need_no_submit_and_end_within_a_run_time) {
    // 10 running: 2 requests each left, 20 at 60 a minute = 20 s; they flow out in 12 s.
    auto f = make_forecast(backlog(0, 10, 60));
    EXPECT_DOUBLE_EQ(f.requests_left, 20);
    EXPECT_DOUBLE_EQ(f.seconds_left, 20);
    // Many running at a large budget: at most about a run time.
    EXPECT_DOUBLE_EQ(make_forecast(backlog(0, 200, 100000)).seconds_left, 60);
}

TEST(forecast, learned_requests_per_job_change_the_budget_bound) {
    auto in = backlog(100, 0, 60);
    in.requests_per_job = 2.5;
    EXPECT_DOUBLE_EQ(make_forecast(in).seconds_left, 250 + 60);
}

TEST(forecast_tracker, compares_the_forecast_made_an_hour_before_the_drain) {
    forecast_tracker t;
    auto t0 = time_point(hours(500000));
    auto f = [](std::int64_t left, double seconds) {
        forecast x;
        x.jobs_left = left;
        x.seconds_left = seconds;
        x.bound = "budget";
        return x;
    };
    // Every 10 minutes, each forecast saying "done at t0 + 2 h".
    for (int m = 0; m <= 120; m += 10)
        t.record(t0 + minutes(m), f(100 - m / 2, (120 - m) * 60.0));
    EXPECT_FALSE(t.last_drain()) << "not drained yet";
    // Drained at t0 + 2 h 15: the forecast made closest to an hour before (t0 + 1 h 20,
    // or t0 + 1 h 10) said t0 + 2 h.
    t.record(t0 + minutes(135), f(0, 0));
    ASSERT_TRUE(t.last_drain());
    auto& a = *t.last_drain();
    EXPECT_TRUE(a.made_at == t0 + minutes(70) || a.made_at == t0 + minutes(80));
    EXPECT_EQ(a.predicted_at, t0 + minutes(120));
    EXPECT_EQ(a.drained_at, t0 + minutes(135));
    EXPECT_DOUBLE_EQ(a.error_s(), 15 * 60);
    // A short backlog is compared with its first forecast; an idle minute changes nothing.
    t.record(t0 + minutes(200), f(5, 100));
    t.record(t0 + minutes(201), f(3, 100));
    t.record(t0 + minutes(203), f(0, 0));
    EXPECT_EQ(t.last_drain()->made_at, t0 + minutes(200));
    EXPECT_DOUBLE_EQ(t.last_drain()->error_s(), 180 - 100);
    t.record(t0 + minutes(204), f(0, 0));
    EXPECT_EQ(t.last_drain()->made_at, t0 + minutes(200));
}

} // namespace
