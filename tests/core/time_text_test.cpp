// The one time-text module: RFC 3339 UTC out, RFC 3339 and HTTP dates in, and
// the same text whatever the host's time zone.
#include "core/time_text.hpp"

#include <cstdlib>
#include <ctime>
#include <gtest/gtest.h>

namespace {

using namespace klingd::core;
using namespace std::chrono;

sys_ms at(int y, unsigned m, unsigned d, int h, int mi, int s, int ms = 0) {
    return sys_ms(sys_days(year_month_day{year(y), month(m), day(d)})) + hours(h) + minutes(mi) +
           seconds(s) + milliseconds(ms);
}

// Sets TZ for one test and puts back what was there.
struct scoped_tz {
    std::string old;
    bool had;
    explicit scoped_tz(const char* tz) : had(std::getenv("TZ") != nullptr) {
        if (had)
            old = std::getenv("TZ");
        ::setenv("TZ", tz, 1);
        ::tzset();
    }
    ~scoped_tz() {
        if (had)
            ::setenv("TZ", old.c_str(), 1);
        else
            ::unsetenv("TZ");
        ::tzset();
    }
};

TEST(time_text, formats_utc_with_milliseconds_or_seconds) {
    auto t = at(2026, 11, 22, 10, 15, 30, 123);
    EXPECT_EQ(format_rfc3339(t), "2026-11-22T10:15:30.123Z");
    EXPECT_EQ(format_rfc3339(t, time_precision::seconds), "2026-11-22T10:15:30Z");
    EXPECT_EQ(format_rfc3339(at(1970, 1, 1, 0, 0, 0)), "1970-01-01T00:00:00.000Z");
    EXPECT_EQ(format_rfc3339(at(2024, 2, 29, 23, 59, 59, 999)), "2024-02-29T23:59:59.999Z");
}

TEST(time_text, a_host_in_tokyo_prints_and_reads_the_same_utc_text) {
    scoped_tz tz("Asia/Tokyo");
    auto t = at(2026, 12, 31, 20, 0, 0, 5);
    EXPECT_EQ(format_rfc3339(t), "2026-12-31T20:00:00.005Z");
    EXPECT_EQ(format_rfc3339(t, time_precision::seconds), "2026-12-31T20:00:00Z");
    EXPECT_EQ(parse_rfc3339("2026-12-31T20:00:00.005Z"), t);
    // The clock's now printed and read back is now, to the millisecond.
    auto now = floor<milliseconds>(system_clock::now());
    EXPECT_EQ(parse_rfc3339(format_rfc3339(now)), now);
}

TEST(time_text, parses_zones_fractions_and_separators) {
    auto t = at(2026, 11, 22, 10, 15, 30);
    EXPECT_EQ(parse_rfc3339("2026-11-22T10:15:30Z"), t);
    EXPECT_EQ(parse_rfc3339("2026-11-22t10:15:30z"), t);
    EXPECT_EQ(parse_rfc3339("2026-11-22 10:15:30Z"), t);
    EXPECT_EQ(parse_rfc3339("2026-11-22T19:15:30+09:00"), t);
    EXPECT_EQ(parse_rfc3339("2026-11-22T05:45:30-04:30"), t);
    EXPECT_EQ(parse_rfc3339("2026-11-22T10:15:30+0000"), t);
    EXPECT_EQ(parse_rfc3339("2026-11-22T10:15:30.1Z"), t + 100ms);
    EXPECT_EQ(parse_rfc3339("2026-11-22T10:15:30.123456789Z"), t + 123ms);
    EXPECT_EQ(parse_rfc3339("2016-12-31T23:59:60Z"), at(2017, 1, 1, 0, 0, 0));
}

TEST(time_text, the_zone_may_be_left_out_only_when_asked) {
    EXPECT_FALSE(parse_rfc3339("2026-11-22T10:15:30"));
    EXPECT_EQ(parse_rfc3339("2026-11-22T10:15:30", zone_rule::utc_if_missing),
              at(2026, 11, 22, 10, 15, 30));
}

TEST(time_text, refuses_impossible_dates_and_malformed_text) {
    for (const char* bad :
         {"", "2026-11-22", "2026-13-01T00:00:00Z", "2026-02-29T00:00:00Z", "2026-04-31T00:00:00Z",
          "2026-11-22T24:00:00Z", "2026-11-22T10:60:00Z", "2026-11-22T10:15:61Z",
          "2026-11-22T10:15:30.Z", "2026-11-22T10:15:30+9:00", "2026-11-22T10:15:30+24:00",
          "2026-11-22T10:15:30 Z", "2026-11-22X10:15:30Z", "20a6-11-22T10:15:30Z",
          "2026-11-22T10:15:30Zjunk", "+026-11-22T10:15:30Z", "2026-11-22T10:15:3Z"})
        EXPECT_FALSE(parse_rfc3339(bad)) << bad;
}

TEST(time_text, reads_http_dates) {
    EXPECT_EQ(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), at(1994, 11, 6, 8, 49, 37));
    EXPECT_EQ(parse_http_date("Wed, 02 Dec 2026 23:00:00 GMT"), at(2026, 12, 2, 23, 0, 0));
    for (const char* bad : {"Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 31 Feb 1994 08:49:37 GMT",
                            "Sun, 06 Xyz 1994 08:49:37 GMT", "Sun 06 Nov 1994 08:49:37 GMTx",
                            "Sunday, 06-Nov-94 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:3x GMT"})
        EXPECT_FALSE(parse_http_date(bad)) << bad;
}

} // namespace
