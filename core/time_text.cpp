// RFC 3339 and HTTP dates through std::chrono's calendar (year_month_day,
// hh_mm_ss): no localtime, no gmtime, no hand-written day counts.
#include "core/time_text.hpp"

#include <algorithm>
#include <charconv>
#include <fmt/format.h>

namespace klingd::core {

namespace chr = std::chrono;

namespace {

// The number in s[pos, pos + len) if it is exactly len digits; -1 otherwise.
int digits(std::string_view s, std::size_t pos, std::size_t len) {
    if (pos + len > s.size())
        return -1;
    int v = 0;
    auto part = s.substr(pos, len);
    if (!std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return -1;
    std::from_chars(part.data(), part.data() + part.size(), v);
    return v;
}

std::optional<sys_ms> make_time(int y, int mo, int d, int h, int mi, int se) {
    chr::year_month_day ymd{chr::year(y), chr::month(static_cast<unsigned>(mo)),
                            chr::day(static_cast<unsigned>(d))};
    if (!ymd.ok() || h > 23 || mi > 59 || se > 60)
        return std::nullopt;
    // A leap second (:60) reads as the first instant of the next minute.
    return sys_ms(chr::sys_days(ymd)) + chr::hours(h) + chr::minutes(mi) + chr::seconds(se);
}

// The offset east of UTC of "Z", "+hh:mm", "-hh:mm", "+hhmm" or "-hhmm"; nullopt otherwise.
std::optional<chr::minutes> parse_zone(std::string_view z) {
    if (z == "Z" || z == "z")
        return chr::minutes(0);
    if (z.size() != 6 && z.size() != 5)
        return std::nullopt;
    if (z[0] != '+' && z[0] != '-')
        return std::nullopt;
    if (z.size() == 6 && z[3] != ':')
        return std::nullopt;
    int h = digits(z, 1, 2), m = digits(z, z.size() - 2, 2);
    if (h < 0 || m < 0 || h > 23 || m > 59)
        return std::nullopt;
    auto off = chr::minutes(h * 60 + m);
    return z[0] == '-' ? -off : off;
}

} // namespace

std::string format_rfc3339(sys_ms t, time_precision p) {
    auto day = chr::floor<chr::days>(t);
    chr::year_month_day ymd{day};
    chr::hh_mm_ss<chr::milliseconds> hms{t - day};
    auto date = fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", static_cast<int>(ymd.year()),
                            static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                            hms.hours().count(), hms.minutes().count(), hms.seconds().count());
    if (p == time_precision::seconds)
        return date + "Z";
    return fmt::format("{}.{:03}Z", date, hms.subseconds().count());
}

std::optional<sys_ms> parse_rfc3339(std::string_view s, zone_rule rule) {
    if (s.size() < 19 || s[4] != '-' || s[7] != '-' || s[13] != ':' || s[16] != ':' ||
        (s[10] != 'T' && s[10] != 't' && s[10] != ' '))
        return std::nullopt;
    int y = digits(s, 0, 4), mo = digits(s, 5, 2), d = digits(s, 8, 2), h = digits(s, 11, 2),
        mi = digits(s, 14, 2), se = digits(s, 17, 2);
    if (y < 0 || mo < 0 || d < 0 || h < 0 || mi < 0 || se < 0)
        return std::nullopt;
    auto t = make_time(y, mo, d, h, mi, se);
    if (!t)
        return std::nullopt;
    std::size_t i = 19;
    if (i < s.size() && s[i] == '.') {
        std::size_t start = ++i;
        while (i < s.size() && s[i] >= '0' && s[i] <= '9')
            ++i;
        if (i == start)
            return std::nullopt;
        int ms = 0, scale = 100;
        for (std::size_t k = start; k < i && k < start + 3; ++k, scale /= 10)
            ms += (s[k] - '0') * scale;
        *t += chr::milliseconds(ms);
    }
    auto zone = s.substr(i);
    if (zone.empty())
        return rule == zone_rule::utc_if_missing ? t : std::nullopt;
    auto off = parse_zone(zone);
    if (!off)
        return std::nullopt;
    return *t - *off;
}

std::optional<sys_ms> parse_http_date(std::string_view s) {
    static constexpr std::string_view months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    if (s.size() != 29 || s.substr(25) != " GMT" || s[3] != ',' || s[4] != ' ' || s[7] != ' ' ||
        s[11] != ' ' || s[16] != ' ' || s[19] != ':' || s[22] != ':')
        return std::nullopt;
    auto it = std::find(std::begin(months), std::end(months), s.substr(8, 3));
    if (it == std::end(months))
        return std::nullopt;
    int d = digits(s, 5, 2), y = digits(s, 12, 4), h = digits(s, 17, 2), mi = digits(s, 20, 2),
        se = digits(s, 23, 2);
    if (d < 0 || y < 0 || h < 0 || mi < 0 || se < 0)
        return std::nullopt;
    return make_time(y, static_cast<int>(it - std::begin(months)) + 1, d, h, mi, se);
}

} // namespace klingd::core
