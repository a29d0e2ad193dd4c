// Unit tests of the media bytes (deterministic, format signatures first, any
// range equal to the same range of the whole file) and of the time renderings.
#include "sim/media.hpp"
#include "sim/timestamps.hpp"

#include <gtest/gtest.h>
#include <string>

namespace klingd::sim {
namespace {

std::string make(const media_file& f, std::uint64_t offset, std::size_t n) {
    std::string out(n, '\0');
    fill_media(f, offset, out);
    return out;
}

TEST(media, starts_with_the_format_signature) {
    auto png = make({media_kind::png, 1, 100}, 0, 8);
    EXPECT_EQ(png, std::string("\x89PNG\r\n\x1a\n", 8));
    auto jpg = make({media_kind::jpg, 1, 100}, 0, 3);
    EXPECT_EQ(jpg, std::string("\xff\xd8\xff", 3));
    auto mp4 = make({media_kind::mp4, 1, 100}, 0, 12);
    EXPECT_EQ(mp4.substr(4, 8), "ftypmp42");
    EXPECT_EQ(mp4.substr(0, 4), std::string("\x00\x00\x00\x18", 4));
}

TEST(media, bytes_depend_on_the_request_id_only) {
    media_file a{media_kind::png, media_seed("id-a"), 4096};
    media_file b{media_kind::png, media_seed("id-b"), 4096};
    EXPECT_EQ(make(a, 0, 4096), make(a, 0, 4096));
    EXPECT_NE(make(a, 0, 4096), make(b, 0, 4096));
    EXPECT_NE(make(a, 8, 64), std::string(64, '\0'));
}

TEST(media, any_range_matches_the_whole) {
    media_file f{media_kind::mp4, media_seed("x"), 10000};
    auto whole = make(f, 0, 10000);
    for (std::uint64_t off : {0u, 1u, 7u, 23u, 24u, 25u, 4095u, 9990u})
        EXPECT_EQ(make(f, off, 10), whole.substr(off, 10)) << off;
}

TEST(media, content_types_and_extensions) {
    EXPECT_EQ(content_type(media_kind::png), "image/png");
    EXPECT_EQ(content_type(media_kind::jpg), "image/jpeg");
    EXPECT_EQ(content_type(media_kind::mp4), "video/mp4");
    EXPECT_EQ(extension(media_kind::jpg), "jpg");
}

TEST(timestamps, reset_header_rounds_up_to_its_precision) {
    auto t = time_point(std::chrono::seconds(1767225600)) + std::chrono::microseconds(123'400);
    EXPECT_EQ(rfc3339_ms(t), "2026-01-01T00:00:00.123Z");
    EXPECT_EQ(reset_header_value(t, reset_format::iso_frac), "2026-01-01T00:00:00.124Z");
    EXPECT_EQ(reset_header_value(t, reset_format::iso), "2026-01-01T00:00:01Z");
    EXPECT_EQ(reset_header_value(t, reset_format::epoch), "1767225601");
    auto whole = time_point(std::chrono::seconds(1767225660));
    EXPECT_EQ(reset_header_value(whole, reset_format::iso_frac), "2026-01-01T00:01:00.000Z");
    EXPECT_EQ(reset_header_value(whole, reset_format::epoch), "1767225660");
    EXPECT_EQ(unix_ms(t), 1767225600123);
}

TEST(timestamps, scaled_durations) {
    EXPECT_EQ(scaled(223, 0.01), std::chrono::milliseconds(2230));
    EXPECT_EQ(scaled(60, 0.01), std::chrono::milliseconds(600));
    EXPECT_EQ(scaled(1, 1), std::chrono::seconds(1));
}

} // namespace
} // namespace klingd::sim
