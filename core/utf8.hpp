// UTF-8 hygiene for text that goes into JSON answers, logs and .error files but
// may come from bytes nobody checked (a request line, a server's error body), or
// be cut to a length: JSON must be valid UTF-8, so such text is repaired first.
#pragma once

#include <string>
#include <string_view>

namespace klingd::core {

// s with every byte that is not part of a well-formed UTF-8 sequence (overlong
// forms, surrogates and code points above U+10FFFF included) replaced by U+FFFD.
std::string valid_utf8(std::string_view s);

// The longest prefix of s of at most max_bytes that does not end inside a UTF-8
// sequence (for well-formed s; for other bytes, at most max_bytes).
std::string_view utf8_prefix(std::string_view s, std::size_t max_bytes);

} // namespace klingd::core
