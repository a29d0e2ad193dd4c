// JSON parsing with correctly rounded numbers. Boost.JSON 1.81 reads a number
// with a long mantissa or a large exponent a unit or two in the last place off,
// so the text it writes back is not the number it read. Job files, whose params
// klingd forwards to the API, are parsed with std::from_chars for doubles instead.
#pragma once

#include <boost/json/parse_options.hpp>
#include <boost/json/value.hpp>
#include <boost/system/error_code.hpp>
#include <cstddef>
#include <string_view>

namespace klingd::core {

// The value of text; on failure null with ec set and consumed the offset where
// the text stops being JSON.
boost::json::value parse_json_exact(std::string_view text, const boost::json::parse_options& opts,
                                    boost::system::error_code& ec, std::size_t& consumed);

} // namespace klingd::core
