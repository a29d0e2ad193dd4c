// The emulator's three ways of counting a budget, with a manual clock: each refuses
// what it must, names when a refused call would be taken, and takes an even pace at
// the budget (the pace klingd aims for) except where the kind itself forbids it.
#include "sim/rate_limiter.hpp"

#include <gtest/gtest.h>

namespace klingd::sim {
namespace {

using namespace std::chrono_literals;

// 2026-01-01T00:00:00Z: a whole minute, so fixed windows start here.
const time_point t0 = time_point(std::chrono::seconds(1767225600));

TEST(rate_limiter, fixed_windows_start_from_zero_at_each_minute) {
    rate_limiter l(3, 60s, limiter_kind::fixed);
    EXPECT_TRUE(l.try_acquire(t0 + 57s));
    EXPECT_TRUE(l.try_acquire(t0 + 58s));
    EXPECT_TRUE(l.try_acquire(t0 + 59s));
    EXPECT_FALSE(l.try_acquire(t0 + 59s));
    EXPECT_EQ(l.reset_at(t0 + 59s), t0 + 60s);
    // A new window: three more at once, six within four seconds (what a fixed window allows).
    EXPECT_TRUE(l.try_acquire(t0 + 60s));
    EXPECT_TRUE(l.try_acquire(t0 + 60s));
    EXPECT_TRUE(l.try_acquire(t0 + 61s));
}

TEST(rate_limiter, a_sliding_window_counts_any_minute_that_ends_now) {
    rate_limiter l(3, 60s, limiter_kind::sliding);
    EXPECT_TRUE(l.try_acquire(t0 + 57s));
    EXPECT_TRUE(l.try_acquire(t0 + 58s));
    EXPECT_TRUE(l.try_acquire(t0 + 59s));
    EXPECT_FALSE(l.try_acquire(t0 + 61s)) << "a new fixed window would take it";
    EXPECT_EQ(l.reset_at(t0 + 61s), t0 + 117s);
    EXPECT_TRUE(l.try_acquire(t0 + 117s));
    EXPECT_FALSE(l.try_acquire(t0 + 117s));
}

TEST(rate_limiter, a_token_bucket_refuses_bursts_and_refills_at_the_budget) {
    rate_limiter l(120, 60s, limiter_kind::bucket); // 2 a second, 10 at most at once
    int taken = 0;
    while (l.try_acquire(t0))
        ++taken;
    EXPECT_EQ(taken, 10);
    EXPECT_GE(l.reset_at(t0), t0 + 499ms);
    EXPECT_LE(l.reset_at(t0), t0 + 501ms);
    EXPECT_FALSE(l.try_acquire(t0 + 490ms));
    EXPECT_TRUE(l.try_acquire(t0 + 510ms));
}

TEST(rate_limiter, each_kind_takes_an_even_pace_at_the_budget) {
    for (auto kind : {limiter_kind::fixed, limiter_kind::sliding, limiter_kind::bucket}) {
        rate_limiter l(30, 60s, kind);
        int refused = 0;
        for (int i = 0; i < 300; ++i) // 10 minutes, one every 2 s
            refused += !l.try_acquire(t0 + std::chrono::milliseconds(i * 2000 + 1));
        EXPECT_EQ(refused, 0) << name_of(kind);
    }
}

TEST(rate_limiter, kinds_are_named_and_unknown_names_refused) {
    for (auto kind : {limiter_kind::fixed, limiter_kind::sliding, limiter_kind::bucket})
        EXPECT_EQ(limiter_kind_named(name_of(kind)), kind);
    EXPECT_FALSE(limiter_kind_named("leaky"));
}

} // namespace
} // namespace klingd::sim
