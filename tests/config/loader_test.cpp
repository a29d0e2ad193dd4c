#include "config/loader.hpp"
#include <gtest/gtest.h>
TEST(config, placeholder_defaults) {
    auto r = klingd::config::parse_settings("", "/etc/klingd/klingd.toml",
        [](const std::string& n) -> std::optional<std::string> { if (n == "SEGMIND_API_KEY") return "k"; return std::nullopt; });
    ASSERT_TRUE(r.value) << (r.errors.empty() ? "" : r.errors[0]);
    EXPECT_EQ(r.value->api.requests_per_minute, 60);
}
